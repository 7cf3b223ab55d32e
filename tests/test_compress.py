"""Compression: round trips, the kernel's format constraints (xz CRC32, legacy
lz4), determinism, the command-line tools as oracles, stream ends, microcode."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import compress as C
from packer.compress import (Compression, CompressionError, compress, decompress, decompress_stream, detect,
                             microcode_entries)
from packer.cpio import ArchiveBuilder, read_archive

METHODS = tuple(Compression)

SAMPLE = b"070701" + os.urandom(2000) + b"liveinit " * 20000  # looks like a cpio: "none" round-trips too
DECOMPRESSORS = {"gzip": ["gzip", "-dc"], "xz": ["xz", "-dc"], "zstd": ["zstd", "-dcq"],
                 "lz4": ["lz4", "-dcq"]}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_round_trips_and_is_detected(method: str) -> None:
    packed = compress(SAMPLE, method)
    assert detect(packed) == method
    assert decompress(packed) == SAMPLE
    if method != "none":
        assert len(packed) < len(SAMPLE) // 10


@pytest.mark.parametrize("method", METHODS[1:])
def test_the_standard_tools_decompress_our_output(method: str) -> None:
    packed = compress(SAMPLE, method)
    out = subprocess.run(DECOMPRESSORS[method], input=packed, capture_output=True, check=True)
    assert out.stdout == SAMPLE


@pytest.mark.parametrize("method", METHODS)
def test_output_is_deterministic(method: str) -> None:
    assert compress(SAMPLE, method) == compress(SAMPLE, method)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["gzip", "xz"]), st.binary(max_size=5000), st.integers(1, 9))
def test_stdlib_methods_round_trip_any_data(method: str, data: bytes, level: int) -> None:
    assert decompress(compress(data, method, level)) == data


@pytest.mark.parametrize("method", ["zstd", "lz4"])
@pytest.mark.parametrize("data", [b"", b"x", os.urandom(300_000), b"abc" * 100_000])
def test_tool_methods_round_trip_edge_sizes(method: str, data: bytes) -> None:
    assert decompress(compress(data, method, 3)) == data


def test_xz_uses_crc32_check_the_kernel_accepts(tmp_path: Path) -> None:
    packed = compress(SAMPLE, "xz")
    # Stream header: magic, then stream flags 0x00 <check id>; CRC32 is id 1.
    assert packed[:6] == b"\xfd7zXZ\x00" and packed[6:8] == b"\x00\x01"
    # The footer repeats the flags before its "YZ" magic.
    assert packed[-4:] == b"\x00\x01YZ"
    (tmp_path / "img.xz").write_bytes(packed)
    listing = subprocess.run(["xz", "--robot", "--list", str(tmp_path / "img.xz")], capture_output=True,
                             text=True, check=True).stdout
    assert [line.split("\t")[6] for line in listing.splitlines() if line.startswith("file")] == ["CRC32"]


def test_lz4_uses_the_legacy_frame(tmp_path: Path) -> None:
    packed = compress(SAMPLE, "lz4")
    assert int.from_bytes(packed[:4], "little") == 0x184C2102
    # The modern frame (what plain `lz4` writes) is refused with a reason.
    modern = subprocess.run(["lz4", "-c", "-q"], input=SAMPLE, capture_output=True, check=True).stdout
    assert detect(modern) is None
    with pytest.raises(CompressionError, match="legacy"):
        decompress(modern)


def test_gzip_header_has_no_timestamp_or_name() -> None:
    packed = compress(SAMPLE, "gzip")
    assert packed[:3] == b"\x1f\x8b\x08"
    assert packed[3] == 0  # FLG: no FNAME, no FCOMMENT, no FEXTRA
    assert packed[4:8] == b"\0\0\0\0"  # MTIME


@pytest.mark.parametrize("method", METHODS[1:])
def test_decompress_stream_finds_the_end_of_the_stream(method: str) -> None:
    packed = compress(SAMPLE, method, 3 if method in ("zstd", "lz4") else None)
    trailing = b"\0" * 8 + compress(b"070701next", "gzip")
    got_method, plain, end = decompress_stream(b"PREFIX" + packed + trailing, 6)
    assert (got_method, plain, end) == (method, SAMPLE, 6 + len(packed))


def test_lz4_streams_longer_than_one_legacy_block() -> None:
    # Legacy blocks hold 8 MiB each: a bigger input spans several blocks.
    data = os.urandom(1 << 16) * 140  # ~9 MiB
    packed = compress(data, "lz4", 1)
    assert decompress_stream(packed + b"\0" * 16)[1:] == (data, len(packed))


def test_zstd_stream_with_many_blocks_and_a_checksum() -> None:
    data = os.urandom(700_000)  # incompressible: raw blocks of 128 KiB
    packed = compress(data, "zstd", 1)
    assert decompress_stream(packed + b"tail")[1:] == (data, len(packed))


@pytest.mark.parametrize("method, level", [("gzip", 0), ("gzip", 10), ("xz", 10), ("zstd", 20), ("lz4", 13)])
def test_levels_out_of_range_are_refused(method: str, level: int) -> None:
    with pytest.raises(CompressionError, match="out of range") as e:
        compress(b"x", method, level)
    assert "level from" in e.value.hint


def test_unknown_method_and_unknown_data_are_clear_errors() -> None:
    with pytest.raises(CompressionError, match="unknown compression 'bz2'") as e:
        compress(b"x", "bz2")
    assert "gzip" in e.value.hint
    with pytest.raises(CompressionError, match="bzip2"):
        decompress(b"BZh91AY&SY....")
    with pytest.raises(CompressionError, match="unknown data"):
        decompress(b"\x00\x01\x02")
    with pytest.raises(CompressionError, match="truncated"):
        decompress(compress(SAMPLE, "xz")[:100])
    with pytest.raises(CompressionError, match="zstd"):
        decompress(compress(SAMPLE, "zstd")[:50])


def test_missing_tool_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CompressionError, match="zstd is not installed") as e:
        compress(b"x", "zstd")
    assert e.value.hint == "apt-get install zstd, or choose --compress gzip or xz"
    with pytest.raises(CompressionError, match="lz4 is not installed"):
        compress(b"x", "lz4")


def test_microcode_from_a_fake_host_root(tmp_path: Path) -> None:
    assert microcode_entries(tmp_path) == []
    intel = tmp_path / "lib/firmware/intel-ucode"
    amd = tmp_path / "lib/firmware/amd-ucode"
    intel.mkdir(parents=True)
    amd.mkdir(parents=True)
    (intel / "06-9e-0a").write_bytes(b"I2")
    (intel / "06-8e-09").write_bytes(b"I1")
    (amd / "microcode_amd_fam17h.bin").write_bytes(b"A2")
    (amd / "microcode_amd.bin").write_bytes(b"A1")
    (amd / "microcode_amd.bin.asc").write_bytes(b"signature, not microcode")
    assert microcode_entries(tmp_path) == [
        ("kernel/x86/microcode/GenuineIntel.bin", b"I1I2"),
        ("kernel/x86/microcode/AuthenticAMD.bin", b"A1A2"),
    ]
    (amd / "microcode_amd.bin").unlink()
    (amd / "microcode_amd_fam17h.bin").unlink()
    assert [n for n, _ in microcode_entries(tmp_path)] == ["kernel/x86/microcode/GenuineIntel.bin"]


def test_microcode_makes_an_early_segment_the_kernel_can_find(tmp_path: Path) -> None:
    intel = tmp_path / "lib/firmware/intel-ucode"
    intel.mkdir(parents=True)
    (intel / "06-8e-09").write_bytes(b"\x01\x00\x00\x00" + b"U" * 60)
    b = ArchiveBuilder()
    for name, blob in microcode_entries(tmp_path):
        b.add_file(name, data=blob)
    buf = io.BytesIO()
    b.write(buf)
    early = buf.getvalue()
    main = compress(buf.getvalue(), "xz")
    segs = read_archive(early + main)
    assert [s.compression for s in segs] == ["none", "xz"]
    # The early loader looks for this exact path in an uncompressed newc archive.
    assert b"kernel/x86/microcode/GenuineIntel.bin\0" in early
    ucode = [e for e in segs[0].entries if e.name == "kernel/x86/microcode/GenuineIntel.bin"]
    assert ucode and ucode[0].data == b"\x01\x00\x00\x00" + b"U" * 60


def test_xz_x86_filter_and_extreme_mode_round_trip_through_xz(tmp_path: Path) -> None:
    elf = Path("/usr/bin/env").read_bytes()
    plain = compress(elf, "xz", 9)
    bcj = C.Codec("xz", 9, extreme=True, x86=True).compress(elf)
    assert len(bcj) < len(plain)                        # the filter pays on linked x86 code
    assert decompress(bcj) == elf
    f = tmp_path / "env.xz"
    f.write_bytes(bcj)
    assert subprocess.run(["xz", "-dc", str(f)], capture_output=True, check=True).stdout == elf
    listing = subprocess.run(["xz", "--robot", "--list", "-vv", str(f)], capture_output=True, text=True,
                             check=True).stdout
    block = next(line.split("\t") for line in listing.splitlines() if line.startswith("block\t"))
    assert "CRC32" in block and block[-1].startswith("--x86 --lzma2")   # what the kernel decodes
    # The dictionary fits the data (the kernel allocates all of it), not the preset's 64 MiB.
    assert block[-1].endswith("dict=48KiB") and C.xz_dict_size(len(elf), 9) == 48 << 10


def test_xz_dictionary_is_the_smallest_lzma2_size_that_holds_the_data() -> None:
    assert C.xz_dict_size(1, 9) == 4096
    assert C.xz_dict_size(35_319_808, 9) == 48 << 20       # the kernel segment: 48 MiB, not 64
    assert C.xz_dict_size(100 << 20, 9) == 64 << 20        # never beyond the preset's
    assert C.xz_dict_size(100 << 20, 6) == 8 << 20
    data = SAMPLE * 3
    assert decompress(compress(data, "xz", 9)) == data


def test_codec_names_and_refusals() -> None:
    assert str(C.Codec("xz", 9, extreme=True, x86=True)) == "xz -9e +x86"
    assert str(C.Codec("zstd")) == "zstd -10" and str(C.Codec("none")) == "none"
    with pytest.raises(CompressionError, match="x86"):
        compress(SAMPLE, "zstd", x86=True)


def test_zstd_output_does_not_depend_on_the_thread_count() -> None:
    data = SAMPLE * 20
    ours = compress(data, "zstd", 19)                   # -T0: as many threads as cores
    for threads in ("-T1", "-T2", "-T3"):
        other = subprocess.run(["zstd", "-q", "-c", "-19", threads], input=data, capture_output=True,
                               check=True).stdout
        assert other == ours, threads
    assert decompress(ours) == data
