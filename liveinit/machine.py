"""The seam between the runtime and the machine it boots.

Every path the runtime reads or creates under /sys, /proc, /dev, /run (and
the new root) goes through `Machine.path`, and every syscall through
`Machine.sys`. At boot `root` is "/" and `sys` is `syscalls.Linux()`; in
tests `root` is a fake tree and `sys` a recording fake. Either way `sys`
is seen through `profile.Timed`, which adds the time of module loads and
mounts to `Machine.profile`."""
from __future__ import annotations

import os

from liveinit.profile import Profile, Timed


class Machine:
    """A root prefix for the filesystem, the syscalls object and the profile
    of the time spent on the machine."""

    __slots__ = ("root", "sys", "profile")

    def __init__(self, root: str = "/", sys: object = None) -> None:
        if sys is None:
            from liveinit.syscalls import Linux
            sys = Linux()
        self.root = root.rstrip("/") or "/"
        self.profile = Profile()
        self.sys = Timed(sys, self.profile) if sys else sys

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
