"""Failures and shells: `BootFailure(message, hint)`, the FAILED/hint lines,
and the emergency or break-point shell on the console (busybox sh when the
image has one, else an interactive Python prompt)."""
from __future__ import annotations

import os

from liveinit.contract import FAILED_LINE, HINT_LINE, SHELL_LINE

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.log import Log
    from liveinit.machine import Machine

SHELLS = ("/bin/busybox", "/bin/sh", "/usr/bin/busybox")


class BootFailure(Exception):
    """A boot stage failed in a way the user can act on."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


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


def shell(m: Machine, log: Log, why: str) -> None:
    """Announce and open the emergency (or break-point) shell; never raises."""
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
