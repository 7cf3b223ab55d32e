"""`liveinit probe FILE...`: identify devices or image files like `blkid -p -o export`.

The same superblock reader the runtime uses at boot (liveinit.fsprobe), so
what this prints is what the initramfs will see."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

from liveinit import fsprobe
from packer.errors import CommandError

EXIT_NOTHING = 2          # blkid's status when nothing was recognised
EXPORT_ESCAPED = " \\\"'$`<>"


def export_value(value: str) -> str:
    """A value escaped the way `blkid -o export` prints it (its safe_print)."""
    out = []
    for ch in os.fsencode(value):
        if ch >= 128:
            out.append("M-")
            ch -= 128
        if ch < 32 or ch == 0x7F:
            out.append("^")
            ch ^= 0x40
        elif chr(ch) in EXPORT_ESCAPED:
            out.append("\\")
        out.append(chr(ch))
    return "".join(out)


def _sysfs_partition(path: str) -> tuple[str, int] | None:
    """(parent disk node, partition number) when `path` is a partition device."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if (st.st_mode & 0o170000) != 0o060000:
        return None
    sysdir = f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    try:
        with open(f"{sysdir}/partition") as f:
            number = int(f.read())
        disk = os.path.basename(os.path.dirname(os.path.realpath(sysdir)))
    except (OSError, ValueError):
        return None
    return f"/dev/{disk}", number


def identify(path: str, offset: int = 0, size: int | None = None) -> dict[str, str]:
    """probe() plus, for a partition device, its PART_ENTRY_* keys from the parent disk."""
    part = _sysfs_partition(path) if not offset and size is None else None
    try:
        keys = fsprobe.probe(path, offset, size, wholedisk=part is None)
    except fsprobe.ProbeError as e:
        raise CommandError(e.strerror or str(e), hint="give a readable block device or image file") from None
    if part is not None and keys is not None:
        with contextlib.suppress(fsprobe.ProbeError):
            keys.update(fsprobe.partition_entry(*part))
    return keys


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="block device or image file")
    parser.add_argument("-O", "--offset", type=int, default=0, help="probe at this byte offset")
    parser.add_argument("-S", "--size", type=int, default=None, help="probe only this many bytes")


def run(args: argparse.Namespace) -> int:
    for i, path in enumerate(args.files):
        keys = identify(path, args.offset, args.size)
        if not keys:
            # blkid -p stops at the first file it cannot identify.
            return EXIT_NOTHING
        if i:
            sys.stdout.write("\n")
        lines = [f"DEVNAME={path}"] + [f"{k}={export_value(v)}" for k, v in keys.items()]
        sys.stdout.write("\n".join(lines) + "\n")
    return 0
