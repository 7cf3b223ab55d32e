"""The first open of an encrypted persistence partition that holds nothing yet: make its ext4.

`liveinit usb --persistence-encrypt` on a host without device-mapper can write
the LUKS2 header (cryptsetup luksFormat only writes bytes) but cannot open the
volume to make a file system inside it. It marks the header instead: LUKS2
subsystem contract.PERSISTENCE_FRESH. When the runtime has opened such a
volume (stack's persistence, the passphrase typed) and finds no file system
inside, it runs the image's mke2fs on /dev/mapper/... and then clears the
mark with `cryptsetup config`, so no later boot formats it again: a volume
without the mark whose contents are unrecognised is reported, never formatted.
The image carries mke2fs only when `liveinit usb` needed this (+629 KiB
uncompressed next to cryptsetup's closure: mke2fs, libext2fs, libe2p, libcom_err)."""
from __future__ import annotations

import time

from liveinit import command
from liveinit.contract import PERSISTENCE_FRESH, PERSISTENCE_LABEL

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.log import Log
    from liveinit.machine import Machine

    Runner = Callable[..., command.Result]

MKFS_TIMEOUT = 600.0     # seconds: mke2fs zeroes the journal through dm-crypt (a slow stick: minutes)


def is_fresh(info: dict[str, str]) -> bool:
    """Whether a LUKS volume's identity (layerprobe) carries the writer's mark."""
    return info.get("TYPE") == "crypto_LUKS" and info.get("SUBSYSTEM") == PERSISTENCE_FRESH


def format_fresh(m: Machine, node: str, info: dict[str, str], mapper: str, log: Log,
                 run: Runner | None = None) -> str:
    """mke2fs on the opened volume `mapper` of the marked LUKS device `node`, then the
    mark cleared; '' when done, else why not (the caller falls back to RAM)."""
    run = run or command.run
    mke2fs, cryptsetup = command.find(m.root, "mke2fs"), command.find(m.root, "cryptsetup")
    if mke2fs is None or cryptsetup is None:
        return ("mke2fs is not in the image to make its file system (write the stick with "
                "`liveinit usb --persistence-encrypt`, which packs it, or format it by hand: "
                "docs/PERSISTENCE.md)")
    label = info.get("LABEL") or PERSISTENCE_LABEL
    begun = time.monotonic()
    r = run([mke2fs, "-q", "-t", "ext4", "-L", label, m.path(mapper)], timeout=MKFS_TIMEOUT)
    if r.rc not in (0, None):     # None: reaped by PID 1 first; the caller probes what it made
        return f"mke2fs failed (exit {r.rc}): {r.out}"
    ms = (time.monotonic() - begun) * 1000
    # `config` rewrites label and subsystem together: keep the label, drop the mark.
    r = run([cryptsetup, "config", "--label", label, "--subsystem", "", m.path(node)])
    if r.rc not in (0, None):    # harmless: a volume holding a file system is never formatted
        log.warn(f"persistence: {node}: could not clear the first-open mark (exit {r.rc}): {r.out}")
    log.info(f"persistence: {node}: first open: made ext4 '{label}' inside in {ms:.0f} ms")
    return ""
