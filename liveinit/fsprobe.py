"""Identify filesystems and partition tables by reading their superblocks.

`probe(path)` answers like `blkid -p -o export PATH` (util-linux 2.38) for
the formats below, without udev or libblkid: a probe reads a few sectors.
Values are `str`; bytes that are not UTF-8 are kept with `surrogateescape`
(`os.fsencode(value)` gives blkid's raw bytes back).

Filesystems: iso9660 (+Joliet), udf, ext2/ext3/ext4/jbd, vfat (FAT12/16/32),
exfat, squashfs (+squashfs3), erofs, btrfs, xfs, f2fs, swap.
Partition tables: dos (MBR, with logical partitions) and gpt (+ PMBR).

Like `blkid -p`, a device where two non-tolerant filesystem signatures are
found ("ambivalent result") is unknown: `{}`. Only iso9660 and udf may share
a device with another signature. Known differences from blkid: signatures of
formats not listed here (RAID, LVM, LUKS, ntfs, ...) are not seen, so they
neither identify nor make a result ambivalent; blkid's guesses about the
running kernel's ext drivers are fixed as on a host with ext2, ext4 and
ext4dev (an ext2 filesystem is "ext2", one flagged test_fs is "ext4dev");
an exFAT root directory is searched for its label over 10000 entries at most.
blkid 2.38 verifies no superblock checksum except GPT's CRCs, and neither
does this module. Each call opens and closes its own file descriptor.
"""
from __future__ import annotations

import os
import struct
from binascii import crc32

from liveinit.plain import Plain

SECTOR = 512
HEAD_SIZE = 69632          # one read covers MBR, GPT header, ext, vfat, iso VDs, btrfs
TINY_SIZE = 1440 * 1024    # blkid: "floppy" -- first result wins, no ambivalence check
MAX_READ = 1 << 24         # refuse absurd reads asked for by corrupt superblocks
CDROM_MAJOR = 11
BLKSSZGET = 0x1268

USAGE_FS = "filesystem"
USAGE_OTHER = "other"

_unpack_from = struct.unpack_from


class ProbeError(OSError):
    """The device or file could not be opened or read."""


class Partition(Plain):
    """One entry of a partition table; start and size in 512-byte sectors."""

    __slots__ = ("number", "start", "size", "type", "uuid", "name", "flags")
    number: int
    start: int
    size: int
    type: str        # blkid PART_ENTRY_TYPE: "0x83" (dos) or a GUID (gpt)
    uuid: str        # PARTUUID ("" when none)
    name: str        # PARTLABEL ("" when none)
    flags: int       # dos boot indicator or gpt attributes


class PartitionTable(Plain):
    """A disk's partition table as blkid reports it."""

    __slots__ = ("type", "uuid", "partitions")
    type: str        # "dos" | "gpt"
    uuid: str        # PTUUID ("" when none)
    partitions: tuple[Partition, ...]


# --- device access -----------------------------------------------------------

class _Dev:
    """A byte range of a file or block device, read with pread."""

    __slots__ = ("fd", "base", "size", "head", "ssz", "cdrom", "isblk")

    def __init__(self, fd: int, base: int, size: int, ssz: int, cdrom: bool, isblk: bool) -> None:
        self.fd, self.base, self.size, self.ssz, self.cdrom = fd, base, size, ssz, cdrom
        self.isblk = isblk
        self.head = self._pread(0, min(size, HEAD_SIZE))

    def _pread(self, off: int, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = os.pread(self.fd, n - len(out), self.base + off + len(out))
            if not chunk:
                break
            out += chunk
        return out

    def read(self, off: int, n: int) -> bytes | None:
        """`n` bytes at `off`, or None when the range is not all on the device."""
        if off < 0 or n < 0 or n > MAX_READ or off + n > self.size:
            return None
        if off + n <= len(self.head):
            return self.head[off:off + n]
        data = self._pread(off, n)
        return data if len(data) == n else None


def _sector_size(fd: int, rdev: int) -> int:
    """The block device's logical sector size: sysfs (the partition's disk
    holds the queue), else the BLKSSZGET ioctl. sysfs first because importing
    fcntl costs ~17 ms at boot under TCG."""
    base = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    for p in (base + "/queue/logical_block_size", base + "/../queue/logical_block_size"):
        try:
            with open(p, "rb") as f:
                return int(f.read()) or SECTOR
        except (OSError, ValueError):
            pass
    try:
        import fcntl
        return struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0] or SECTOR
    except OSError:
        return SECTOR


def _open(path: str, offset: int = 0, size: int | None = None) -> _Dev:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise ProbeError(e.errno, f"cannot open {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        total = os.lseek(fd, 0, os.SEEK_END)
        ssz, cdrom = SECTOR, False
        isblk = (st.st_mode & 0o170000) == 0o060000
        if isblk:
            cdrom = os.major(st.st_rdev) == CDROM_MAJOR
            ssz = _sector_size(fd, st.st_rdev)
        if offset < 0 or offset > total:
            raise ProbeError(22, f"offset {offset} is outside {path} ({total} bytes)")
        avail = total - offset
        if size is None or size > avail:
            size = avail
        return _Dev(fd, offset, max(size, 0), ssz, cdrom, isblk)
    except OSError as e:
        os.close(fd)
        if isinstance(e, ProbeError):
            raise
        raise ProbeError(e.errno, f"cannot read {path}: {e.strerror}") from None


# --- value helpers (blkid's trimming and encoding rules) --------------------

_SPACE = b" \t\n\v\f\r"


def _cstr(b: bytes) -> bytes:
    i = b.find(b"\0")
    return b if i < 0 else b[:i]


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _label(b: bytes) -> str | None:
    """blkid_probe_set_label: up to the first NUL, trailing space trimmed."""
    v = _cstr(b).rstrip(_SPACE)
    return _dec(v) if v else None


def _id_label(b: bytes) -> str | None:
    """blkid_probe_set_id_label: trimmed on both sides."""
    v = _cstr(b).rstrip(_SPACE).lstrip(_SPACE)
    return _dec(v) if v else None


def _utf16(b: bytes, be: bool, limit: int = 0) -> bytes:
    """util-linux ul_encode_to_utf8: UTF-16 to UTF-8 bytes, stopping at U+0000.

    Lone surrogates are encoded as 3-byte sequences like libblkid does;
    `limit` is the C buffer size (output stays below it)."""
    out = bytearray()
    n = len(b)
    i = 0
    while i + 2 <= n:
        c = (b[i] << 8 | b[i + 1]) if be else (b[i + 1] << 8 | b[i])
        i += 2
        if 0xD800 <= c <= 0xDBFF and i + 1 < n:
            c2 = (b[i] << 8 | b[i + 1]) if be else (b[i + 1] << 8 | b[i])
            if 0xDC00 <= c2 <= 0xDFFF:
                c = 0x10000 + ((c - 0xD800) << 10) + (c2 - 0xDC00)
                i += 2
        if c == 0:
            break
        if c < 0x80:
            enc = bytes((c,))
        elif c < 0x800:
            enc = bytes((0xC0 | c >> 6, 0x80 | c & 0x3F))
        elif c < 0x10000:
            enc = bytes((0xE0 | c >> 12, 0x80 | c >> 6 & 0x3F, 0x80 | c & 0x3F))
        else:
            enc = bytes((0xF0 | c >> 18, 0x80 | c >> 12 & 0x3F, 0x80 | c >> 6 & 0x3F, 0x80 | c & 0x3F))
        if limit and len(out) + len(enc) >= limit:
            break
        out += enc
    return bytes(out)


def _utf16_label(b: bytes, be: bool) -> str | None:
    v = _utf16(b, be).rstrip(_SPACE)
    return _dec(v) if v else None


def _utf16_id_label(b: bytes, be: bool) -> str | None:
    v = _utf16(b, be).rstrip(_SPACE).lstrip(_SPACE)
    return _dec(v) if v else None


def _uuid(b: bytes) -> str | None:
    """A DCE UUID as blkid prints it; None when all zero."""
    if not any(b):
        return None
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _guid(b: bytes) -> str:
    """An EFI GUID (first three fields little-endian) as a lowercase string."""
    return _uuid(b[3::-1] + b[5:3:-1] + b[7:5:-1] + b[8:16]) or "00000000-0000-0000-0000-000000000000"


def _put(d: dict[str, str], key: str, value: str | None) -> None:
    if value is not None:
        d[key] = value


def _pow2(n: int) -> bool:
    return n != 0 and n & (n - 1) == 0


# --- filesystems ---------------------------------------------------------------
# Each prober returns the keys its probefunc sets (in blkid's order) or None.

def _ext_super(dev: _Dev) -> bytes | None:
    sb = dev.read(1024, 1024)
    # blkid 2.38 does not verify the metadata_csum checksum of ext superblocks.
    if sb is None or sb[56:58] != b"\x53\xef":
        return None
    return sb


def _ext_info(sb: bytes, ver: int) -> dict[str, str]:
    d: dict[str, str] = {}
    if sb[120]:
        _put(d, "LABEL", _label(sb[120:136]))
    _put(d, "UUID", _uuid(sb[104:120]))
    fc, fi = _unpack_from("<II", sb, 92)
    if fc & 0x4:
        _put(d, "EXT_JOURNAL", _uuid(sb[208:224]))
    if ver != 2 and fi & ~0x12 & 0xFFFFFFFF == 0:
        d["SEC_TYPE"] = "ext2"
    d["VERSION"] = f"{_unpack_from('<I', sb, 76)[0]}.{_unpack_from('<H', sb, 62)[0]}"
    log = _unpack_from("<I", sb, 24)[0]
    if log < 32:
        d["BLOCK_SIZE"] = str((1024 << log) & 0xFFFFFFFF)
    return d


EXT2_RO_UNSUP = ~0x7 & 0xFFFFFFFF
EXT2_INCOMPAT_UNSUP = ~0x12 & 0xFFFFFFFF
EXT3_RO_UNSUP = ~0x7 & 0xFFFFFFFF
EXT3_INCOMPAT_UNSUP = ~0x16 & 0xFFFFFFFF


def _ext_features(dev: _Dev) -> tuple[bytes, int, int, int] | None:
    sb = _ext_super(dev)
    if sb is None:
        return None
    fc, fi, frc = _unpack_from("<III", sb, 92)
    return sb, fc, fi, frc


EXT2_FLAGS_TEST_FILESYS = 0x4

# blkid asks the running system which ext drivers exist; we answer as the
# util-linux 2.38 oracle does on our hosts (ext2, ext4 and ext4dev "supported"):
# a filesystem flagged for testing is ext4dev, ext2 stays ext2.


def _probe_ext4dev(dev: _Dev) -> dict[str, str] | None:
    f = _ext_features(dev)
    if f is None:
        return None
    sb, fc, fi, frc = f
    if fi & 0x8 or not _unpack_from("<I", sb, 352)[0] & EXT2_FLAGS_TEST_FILESYS:
        return None
    return _ext_info(sb, 4)


def _probe_ext4(dev: _Dev) -> dict[str, str] | None:
    f = _ext_features(dev)
    if f is None:
        return None
    sb, fc, fi, frc = f
    if fi & 0x8:
        return None
    if not (frc & EXT3_RO_UNSUP) and not (fi & EXT3_INCOMPAT_UNSUP):
        return None
    if _unpack_from("<I", sb, 352)[0] & EXT2_FLAGS_TEST_FILESYS:
        return None
    return _ext_info(sb, 4)


def _probe_ext3(dev: _Dev) -> dict[str, str] | None:
    f = _ext_features(dev)
    if f is None:
        return None
    sb, fc, fi, frc = f
    if not fc & 0x4 or frc & EXT3_RO_UNSUP or fi & EXT3_INCOMPAT_UNSUP:
        return None
    return _ext_info(sb, 3)


def _probe_ext2(dev: _Dev) -> dict[str, str] | None:
    f = _ext_features(dev)
    if f is None:
        return None
    sb, fc, fi, frc = f
    if fc & 0x4 or frc & EXT2_RO_UNSUP or fi & EXT2_INCOMPAT_UNSUP:
        return None
    return _ext_info(sb, 2)


def _probe_jbd(dev: _Dev) -> dict[str, str] | None:
    f = _ext_features(dev)
    if f is None or not f[2] & 0x8:
        return None
    return _ext_info(f[0], 2)


_FAT_MAGICS = ((0x52, b"MSWIN"), (0x52, b"FAT32   "), (0x36, b"MSDOS"), (0x36, b"FAT16   "),
               (0x36, b"FAT12   "), (0x36, b"FAT     "), (0, b"\xeb"), (0, b"\xe9"), (0x1FE, b"\x55\xaa"))
FAT12_MAX = 0xFF4
FAT16_MAX = 0xFFF4
FAT32_MAX = 0x0FFFFFF6
NO_NAME = b"NO NAME    "
U32 = 0xFFFFFFFF


def _fat_geometry(bs: bytes) -> tuple[int, int] | None:
    """(cluster_count, fat_size) when the boot sector is a valid FAT one."""
    magic_len = 0
    for off, magic in _FAT_MAGICS:
        if bs[off:off + len(magic)] == magic:
            magic_len = len(magic)
            break
    if not magic_len:
        return None
    if magic_len <= 2 and (bs[510:512] != b"\x55\xaa" or bs[0x36:0x3E] in (b"JFS     ", b"HPFS    ")):
        return None
    cluster_size, reserved, fats = bs[13], _unpack_from("<H", bs, 14)[0], bs[16]
    media = bs[21]
    if not fats or not reserved or not (media >= 0xF8 or media == 0xF0) or not _pow2(cluster_size):
        return None
    sector_size = _unpack_from("<H", bs, 11)[0]
    if not _pow2(sector_size) or sector_size < 512 or sector_size > 4096:
        return None
    dir_entries, sect_count = _unpack_from("<HH", bs, 17)
    if sect_count == 0:
        sect_count = _unpack_from("<I", bs, 32)[0]
    fat_length = _unpack_from("<H", bs, 22)[0]
    fat32_length = _unpack_from("<I", bs, 36)[0]
    fat_size = ((fat_length or fat32_length) * fats) & U32
    dir_size = (dir_entries * 32 + sector_size - 1) // sector_size
    clusters = ((sect_count - ((reserved + fat_size + dir_size) & U32)) & U32) // cluster_size
    if not fat_length and fat32_length:
        max_count = FAT32_MAX
    else:
        max_count = FAT16_MAX if clusters > FAT12_MAX else FAT12_MAX
    if clusters > max_count:
        return None
    return clusters, fat_size


def _fat_dir_label(dev: _Dev, offset: int, entries: int) -> bytes | None:
    data = dev.read(offset, entries * 32)
    if data is None:
        return None
    for i in range(0, len(data), 32):
        name = data[i:i + 11]
        if name[0] == 0:
            break
        attr = data[i + 11]
        if name[0] == 0xE5 or data[i + 20:i + 22] != b"\0\0" or data[i + 26:i + 28] != b"\0\0" \
                or attr & 0x3F == 0x0F:
            continue
        if attr & 0x18 == 0x08:
            return b"\xe5" + name[1:] if name[0] == 0x05 else name
    return None


def _probe_vfat(dev: _Dev) -> dict[str, str] | None:
    bs = dev.read(0, 512)
    if bs is None:
        return None
    geo = _fat_geometry(bs)
    if geo is None:
        return None
    clusters, fat_size = geo
    sector_size = _unpack_from("<H", bs, 11)[0]
    reserved = _unpack_from("<H", bs, 14)[0]
    d: dict[str, str] = {}
    vol_label = boot_label = serno = version = None
    if _unpack_from("<H", bs, 22)[0]:
        root_start = ((reserved + fat_size) * sector_size) & U32
        vol_label = _fat_dir_label(dev, root_start, _unpack_from("<H", bs, 17)[0])
        if bs[0x26] == 0x29:
            boot_label = bs[0x2B:0x36]
        if bs[0x26] in (0x28, 0x29):
            serno = bs[0x27:0x2B]
        d["SEC_TYPE"] = "msdos"
        if clusters < FAT12_MAX:
            version = "FAT12"
        elif clusters < FAT16_MAX:
            version = "FAT16"
    elif _unpack_from("<I", bs, 36)[0]:
        cluster_size = bs[13]
        buf_size = cluster_size * sector_size
        start_data = (reserved + fat_size) & U32
        entries = ((_unpack_from("<I", bs, 36)[0] * sector_size) // 4) & U32
        nxt = _unpack_from("<I", bs, 44)[0]
        loops = 99
        while nxt and nxt < entries and loops:
            loops -= 1
            off = ((start_data + (((nxt - 2) & U32) * cluster_size & U32)) & U32) * sector_size
            vol_label = _fat_dir_label(dev, off, buf_size // 32)
            if vol_label is not None:
                break
            fat_entry = dev.read(reserved * sector_size + nxt * 4, buf_size)
            if fat_entry is None:
                break
            nxt = _unpack_from("<I", fat_entry, 0)[0] & 0x0FFFFFFF
        version = "FAT32"
        if bs[0x42] == 0x29:
            boot_label = bs[0x47:0x52]
        serno = bs[0x43:0x47]
        fsinfo_sect = _unpack_from("<H", bs, 48)[0]
        if fsinfo_sect:
            fsinfo = dev.read(fsinfo_sect * sector_size, 512)
            if fsinfo is None:
                return None
            if fsinfo[0:4] not in (b"RRaA", b"RRdA", b"\0\0\0\0"):
                return None
            if fsinfo[484:488] not in (b"rrAa", b"\0\0\0\0"):
                return None
    if boot_label is not None and boot_label != NO_NAME:
        _put(d, "LABEL_FATBOOT", _id_label(boot_label))
    if vol_label is not None:
        _put(d, "LABEL", _label(vol_label))
    if serno is not None and any(serno):
        d["UUID"] = f"{serno[3]:02X}{serno[2]:02X}-{serno[1]:02X}{serno[0]:02X}"
    if version:
        d["VERSION"] = version
    d["BLOCK_SIZE"] = str(sector_size)
    return d


def _probe_swap(dev: _Dev) -> dict[str, str] | None:
    for page in (4096, 8192, 16384, 65536):
        magic = dev.read(page - 10, 10)
        if magic is None:
            continue
        if magic == b"SWAP-SPACE":
            return {"VERSION": "0"}
        if magic == b"SWAPSPACE2":
            hdr = dev.read(1024, 180)
            if hdr is None:
                return None
            version, last_page = _unpack_from("<II", hdr, 0)
            if version != 1 and version != 0x01000000 or last_page == 0:
                return None
            d: dict[str, str] = {}
            if not any(hdr[172:180]):        # blkid: label and uuid only when padding[32..33] is clean
                if hdr[28]:
                    _put(d, "LABEL", _label(hdr[28:44]))
                _put(d, "UUID", _uuid(hdr[12:28]))
            d["VERSION"] = "1"
            return d
    return None


XFS_MIN_AG_BLOCKS = 64


def _probe_xfs(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(0, 512)
    if sb is None or sb[:4] != b"XFSB":
        return None
    blocksize, dblocks = _unpack_from(">IQ", sb, 4)
    rextsize, agblocks, agcount = _unpack_from(">III", sb, 80)
    versionnum, sectsize, inodesize, inopblock = _unpack_from(">HHHH", sb, 100)
    blocklog, sectlog, inodelog, inopblog = sb[120], sb[121], sb[122], sb[123]
    imax_pct = sb[127]
    if (agcount <= 0 or not 512 <= sectsize <= 32768 or not 9 <= sectlog <= 15
            or sectsize != 1 << sectlog or not 512 <= blocksize <= 65536 or not 9 <= blocklog <= 16
            or blocksize != 1 << blocklog or not 256 <= inodesize <= 2048 or not 8 <= inodelog <= 11
            or inodesize != 1 << inodelog or blocklog - inodelog != inopblog
            or rextsize * blocksize > 1024 ** 3 or rextsize * blocksize < 4096
            or imax_pct > 100 or dblocks == 0 or dblocks > agcount * agblocks
            or dblocks < (agcount - 1) * agblocks + XFS_MIN_AG_BLOCKS):
        return None
    # blkid 2.38 does not verify the v5 superblock CRC.
    d: dict[str, str] = {}
    if sb[108]:
        _put(d, "LABEL", _label(sb[108:120]))
    _put(d, "UUID", _uuid(sb[32:48]))
    d["BLOCK_SIZE"] = str(sectsize)
    return d


UDF_VSD_IDS = (b"BEA01", b"BOOT2", b"CD001", b"CDW02", b"NSR02", b"NSR03", b"TEA01")
UDF_VD_SIZE = 440
_OSTA = b"OSTA Compressed Unicode"


def _udf_charset_ok(cs: bytes) -> bool:
    return cs[0] == 0 and _cstr(cs[1:64]) == _OSTA


def _udf_encode(cid: int, data: bytes, limit: int = 0) -> bytes | None:
    if cid == 16:
        return _utf16(data, True, limit)
    if cid == 8:
        return _utf16(bytes(b for c in _cstr(data) for b in (0, c)), True, limit)
    return None


def _udf_dstring(ds: bytes) -> tuple[int, bytes]:
    clen = ds[-1]
    if clen > 0:
        clen -= 1
    return ds[0], ds[1:1 + min(clen, len(ds) - 2)]


def _udf_id_label(ds: bytes) -> str | None | bool:
    cid, data = _udf_dstring(ds)
    enc = _udf_encode(cid, data)
    if enc is None:
        return False
    v = enc.rstrip(_SPACE).lstrip(_SPACE)
    return _dec(v) if v else None


def _udf_uuid(ds: bytes) -> str | None:
    cid, data = _udf_dstring(ds)
    enc = _udf_encode(cid, data, 17)
    if enc is None or len(enc) < 8:
        return None
    buf = bytearray(enc)
    if len(buf) < 8:
        return None
    buf += bytes(17 - len(buf))
    hexdigits = b"0123456789abcdefABCDEF"
    nonhex = next((i for i in range(16) if buf[i] not in hexdigits), 16)
    if nonhex < 8:
        out = buf[:8].hex().encode()
    elif nonhex < 16:
        out = bytes(buf[:8]).lower() + buf[8:12].hex().encode()
    else:
        out = bytes(buf[:16]).lower()
    v = _cstr(out).rstrip(_SPACE)
    return _dec(v) if v else None


def _probe_udf(dev: _Dev) -> dict[str, str] | None:
    if dev.read(0x8001, 5) not in UDF_VSD_IDS:
        return None
    vsd_2048 = -1
    found = None
    for bs in dict.fromkeys((dev.ssz, 512, 1024, 2048, 4096)):
        vsd_len = max(bs, 2048)
        nsr = False
        if vsd_len == 2048 and vsd_2048 != -1:
            if vsd_2048 == 0:
                continue
            nsr = True
        else:
            for b in range(64):
                vid = dev.read(0x8000 + b * vsd_len + 1, 5)
                if vid is None:
                    return None
                if vid[0] == 0:
                    break
                if vid in (b"NSR02", b"NSR03"):
                    nsr = True
                    break
                if vid not in (b"BEA01", b"BOOT2", b"CD001", b"CDW02", b"TEA01"):
                    break
            if vsd_len == 2048:
                vsd_2048 = 1 if nsr else 0
        if not nsr:
            continue
        for sector in (256, 512):
            vd = dev.read(sector * bs, UDF_VD_SIZE)
            if vd is None:
                return None
            if _unpack_from("<I", vd, 12)[0] == sector and _unpack_from("<H", vd, 0)[0] == 2:
                found = (bs, vd)
                break
        if found:
            break
    if not found:
        return None
    bs, vd = found
    count = _unpack_from("<I", vd, 16)[0] // bs
    loc = _unpack_from("<I", vd, 20)[0]
    vals: dict[str, str | None] = {}
    lvid_len = lvid_loc = udf_rev = 0
    keys = ("VOLUME_ID", "UUID", "VOLUME_SET_ID", "APPLICATION_ID", "LABEL", "LOGICAL_VOLUME_ID")
    for b in range(min(count, 4096)):
        vd = dev.read((loc + b) * bs, UDF_VD_SIZE)
        if vd is None:
            return None
        tag = _unpack_from("<H", vd, 0)[0]
        if tag == 0 or _unpack_from("<I", vd, 12)[0] != (loc + b) & U32 or tag == 8:
            break
        if tag == 1:
            udf_cs = _udf_charset_ok(vd[200:264])
            if "VOLUME_ID" not in vals and udf_cs:
                v = _udf_id_label(vd[24:56])
                if isinstance(v, str):
                    vals["VOLUME_ID"] = v
            if "UUID" not in vals and udf_cs:
                u = _udf_uuid(vd[72:200])
                if u:
                    vals["UUID"] = u
            if "VOLUME_SET_ID" not in vals and udf_cs:
                v = _udf_id_label(vd[72:200])
                if isinstance(v, str):
                    vals["VOLUME_SET_ID"] = v
            if "APPLICATION_ID" not in vals:
                app = _cstr(vd[345:368])
                if app[:1] == b"*":
                    app = app[1:]
                if not app:
                    app = _cstr(vd[389:412])
                    if app[:1] == b"*":
                        app = app[1:]
                if app:
                    v = _id_label(app)
                    if v is not None:
                        vals["APPLICATION_ID"] = v
        elif tag == 6:
            if (not lvid_len or not lvid_loc) and _unpack_from("<I", vd, 268)[0]:
                lvid_len, lvid_loc = _unpack_from("<II", vd, 432)
            if not udf_rev and _cstr(vd[217:240]) == b"*OSTA UDF Compliant":
                udf_rev = _unpack_from("<H", vd, 240)[0]
            if ("LABEL" not in vals or "LOGICAL_VOLUME_ID" not in vals) and _udf_charset_ok(vd[20:84]):
                cid, data = _udf_dstring(vd[84:212])
                enc = _udf_encode(cid, data)
                if enc is not None:
                    if "LABEL" not in vals:
                        lab = enc.rstrip(_SPACE)
                        if lab:
                            vals["LABEL"] = _dec(lab)
                    if "LOGICAL_VOLUME_ID" not in vals:
                        v = _udf_id_label(vd[84:212])
                        if isinstance(v, str) and v:
                            vals["LOGICAL_VOLUME_ID"] = v
        if all(k in vals for k in keys) and lvid_len and lvid_loc:
            break
    if lvid_loc and lvid_len >= UDF_VD_SIZE:
        vd = dev.read(lvid_loc * bs, UDF_VD_SIZE)
        if vd is None:
            return None
        if (_unpack_from("<H", vd, 0)[0] == 9 and _unpack_from("<I", vd, 12)[0] == lvid_loc
                and _unpack_from("<I", vd, 76)[0] >= 46):
            iu = dev.read(lvid_loc * bs + 80 + 8 * _unpack_from("<I", vd, 72)[0], 46)
            if iu is None:
                return None
            for rev in _unpack_from("<HH", iu, 40):
                if rev and udf_rev < rev:
                    udf_rev = rev
    d: dict[str, str] = {}
    for k in keys:
        _put(d, k, vals.get(k))
    if udf_rev:
        d["VERSION"] = f"{udf_rev >> 8:x}.{udf_rev & 0xFF:02x}"
    d["BLOCK_SIZE"] = str(bs)
    return d


ISO_VD_START = 0x8000
ISO_SECTOR = 2048
ISO_VD_SIZE = 847     # struct iso_volume_descriptor up to the modification date


def _isspace(c: int) -> bool:
    return c in (0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D)


def _is_str_empty(s: bytes) -> bool:
    return not s[0] or all(_isspace(c) for c in s)


def _is_utf16be_empty(s: bytes) -> bool:
    return all(s[i] == 0 and _isspace(s[i + 1]) for i in range(0, len(s), 2))


def _upper(c: int) -> int:
    return c - 32 if 0x61 <= c <= 0x7A else c


def _merge_utf16be_ascii(u16: bytes, ascii: bytes) -> bytes | None:
    """libblkid's reconstruction of a label from its Joliet and PVD copies."""
    n = len(ascii)
    out = bytearray()
    a = u = 0
    while u + 1 < n and a < n:
        if 0xD8 <= u16[u] <= 0xDB and u + 3 < n and 0xDC <= u16[u + 2] <= 0xDF:
            out += u16[u:u + 2]
            u += 2
        ch = ascii[a]
        if ch == 0x5F:
            out += u16[u:u + 2]
        elif u16[u] == 0 and u16[u + 1] == 0x5F:
            out += bytes((0, ch))
        elif u16[u] == 0 and _upper(ch) == _upper(u16[u + 1]):
            out += bytes((0, u16[u + 1] if 0x41 <= ch <= 0x5A else ch))
        else:
            return None
        a += 1
        u += 2
    for ch in ascii[a:]:
        out += bytes((0, ch))
    return bytes(out) if out else None


def _iso_field(d: dict[str, str], key: str, pvd: bytes, jol: bytes | None, off: int, n: int,
               check_empty: bool) -> None:
    p = pvd[off:off + n]
    j = jol[off:off + n] if jol is not None else None
    if not check_empty:
        if j is not None:
            merged = _merge_utf16be_ascii(j, p)
            _put(d, key, _utf16_id_label(merged if merged is not None else j, True))
        else:
            _put(d, key, _id_label(p))
        return
    ascii_empty = _is_str_empty(p) or p[0] == 0x5F
    uni_empty = j is None or _is_utf16be_empty(j) or (j[0] == 0 and j[1] == 0x5F)
    merged = _merge_utf16be_ascii(j, p) if j is not None and not uni_empty and not ascii_empty else None
    if merged is not None:
        _put(d, key, _utf16_id_label(merged, True))
    elif j is not None and not uni_empty:
        _put(d, key, _utf16_id_label(j, True))
    elif not ascii_empty:
        _put(d, key, _id_label(p))


def _iso_date_uuid(date: bytes) -> str | None | bool:
    digits = date[:16]
    if digits.count(b"0") == 16 and date[16] == 0:
        return False
    if not any(digits):
        return None
    # printf("%c") of a NUL ends the C string there; an empty UUID is still set
    return _dec(_cstr(b"-".join((digits[:4], digits[4:6], digits[6:8], digits[8:10], digits[10:12],
                                 digits[12:14], digits[14:16]))))


def _probe_iso9660(dev: _Dev) -> dict[str, str] | None:
    first = dev.read(ISO_VD_START, 6)
    if first is None:
        return None
    if first[1:6] != b"CD001":
        hs = dev.read(ISO_VD_START, 72)
        if hs is None or hs[9:14] != b"CDROM":
            return None
        sierra = {"BLOCK_SIZE": str(ISO_SECTOR), "VERSION": "High Sierra"}
        _put(sierra, "LABEL", _label(hs[40:72]))
        return sierra
    boot = pvd = jol = None
    off = ISO_VD_START
    for _ in range(16):
        if boot is not None and pvd is not None and jol is not None:
            break
        desc = dev.read(off, ISO_VD_SIZE)
        off += ISO_SECTOR
        if desc is None or desc[0] == 0xFF:
            break
        if boot is None and desc[0] == 0:
            boot = desc
        elif pvd is None and desc[0] == 1:
            pvd = desc
        elif jol is None and desc[0] == 2 and desc[88:91] in (b"%/@", b"%/C", b"%/E"):
            jol = desc
    if pvd is None:
        return None
    d: dict[str, str] = {"BLOCK_SIZE": str(ISO_SECTOR)}
    _iso_field(d, "SYSTEM_ID", pvd, jol, 8, 32, False)
    _iso_field(d, "VOLUME_SET_ID", pvd, jol, 190, 128, False)
    _iso_field(d, "PUBLISHER_ID", pvd, jol, 318, 128, True)
    _iso_field(d, "DATA_PREPARER_ID", pvd, jol, 446, 128, True)
    _iso_field(d, "APPLICATION_ID", pvd, jol, 574, 128, True)
    uuid = _iso_date_uuid(pvd[830:847])
    if uuid is False:
        uuid = _iso_date_uuid(pvd[813:830])
    if isinstance(uuid, str):
        d["UUID"] = uuid
    if boot is not None:
        _put(d, "BOOT_SYSTEM_ID", _id_label(boot[7:39]))
    if jol is not None:
        d["VERSION"] = "Joliet Extension"
        merged = _merge_utf16be_ascii(jol[40:72], pvd[40:72])
        _put(d, "LABEL", _utf16_label(merged if merged is not None else jol[40:72], True))
    else:
        _put(d, "LABEL", _label(pvd[40:72]))
    return d


def _probe_squashfs(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(0, 32)
    if sb is None or sb[:4] != b"hsqs":
        return None
    major, minor = _unpack_from("<HH", sb, 28)
    if major < 4:
        return None
    return {"VERSION": f"{major}.{minor}"}


def _probe_squashfs3(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(0, 32)
    if sb is None:
        return None
    if sb[:4] == b"sqsh":
        major, minor = _unpack_from(">HH", sb, 28)
    elif sb[:4] == b"hsqs":
        major, minor = _unpack_from("<HH", sb, 28)
    else:
        return None
    if major > 3:
        return None
    return {"VERSION": f"{major}.{minor}", "BLOCK_SIZE": "1024"}   # blkid's fixed value for v3


BTRFS_MIN_SIZE = 1 << 20   # blkid's minsz for btrfs


def _probe_btrfs(dev: _Dev) -> dict[str, str] | None:
    if dev.size < BTRFS_MIN_SIZE:
        return None
    sb = dev.read(0x10000, 4096)
    if sb is None or sb[64:72] != b"_BHRfS_M":
        return None
    # blkid 2.38 does not verify the superblock checksum.
    d: dict[str, str] = {}
    if sb[299]:
        _put(d, "LABEL", _label(sb[299:555]))
    _put(d, "UUID", _uuid(sb[32:48]))
    _put(d, "UUID_SUB", _uuid(sb[267:283]))
    d["BLOCK_SIZE"] = str(_unpack_from("<I", sb, 144)[0])
    return d


EXFAT_MAX_ENTRIES = 10000
U64 = 0xFFFFFFFFFFFFFFFF


def _probe_exfat(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(0, 512)
    if sb is None or sb[3:11] != b"EXFAT   ":
        return None
    # blkid 2.38 checks only that the cluster size is not zero (C uint32 shifts).
    bps, spc = sb[108], sb[109]
    block = (1 << bps) & U32 if bps < 32 else 0
    cluster_size = (block << spc) & U32 if spc < 32 else 0
    if not cluster_size:
        return None
    fat_off, heap_off, root = _unpack_from("<I", sb, 80)[0], _unpack_from("<I", sb, 88)[0], \
        _unpack_from("<I", sb, 96)[0]

    def offset(cluster: int) -> int:
        return ((heap_off + (((cluster - 2) & U32) << spc)) << bps) & U64

    d: dict[str, str] = {}
    cluster = root
    off = offset(cluster)
    for _ in range(EXFAT_MAX_ENTRIES):
        ent = dev.read(off, 32)
        if ent is None or ent[0] == 0:
            break
        if ent[0] == 0x83:
            _put(d, "LABEL", _utf16_label(ent[2:2 + min(ent[1] * 2, 22)], False))
            break
        off += 32
        if off % cluster_size == 0:
            fat = dev.read(((fat_off << bps) & U64) + cluster * 4, 4)
            cluster = _unpack_from("<I", fat, 0)[0] if fat is not None else 0
            if cluster < 2 or cluster > 0x0FFFFFF6:
                break
            off = offset(cluster)
    sn = sb[100:104]
    if any(sn):
        d["UUID"] = f"{sn[3]:02X}{sn[2]:02X}-{sn[1]:02X}{sn[0]:02X}"
    d["VERSION"] = f"{sb[105]}.{sb[104]}"
    d["BLOCK_SIZE"] = str(block)
    return d


NTFS_MAX_CLUSTER = 2 << 20     # Windows 10's largest cluster
NTFS_VOLUME_RECORD = 3         # $Volume's MFT record number
NTFS_VOLUME_NAME = 0x60        # its attribute holding the label (UTF-16LE)
NTFS_ATTR_END = 0xFFFFFFFF
NTFS_ATTR_HEADER = 22          # type, length, resident flag, name, flags, instance, value length and offset


def _ntfs_geometry(bs: bytes) -> tuple[int, int, int] | None:
    """(bytes per sector, bytes per cluster, MFT record size) of a valid NTFS boot sector."""
    if bs[3:11] != b"NTFS    ":
        return None
    sector = _unpack_from("<H", bs, 11)[0]
    if sector < 256 or sector > 4096 or not _pow2(sector):
        return None
    spc = bs[13]
    if spc > 128 or not _pow2(spc):    # 1..128 sectors, or 240..249: 2^(256 - n), above 64 KiB
        if not 240 <= spc <= 249:
            return None
        spc = 1 << (256 - spc)
    cluster = sector * spc
    if cluster > NTFS_MAX_CLUSTER:
        return None
    reserved, fats, root_entries, sectors = _unpack_from("<HBHH", bs, 14)
    if reserved or fats or root_entries or sectors or _unpack_from("<H", bs, 22)[0] \
            or _unpack_from("<I", bs, 32)[0]:
        return None   # FAT fields NTFS keeps zero
    per_record = _unpack_from("<b", bs, 64)[0]
    if not 0xE1 <= per_record & 0xFF <= 0xF7 and per_record not in (1, 2, 4, 8, 16, 32, 64):
        return None
    record = per_record * cluster if per_record > 0 else 1 << -per_record
    if record < 4:
        return None
    clusters = _unpack_from("<Q", bs, 40)[0] // spc
    if _unpack_from("<Q", bs, 48)[0] > clusters or _unpack_from("<Q", bs, 56)[0] > clusters:
        return None   # the MFT or its mirror beyond the volume
    return sector, cluster, record


def _ntfs_volume_record(dev: _Dev) -> tuple[bytes, bytes, int] | None:
    """(boot sector, $Volume's MFT record, record size) when `dev` holds NTFS."""
    bs = dev.read(0, 512)
    geo = _ntfs_geometry(bs) if bs is not None else None
    if bs is None or geo is None:
        return None
    _sector, cluster, size = geo
    mft = _unpack_from("<Q", bs, 48)[0] * cluster
    first = dev.read(mft, size)
    vol = dev.read(mft + NTFS_VOLUME_RECORD * size, size)
    if first is None or vol is None or first[:4] != b"FILE" or vol[:4] != b"FILE":
        return None
    return bs, vol, size


def _is_ntfs(dev: _Dev) -> bool:
    return _ntfs_volume_record(dev) is not None


def _probe_ntfs(dev: _Dev) -> dict[str, str] | None:
    found = _ntfs_volume_record(dev)
    if found is None:
        return None
    bs, rec, size = found
    d: dict[str, str] = {}
    off, allocated = _unpack_from("<H", rec, 20)[0], _unpack_from("<I", rec, 28)[0]
    # The attributes, read as they are on disk (blkid applies no update-sequence fixups).
    while off + NTFS_ATTR_HEADER <= size and off <= allocated:
        kind, length = _unpack_from("<II", rec, off)
        if not length or kind == NTFS_ATTR_END:
            break
        if kind == NTFS_VOLUME_NAME:
            vlen, voff = _unpack_from("<IH", rec, off + 16)
            if off + voff + vlen <= size:
                _put(d, "LABEL", _utf16_label(rec[off + voff:off + voff + vlen], False))
            break
        off += length
    d["BLOCK_SIZE"] = str(_unpack_from("<H", bs, 11)[0])
    d["UUID"] = f"{_unpack_from('<Q', bs, 72)[0]:016X}"
    return d


def _probe_f2fs(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(1024, 3072)
    if sb is None or sb[:4] != b"\x10\x20\xf5\xf2":
        return None
    major, minor = _unpack_from("<HH", sb, 4)
    if major == 1 and minor == 0:
        return {}
    # blkid 2.38 does not verify the superblock checksum.
    d: dict[str, str] = {}
    if sb[124]:
        _put(d, "LABEL", _utf16_label(sb[124:1148], False))
    _put(d, "UUID", _uuid(sb[108:124]))
    d["VERSION"] = f"{major}.{minor}"
    log = _unpack_from("<I", sb, 16)[0]
    if log < 32:
        d["BLOCK_SIZE"] = str(1 << log)
    return d


def _probe_erofs(dev: _Dev) -> dict[str, str] | None:
    sb = dev.read(1024, 128)
    if sb is None or sb[:4] != b"\xe2\xe1\xf5\xe0":
        return None
    bits = sb[12]
    if bits > 31:
        return None
    # blkid 2.38 does not verify the superblock checksum.
    d: dict[str, str] = {}
    if sb[64]:
        _put(d, "LABEL", _label(sb[64:80]))
    _put(d, "UUID", _uuid(sb[48:64]))
    d["BLOCK_SIZE"] = str(1 << bits)
    return d


# blkid's order; (TYPE, USAGE, prober, tolerant)
_FILESYSTEMS = (
    ("vfat", USAGE_FS, _probe_vfat, False),
    ("swap", USAGE_OTHER, _probe_swap, False),
    ("xfs", USAGE_FS, _probe_xfs, False),
    ("ext4dev", USAGE_FS, _probe_ext4dev, False),
    ("ext4", USAGE_FS, _probe_ext4, False),
    ("ext3", USAGE_FS, _probe_ext3, False),
    ("ext2", USAGE_FS, _probe_ext2, False),
    ("jbd", USAGE_OTHER, _probe_jbd, False),
    ("udf", USAGE_FS, _probe_udf, True),
    ("iso9660", USAGE_FS, _probe_iso9660, True),
    ("squashfs", USAGE_FS, _probe_squashfs, False),
    ("squashfs3", USAGE_FS, _probe_squashfs3, False),
    ("btrfs", USAGE_FS, _probe_btrfs, False),
    ("exfat", USAGE_FS, _probe_exfat, False),
    ("ntfs", USAGE_FS, _probe_ntfs, False),
    ("f2fs", USAGE_FS, _probe_f2fs, False),
    ("erofs", USAGE_FS, _probe_erofs, False),
)
FILESYSTEM_TYPES = tuple(t for t, _u, _p, _t in _FILESYSTEMS)


def _superblocks(dev: _Dev) -> dict[str, str] | None:
    """The superblock keys, {} when nothing, None when ambivalent."""
    if dev.size <= 1024:
        return {}
    found: list[dict[str, str]] = []
    intolerant = 0
    for fstype, usage, prober, tolerant in _FILESYSTEMS:
        if usage == USAGE_OTHER and dev.cdrom:
            continue
        try:
            d = prober(dev)
        except (struct.error, IndexError, ValueError, ZeroDivisionError, OverflowError):
            d = None
        if d is None:
            continue
        d["TYPE"] = fstype
        d["USAGE"] = usage
        if dev.size <= TINY_SIZE and not found:
            return d
        found.append(d)
        if not tolerant:
            intolerant += 1
    if len(found) > 1 and intolerant:
        return None
    return found[0] if found else {}


# --- partition tables ----------------------------------------------------------

MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_GPT = 0xEE
EBR_MAX_EMPTY = 100
GPT_ENTRY_SIZE = 128


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]]:
    """(boot indicator, type, start, size) of the four MBR slots."""
    return [(sector[o], sector[o + 4]) + _unpack_from("<II", sector, o + 8)
            for o in range(446, 510, 16)]


def _is_vfat(dev: _Dev) -> bool:
    bs = dev.read(0, 512)
    return bs is not None and _fat_geometry(bs) is not None


def _dos_table(dev: _Dev) -> PartitionTable | None:
    mbr = dev.read(0, 512)
    if mbr is None or mbr[510:512] != b"\x55\xaa" or mbr[:4] == b"\xc9\xc2\xd4\xc1":   # AIX
        return None
    ents = _mbr_entries(mbr)
    if any(boot not in (0, 0x80) for boot, _t, _s, _n in ents):
        return None
    if any(t == MBR_GPT for _b, t, _s, _n in ents):
        return None
    if _is_vfat(dev) or _is_ntfs(dev):   # boot sectors with 55AA, not partition tables
        return None
    ssf = dev.ssz // SECTOR
    disk_id = _unpack_from("<I", mbr, 440)[0]
    ptuuid = f"{disk_id:08x}" if disk_id else ""
    parts: list[Partition] = []

    def add(number: int, boot: int, ptype: int, start: int, size: int) -> None:
        uuid = f"{ptuuid}-{number:02x}" if ptuuid else ""
        parts.append(Partition(number, start, size, f"0x{ptype:x}", uuid, "", boot))

    for i, (boot, ptype, start, size) in enumerate(ents):
        if size:
            add(i + 1, boot, ptype, start * ssf, size * ssf)
    number = 5
    for _boot, ptype, start, size in ents:
        if not size or ptype not in MBR_EXTENDED:
            continue
        ex_start, ex_size = start * ssf, size * ssf
        cur_start, cur_size = ex_start, ex_size
        empty = 0
        while True:
            empty += 1
            if empty > EBR_MAX_EMPTY:
                break
            ebr = dev.read(cur_start * SECTOR, 512)
            if ebr is None or ebr[510:512] != b"\x55\xaa":
                break
            lents = _mbr_entries(ebr)
            for i, (lboot, ltype, lstart, lsize) in enumerate(lents):
                lstart, lsize = lstart * ssf, lsize * ssf
                abs_start = cur_start + lstart
                if not lsize or ltype in MBR_EXTENDED:
                    continue
                if i >= 2 and (lstart + lsize > cur_size or abs_start < ex_start
                               or abs_start + lsize > ex_start + ex_size):
                    continue
                if any(p.start == abs_start for p in parts):
                    continue
                add(number, lboot, ltype, abs_start, lsize)
                number += 1
                empty = 0
            for _lboot, ltype, lstart, lsize in lents:
                if lsize and ltype in MBR_EXTENDED:
                    if lstart == 0:
                        lents = []
                        break
                    cur_start, cur_size = ex_start + lstart * ssf, lsize * ssf
                    break
            else:
                break
            if not lents:
                break
    return PartitionTable("dos", ptuuid, tuple(parts))


def _pmbr(dev: _Dev) -> bool:
    mbr = dev.read(0, 512)
    return (mbr is not None and mbr[510:512] == b"\x55\xaa"
            and any(t == MBR_GPT for _b, t, _s, _n in _mbr_entries(mbr)))


def _gpt_header(dev: _Dev, lba: int, last_lba: int) -> tuple[bytes, bytes] | None:
    ssz = dev.ssz
    h = dev.read(lba * ssz, ssz)
    if h is None or h[:8] != b"EFI PART":
        return None
    hsz = _unpack_from("<I", h, 12)[0]
    if hsz < 92 or hsz > ssz:
        return None
    if crc32(h[:16] + b"\0\0\0\0" + h[20:hsz]) != _unpack_from("<I", h, 16)[0]:
        return None
    my_lba, _alt, fu, lu = _unpack_from("<QQQQ", h, 24)
    if my_lba != lba or lu < fu or fu > last_lba or lu > last_lba or fu < lba < lu:
        return None
    entries_lba, nents, esz = _unpack_from("<QII", h, 72)
    if nents == 0 or esz != GPT_ENTRY_SIZE or nents * GPT_ENTRY_SIZE > U32:
        return None
    ents = dev.read(entries_lba * ssz, nents * GPT_ENTRY_SIZE)
    if ents is None or crc32(ents) != _unpack_from("<I", h, 88)[0]:
        return None
    return h, ents


def _gpt_table(dev: _Dev) -> PartitionTable | None:
    ssz = dev.ssz
    if dev.size < 2 * ssz or not _pmbr(dev):
        return None
    last_lba = dev.size // ssz - 1
    found = _gpt_header(dev, 1, last_lba) or _gpt_header(dev, last_lba, last_lba)
    if found is None:
        return None
    h, ents = found
    fu, lu = _unpack_from("<QQ", h, 40)
    ssf = ssz // SECTOR
    parts: list[Partition] = []
    for i in range(0, len(ents), GPT_ENTRY_SIZE):
        e = ents[i:i + GPT_ENTRY_SIZE]
        if not any(e[:16]):
            continue
        start, end, attrs = _unpack_from("<QQQ", e, 32)
        size = (end - start + 1) & 0xFFFFFFFFFFFFFFFF
        if start < fu or start + size - 1 > lu:
            continue
        name = _utf16(e[56:128], False).rstrip(_SPACE)
        parts.append(Partition(i // GPT_ENTRY_SIZE + 1, start * ssf, size * ssf, _guid(e[:16]),
                               _uuid(e[16:32]) and _guid(e[16:32]) or "", _dec(name), attrs))
    return PartitionTable("gpt", _guid(h[56:72]), tuple(parts))


def _partition_table(dev: _Dev) -> PartitionTable | None | bool:
    """The table, None when there is none, True for a bare protective MBR."""
    if dev.size <= 1024:
        return None
    table = _dos_table(dev) or _gpt_table(dev)
    if table is None and _pmbr(dev):
        return True
    return table


# --- public API ------------------------------------------------------------------

def _probe_dev(dev: _Dev, wholedisk: bool) -> dict[str, str]:
    try:
        table = _partition_table(dev)
    except (struct.error, IndexError, ValueError, OverflowError):
        table = None
    # blkid -p: a floppy-sized whole disk with a partition table is not
    # probed for filesystems (this hides a small hybrid ISO's iso9660).
    small_disk = dev.isblk and wholedisk and dev.size <= TINY_SIZE and table is not None
    sb = {} if small_disk else _superblocks(dev)
    if sb is None:
        return {}
    if table is True:
        sb["PTTYPE"] = "PMBR"
    elif isinstance(table, PartitionTable):
        if table.uuid:
            sb["PTUUID"] = table.uuid
        sb["PTTYPE"] = table.type
    return sb


def probe(path: str, offset: int = 0, size: int | None = None, wholedisk: bool = True) -> dict[str, str]:
    """`blkid -p -o export` keys (without DEVNAME) for a device or image file.

    `offset`/`size` (bytes) probe a range of the file, like `blkid -p -O -S`.
    `wholedisk=False` says a block device is a partition (blkid asks sysfs).
    Returns {} when nothing is recognised or the result is ambivalent; raises
    ProbeError (an OSError) when `path` cannot be opened or read."""
    dev = _open(path, offset, size)
    try:
        return _probe_dev(dev, wholedisk and not offset and size is None)
    except OSError as e:
        raise ProbeError(e.errno, f"cannot read {path}: {e.strerror}") from None
    finally:
        os.close(dev.fd)


def read_partition_table(path: str, offset: int = 0, size: int | None = None) -> PartitionTable | None:
    """The dos or gpt partition table of a disk (device or image), or None."""
    dev = _open(path, offset, size)
    try:
        table = _partition_table(dev)
    except (struct.error, IndexError, ValueError, OverflowError):
        table = None
    finally:
        os.close(dev.fd)
    return table if isinstance(table, PartitionTable) else None


def partition_entry(disk: str, number: int) -> dict[str, str]:
    """The PART_ENTRY_* keys blkid -p prints for partition `number` of `disk`.

    PART_ENTRY_UUID is the PARTUUID, PART_ENTRY_NAME the PARTLABEL.
    PART_ENTRY_DISK ("major:minor") is given when `disk` is a block device."""
    table = read_partition_table(disk)
    if table is None:
        return {}
    for p in table.partitions:
        if p.number == number:
            break
    else:
        return {}
    d = {"PART_ENTRY_SCHEME": table.type}
    if p.name:
        d["PART_ENTRY_NAME"] = p.name
    if p.uuid:
        d["PART_ENTRY_UUID"] = p.uuid
    d["PART_ENTRY_TYPE"] = p.type
    if p.flags:
        d["PART_ENTRY_FLAGS"] = f"0x{p.flags:x}"
    d["PART_ENTRY_NUMBER"] = str(p.number)
    d["PART_ENTRY_OFFSET"] = str(p.start)
    d["PART_ENTRY_SIZE"] = str(p.size)
    try:
        st = os.stat(disk)
        if (st.st_mode & 0o170000) == 0o060000:
            d["PART_ENTRY_DISK"] = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    except OSError:
        pass
    return d


def probe_partition(disk: str, number: int) -> dict[str, str]:
    """What `blkid -p` says of partition `number` of `disk`: the content of the
    partition plus its PART_ENTRY_* keys; {} when there is no such partition."""
    table = read_partition_table(disk)
    part = None if table is None else next((p for p in table.partitions if p.number == number), None)
    if part is None:
        return {}
    d = probe(disk, part.start * SECTOR, part.size * SECTOR)
    d.update(partition_entry(disk, number))
    return d
