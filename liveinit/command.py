"""Run an external tool of the image (cryptsetup, lvm, mdadm) from PID 1.

Not `subprocess`: it imports selectors, signal (and so enum) and threading,
about 0.3 s under QEMU TCG. Here fork/exec with two pipes: the input is
written to the child's stdin (a passphrase never touches a file), stdout and
stderr come back together.

PID 1 reaps orphans on SIGCHLD (boot._reap); that handler could take our
child's exit status first. While a tool runs SIGCHLD is set to the default
action (when called from the main thread); should the status still be lost,
`rc` is None and the caller checks the tool's effect instead."""
from __future__ import annotations

import os
import time

TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
ENV = {"PATH": ":".join(TOOL_DIRS), "LANG": "C", "LC_ALL": "C",
       # No udev in the initramfs: libdevmapper makes /dev/mapper nodes itself.
       "DM_DISABLE_UDEV": "1", "LVM_SUPPRESS_FD_WARNINGS": "1"}
KILL_AFTER = 120.0     # seconds: a tool that hangs this long is killed


class Result:
    """rc: exit status (None when unknown: lost to the reaper, or killed); out: stdout+stderr."""

    __slots__ = ("rc", "out", "seconds")

    def __init__(self, rc: int | None, out: str, seconds: float) -> None:
        self.rc = rc
        self.out = out
        self.seconds = seconds


def find(root: str, name: str) -> str | None:
    """The path of tool `name` in the image under `root` ("/" at boot), or None."""
    for d in TOOL_DIRS:
        p = d + "/" + name
        real = p if root == "/" else root.rstrip("/") + p
        if os.access(real, os.X_OK):
            return p
    return None


def _sigchld(handler: object) -> object:
    try:
        import _signal
        return _signal.signal(_signal.SIGCHLD, handler)
    except (ImportError, ValueError, OSError):   # not the main thread
        return None


def run(argv: list[str], stdin: bytes = b"", timeout: float = KILL_AFTER) -> Result:
    """Run argv[0] with `stdin` on a pipe; its output and exit status."""
    import _signal
    begun = time.monotonic()
    old = _sigchld(_signal.SIG_DFL)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns into Python's code
        try:
            os.dup2(r_in, 0)
            os.dup2(w_out, 1)
            os.dup2(w_out, 2)
            os.closerange(3, 256)
            os.execve(argv[0], argv, ENV)
        finally:
            os._exit(127)
    os.close(r_in)
    os.close(w_out)
    try:
        if stdin:
            try:
                os.write(w_in, stdin)
            except BrokenPipeError:
                pass
        os.close(w_in)
        chunks: list[bytes] = []
        deadline = begun + timeout
        import select
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, 9)
                break
            ready, _, _ = select.select([r_out], [], [], left)
            if ready:
                b = os.read(r_out, 65536)
                if not b:
                    break
                chunks.append(b)
        os.close(r_out)
        rc: int | None
        why = ""
        try:
            _, status = os.waitpid(pid, 0)
            rc = os.waitstatus_to_exitcode(status)
            if rc < 0:
                why = f"killed by signal {-rc}" + (" (timed out)" if time.monotonic() >= deadline else "")
                rc = None
        except ChildProcessError:
            rc, why = None, "its exit status was lost"
    finally:
        if old is not None:
            _sigchld(old)
    out = b"".join(chunks).decode("utf-8", "replace").strip()
    return Result(rc, "; ".join(x for x in (out, why) if x), time.monotonic() - begun)
