"""Test doubles for the machine seam: a recording `FakeSyscalls` (same methods
as `liveinit.syscalls.Linux`) and a `FakeUevents` (same methods as
`liveinit.uevent.UeventListener`).

FakeSyscalls records every call in `calls` as a tuple whose first item is the
method name, with paths made relative to `root` (the fake machine's root, so
tests assert "/sysroot", not "/tmp/pytest-.../sysroot"):

    ("mount", source, target, fstype, flags, data)
    ("umount2", target, flags)
    ("pivot_root", new_root, put_old)      ("chroot", path)   ("chdir", path)
    ("finit_module", module_name, params)  ("init_module", params)
    ("mknod", path, kind, major, minor)    ("reboot", cmd)
    ("loop_attach", path, readonly) -> returns "/dev/loopN" (prefixed with root);
        + (offset, sizelimit) when either is given
    ("execv", path, argv)                  ("console", path)
    ("loop_release", path or None)

Failures: `fail={"mount:overlay": errno.ENODEV}` makes every matching call
raise OSError(ENODEV). Keys are "method", "method:detail" where the detail is,
per method: mount -> fstype or target; umount2/chroot/chdir/pivot_root/mknod/
console/execv/loop_attach -> the (relative) path; finit_module -> the module
name (file name without .ko*). A value may also be a list of errnos, consumed
one per call (0 = succeed), to fail only the first N calls.

State simulated: `mounts` (relative target -> Mount, moved by MS_MOVE, removed
by umount2), `modules` (names loaded by finit_module), `loops` (device ->
backing relative path), `nodes` (path -> (kind, major, minor); mknod also
creates an empty file so exists() sees it). `filesystems`: when a set is
given, mounting an fstype that is neither in it nor a loaded module raises
ENODEV, like a kernel whose fs module is not loaded yet. `devs` maps relative
paths to st_dev numbers for `st_dev` (default: the real lstat)."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import overload


@dataclass
class Mount:
    source: str
    fstype: str | None
    flags: int
    data: str | None


MS_MOVE = 8192
MS_BIND = 4096
MS_REMOUNT = 32


class ExecCalled(Exception):
    """Raised by FakeSyscalls.execv when `exec_raises` is set (exec never returns)."""

    def __init__(self, path: str, argv: list[str]) -> None:
        super().__init__(path)
        self.path = path
        self.argv = argv


@dataclass
class FakeSyscalls:
    root: str = "/"
    fail: dict = field(default_factory=dict)
    filesystems: set | None = None
    devs: dict = field(default_factory=dict)
    exec_raises: bool = False
    calls: list = field(default_factory=list)
    mounts: dict = field(default_factory=dict)
    modules: list = field(default_factory=list)
    loops: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)

    # -- helpers --------------------------------------------------------
    @overload
    def rel(self, p: str) -> str: ...
    @overload
    def rel(self, p: None) -> None: ...

    def rel(self, p: str | None) -> str | None:
        """`p` relative to the fake root ("/tmp/x/sysroot" -> "/sysroot")."""
        if p is None or self.root in ("", "/"):
            return p
        r = self.root.rstrip("/")
        if p == r:
            return "/"
        if p.startswith(r + "/"):
            return p[len(r):]
        return p

    def _maybe_fail(self, method: str, detail: str | None, call: str) -> None:
        for key in (f"{method}:{detail}", method):
            if key not in self.fail:
                continue
            v = self.fail[key]
            if isinstance(v, list):
                if not v:
                    continue
                v = v.pop(0)
                if not v:
                    return
            raise OSError(v, f"{call}: {os.strerror(v)}")

    def of(self, method: str) -> list[tuple]:
        """The recorded calls of one method."""
        return [c for c in self.calls if c[0] == method]

    def mount_calls(self) -> list[tuple]:
        return self.of("mount")

    # -- the Linux API --------------------------------------------------
    def mount(self, source: str, target: str, fstype: str | None = None,
              flags: int = 0, data: str | None = None) -> None:
        t, s = self.rel(target), self.rel(source)
        self.calls.append(("mount", s, t, fstype, flags, data))
        self._maybe_fail("mount", fstype, f"mount({s!r}, {t!r}, {fstype!r})")
        self._maybe_fail("mount", t, f"mount({s!r}, {t!r}, {fstype!r})")
        if flags & MS_MOVE:
            if s not in self.mounts:
                raise OSError(errno.EINVAL, f"mount --move {s}: not a mount point")
            self.mounts[t] = self.mounts.pop(s)
            return
        if flags & MS_REMOUNT:
            if t in self.mounts:
                self.mounts[t].flags = flags
            return
        if (fstype and self.filesystems is not None and not flags & MS_BIND
                and fstype not in self.filesystems and fstype not in self.modules):
            raise OSError(errno.ENODEV, f"mount({s!r}, {t!r}, {fstype!r}): unknown filesystem")
        if not os.path.isdir(target) and not (flags & MS_BIND and os.path.isfile(target)):   # file on file
            raise OSError(errno.ENOENT, f"mount({s!r}, {t!r}): no such directory")
        self.mounts[t] = Mount(s, fstype, flags, data)

    def umount2(self, target: str, flags: int = 0) -> None:
        t = self.rel(target)
        self.calls.append(("umount2", t, flags))
        self._maybe_fail("umount2", t, f"umount2({t!r})")
        if t not in self.mounts:
            raise OSError(errno.EINVAL, f"umount2({t!r}): not mounted")
        del self.mounts[t]

    def pivot_root(self, new_root: str, put_old: str) -> None:
        n, o = self.rel(new_root), self.rel(put_old)
        self.calls.append(("pivot_root", n, o))
        self._maybe_fail("pivot_root", n, f"pivot_root({n!r}, {o!r})")

    def chroot(self, path: str) -> None:
        p = self.rel(path)
        self.calls.append(("chroot", p))
        self._maybe_fail("chroot", p, f"chroot({p!r})")

    def chdir(self, path: str) -> None:
        p = self.rel(path)
        self.calls.append(("chdir", p))
        self._maybe_fail("chdir", p, f"chdir({p!r})")

    def finit_module(self, fd: int, params: str = "", flags: int = 0) -> bool:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = f"fd{fd}"
        name = os.path.basename(target).split(".ko")[0].replace("-", "_")
        self.calls.append(("finit_module", name, params))
        self._maybe_fail("finit_module", name, f"finit_module({name!r})")
        if name in self.modules:
            return False
        self.modules.append(name)
        return True

    def init_module(self, image: bytes, params: str = "") -> bool:
        self.calls.append(("init_module", params))
        self._maybe_fail("init_module", None, "init_module")
        return True

    def mknod(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        p = self.rel(path)
        self.calls.append(("mknod", p, kind, major, minor))
        self._maybe_fail("mknod", p, f"mknod({p!r})")
        self.nodes[p] = (kind, major, minor)
        if not os.path.exists(path):
            with open(path, "wb"):
                pass

    def reboot(self, cmd: int = 0) -> None:
        self.calls.append(("reboot", cmd))

    def execv(self, path: str, argv: list[str]) -> None:
        p = self.rel(path)
        self.calls.append(("execv", p, list(argv)))
        self._maybe_fail("execv", p, f"execv({p!r})")
        if self.exec_raises:
            raise ExecCalled(p, list(argv))

    def st_dev(self, path: str) -> int:
        p = self.rel(path)
        if p in self.devs:
            return self.devs[p]
        # Inherit the nearest listed ancestor's device, like a real mount.
        q = p
        while q not in ("/", ""):
            q = os.path.dirname(q)
            if q in self.devs:
                return self.devs[q]
        return os.lstat(path).st_dev

    def console(self, path: str) -> None:
        p = self.rel(path)
        self.calls.append(("console", p))
        self._maybe_fail("console", p, f"open({p!r})")

    def loop_attach(self, path: str, readonly: bool = True, autoclear: bool = True,
                    dev: str = "/dev", offset: int = 0, sizelimit: int = 0) -> str:
        p = self.rel(path)
        self.calls.append(("loop_attach", p, readonly) + ((offset, sizelimit) if offset or sizelimit else ()))
        self._maybe_fail("loop_attach", p, f"loop_attach({p!r})")
        if not os.path.exists(path):
            raise OSError(errno.ENOENT, f"open({p!r}): no such file")
        n = len(self.loops)
        loopdev = f"{dev}/loop{n}"
        self.loops[self.rel(loopdev)] = p
        return loopdev

    def loop_release(self, loopdev: str | None = None) -> None:
        self.calls.append(("loop_release", self.rel(loopdev)))


class FakeUevents:
    """A scripted uevent source with UeventListener's methods.

    `batches` is a list of event lists; each `poll` returns the next batch
    (or [] when exhausted). `on_poll(n)` is called before batch n is returned,
    so a test can make a device appear in the fake sysfs tree at that moment.
    `polls` records the timeouts asked for."""

    def __init__(self, batches: list[list[dict[str, str]]] | None = None,
                 on_poll: Callable[[int], None] | None = None) -> None:
        self.batches = list(batches or [])
        self.on_poll = on_poll
        self.polls: list[float] = []
        self.closed = False
        self._r, self._w = os.pipe()
        if self.batches:
            os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def poll(self, timeout: float) -> list[dict[str, str]]:
        n = len(self.polls)
        self.polls.append(timeout)
        if self.on_poll is not None:
            self.on_poll(n)
        if not self.batches:
            return []
        batch = self.batches.pop(0)
        if not self.batches:
            os.read(self._r, 1)
        return list(batch)

    def close(self) -> None:
        if not self.closed:
            os.close(self._r)
            os.close(self._w)
            self.closed = True

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()
