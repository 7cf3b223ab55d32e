"""Kernel-compatible compression of initramfs segments, detection by magic.

The kernel's decompressors are pickier than the tools' defaults: xz streams
must use a CRC32 (or no) integrity check, since the kernel's XZ embedded
decoder rejects CRC64/SHA-256, and lz4 must be the *legacy* frame (`lz4 -l`),
not the modern LZ4 frame. gzip and xz come from the standard library (fixed
header, no timestamp or name); zstd and lz4 have no stdlib module in 3.11
and go through their command-line tools. zstd runs multi-threaded (-T0):
its output does not depend on the number of threads, only on the input and
the level (checked by tests/test_compress.py).

xz can add the x86 BCJ filter (`x86=True`), which the kernel's decoder
supports (CONFIG_XZ_DEC_X86): it makes linked x86 code (executables, shared
libraries) ~8% smaller, but kernel modules *larger* (their call sites hold
zeros waiting for relocation, which the filter turns into noise)."""
from __future__ import annotations

import gzip
import lzma
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from packer import tools
from packer.errors import CommandError


class Compression(StrEnum):
    """A compression the kernel can unpack an initramfs segment from."""

    NONE = "none"
    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"


# Measured on a 52 MiB image (2 shared cores): gzip -9 takes 4x the time of
# -6 for 2% less; zstd -19 takes 23x the time of -10 for 12% less. Boot-time
# decompression speed barely depends on the level, so pack fast by default.
DEFAULT_LEVELS: dict[Compression, int] = {Compression.GZIP: 6, Compression.XZ: 6, Compression.ZSTD: 10,
                                          Compression.LZ4: 9}
LEVEL_RANGES: dict[Compression, tuple[int, int]] = {Compression.GZIP: (1, 9), Compression.XZ: (0, 9),
                                                    Compression.ZSTD: (1, 19), Compression.LZ4: (1, 12)}

CPIO_MAGICS = (b"070701", b"070702")
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LZ4_LEGACY_MAGIC = b"\x02\x21\x4c\x18"  # 0x184C2102 little-endian

# Formats we recognise only to explain why they are refused.
UNSUPPORTED_MAGICS: dict[bytes, str] = {
    b"\x04\x22\x4d\x18": "lz4 (modern frame; the kernel needs the legacy frame, `lz4 -l`)",
    b"BZh": "bzip2",
    b"\x89LZO": "lzo",
    b"\x5d\x00\x00": "lzma (legacy .lzma)",
    b"\x1f\x9e": "old gzip",
    b"070707": "cpio odc (the kernel needs newc, 070701)",
}

XZ_CHECK_CRC32 = 0x01  # low nibble of the second stream-flags byte
XZ_PRESET_DICT = tuple(k << 10 for k in (256, 1024, 2048, 4096, 4096, 8192, 8192, 16384, 32768, 65536))
LZ4_LEGACY_CHUNK = 8 << 20  # uncompressed bytes per legacy block
LZ4_LEGACY_MAX_CHUNK = LZ4_LEGACY_CHUNK + LZ4_LEGACY_CHUNK // 255 + 16  # LZ4_compressBound


class CompressionError(CommandError):
    """Compressed data that cannot be produced or read."""


@dataclass(frozen=True)
class Codec:
    """A compression method with its settings (what a segment is compressed with)."""

    method: Compression
    level: int | None = None          # None: the method's default
    extreme: bool = False             # xz only: -e (slower, sometimes smaller)
    x86: bool = False                 # xz only: the x86 BCJ filter before LZMA2

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", method_named(self.method))

    def __str__(self) -> str:
        if self.method is Compression.NONE:
            return str(self.method)
        lvl = DEFAULT_LEVELS[self.method] if self.level is None else self.level
        return f"{self.method} -{lvl}{'e' if self.extreme else ''}{' +x86' if self.x86 else ''}"

    def compress(self, data: bytes) -> bytes:
        """`data` compressed with this codec (see compress())."""
        return compress(data, self.method, self.level, extreme=self.extreme, x86=self.x86)


def method_named(name: str) -> Compression:
    """The Compression called `name`, or a CompressionError naming the choices."""
    try:
        return Compression(name)
    except ValueError:
        raise CompressionError(f"unknown compression {name!r}",
                               hint=f"choose one of {', '.join(Compression)}") from None


def detect(data: bytes) -> Compression | None:
    """The method whose magic starts `data`, or None if unknown.

    NONE means `data` starts with an uncompressed newc cpio header."""
    if data.startswith(CPIO_MAGICS):
        return Compression.NONE
    for method, magic in ((Compression.GZIP, GZIP_MAGIC), (Compression.XZ, XZ_MAGIC),
                          (Compression.ZSTD, ZSTD_MAGIC), (Compression.LZ4, LZ4_LEGACY_MAGIC)):
        if data.startswith(magic):
            return method
    return None


def describe_unknown(data: bytes) -> str:
    """A human name for data detect() refuses (for error messages)."""
    for magic, name in UNSUPPORTED_MAGICS.items():
        if data.startswith(magic):
            return name
    return f"unknown data (first bytes {data[:8].hex(' ')})"


def _level(method: Compression, level: int | None) -> int:
    if level is None:
        return DEFAULT_LEVELS[method]
    low, high = LEVEL_RANGES[method]
    if not low <= level <= high:
        raise CompressionError(f"{method} level {level} is out of range",
                               hint=f"use a level from {low} to {high}")
    return level


def _run_tool(argv: list[str], data: bytes, what: str) -> bytes:
    """stdout of a compressor fed `data` (packer.tools.run), its failures as CompressionError."""
    try:
        return tools.run(argv, what, input=data).stdout
    except tools.ToolMissing as e:
        raise CompressionError(str(e), hint=f"{e.hint}, or choose --compress gzip or xz") from None
    except CommandError as e:
        raise CompressionError(str(e), hint=e.hint) from None


def xz_dict_size(n: int, level: int) -> int:
    """The LZMA2 dictionary for `n` bytes at preset `level`: the preset's, or
    less when the data is smaller (as the xz tool does). The kernel allocates
    the whole dictionary named in the header before unpacking (64 MiB at -9)."""
    limit = XZ_PRESET_DICT[level]
    for k in range(12, 31):
        for size in (1 << k, 3 << (k - 1)):
            if size >= n:
                return min(size, limit)
    return limit


def compress(data: bytes, method: str, level: int | None = None, *, extreme: bool = False,
             x86: bool = False) -> bytes:
    """Compress `data` with `method` (a Compression or its name) so that the
    kernel can unpack it, deterministically.

    `extreme` and `x86` apply to xz only (xz -e, and the x86 BCJ filter)."""
    method = method_named(method)
    if method is Compression.NONE:
        return bytes(data)
    if (extreme or x86) and method is not Compression.XZ:
        raise CompressionError(f"{method} has no {'x86 filter' if x86 else 'extreme mode'}",
                               hint="only xz has -e and the x86 BCJ filter")
    lvl = _level(method, level)
    if method is Compression.GZIP:
        # mtime=0: no timestamp and no file name in the header.
        return gzip.compress(data, compresslevel=lvl, mtime=0)
    if method is Compression.XZ:
        chain: list[dict[str, int]] = [{"id": lzma.FILTER_X86}] if x86 else []
        chain.append({"id": lzma.FILTER_LZMA2, "preset": lvl | (lzma.PRESET_EXTREME if extreme else 0),
                      "dict_size": xz_dict_size(len(data), lvl)})
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, filters=chain)
    if method is Compression.ZSTD:
        return _run_tool(["zstd", "-q", "-c", f"-{lvl}", "-T0", "--no-progress"], data,
                         f"compress {len(data)} bytes")
    return _run_tool(["lz4", "-q", "-c", "-l", f"-{lvl}"], data, f"compress {len(data)} bytes")


# Kernel modules stored compressed in the image, one file each, decompressed by
# PID 1 only when loaded (liveinit.modfile: the stdlib has lzma and zlib, no
# zstd). The suffixes are kmod's, so the index names them as modules.dep does.
MODULE_SUFFIXES: dict[Compression, str] = {Compression.NONE: "", Compression.GZIP: ".gz",
                                           Compression.XZ: ".xz"}
MODULE_LEVELS: dict[Compression, int] = {Compression.GZIP: 9, Compression.XZ: 9}


def module_suffix(method: str) -> str:
    """What a module file compressed with `method` adds after `.ko` ("" for none)."""
    m = method_named(method)
    if m not in MODULE_SUFFIXES:
        raise CompressionError(f"kernel modules cannot be stored as {m}: the boot runtime could not "
                               f"decompress them (no {m} in the Python standard library)",
                               hint=f"choose one of {', '.join(MODULE_SUFFIXES)}")
    return MODULE_SUFFIXES[m]


def compress_module(data: bytes, method: str) -> bytes:
    """A module file's bytes as `NAME.ko<module_suffix(method)>`: deterministic,
    readable by kmod and by liveinit.modfile, which gives back `data` byte for
    byte (the appended signature stays valid). xz uses a CRC32 check and a
    dictionary no larger than the module, as the kernel's own
    CONFIG_MODULE_COMPRESS_XZ does, so the decoder's memory stays small."""
    m = method_named(method)
    module_suffix(m)
    if m is Compression.NONE:
        return bytes(data)
    return compress(data, m, MODULE_LEVELS[m])


def _zstd_frame_end(data: bytes, pos: int) -> int:
    """Offset just past the zstd frame starting at `pos` (walks block headers, no decoding)."""
    fhd = data[pos + 4]
    fcs_flag, single, checksum, dict_flag = fhd >> 6, (fhd >> 5) & 1, (fhd >> 2) & 1, fhd & 3
    if fhd & 0x08:
        raise CompressionError(f"zstd frame at offset {pos} has a reserved header bit set")
    p = pos + 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
    while True:
        if p + 3 > len(data):
            raise CompressionError(f"zstd frame at offset {pos} is truncated")
        header = int.from_bytes(data[p:p + 3], "little")
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        if btype == 3:
            raise CompressionError(f"zstd frame at offset {pos} has a reserved block type")
        p += 3 + (1 if btype == 1 else bsize)
        if last:
            break
    p += 4 if checksum else 0
    if p > len(data):
        raise CompressionError(f"zstd frame at offset {pos} is truncated")
    return p


def _lz4_legacy_end(data: bytes, pos: int) -> int:
    """Offset just past the legacy lz4 stream at `pos`.

    The legacy frame has no end marker: like the kernel, read length-prefixed
    blocks (and repeated magics) until the data ends, stopping early at a
    length no legacy block can have (zero padding, the next segment)."""
    p = pos + 4
    while p + 4 <= len(data):
        if data[p:p + 4] == LZ4_LEGACY_MAGIC:
            p += 4
            continue
        size = int.from_bytes(data[p:p + 4], "little")
        if size == 0 or size > LZ4_LEGACY_MAX_CHUNK or p + 4 + size > len(data):
            break
        p += 4 + size
    return p


def decompress_stream(data: bytes, pos: int = 0) -> tuple[Compression, bytes, int]:
    """Decompress the one compressed stream at `data[pos:]`.

    Returns (method, decompressed bytes, offset just past the stream), so
    that a caller can go on with whatever is concatenated after it."""
    method = detect(data[pos:pos + 8])
    if method is None or method is Compression.NONE:
        raise CompressionError(f"no compressed stream at offset {pos}: {describe_unknown(data[pos:pos + 8])}")
    try:
        if method in (Compression.GZIP, Compression.XZ):
            dec = (zlib.decompressobj(wbits=31) if method is Compression.GZIP
                   else lzma.LZMADecompressor(format=lzma.FORMAT_XZ))
            out = dec.decompress(data[pos:] if pos else data)
            if not dec.eof:
                raise CompressionError(f"{method} stream at offset {pos} is truncated")
            return method, out, len(data) - len(dec.unused_data)
    except (zlib.error, lzma.LZMAError) as e:
        raise CompressionError(f"corrupt {method} stream at offset {pos}: {e}") from None
    try:
        end = _zstd_frame_end(data, pos) if method is Compression.ZSTD else _lz4_legacy_end(data, pos)
    except IndexError:
        raise CompressionError(f"{method} stream at offset {pos} is truncated") from None
    argv = ["zstd", "-q", "-d", "-c"] if method is Compression.ZSTD else ["lz4", "-q", "-d", "-c"]
    return method, _run_tool(argv, data[pos:end], f"decompress the {method} stream at offset {pos}"), end


def decompress(data: bytes) -> bytes:
    """Decompress data of any supported method (auto-detected); uncompressed data is returned as is."""
    method = detect(data)
    if method is Compression.NONE:
        return bytes(data)
    if method is None:
        raise CompressionError(f"cannot decompress: {describe_unknown(data)}",
                               hint=f"supported: {', '.join(Compression)}")
    return decompress_stream(data, 0)[1]


def microcode_entries(host_root: Path = Path("/")) -> list[tuple[str, bytes]]:
    """CPU microcode for the early uncompressed segment, as (image path, bytes).

    Intel: every blob in lib/firmware/intel-ucode/ concatenated; AMD: every
    lib/firmware/amd-ucode/*.bin concatenated. The kernel's early loader
    picks the matching patch out of the bundle. Empty when the host has none."""
    fw = Path(host_root) / "lib" / "firmware"
    sources = (("kernel/x86/microcode/GenuineIntel.bin", sorted((fw / "intel-ucode").glob("*"))),
               ("kernel/x86/microcode/AuthenticAMD.bin", sorted((fw / "amd-ucode").glob("*.bin"))))
    out: list[tuple[str, bytes]] = []
    for name, files in sources:
        blobs = [f.read_bytes() for f in files if f.is_file() and not f.name.startswith(".")]
        if any(blobs):
            out.append((name, b"".join(blobs)))
    return out
