"""Identify the block layers fsprobe does not: LUKS (1 and 2), LVM2 physical
volumes and Linux md RAID members (superblocks 0.90, 1.0, 1.1, 1.2).

`probe(path)` answers with blkid's keys for these formats (`blkid -p -o export`:
TYPE crypto_LUKS / LVM2_member / linux_raid_member, VERSION, UUID, LABEL,
UUID_SUB), reading at most a few sectors at the start and the end. Checksums
are not verified except LVM's label CRC, which blkid checks too."""
from __future__ import annotations

import os
import struct
from binascii import crc32

LUKS_MAGIC = b"LUKS\xba\xbe"
LVM_LABEL = b"LABELONE"
LVM_TYPE = b"LVM2 001"
MD_MAGIC = 0xA92B4EFC
MD_RESERVED = 64 * 1024         # 0.90: the superblock sits in the last 64 KiB-aligned 64 KiB
SECTOR = 512
READ = 8192


def _read(fd: int, offset: int, n: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError:
        return b""


def _text(b: bytes) -> str:
    return b.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _uuid(b: bytes) -> str:
    """16 bytes as blkid prints an md UUID (8-4-4-4-12 hex)."""
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _luks(head: bytes) -> dict[str, str] | None:
    if head[:6] != LUKS_MAGIC or len(head) < 256:
        return None
    version = struct.unpack_from(">H", head, 6)[0]
    if version not in (1, 2):
        return None
    out = {"TYPE": "crypto_LUKS", "VERSION": str(version), "UUID": _text(head[168:208])}
    if version == 2:
        label = _text(head[24:72])
        if label:
            out["LABEL"] = label
        sub = _text(head[208:256])
        if sub:
            out["SUBSYSTEM"] = sub
    return out


def _lvm(head: bytes) -> dict[str, str] | None:
    for sector in range(4):
        at = sector * SECTOR
        if head[at:at + 8] != LVM_LABEL or head[at + 24:at + 32] != LVM_TYPE:
            continue
        if struct.unpack_from("<Q", head, at + 8)[0] != sector:
            continue
        if lvm_crc(head[at + 20:at + SECTOR]) != struct.unpack_from("<I", head, at + 16)[0]:
            continue
        pv = at + struct.unpack_from("<I", head, at + 20)[0]
        raw = head[pv:pv + 32].decode("ascii", "replace")
        parts, i = [], 0
        for n in (6, 4, 4, 4, 4, 4, 6):
            parts.append(raw[i:i + n])
            i += n
        return {"TYPE": "LVM2_member", "VERSION": "LVM2 001", "UUID": "-".join(parts)}
    return None


def lvm_crc(data: bytes, initial: int = 0xF597A6CF) -> int:
    """LVM's label checksum: CRC-32 (reflected 0xEDB88320) from `initial`, no final inversion."""
    return crc32(data, initial ^ 0xFFFFFFFF) ^ 0xFFFFFFFF


def _md1(sb: bytes, sb_offset_sectors: int, version: str) -> dict[str, str] | None:
    if len(sb) < 256 or struct.unpack_from("<II", sb, 0) != (MD_MAGIC, 1):
        return None
    if struct.unpack_from("<Q", sb, 144)[0] != sb_offset_sectors:
        return None
    out = {"TYPE": "linux_raid_member", "VERSION": version, "UUID": _uuid(sb[16:32]),
           "UUID_SUB": _uuid(sb[168:184])}
    label = _text(sb[32:64])
    if label:
        out["LABEL"] = label
    return out


def _md090(sb: bytes) -> dict[str, str] | None:
    if len(sb) < 64 or struct.unpack_from("<II", sb, 0) != (MD_MAGIC, 0):
        return None
    u = sb[20:24] + sb[52:64]
    return {"TYPE": "linux_raid_member", "VERSION": "0.90.0", "UUID": _uuid(u)}


def probe_fd(fd: int, size: int) -> dict[str, str]:
    """blkid's keys for the layer on an open device of `size` bytes, or {}."""
    head = _read(fd, 0, READ + 4096)
    found = _luks(head) or _lvm(head)
    if found:
        return found
    for off, version in ((4096, "1.2"), (0, "1.1")):
        r = _md1(head[off:off + 4096], off // SECTOR, version)
        if r:
            return r
    if size >= 16 * 4096:
        sect = ((size // SECTOR) - 16) & ~7   # 1.0: 8 KiB from the end, 4 KiB aligned
        r = _md1(_read(fd, sect * SECTOR, 4096), sect, "1.0")
        if r:
            return r
        at = (size & ~(MD_RESERVED - 1)) - MD_RESERVED   # 0.90
        if at > 0:
            r = _md090(_read(fd, at, 4096))
            if r:
                return r
    return {}


def probe(path: str) -> dict[str, str]:
    """blkid's keys for the layer at `path` (device or image file), or {}; raises OSError
    when it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        return probe_fd(fd, size)
    finally:
        os.close(fd)


def norm_uuid(text: str) -> str:
    """A UUID in any spelling (blkid's dashes, mdadm's colons, a `luks-` prefix) as bare lower hex."""
    text = text.lower()
    if text.startswith("luks-"):
        text = text[5:]
    return "".join(c for c in text if c in "0123456789abcdef")


def md_level(path: str) -> int | None:
    """The RAID level of an md member (v1 superblocks at 4 KiB or 0; 0.90), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        for at in (4096, 0, ((size // SECTOR) - 16 & ~7) * SECTOR):
            sb = _read(fd, at, 256)
            if len(sb) >= 76 and struct.unpack_from("<II", sb, 0) == (MD_MAGIC, 1):
                return struct.unpack_from("<i", sb, 72)[0]
        sb = _read(fd, (size & ~(MD_RESERVED - 1)) - MD_RESERVED, 64)
        if len(sb) >= 32 and struct.unpack_from("<II", sb, 0) == (MD_MAGIC, 0):
            return struct.unpack_from("<i", sb, 28)[0]
    finally:
        os.close(fd)
    return None
