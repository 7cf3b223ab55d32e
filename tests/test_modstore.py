"""Modules stored compressed one by one (packer/modstore.py, packer.compress.compress_module):
every format PID 1 reads gives back the original bytes, signature included; the cache
serves the same bytes as a cold run; formats the runtime cannot read are refused."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liveinit import modfile
from packer import modstore
from packer.compress import Compression, CompressionError, compress_module, module_suffix
from packer.kernel import KernelTree

SIGNATURE_MAGIC = b"~Module signature appended~\n"


@given(st.binary(max_size=4096), st.sampled_from([Compression.NONE, Compression.GZIP, Compression.XZ]))
@settings(max_examples=60, deadline=None)
def test_every_stored_format_decompresses_to_the_original(data: bytes, method: Compression) -> None:
    name = "kernel/x/m.ko" + module_suffix(method)
    blob = compress_module(data, method)
    assert modfile.decompress(name, blob) == data
    assert compress_module(data, method) == blob                     # deterministic


def test_a_signed_module_survives_byte_for_byte(kernel: KernelTree) -> None:
    # Debian signs its modules (an appended signature): the bytes init_module gets must be the .ko's.
    ko = next(p for p in sorted(kernel.moddir.rglob("isofs.ko*")))
    raw = modfile.read_module(str(ko))
    assert raw.endswith(SIGNATURE_MAGIC)
    for method in (Compression.GZIP, Compression.XZ):
        assert modfile.decompress("isofs.ko" + module_suffix(method), compress_module(raw, method)) == raw


def _varint(b: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        n |= (b[i] & 0x7F) << shift
        shift += 7
        i += 1
        if not b[i - 1] & 0x80:
            return n, i


def _lzma2_dict_size(blob: bytes) -> int:
    """The dictionary an .xz file's first block asks the decoder for (xz file format 3.1)."""
    flags, i = blob[13], 14
    if flags & 0x40:
        _, i = _varint(blob, i)           # compressed size
    if flags & 0x80:
        _, i = _varint(blob, i)           # uncompressed size
    filter_id, i = _varint(blob, i)
    assert filter_id == 0x21              # LZMA2 alone: no BCJ filter (it makes modules bigger)
    _, i = _varint(blob, i)               # properties size (1)
    bits = blob[i]
    return (2 | (bits & 1)) << (bits // 2 + 11)


def test_xz_modules_use_crc32_and_a_dictionary_no_larger_than_the_module() -> None:
    data = b"\x7fELF" + bytes(range(256)) * 400
    blob = compress_module(data, Compression.XZ)
    assert blob[:6] == b"\xfd7zXZ\x00" and blob[7] & 0x0F == 0x01          # CRC32, as kmod's xz modules
    assert len(data) <= _lzma2_dict_size(blob) <= 2 * len(data)          # not xz -9's 64 MiB


@pytest.mark.parametrize("method", [Compression.ZSTD, Compression.LZ4])
def test_formats_the_runtime_cannot_read_are_refused(method: Compression) -> None:
    with pytest.raises(CompressionError, match="cannot be stored"):
        compress_module(b"x", method)


def test_the_cache_gives_the_same_bytes_and_no_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mods = [(f"m{i}", os.urandom(64) + b"same tail " * 500) for i in range(5)]
    cold = modstore.ModuleStore(tmp_path).compress_all(mods)
    assert set(cold) == {n for n, _ in mods}
    calls: list[bytes] = []

    def counting(data: bytes, method: str) -> bytes:
        calls.append(data)
        return b""
    monkeypatch.setattr(modstore, "compress_module", counting)
    warm_store = modstore.ModuleStore(tmp_path)
    warm = warm_store.compress_all(mods)
    assert warm == cold and not calls and warm_store.hits == 5
    # Other bytes under the same name are compressed again, never served stale.
    changed = modstore.ModuleStore(tmp_path).compress_all([("m0", b"other")])
    assert calls == [b"other"] and changed == {"m0": b""}


def test_an_unwritable_cache_still_compresses(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = modstore.ModuleStore(blocker).compress_all([("m", b"abc" * 100)])
    assert modfile.decompress("m.ko.xz", out["m"]) == b"abc" * 100
    assert modstore.ModuleStore(None).compress_all([("m", b"abc" * 100)]) == out
