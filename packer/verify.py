"""Medium checksums on the host: `liveinit image` and `liveinit usb` write
live/SHA256SUMS (contract.CHECKSUMS_FILE: every file of the medium, names
relative to its root); `liveinit verify ISO|DEVICE|DIR` checks a medium
against it with the runtime's own checker (liveinit.verify.check_tree), so
the boot-time check (liveinit.check) and this one cannot disagree.

An ISO (or a device holding one: a CD, a stick written with the hybrid
ISO) is read with xorriso, a stick with a FAT partition with mtools; no
mount, no root."""
from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from liveinit import sha256sums
from liveinit import verify as checker
from liveinit.contract import CHECKSUMS_FILE
from packer import tools
from packer.errors import CommandError

CHUNK = 1 << 20
SUMS_PATH = CHECKSUMS_FILE.lstrip("/")
SECTOR = 512


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sums_text(files: dict[str, Path]) -> str:
    """SHA256SUMS text for medium path -> source file (the sums file itself left out)."""
    return sha256sums.render({name.lstrip("/"): digest(src) for name, src in files.items()
                              if name.lstrip("/") != SUMS_PATH})


def write_sums(tree: Path, skip: tuple[str, ...] = ()) -> Path:
    """Write tree/live/SHA256SUMS listing every file under `tree` but `skip`
    (files the ISO writer changes: isolinux.bin gets its boot-info table)."""
    files = {str(p.relative_to(tree)): p for p in sorted(tree.rglob("*"))
             if p.is_file() and not p.is_symlink() and str(p.relative_to(tree)) not in skip}
    out = tree / SUMS_PATH
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(sums_text(files))
    return out


def _fat_offset(target: Path) -> int | None:
    """Byte offset of the first FAT partition of a disk (image), from sfdisk's table."""
    try:
        out = tools.run(["sfdisk", "--json", str(target)], f"read the partition table of {target}",
                        text=True).stdout
    except CommandError:
        return None
    table = json.loads(out).get("partitiontable", {})
    sector = int(table.get("sectorsize", SECTOR))
    for part in table.get("partitions", []):
        if str(part.get("type", "")).lower() in ("c", "b", "e", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"):
            return int(part["start"]) * sector
    return None


def unpack(target: Path, dest: Path) -> Path:
    """The medium's files under `dest` (or `target` itself when it is a directory)."""
    if target.is_dir():
        return target
    if not target.exists():
        raise CommandError(f"{target}: no such file, device or directory",
                           hint="give an ISO, a device (/dev/sdb, /dev/sr0) or a directory holding a medium")
    from packer.cmd_probe import identify
    kind = identify(str(target)).get("TYPE")
    if kind in ("iso9660", "udf"):
        tools.run(["xorriso", "-osirrox", "on", "-indev", str(target), "-extract", "/", str(dest)],
                  f"read the files of {target}")
        return dest
    offset = 0 if kind == "vfat" else _fat_offset(target)
    if offset is None:
        raise CommandError(f"{target} holds neither an ISO 9660 file system nor a FAT partition "
                           f"(found {kind or 'nothing recognisable'})",
                           hint="give a medium written by `liveinit image` or `liveinit usb`")
    tools.run(["mcopy", "-s", "-n", "-i", f"{target}@@{offset}", "::/", str(dest)],
              f"read the files of {target}'s FAT partition")
    return dest


def verify(target: Path, progress: Callable[[str], None] | None = None) -> checker.Result:
    """Check the medium at `target` against its SHA256SUMS; CommandError when it has none."""
    with tempfile.TemporaryDirectory(prefix="liveinit-verify-") as tmp:
        root = unpack(Path(target), Path(tmp))
        try:
            sums = checker.read_sums(str(root))
        except FileNotFoundError:
            raise CommandError(f"{target} has no {SUMS_PATH}: nothing to check against",
                               hint="media made by `liveinit image` / `liveinit usb` carry one") from None
        except ValueError as e:
            raise CommandError(f"{target}: {SUMS_PATH} is damaged: {e}",
                               hint="the medium itself is damaged: write it again") from None
        return checker.check_tree(str(root), sums, progress)
