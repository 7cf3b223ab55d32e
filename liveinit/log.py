"""Log lines for PID 1: to /dev/kmsg (so they interleave with the kernel's
messages, `<6>liveinit: ...`) and to the console unless `quiet`.

A line the kernel itself will echo to the console (its level below the
console loglevel, /proc/sys/kernel/printk) is not printed a second time.
The kernel rate-limits writes to /dev/kmsg (10 lines per 5 s per open file)
unless printk_devkmsg is "on": it is switched on for the boot and restored
before init runs. Errors always reach the console, even under `quiet`."""
from __future__ import annotations

import os
import sys

from liveinit.contract import COSTS_LINE, PREFIX, STAGE_LINE, STARTING_LINE

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import TextIO

KMSG = "/dev/kmsg"
KMSG_MAX = 900          # the kernel truncates a record around 1 KiB
INFO, WARN, ERR, DEBUG = 6, 4, 3, 7


class Log:
    """Where boot messages go. `lines` keeps warnings and errors for the record."""

    def __init__(self, quiet: bool = False, debug: bool = False, out: TextIO | None = None) -> None:
        self.quiet = quiet
        self.verbose = debug
        self.out = out
        self.kmsg_fd: int | None = None
        self.echo_below = 0          # levels below this the kernel prints to the console
        self.restore: tuple[str, str] | None = None
        self.warnings: list[str] = []

    def open_kmsg(self, path: str = KMSG, sysctl: str | None = None) -> None:
        """Start copying lines to the kernel log (after devtmpfs is up).

        `sysctl` is the /proc/sys/kernel directory (for printk and printk_devkmsg)."""
        try:
            self.kmsg_fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError:
            self.kmsg_fd = None
            return
        if sysctl is None:
            return
        mode = _read(sysctl + "/printk_devkmsg")
        if mode == "ratelimit" and _write(sysctl + "/printk_devkmsg", "on"):
            self.restore = (sysctl + "/printk_devkmsg", mode)
            mode = "on"
        levels = (_read(sysctl + "/printk") or "").split()
        if mode == "on" and levels and levels[0].isdigit():
            self.echo_below = int(levels[0])

    def close(self) -> None:
        """Stop writing to kmsg and give printk_devkmsg back its setting."""
        if self.restore is not None:
            _write(*self.restore)
            self.restore = None
        self.echo_below = 0
        if self.kmsg_fd is not None:
            try:
                os.close(self.kmsg_fd)
            except OSError:
                pass
            self.kmsg_fd = None

    def _kmsg(self, level: int, text: str) -> None:
        if self.kmsg_fd is None:
            return
        for line in text.splitlines() or [""]:
            data = f"<{level}>{PREFIX}{line}"[:KMSG_MAX] + "\n"
            try:
                os.write(self.kmsg_fd, data.encode("utf-8", "replace"))
            except OSError:
                pass

    def _console(self, text: str) -> None:
        out = self.out or sys.stdout
        try:
            for line in text.splitlines() or [""]:
                out.write(PREFIX + line + "\n")
            out.flush()
        except (OSError, ValueError, AttributeError):
            pass

    def emit(self, level: int, text: str, console: bool) -> None:
        self._kmsg(level, text)
        if console and not (self.kmsg_fd is not None and level < self.echo_below):
            self._console(text)

    def info(self, text: str) -> None:
        self.emit(INFO, text, not self.quiet)

    def debug(self, text: str) -> None:
        if self.verbose:
            self.emit(DEBUG, text, True)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.emit(WARN, "warning: " + text, not self.quiet)

    def error(self, text: str) -> None:
        """Always reaches the console: the user must see why the boot stopped."""
        self.warnings.append(text)
        self.emit(ERR, text, True)

    __call__ = info

    def stage(self, name: str, ms: float) -> None:
        self.info(STAGE_LINE.format(name=name, ms=ms))

    def costs(self, summary: str) -> None:
        self.info(COSTS_LINE.format(summary=summary))

    def starting(self, init: str, ms: float) -> None:
        self.info(STARTING_LINE.format(init=init, ms=ms))


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value + "\n")   # printk_devkmsg refuses a value without its newline
        return True
    except OSError:
        return False
