"""Where the boot's time goes, by kind of work: the boot record's `profile`
and one console line at hand-over.

Each kind sums the durations of its calls, from every thread: module loads
run in the background while the root search waits for their devices, so
kinds overlap and their sum may exceed the wall time. Module loads and
mounts are timed by the seam itself (`Timed` wraps the syscalls object);
waits and probing by the code that does them."""
from __future__ import annotations

import time

LOADS = "module loads"
MOUNTS = "mounts"
WAITS = "device waits"
PROBING = "probing"
CLEANUP = "initramfs cleanup"
KINDS = (LOADS, MOUNTS, WAITS, PROBING, CLEANUP)   # the console line's order
SYSCALL_KINDS = {"finit_module": LOADS, "init_module": LOADS,
                 "mount": MOUNTS, "umount2": MOUNTS, "loop_attach": MOUNTS}


class Profile:
    """Durations by kind. `add` may be called from any thread."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent: list[tuple[str, float]] = []

    def add(self, kind: str, seconds: float) -> None:
        self.spent.append((kind, seconds))   # one list.append: atomic under the GIL

    def since(self, kind: str, start: float) -> None:
        """Count the time from `start` (a time.monotonic()) to now."""
        self.spent.append((kind, time.monotonic() - start))

    def totals(self) -> dict[str, tuple[int, float]]:
        """kind -> (calls, milliseconds), in KINDS order."""
        out: dict[str, tuple[int, float]] = {}
        for kind, s in list(self.spent):
            n, ms = out.get(kind, (0, 0.0))
            out[kind] = (n + 1, ms + s * 1000)
        order = {k: i for i, k in enumerate(KINDS)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def line(self) -> str:
        """'module loads 402 ms (11), mounts 31 ms (6), ...'"""
        return ", ".join(f"{k} {ms:.0f} ms ({n})" for k, (n, ms) in self.totals().items())


class Timed:
    """The syscalls object, its calls in SYSCALL_KINDS timed into a Profile;
    every other attribute is the wrapped object's own."""

    __slots__ = ("_sys", "_profile")

    def __init__(self, sys: object, profile: Profile) -> None:
        self._sys = sys
        self._profile = profile

    def __getattr__(self, name: str):
        attr = getattr(self._sys, name)
        kind = SYSCALL_KINDS.get(name)
        if kind is None:
            return attr
        add = self._profile.add

        def timed(*args, **kwargs):
            start = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                add(kind, time.monotonic() - start)
        return timed
