"""Where a file on a FAT filesystem lies on its device.

A persistence image on the live stick's FAT (`/persistence.img`) is written
through the block device, a loop device over the byte range its clusters
occupy, when those clusters are one run: the FAT itself stays mounted
read-only, so its dirty bit is never set and pulling the stick without a
shutdown leaves nothing for fsck to repair (the ext4 inside has its journal).
Only FAT16 and FAT32 (a stick's FAT12 holds no persistence image), reads only."""
from __future__ import annotations

import struct

from liveinit.fsprobe import _dec, _fat_geometry, _utf16

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import BinaryIO

ENTRY = 32                 # bytes per directory entry
ATTR_LFN = 0x0F
ATTR_DIR = 0x10
ATTR_VOLUME = 0x08
DELETED = 0xE5
LOWER_BASE, LOWER_EXT = 0x08, 0x10   # NT's case flags of a short name (byte 12)
FAT32_EOC = 0x0FFFFFF8     # an entry at or above this ends a chain
FAT16_EOC = 0xFFF8
MAX_DIR_CLUSTERS = 4096    # a directory longer than this is corrupt (a loop in its chain)


class _Fat:
    """The geometry of the FAT on an open device, and reads of its clusters and chains."""

    def __init__(self, f: BinaryIO, bs: bytes) -> None:
        self.f = f
        self.sector = struct.unpack_from("<H", bs, 11)[0]
        self.cluster = bs[13] * self.sector
        reserved, fats = struct.unpack_from("<H", bs, 14)[0], bs[16]
        root_entries = struct.unpack_from("<H", bs, 17)[0]
        fat16_len, fat32_len = struct.unpack_from("<H", bs, 22)[0], struct.unpack_from("<I", bs, 36)[0]
        self.fat32 = fat16_len == 0
        self.fat_offset = reserved * self.sector
        root_dir = reserved + fats * (fat16_len or fat32_len)
        self.root_offset = root_dir * self.sector            # FAT16: the fixed root directory
        self.root_size = root_entries * ENTRY
        self.data = root_dir * self.sector + (self.root_size + self.sector - 1) // self.sector * self.sector
        self.root_cluster = struct.unpack_from("<I", bs, 44)[0] if self.fat32 else 0
        self.entry = 4 if self.fat32 else 2
        self.eoc = FAT32_EOC if self.fat32 else FAT16_EOC

    def read(self, offset: int, n: int) -> bytes:
        self.f.seek(offset)
        return self.f.read(n)

    def entries(self, first: int, count: int) -> tuple[int, ...]:
        """FAT entries first .. first+count-1."""
        raw = self.read(self.fat_offset + first * self.entry, count * self.entry)
        if len(raw) < count * self.entry:
            raise ValueError("the FAT ends early")
        mask = 0x0FFFFFFF if self.fat32 else 0xFFFF
        return tuple(e & mask for e in struct.unpack(f"<{count}{'I' if self.fat32 else 'H'}", raw))

    def offset(self, cluster: int) -> int:
        return self.data + (cluster - 2) * self.cluster

    def directory(self, cluster: int) -> bytes:
        """A directory's entries (cluster 0: FAT16's fixed root)."""
        if cluster == 0:
            return self.read(self.root_offset, self.root_size)
        out = []
        for _ in range(MAX_DIR_CLUSTERS):
            out.append(self.read(self.offset(cluster), self.cluster))
            cluster = self.entries(cluster, 1)[0]
            if cluster >= self.eoc or cluster < 2:
                return b"".join(out)
        raise ValueError("a directory's cluster chain does not end")


def _names(data: bytes) -> list[tuple[str, int, int, int]]:
    """(name, attributes, first cluster, size) of a directory's live entries; the long
    name when there is one, else the 8.3 name with its case flags applied."""
    out = []
    lfn: dict[int, bytes] = {}
    for i in range(0, len(data) - ENTRY + 1, ENTRY):
        e = data[i:i + ENTRY]
        if e[0] == 0:
            break
        attr = e[11]
        if e[0] == DELETED:
            lfn = {}
            continue
        if attr & 0x3F == ATTR_LFN:
            lfn[e[0] & 0x1F] = e[1:11] + e[14:26] + e[28:32]
            continue
        if attr & ATTR_VOLUME:
            lfn = {}
            continue
        if lfn:
            # fsprobe's decoder: the image's Python carries no utf-16 codec
            name = _dec(_utf16(b"".join(lfn[k] for k in sorted(lfn)), be=False))
        else:
            base, ext = _dec(e[0:8].rstrip(b" ")), _dec(e[8:11].rstrip(b" "))
            if e[0] == 0x05:
                base = "\xe5" + base[1:]
            base = base.lower() if e[12] & LOWER_BASE else base
            ext = ext.lower() if e[12] & LOWER_EXT else ext
            name = base + ("." + ext if ext else "")
        lfn = {}
        cluster = struct.unpack_from("<H", e, 20)[0] << 16 | struct.unpack_from("<H", e, 26)[0]
        out.append((name, attr, cluster, struct.unpack_from("<I", e, 28)[0]))
    return out


def extent(device: str, path: str) -> tuple[int, int] | str:
    """(byte offset on `device`, size) of the file `path` on the FAT filesystem
    `device` holds, when the file's clusters are one contiguous run; else a
    sentence saying why not. The lookup ignores case, as FAT does."""
    try:
        return _extent(device, path)
    except (OSError, ValueError, LookupError, struct.error) as e:   # unreadable or corrupt
        return f"cannot read {path} on {device}: {e}"


def _extent(device: str, path: str) -> tuple[int, int] | str:
    with open(device, "rb") as f:
        bs = f.read(512)
        if len(bs) < 512 or _fat_geometry(bs) is None:
            return f"{device} holds no FAT filesystem"
        fat = _Fat(f, bs)
        if not fat.cluster:
            return f"{device}: a FAT with no cluster size"
        cluster, size, attr = fat.root_cluster, 0, ATTR_DIR
        parts = [p for p in path.split("/") if p]
        for depth, part in enumerate(parts):
            if not attr & ATTR_DIR:
                return f"{'/'.join(parts[:depth])} is not a directory"
            for name, kind, first, length in _names(fat.directory(cluster)):
                if name.lower() == part.lower():
                    cluster, size, attr = first, length, kind
                    break
            else:
                return f"no {part} in /{'/'.join(parts[:depth])}"
        if attr & ATTR_DIR or not parts:
            return f"{path} is a directory"
        if size == 0 or cluster < 2:
            return f"{path} is empty"
        count = -(-size // fat.cluster)
        chain = fat.entries(cluster, count)
        for i, nxt in enumerate(chain[:-1]):
            if nxt != cluster + i + 1:
                return (f"{path} is fragmented: cluster {cluster + i} is followed by {nxt}, "
                        f"not {cluster + i + 1}")
        if chain[-1] < fat.eoc:
            return f"{path}'s cluster chain goes on past its size"
        return fat.offset(cluster), size
