"""The seam between the runtime and the machine it boots.

Every path the runtime reads or creates under /sys, /proc, /dev, /run (and
the new root) goes through `Machine.path`, and every syscall through
`Machine.sys`. At boot `root` is "/" and `sys` is `syscalls.Linux()`; in
tests `root` is a fake tree and `sys` a recording fake. Either way `sys`
is seen through `costs.Timed`, which adds the time of module loads and
mounts to `Machine.costs`."""
from __future__ import annotations

import os

from liveinit.costs import Costs, Timed

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Any


class Machine:
    """A root prefix for the filesystem, the syscalls object and the costs
    of the time spent on the machine.

    `sys` is duck-typed: `syscalls.Linux`, a test fake, or a proxy over either
    (`with_sys`); its methods are those of `syscalls.Linux`."""

    __slots__ = ("root", "sys", "costs")
    root: str
    sys: Any
    costs: Costs

    def __init__(self, root: str = "/", sys: object = None) -> None:
        if sys is None:
            from liveinit.syscalls import Linux
            sys = Linux()
        self.root = root.rstrip("/") or "/"
        self.costs = Costs()
        self.sys = Timed(sys, self.costs) if sys else sys

    def with_sys(self, sys: object) -> Machine:
        """This machine, its calls going through `sys` (a proxy wrapping `self.sys`,
        so they are timed once, into the same costs)."""
        other = Machine.__new__(Machine)
        other.root, other.sys, other.costs = self.root, sys, self.costs
        return other

    def path(self, p: str) -> str:
        """The real location of absolute path `p` on this machine."""
        if self.root == "/":
            return p
        return self.root + "/" + p.lstrip("/")

    def read(self, p: str, default: str | None = None) -> str | None:
        """Text of a (sysfs) file without its trailing newline, or `default`."""
        try:
            with open(self.path(p), "rb") as f:
                return f.read().decode("utf-8", "replace").rstrip("\n")
        except OSError:
            return default

    def exists(self, p: str) -> bool:
        return os.path.exists(self.path(p))

    def listdir(self, p: str) -> list[str]:
        """Sorted entries of a directory; empty when it is missing."""
        try:
            return sorted(os.listdir(self.path(p)))
        except OSError:
            return []

    def readlink(self, p: str) -> str | None:
        try:
            return os.readlink(self.path(p))
        except OSError:
            return None

    def makedirs(self, p: str, mode: int = 0o755) -> None:
        os.makedirs(self.path(p), mode, exist_ok=True)
