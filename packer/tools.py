"""One way to run an external tool from the packer.

`run()` starts the program and, when it is missing or fails, raises
`packer.errors.CommandError` naming the tool, what it was doing, its exit
status and the last lines of its stderr, with a hint: which Debian package
provides a missing tool, else the command line to run by hand."""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

from packer.errors import CommandError

STDERR_TAIL_LINES = 5

# Program -> the Debian package that provides it (the host tools the packer,
# the image builder and the tests call).
PACKAGES: dict[str, str] = {
    "apt-cache": "apt", "apt-get": "apt", "dpkg": "dpkg",
    "busybox": "busybox-static", "cpio": "cpio", "bsdtar": "libarchive-tools",
    "zstd": "zstd", "lz4": "lz4", "xz": "xz-utils", "gzip": "gzip",
    "mksquashfs": "squashfs-tools", "unsquashfs": "squashfs-tools", "mkfs.erofs": "erofs-utils",
    "xorriso": "xorriso", "grub-mkimage": "grub-common", "mkfs.vfat": "dosfstools",
    "mmd": "mtools", "mcopy": "mtools", "depmod": "kmod", "modprobe": "kmod", "ldconfig": "libc-bin",
    "env": "coreutils", "python3": "python3", "python3.11": "python3.11",
    "qemu-system-x86_64": "qemu-system-x86",
}


class ToolMissing(CommandError):
    """The program is not installed (the hint names its Debian package)."""


def package_for(tool: str) -> str | None:
    """The Debian package that provides `tool` (a name or a path), if known."""
    return PACKAGES.get(os.path.basename(tool))


def _missing(tool: str, what: str) -> ToolMissing:
    pkg = package_for(tool)
    hint = (f"apt-get install {pkg}" if pkg
            else f"install the package that provides {os.path.basename(tool)} (apt-file search {tool})")
    return ToolMissing(f"{tool} is not installed (needed to {what})", hint=hint)


def _status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _tail(stderr: bytes | str | None, stdout: bytes | str | None) -> list[str]:
    text = stderr or stdout or ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return lines[-STDERR_TAIL_LINES:]


def run(argv: list[str], what: str, *, input: bytes | bytearray | str | None = None,
        cwd: Path | str | None = None, capture: bool = True, env: dict[str, str] | None = None,
        text: bool = False) -> subprocess.CompletedProcess:
    """Run `argv` (`what`: what it does, as a verb phrase: "build the squashfs
    of ROOT") and return the finished process; raise CommandError when the
    program is missing (ToolMissing), cannot start or exits non-zero.

    `capture` keeps stdout and stderr (bytes, or str with `text`); without it
    stdout is dropped and only stderr is kept for the error message."""
    tool = str(argv[0])
    if os.sep in tool:
        if not os.path.exists(tool):
            raise _missing(tool, what)
    elif shutil.which(tool, path=(env or os.environ).get("PATH", os.defpath)) is None:
        raise _missing(tool, what)
    if isinstance(input, str) and not text:
        input = input.encode()
    try:
        proc = subprocess.run([str(a) for a in argv], input=input, cwd=cwd, env=env, text=text,
                              stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
    except FileNotFoundError as e:
        if cwd is not None and not Path(cwd).is_dir():
            raise CommandError(f"cannot run {tool} to {what}: directory {cwd} does not exist") from None
        raise _missing(tool, what) from e
    except OSError as e:
        raise CommandError(f"cannot run {tool} to {what}: {e.strerror}",
                           hint=f"is {tool} an executable for this machine?") from None
    if proc.returncode != 0:
        tail = _tail(proc.stderr, proc.stdout if capture else None)
        msg = f"{os.path.basename(tool)} failed to {what} ({_status(proc.returncode)})"
        if tail:
            msg += ":\n    " + "\n    ".join(tail)
        raise CommandError(msg, hint="run it by hand to see everything: " + shlex.join(map(str, argv)))
    return proc
