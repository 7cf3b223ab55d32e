"""The segmented image and its compressed-segment cache: warm and cold packs
give the same bytes, a changed input is never served from the cache, every
segment carries its own parent directories, and `liveinit ls` shows them all."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from packer import cli, initramfs, segments
from packer.compress import Codec
from packer.config import PackConfig
from packer.cpio import ArchiveBuilder, read_archive, segment_bytes
from packer.errors import CommandError
from packer.kernel import KernelTree

FAST = {"compress": "xz", "compress_level": 0, "groups": ("live",), "microcode": False}


def _pack(out: Path, kernel: KernelTree, cache: Path, **kw: object) -> initramfs.PackResult:
    kw.setdefault("moddir", kernel.moddir)
    return initramfs.build(PackConfig(output=out, cache=cache, **kw))  # type: ignore[arg-type]


def test_warm_pack_equals_cold_pack(tmp_path: Path, kernel: KernelTree) -> None:
    cache = tmp_path / "cache"
    cold = _pack(tmp_path / "cold.img", kernel, cache, **FAST)
    warm = _pack(tmp_path / "warm.img", kernel, cache, **FAST)
    # The modules segment is stored, never compressed nor cached: its files are compressed already.
    assert [s.cached for s in cold.segments] == [False, False, False, False]
    assert [s.cached for s in warm.segments] == [False, True, True, True]
    assert cold.output.read_bytes() == warm.output.read_bytes()
    assert [s.name for s in cold.segments] == list(segments.ORDER)
    assert cold.segments[0].codec == "none" and cold.segments[0].compressed == cold.segments[0].uncompressed
    assert len(list((cache / segments.CACHE_DIR).glob("*.seg"))) == 3
    # No cache at all (another directory): the same bytes again.
    other = _pack(tmp_path / "other.img", kernel, tmp_path / "cache2", **FAST)
    assert other.output.read_bytes() == cold.output.read_bytes()


@pytest.mark.slow
def test_default_profile_cold_equals_warm(tmp_path: Path, kernel: KernelTree) -> None:
    # The real default (stored .ko.xz modules, then zstd -19 for the rest) from an empty cache,
    # against the same pack through the shared (warm) cache.
    base = {"moddir": kernel.moddir, "microcode": False}
    warm = initramfs.build(PackConfig(output=tmp_path / "warm.img", **base))  # type: ignore[arg-type]
    cold = _pack(tmp_path / "cold.img", kernel, tmp_path / "empty-cache")
    assert not any(s.cached for s in cold.segments)
    assert cold.output.read_bytes() == warm.output.read_bytes()
    assert [s.codec for s in cold.segments] == ["none", "zstd -19", "zstd -19", "zstd -19"]
    # The size target (a third of initramfs-tools MODULES=most) is the benchmark's to
    # print against the peers measured in the same run, not a constant here.


def test_a_changed_input_is_recompressed(tmp_path: Path, kernel: KernelTree) -> None:
    cache = tmp_path / "cache"
    note = tmp_path / "note"
    note.write_bytes(b"first")
    st = note.stat()
    one = _pack(tmp_path / "one.img", kernel, cache, files=(f"{note}:/etc/note",), **FAST)
    # Same size, same mtime, other bytes: the key is the content, not the stat.
    note.write_bytes(b"again")
    os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns))
    two = _pack(tmp_path / "two.img", kernel, cache, files=(f"{note}:/etc/note",), **FAST)
    assert [s.cached for s in two.segments] == [False, True, True, False]   # stored, cached, cached, redone
    tree = {e.name: e for seg in read_archive(two.output.read_bytes()) for e in seg.entries}
    assert tree["etc/note"].data == b"again"
    # Another module selection (nvme: expected at boot, so plain in the kernel segment):
    # the kernel segment changes, the python one is reused.
    three = _pack(tmp_path / "three.img", kernel, cache, modules=("nvme",), **FAST)
    assert [s.cached for s in three.segments][1:3] == [False, True]
    assert one.output.read_bytes() != two.output.read_bytes()


def test_codec_settings_are_part_of_the_key(tmp_path: Path) -> None:
    cache = segments.SegmentCache(tmp_path)
    data = b"same bytes " * 1000
    keys = {cache.key(data, c) for c in (Codec("xz", 9), Codec("xz", 9, x86=True), Codec("xz", 6),
                                         Codec("zstd", 19), Codec("gzip", 9))}
    assert len(keys) == 5
    assert cache.key(data, Codec("xz", 9)) != cache.key(data + b"!", Codec("xz", 9))
    out = segments.compress_all([("a", data, 1, Codec("xz", 6)), ("b", data, 1, Codec("gzip", 1))], cache)
    again = segments.compress_all([("a", data, 1, Codec("xz", 6)), ("b", data, 1, Codec("gzip", 1))], cache)
    assert [b for b, _ in out] == [b for b, _ in again] and all(i.cached for _, i in again)


def test_a_damaged_cache_file_is_a_miss(tmp_path: Path, kernel: KernelTree) -> None:
    cache = tmp_path / "cache"
    good = _pack(tmp_path / "good.img", kernel, cache, **FAST).output.read_bytes()
    for f in (cache / segments.CACHE_DIR).glob("*.seg"):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF                        # one flipped byte in each
        f.write_bytes(bytes(data))
    again = _pack(tmp_path / "again.img", kernel, cache, **FAST)
    assert not any(s.cached for s in again.segments)
    assert again.output.read_bytes() == good


def test_cache_prunes_least_recently_used(tmp_path: Path) -> None:
    cache = segments.SegmentCache(tmp_path, limit=2500)
    for i, name in enumerate(("old", "mid", "new")):
        cache.put(name, bytes(968))                       # + the 32-byte digest: 1000 on disk
        os.utime(cache.root / f"{name}.seg", (1000 + i, 1000 + i))
    cache.prune()
    assert sorted(p.stem for p in cache.root.glob("*.seg")) == ["mid", "new"]
    assert cache.get("old") is None and cache.get("new") == bytes(968)


def test_unwritable_cache_still_packs(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = segments.SegmentCache(blocker)
    [(blob, info)] = segments.compress_all([("a", b"x" * 100, 1, Codec("gzip", 1))], cache)
    assert not info.cached and blob.startswith(b"\x1f\x8b")
    assert cache.write_error and "file" in cache.write_error      # the pack says why it stays slow


def test_auto_profile_refuses_a_bare_level() -> None:
    with pytest.raises(CommandError, match="compress-level"):
        segments.codecs("auto", 5)
    assert set(segments.codecs("zstd", 3).values()) == {Codec("zstd", 3), segments.STORED}
    assert segments.codecs("zstd", 3)[segments.MODULES] == segments.STORED    # never compressed twice


def test_split_gives_every_segment_its_parents() -> None:
    ar = ArchiveBuilder()
    ar.add_dir("tmp", 0o1777)
    ar.add_dir("usr/lib/secret", 0o700)
    ar.add_file("usr/lib/secret/key", data=b"k")
    ar.add_file("usr/lib/modules/6.1/kernel/a.ko", data=b"ko")
    ar.add_file("tmp/x", data=b"x")
    parts = ar.split(lambda n: "kernel" if "modules" in n else "runtime", ("kernel", "python", "runtime"))
    assert list(parts) == ["kernel", "runtime"]               # empty segments are left out
    assert parts["kernel"].names() == ["usr", "usr/lib", "usr/lib/modules", "usr/lib/modules/6.1",
                                       "usr/lib/modules/6.1/kernel", "usr/lib/modules/6.1/kernel/a.ko"]
    assert "usr/lib/modules/6.1/kernel/a.ko" not in parts["runtime"]


def _check_parents(img: Path) -> list[dict[str, int]]:
    """Per segment {dir: mode}; asserts each entry's parents come earlier in its own segment."""
    modes = []
    for seg in read_archive(img.read_bytes()):
        dirs: dict[str, int] = {}
        for e in seg.entries:
            parent = e.name.rpartition("/")[0]
            assert not parent or parent in dirs, f"{e.name} before its parent in segment {seg.offset}"
            if e.kind == "dir":
                dirs[e.name] = e.mode
        modes.append(dirs)
    return modes


def test_every_segment_carries_its_parent_dirs_with_one_mode(tmp_path: Path, kernel: KernelTree) -> None:
    res = _pack(tmp_path / "p.img", kernel, tmp_path / "cache", busybox=True, **FAST)
    per_seg = _check_parents(res.output)
    assert len(per_seg) == 4
    seen: dict[str, int] = {}
    for dirs in per_seg:
        for name, mode in dirs.items():
            assert seen.setdefault(name, mode) == mode, name      # a later segment never changes a mode
    assert stat.S_IMODE(seen["tmp"]) == 0o1777
    # Unpacked one by one into empty directories, each segment stands alone (bsdtar as the oracle).
    for i, (_m, raw) in enumerate(segment_bytes(res.output.read_bytes())):
        d = tmp_path / f"alone{i}"
        d.mkdir()
        subprocess.run(["bsdtar", "-xpf", "-", "-C", str(d)], input=raw, check=True)
        assert any(d.iterdir())


def test_ls_shows_every_segment(tmp_path: Path, kernel: KernelTree,
                                capsys: pytest.CaptureFixture[str]) -> None:
    res = _pack(tmp_path / "p.img", kernel, tmp_path / "cache", compress="zstd", compress_level=1,
                groups=("live",), microcode=False)
    capsys.readouterr()
    assert cli.main(["ls", str(res.output)]) == 0
    out = capsys.readouterr().out
    heads = [line for line in out.splitlines() if line.startswith("segment ")]
    assert len(heads) == 4 and ": none at offset 0" in heads[0]
    assert all(": zstd at offset" in h for h in heads[1:])
    assert "usr/lib/modules/" in out and "usr/bin/python3.11" in out and " init" in out
