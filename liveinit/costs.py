"""Where the boot's time goes, by kind of work: the boot record's `costs`
and one console line at hand-over (contract.COSTS_LINE).

Each kind sums its calls from every thread. Work is measured in the calling
thread's CPU time (user + kernel): the boot VM may have one CPU, and the
wall time of a module load there would include the other threads' work.
Waits are measured in wall time. Work the kernel defers to its own threads
(libata probing a port, say) shows up as waits, not as loads. Module loads
and mounts are timed by the seam itself (`Timed` wraps the syscalls
object); waits and probing by the code that does them."""
from __future__ import annotations

import time

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Any

LOADS = "module loads"
DECOMPRESS = "module decompression"   # compressed modules, before their load (liveinit.modload)
MOUNTS = "mounts"
WAITS = "device waits"
PROBING = "probing"
CLEANUP = "initramfs cleanup"
KINDS = (LOADS, DECOMPRESS, MOUNTS, WAITS, PROBING, CLEANUP)   # the console line's order
SYSCALL_KINDS = {"finit_module": LOADS, "init_module": LOADS,
                 "mount": MOUNTS, "umount2": MOUNTS, "loop_attach": MOUNTS}
WALL = frozenset((WAITS,))   # the kinds measured in wall time; the others in thread CPU time


class Costs:
    """Durations by kind. `add` may be called from any thread."""

    __slots__ = ("spent",)

    def __init__(self) -> None:
        self.spent: list[tuple[str, float]] = []

    def add(self, kind: str, seconds: float) -> None:
        self.spent.append((kind, seconds))   # one list.append: atomic under the GIL

    @staticmethod
    def begin(kind: str) -> float:
        """The clock reading to pass to `end` (the kind decides the clock)."""
        return time.monotonic() if kind in WALL else time.thread_time()

    def end(self, kind: str, begun: float) -> None:
        """Count the time of `kind` since `begin`, in the same thread."""
        self.spent.append((kind, self.begin(kind) - begun))

    def totals(self) -> dict[str, tuple[int, float]]:
        """kind -> (calls, milliseconds), in KINDS order."""
        out: dict[str, tuple[int, float]] = {}
        for kind, s in list(self.spent):
            n, ms = out.get(kind, (0, 0.0))
            out[kind] = (n + 1, ms + s * 1000)
        order = {k: i for i, k in enumerate(KINDS)}
        return dict(sorted(out.items(), key=lambda kv: order.get(kv[0], len(order))))

    def summary(self) -> str:
        """'module loads 402 ms (11), mounts 31 ms (6), ...' (the COSTS_LINE's summary)"""
        return ", ".join(f"{k} {ms:.0f} ms ({n})" for k, (n, ms) in self.totals().items())


class Timed:
    """The syscalls object, its calls in SYSCALL_KINDS timed into a Costs;
    every other attribute is the wrapped object's own."""

    __slots__ = ("_sys", "_costs")

    def __init__(self, sys: object, costs: Costs) -> None:
        self._sys = sys
        self._costs = costs

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sys, name)
        kind = SYSCALL_KINDS.get(name)
        if kind is None:
            return attr
        costs = self._costs

        def timed(*args: Any, **kwargs: Any) -> Any:
            begun = costs.begin(kind)
            try:
                return attr(*args, **kwargs)
            finally:
                costs.end(kind, begun)
        return timed
