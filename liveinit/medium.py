"""Whether the live medium is still there: after it was found, it may be
ejected (a CD: the node stays, reads fail with ENOMEDIUM), unplugged (a
stick: its /sys/class/block entry goes) or start failing (EIO). The stages
that read it ask `gone` when a read fails, and raise `MediumLost` so that
the boot searches for it again instead of opening the shell."""
from __future__ import annotations

import os

from liveinit.contract import MEDIUM
from liveinit.emergency import MediumLost

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.rootfind import Found

MNT_DETACH = 2      # as in syscalls.py
PROBE_BYTES = 4096


def gone(m: Machine, device: str) -> str | None:
    """Why the medium `device` (/dev/NAME) cannot be used any more, in words; None if it reads."""
    name = os.path.basename(device)
    if not m.exists("/sys/class/block"):
        return None   # no sysfs to ask: cannot tell
    if not m.exists("/sys/class/block/" + name):
        return f"{device} is gone (unplugged or removed)"
    try:
        fd = os.open(m.path(device), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return f"{device} cannot be opened ({_words(e)}): ejected?"
    try:
        if not os.pread(fd, PROBE_BYTES, 0):
            return f"{device} reads as empty: no medium in the drive (ejected?)"
    except OSError as e:
        return f"{device} cannot be read ({_words(e)}): ejected or failing?"
    finally:
        os.close(fd)
    return None


def _words(e: OSError) -> str:
    import errno
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}" + (f", {name}" if name else "")


def lost(m: Machine, found: Found, what: str, error: BaseException) -> MediumLost | None:
    """A MediumLost for a failure while `what`, when the medium is what failed; else None."""
    if found.medium is None:
        return None
    why = gone(m, found.device)
    if why is None:
        return None
    return MediumLost(f"the live medium went away while {what}: {why} ({error})",
                      "re-insert the medium: liveinit searches for it again until rootdelay= ends")


def forget(m: Machine, found: Found, log: Log) -> None:
    """Let go of a lost medium's mount (lazily: nothing can read it any more)."""
    if found.medium is None:
        return
    try:
        m.sys.umount2(m.path(found.medium or MEDIUM), MNT_DETACH)
    except OSError as e:
        log.debug(f"cannot detach {found.medium}: {e}")
