"""Failures and shells: `BootFailure(message, hint)`, the FAILED/hint lines,
and the emergency or break-point shell on the console (busybox sh when the
image has one, else an interactive Python prompt).

The shell obeys a `ShellPolicy`: open (the default, as in dracut), gated by
a password baked at pack time (three tries), or disabled (rd.shell=0). A
locked shell says why, waits LOCKDOWN_PAUSE seconds so the messages can be
read, then does what rd.emergency= says: halt (the default), reboot or
power off."""
from __future__ import annotations

import os
import time

from liveinit.contract import (
    FAILED_LINE,
    HINT_LINE,
    LOCKDOWN_LINE,
    PREFIX,
    SHELL_LINE,
    SHELL_PASSWORD_PROMPT,
)
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.log import Log
    from liveinit.machine import Machine

SHELLS = ("/bin/busybox", "/bin/sh", "/usr/bin/busybox")
LOCKDOWN_PAUSE = 10.0       # seconds to read the failure before a locked shell's action
PASSWORD_TRIES = 3
# reboot(2) commands (as in syscalls.py, not imported: a broken ctypes must not lose the shell).
ACTIONS = {"reboot": 0x01234567, "poweroff": 0x4321FEDC, "halt": 0xCDEF0123}
DEFAULT_ACTION = "halt"


class ShellPolicy(Plain):
    """shell: False = no shell (rd.shell=0); action: what a locked shell does
    ("" = DEFAULT_ACTION); password_hash: a `$6$` crypt hash gating the shell, or ""."""

    __slots__ = ("shell", "action", "password_hash")
    shell: bool
    action: str
    password_hash: str
    _defaults = {"shell": True, "action": "", "password_hash": ""}


OPEN = ShellPolicy()


class BootFailure(Exception):
    """A boot stage failed in a way the user can act on."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class MediumLost(BootFailure):
    """The live medium went away (ejected, unplugged) or stopped reading after
    it was found: the boot searches for it again rather than opening the shell."""


def report(log: Log, failure: BootFailure) -> None:
    """Print the contract lines `FAILED: <message>` and `hint: <hint>`."""
    log.error(FAILED_LINE.format(message=failure.message))
    if failure.hint:
        log.error(HINT_LINE.format(hint=failure.hint))


def unexpected(stage: str, exc: BaseException) -> BootFailure:
    """A BootFailure for an exception nobody expected (a bug, or a very odd machine)."""
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        where = f" at {os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"
        tb = tb.tb_next
    return BootFailure(
        f"unexpected error in stage {stage}: {type(exc).__name__}: {exc}{where}",
        "this is a bug in liveinit or a machine it does not know; add `debug` to the "
        "kernel command line for more detail and report the lines above")


def run_shell(m: Machine, banner: str) -> None:
    """An interactive shell on the console; returns when the user leaves it.

    busybox/sh from the image, else Python's `code.interact` (imported only
    here: it costs, and is only needed when things went wrong)."""
    for cand in SHELLS:
        path = m.path(cand)
        if os.access(path, os.X_OK):
            argv = [path, "cttyhack", "sh"] if cand.endswith("busybox") else [path, "-i"]
            _spawn(path, argv)
            return
    import code

    def leave() -> None:
        raise SystemExit   # -S: no site, so no exit()/quit() builtins

    env = {"m": m, "os": os, "exit": leave, "quit": leave}
    try:
        code.interact(banner=banner + "\n(Python prompt: no shell in the image; "
                      "exit() or Ctrl-D to continue)", local=env, exitmsg="")
    except SystemExit:
        pass


def _spawn(path: str, argv: list[str]) -> None:
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.execv(path, argv)
        finally:
            os._exit(127)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:   # the SIGCHLD reaper got it first
            return
        except InterruptedError:
            continue


def lockdown(m: Machine, log: Log, action: str, why: str, pause: float = LOCKDOWN_PAUSE) -> None:
    """No shell: say why, wait `pause` s, then reboot/poweroff/halt. Returns
    only if the machine did not go down (a test's fake, or reboot(2) refused)."""
    action = action or DEFAULT_ACTION
    log.error(LOCKDOWN_LINE.format(why=why, action=action, seconds=pause))
    time.sleep(pause)
    try:
        m.sys.reboot(ACTIONS[action])
    except BaseException as e:
        log.error(f"cannot {action}: {e}")


def ask_password(log: Log, password_hash: str, read: Callable[[str], str | None] | None = None,
                 tries: int = PASSWORD_TRIES) -> bool:
    """Ask for the shell password up to `tries` times; True once it matches."""
    from liveinit import shellgate
    read = read or read_secret
    for n in range(tries, 0, -1):
        answer = read(PREFIX + SHELL_PASSWORD_PROMPT)
        if answer is None:   # no console to read from
            return False
        try:
            if shellgate.check(answer, password_hash):
                return True
        except ValueError as e:
            log.error(f"the baked shell password hash is unusable ({e}); the shell stays locked")
            return False
        log.error("wrong password" + (f"; {n - 1} more tries" if n > 1 else ""))
    return False


def read_secret(prompt: str) -> str | None:
    """One line from the console (fd 0) with echo off; None when it cannot be read."""
    try:
        os.write(1, prompt.encode())
    except OSError:
        return None
    old = None
    try:
        import termios
        old = termios.tcgetattr(0)
        new = list(old)
        new[3] &= ~termios.ECHO
        termios.tcsetattr(0, termios.TCSANOW, new)
    except Exception:
        old = None   # not a terminal (a serial line still reads fine)
    line = b""
    try:
        while not line.endswith((b"\n", b"\r")):
            chunk = os.read(0, 1)
            if not chunk:
                return None if not line else line.decode(errors="replace")
            line += chunk
    except OSError:
        return None
    finally:
        if old is not None:
            import termios
            termios.tcsetattr(0, termios.TCSANOW, old)
        try:
            os.write(1, b"\n")
        except OSError:
            pass
    return line.rstrip(b"\r\n").decode(errors="replace")


def shell(m: Machine, log: Log, why: str, policy: ShellPolicy = OPEN) -> None:
    """Announce and open the emergency (or break-point) shell as `policy`
    allows; never raises."""
    try:
        if not policy.shell:
            lockdown(m, log, policy.action, "the shell is disabled by rd.shell=0")
            return
        if policy.password_hash and not ask_password(log, policy.password_hash):
            lockdown(m, log, policy.action, f"{PASSWORD_TRIES} wrong passwords")
            return
    except BaseException as e:   # the lock must fail closed, never kill PID 1
        try:
            log.error(f"the shell lock failed: {type(e).__name__}: {e}")
        except BaseException:
            pass
        return
    log.emit(3, SHELL_LINE if not why.startswith("break") else f"{why}: shell", True)
    if why.startswith("break"):
        log.info("leave the shell to continue booting")
    else:
        log.info("leave the shell (exit / Ctrl-D) to retry")
    try:
        run_shell(m, f"liveinit: {why}")
    except BaseException as e:  # a shell that cannot start must not kill PID 1
        try:
            log.error(f"the shell failed: {type(e).__name__}: {e}")
        except BaseException:
            pass
