"""Ask for a passphrase on the console: every active console at once (the
serial line and the screen's keyboard), echo off, bounded in time.

The answer is read into a preallocated `bytearray` (os.readv, no immutable
copies of the secret), handed to the caller, who passes it to cryptsetup on
a pipe and then `wipe`s it. It is never written to a file. The console
keymap (liveinit/keymap.py) is loaded before the first prompt, so a
passphrase with layout-dependent characters types as on the user's keyboard."""
from __future__ import annotations

import os
import select
import time

from liveinit.contract import PASSPHRASE_PROMPT

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.keymap import Keymaps
    from liveinit.log import Log
    from liveinit.machine import Machine

ACTIVE = "/sys/class/tty/console/active"
TIMEOUT = 300.0        # seconds per try: nobody at the keyboard must not hang the boot
MAX_LEN = 512          # cryptsetup's interactive limit is 512 characters too


def consoles(m: Machine) -> list[str]:
    """The /dev nodes of the active consoles (console= order), /dev/console when unknown."""
    names = (m.read(ACTIVE) or "").split()
    out = []
    for n in names:
        p = "/dev/" + n
        if m.exists(p) and p not in out:
            out.append(p)
    return out or ["/dev/console"]


def wipe(secret: bytearray | None) -> None:
    """Overwrite a secret in place."""
    if secret is not None:
        for i in range(len(secret)):
            secret[i] = 0


class _Tty:
    """One console opened for the prompt: echo off while asking, restored after."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
        self.saved: list | None = None
        self.buf = bytearray(MAX_LEN + 2)
        self.n = 0
        try:
            import termios
            attrs = termios.tcgetattr(self.fd)
            self.saved = [a[:] if isinstance(a, list) else a for a in attrs]
            attrs[3] = (attrs[3] & ~(termios.ECHO | termios.ECHOE | termios.ECHOK)) | termios.ICANON
            attrs[0] |= termios.ICRNL
            termios.tcsetattr(self.fd, termios.TCSAFLUSH, attrs)
        except (ImportError, OSError):
            pass   # not a terminal (tests with a pipe): read as it comes

    def write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode())
        except OSError:
            pass

    def read(self) -> bool:
        """Read what is there; True once a whole line (or EOF) is in `buf`."""
        try:
            view = memoryview(self.buf)[self.n:]
            got = os.readv(self.fd, [view]) if len(view) else 0
        except BlockingIOError:
            return False
        except OSError:
            return True
        if got == 0:
            return True
        self.n += got
        return any(self.buf[i] in (10, 13) for i in range(self.n - got, self.n)) or self.n >= MAX_LEN

    def line(self) -> bytearray:
        """The passphrase typed (up to the first newline), in a new bytearray; buf is wiped."""
        end = self.n
        for i in range(self.n):
            if self.buf[i] in (10, 13):
                end = i
                break
        out = bytearray(self.buf[:end])
        wipe(self.buf)
        return out

    def close(self) -> None:
        if self.saved is not None:
            try:
                import termios
                termios.tcsetattr(self.fd, termios.TCSANOW, self.saved)
            except OSError:
                pass
        wipe(self.buf)
        os.close(self.fd)


class Prompt:
    """Asks passphrases on the machine's consoles (`ttys`: the nodes, real paths)."""

    def __init__(self, m: Machine, log: Log, keymaps: Keymaps | None = None,
                 ttys: list[str] | None = None, timeout: float = TIMEOUT) -> None:
        self.m = m
        self.log = log
        self.keymaps = keymaps
        self.ttys = ttys
        self.timeout = timeout

    def ask(self, device: str, what: str, timeout: float | None = None) -> bytearray | None:
        """The passphrase typed for `device` (described by `what`: its LUKS UUID
        or label); None when nobody answered in time or no console could be opened."""
        if self.keymaps is not None:
            self.log.info(self.keymaps.ensure())
        ttys: list[_Tty] = []
        for p in self.ttys or [self.m.path(c) for c in consoles(self.m)]:
            try:
                ttys.append(_Tty(p))
            except OSError as e:
                self.log.debug(f"passphrase: cannot open {p}: {e}")
        if not ttys:
            self.log.error("passphrase: no console to ask on")
            return None
        prompt = PASSPHRASE_PROMPT.format(device=device, what=what)
        try:
            for t in ttys:
                t.write("\n" + prompt)
            deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    for t in ttys:
                        t.write("\n")
                    return None
                ready, _, _ = select.select([t.fd for t in ttys], [], [], left)
                for t in ttys:
                    if t.fd in ready and t.read():
                        for other in ttys:
                            other.write("\n")
                        return t.line()
        finally:
            for t in ttys:
                t.close()
