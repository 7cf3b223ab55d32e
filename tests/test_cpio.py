"""The newc writer and reader: round trips, GNU cpio and bsdtar as oracles,
byte reproducibility, concatenated segments, garbage, and `liveinit ls/extract`."""
from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import tempfile
import tracemalloc
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packer import cli
from packer.cmd_archive import extract, format_entry
from packer.compress import Compression, compress
from packer.cpio import ArchiveBuilder, ArchiveError, flatten, image_bytes, read_archive

METHODS = tuple(Compression)

IS_ROOT = os.geteuid() == 0
NODE_KINDS = {stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo"}


# -- a tree description, materialised as sources and as the expected result --

@dataclass(frozen=True)
class Spec:
    """name -> ("dir", perm) | ("file", perm, data, link_src) | ("symlink", target)
    | ("char"/"block"/"fifo", perm, rdev)."""

    items: dict[str, tuple]


def build(spec: Spec, workdir: Path, order: list[str] | None = None) -> ArchiveBuilder:
    """Sources on disk (hard links made with os.link), then an ArchiveBuilder fed in `order`."""
    srcdir = workdir / "src"
    srcdir.mkdir(exist_ok=True)
    srcs: dict[str, Path] = {}
    for i, (name, item) in enumerate(sorted(spec.items.items())):
        if item[0] == "file":
            _, perm, data, link_src = item
            p = srcdir / f"s{i}"
            if link_src is None:
                p.write_bytes(data)
                os.chmod(p, perm)
            srcs[name] = p
    for name, item in spec.items.items():
        if item[0] == "file" and item[3] is not None:
            os.link(srcs[item[3]], srcs[name])
    b = ArchiveBuilder()
    for name in order or list(spec.items):
        item = spec.items[name]
        if item[0] == "dir":
            b.add_dir(name, item[1])
        elif item[0] == "file":
            b.add_file(name, src=srcs[name])
        elif item[0] == "symlink":
            b.add_symlink(name, item[1])
        elif item[0] == "fifo":
            b.add_fifo(name, item[1])
        else:
            b.add_device(name, item[0][0], item[2][0], item[2][1], mode=item[1])
    return b


def expected(spec: Spec, with_nodes: bool = True) -> dict[str, tuple]:
    groups: dict[str, set[str]] = {}
    for name, item in spec.items.items():
        if item[0] == "file":
            root = item[3] or name
            groups.setdefault(root, set()).add(name)
    out: dict[str, tuple] = {}
    for name in spec.items:  # implied parents
        parts = name.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = ("dir", 0o755)
    for name, item in spec.items.items():
        kind = item[0]
        if kind == "dir":
            out[name] = ("dir", item[1])
        elif kind == "file":
            root = item[3] or name
            data = spec.items[root][2]
            perm = spec.items[root][1]
            group = frozenset(groups[root]) if len(groups[root]) > 1 else None
            out[name] = ("file", perm, hashlib.sha256(data).hexdigest(), group)
        elif kind == "symlink":
            out[name] = ("symlink", item[1])
        elif with_nodes:
            out[name] = (kind, item[1], tuple(item[2]) if kind != "fifo" else (0, 0))
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """What is on disk under root, in the same shape as expected()."""
    out: dict[str, tuple] = {}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = p.relative_to(root).as_posix()
            st_ = os.lstat(p)
            perm = stat.S_IMODE(st_.st_mode)
            if stat.S_ISDIR(st_.st_mode):
                out[rel] = ("dir", perm)
            elif stat.S_ISLNK(st_.st_mode):
                out[rel] = ("symlink", os.readlink(p))
            elif stat.S_ISREG(st_.st_mode):
                out[rel] = ("file", perm, hashlib.sha256(p.read_bytes()).hexdigest(), st_.st_ino)
                inodes.setdefault(st_.st_ino, set()).add(rel)
            else:
                kind = NODE_KINDS[stat.S_IFMT(st_.st_mode)]
                rdev = (os.major(st_.st_rdev), os.minor(st_.st_rdev)) if kind != "fifo" else (0, 0)
                out[rel] = (kind, perm, rdev)
    for rel, v in out.items():
        if v[0] == "file":
            group = inodes[v[3]]
            out[rel] = (*v[:3], frozenset(group) if len(group) > 1 else None)
    return out


def archive_bytes(b: ArchiveBuilder, mtime: int = 0) -> bytes:
    buf = io.BytesIO()
    n = b.write(buf, mtime=mtime)
    assert n == len(buf.getvalue())
    return buf.getvalue()


# A fixed tree with every kind of entry, awkward names and a multi-chunk file.
FIXED = Spec({
    "bin": ("dir", 0o755),
    "bin/busybox": ("file", 0o755, b"\x7fELF" + bytes(range(256)) * 9, None),
    "bin/sh": ("symlink", "busybox"),
    "bin/hard": ("file", 0o755, b"", "bin/busybox"),
    "sbin/hard2": ("file", 0o755, b"", "bin/busybox"),
    "usr/lib/empty": ("file", 0o600, b"", None),
    "usr/lib/big.bin": ("file", 0o644, os.urandom(3 * 1024 * 1024 + 7), None),
    "usr/lib/with space/ünïcode name": ("file", 0o4755, b"setuid\n", None),
    "usr/lib/abs": ("symlink", "/usr/lib/empty"),
    "usr/lib/dangling": ("symlink", "../nowhere/at all"),
    "etc": ("dir", 0o700),
    "etc/readonly": ("dir", 0o555),
    "etc/readonly/file": ("file", 0o444, b"ro\n", None),
    "tmp": ("dir", 0o1777),
    "dev/console": ("char", 0o600, (5, 1)),
    "dev/sda": ("block", 0o660, (8, 0)),
    "run/fifo": ("fifo", 0o644, (0, 0)),
})


# -- properties of the written archive ------------------------------------

def test_fixed_tree_round_trips_through_reader_and_extract(tmp_path: Path) -> None:
    data = archive_bytes(build(FIXED, tmp_path), mtime=1_700_000_000)
    segs = read_archive(data)
    assert [(s.compression, s.offset) for s in segs] == [("none", 0)]
    entries = segs[0].entries
    names = [e.name for e in entries]
    # Parents before children, implied parents created, nothing else.
    assert set(names) == set(FIXED.items) | {"sbin", "usr", "usr/lib", "usr/lib/with space", "dev", "run"}
    for i, n in enumerate(names):
        if "/" in n:
            assert names.index(n.rsplit("/", 1)[0]) < i
    assert all(e.uid == 0 and e.gid == 0 for e in entries)
    assert all(e.mtime <= 1_700_000_000 for e in entries)
    # The busybox group: one inode, nlink 3, data stored exactly once (on the last link).
    group = [e for e in entries if e.name in ("bin/busybox", "bin/hard", "sbin/hard2")]
    assert len({e.ino for e in group}) == 1 and {e.nlink for e in group} == {3}
    assert [e.size for e in group] == [0, 0, len(FIXED.items["bin/busybox"][2])]
    others = [e.ino for e in entries if e not in group]
    assert len(set(others)) == len(others) and group[0].ino not in others
    assert len(data) % 512 == 0
    out = tmp_path / "out"
    result = extract(segs, out, make_nodes=IS_ROOT)
    assert snapshot(out) == expected(FIXED, with_nodes=IS_ROOT)
    assert {n for n, _ in result.skipped} == (set() if IS_ROOT else {"dev/console", "dev/sda", "run/fifo"})


def _run(cmd: list[str], **kw: object) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _check_long_listing(lines: list[str], entries: list) -> None:
    """Every `-tv` line shows the mode string and name (and target) we wrote."""
    by_name = {e.name: e for e in entries}
    assert len(lines) == len(by_name)
    for line in lines:
        matches = [e for e in entries if line.startswith(stat.filemode(e.mode)) and (
            line.endswith(f" {e.name}") or line.endswith(f" {e.name} -> {e.target}")
            or f" {e.name} link to " in line)]
        assert matches, line


@pytest.mark.parametrize("tool", ["cpio", "bsdtar"])
def test_gnu_cpio_and_bsdtar_agree_with_what_was_written(tool: str, tmp_path: Path) -> None:
    archive = tmp_path / "a.cpio"
    archive.write_bytes(archive_bytes(build(FIXED, tmp_path)))
    entries = read_archive(archive.read_bytes())[0].entries
    out = tmp_path / "out"
    out.mkdir()
    if tool == "cpio":
        names = _run(["cpio", "-t", "--quiet", "-F", str(archive)]).splitlines()
        long = _run(["cpio", "-tv", "--quiet", "-F", str(archive)]).splitlines()
        _run(["sh", "-c", f"umask 0; cpio -idm --quiet --no-absolute-filenames -F '{archive}'"], cwd=out)
    else:
        names = _run(["bsdtar", "-tf", str(archive)]).splitlines()
        long = _run(["bsdtar", "-tvf", str(archive)]).splitlines()
        _run(["sh", "-c", f"umask 0; bsdtar -xpf '{archive}' -C '{out}'"])
    assert names == [e.name for e in entries]
    _check_long_listing(long, entries)
    assert snapshot(out) == expected(FIXED, with_nodes=IS_ROOT)


# -- random trees -----------------------------------------------------------

COMPONENT = st.text(alphabet="abcxyz019 -_.é~", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
FILE_PERMS = st.sampled_from([0o644, 0o755, 0o600, 0o4755, 0o444, 0o700, 0o640])
DIR_PERMS = st.sampled_from([0o755, 0o700, 0o555, 0o1777, 0o750])


@st.composite
def trees(draw: st.DrawFn) -> tuple[Spec, list[str]]:
    paths = draw(st.lists(st.lists(COMPONENT, min_size=1, max_size=3).map(tuple),
                          min_size=1, max_size=14, unique=True))
    prefixes = {p[:i] for p in paths for i in range(1, len(p))}
    items: dict[str, tuple] = {}
    files: list[str] = []
    for p in sorted(set(paths) | prefixes):
        name = "/".join(p)
        if p in prefixes:
            items[name] = ("dir", draw(DIR_PERMS))
            continue
        kind = draw(st.sampled_from(["file", "file", "symlink", "hardlink", "dir", "node"]))
        if kind == "dir":
            items[name] = ("dir", draw(DIR_PERMS))
        elif kind == "node" and IS_ROOT:  # GNU cpio and bsdtar need root to mknod
            node = draw(st.sampled_from(["char", "block", "fifo"]))
            rdev = (0, 0) if node == "fifo" else (draw(st.integers(0, 4095)), draw(st.integers(0, 255)))
            items[name] = (node, draw(FILE_PERMS), rdev)
        elif kind == "hardlink" and files:
            items[name] = ("file", 0, b"", draw(st.sampled_from(files)))
        elif kind == "symlink":
            items[name] = ("symlink", draw(st.text(alphabet="ab/._ -é", min_size=1, max_size=20)))
        else:
            items[name] = ("file", draw(FILE_PERMS), draw(st.binary(max_size=600)), None)
            files.append(name)
    order = draw(st.permutations(sorted(items)))
    return Spec(items), list(order)


def _fixup(spec: Spec) -> Spec:
    """Hard-link entries inherit their source's permission bits."""
    return Spec({n: (("file", spec.items[v[3]][1], b"", v[3]) if v[0] == "file" and v[3] else v)
                 for n, v in spec.items.items()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_random_trees_round_trip(tree: tuple[Spec, list[str]]) -> None:
    spec, order = _fixup(tree[0]), tree[1]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        data = archive_bytes(build(spec, work, order))
        # Adding in another order writes the same bytes.
        (work / "again").mkdir()
        assert archive_bytes(build(spec, work / "again", sorted(order))) == data
        segs = read_archive(data)
        stored = sum(e.size for e in segs[0].entries if stat.S_ISREG(e.mode))
        unique = sum(len(v[2]) for v in spec.items.values() if v[0] == "file" and v[3] is None)
        assert stored == unique  # hard-linked data stored once
        extract(segs, work / "out")
        assert snapshot(work / "out") == expected(spec)


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_random_trees_extract_identically_with_gnu_cpio_and_bsdtar(tree: tuple[Spec, list[str]]) -> None:
    spec, order = _fixup(tree[0]), tree[1]
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        archive = work / "a.cpio"
        archive.write_bytes(archive_bytes(build(spec, work, order)))
        names = [e.name for e in read_archive(archive.read_bytes())[0].entries]
        for tool in ("cpio", "bsdtar"):
            out = work / tool
            out.mkdir()
            if tool == "cpio":
                assert _run(["cpio", "-t", "--quiet", "-F", str(archive)]).splitlines() == names
                _run(["sh", "-c", f"umask 0; cpio -idm --quiet -F '{archive}'"], cwd=out)
            else:
                assert _run(["bsdtar", "-tf", str(archive)]).splitlines() == names
                _run(["sh", "-c", f"umask 0; bsdtar -xpf '{archive}' -C '{out}'"])
            assert snapshot(out) == expected(spec), tool


# -- reproducibility and the builder's rules ------------------------------

def test_two_writes_are_byte_identical_and_mtimes_are_clamped(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = archive_bytes(build(FIXED, tmp_path / "a"), 1000)
    (tmp_path / "b").mkdir()
    b = build(FIXED, tmp_path / "b", list(reversed(FIXED.items)))
    # Fresh sources (new mtimes, new inode numbers) must not change the bytes.
    assert archive_bytes(b, 1000) == first
    assert archive_bytes(b, 1000) == first  # writing twice from one builder
    assert {e.mtime for e in read_archive(first)[0].entries} == {1000}
    old = tmp_path / "old"
    old.write_bytes(b"x")
    os.utime(old, (500, 500))
    b2 = ArchiveBuilder()
    b2.add_file("old", src=old)
    b2.add_file("new", data=b"y")
    mtimes = {e.name: e.mtime for e in read_archive(archive_bytes(b2, 1000))[0].entries}
    assert mtimes == {"new": 1000, "old": 500}
    assert {e.mtime for e in read_archive(archive_bytes(b2))[0].entries} == {0}


def test_builder_normalises_names_and_refuses_bad_ones(tmp_path: Path) -> None:
    b = ArchiveBuilder()
    b.add_file("/usr//bin/./tool", data=b"t", mode=0o755)
    assert b.names() == ["usr", "usr/bin", "usr/bin/tool"]
    assert "usr/bin/tool" in b and "/usr/bin/tool" in b and "usr/sbin" not in b and "../x" not in b
    b.add_dir("usr", 0o700)  # an implied parent takes the explicit mode
    assert read_archive(archive_bytes(b))[0].entries[0].mode == stat.S_IFDIR | 0o700
    b.add_file("usr/bin/tool", data=b"replaced")
    assert read_archive(archive_bytes(b))[0].entries[-1].data == b"replaced"
    for bad in ("../etc/passwd", "a/../../b", "/", "a\0b"):
        with pytest.raises(ArchiveError):
            b.add_file(bad, data=b"")
    b.add_symlink("lib", "usr/lib")
    with pytest.raises(ArchiveError, match="'lib' is a symlink"):
        b.add_file("lib/modules/x", data=b"")
    with pytest.raises(ArchiveError, match="already a dir"):
        b.add_file("usr/bin", data=b"")
    with pytest.raises(ArchiveError, match="exactly one"):
        b.add_file("x")
    with pytest.raises(ArchiveError, match="not a regular file"):
        b.add_file("x", src=tmp_path)
    with pytest.raises(ArchiveError, match="No such file"):
        b.add_file("x", src=tmp_path / "missing")
    with pytest.raises(ArchiveError, match="'c' or 'b'"):
        b.add_device("dev/x", "p", 1, 1)


def test_same_source_with_different_modes_is_not_linked(tmp_path: Path) -> None:
    # The kernel links only entries with equal (ino, mode): a shared inode with
    # two modes would leave one name empty at boot.
    src = tmp_path / "f"
    src.write_bytes(b"data")
    b = ArchiveBuilder()
    b.add_file("a", src=src, mode=0o755)
    b.add_file("b", src=src, mode=0o644)
    b.add_file("c", src=src, mode=0o755)
    ents = {e.name: e for e in read_archive(archive_bytes(b))[0].entries}
    assert ents["a"].ino == ents["c"].ino != ents["b"].ino
    assert (ents["a"].size, ents["b"].size, ents["c"].size) == (0, 4, 4)


# -- reading images of several segments -----------------------------------

def _simple(names: dict[str, bytes]) -> bytes:
    b = ArchiveBuilder()
    for n, d in names.items():
        b.add_file(n, data=d)
    return archive_bytes(b)


@pytest.mark.parametrize("method", METHODS)
def test_concatenated_segments_are_all_read(method: str) -> None:
    early = _simple({"kernel/x86/microcode/GenuineIntel.bin": b"ucode"})
    main = compress(_simple({"init": b"#!/bin/sh\n", "etc/x": b"x" * 5000}), method)
    tail = compress(_simple({"late": b"late"}), "gzip")
    image = early + b"\0" * 64 + main + b"\0" * 4 + tail
    segs = read_archive(image)
    main_off = len(early) + 64
    assert [(s.compression, s.offset) for s in segs] == [
        ("none", 0), (method, main_off), ("gzip", main_off + len(main) + 4)]
    assert [e.name for e in segs[1].entries] == ["etc", "etc/x", "init"]
    assert segs[1].entries[1].data == b"x" * 5000 and segs[2].entries[0].data == b"late"


def test_compressed_stream_holding_two_archives_is_one_segment() -> None:
    inner = _simple({"a": b"1"}) + _simple({"b": b"2"})
    segs = read_archive(compress(inner, "xz"))
    assert len(segs) == 1 and [e.name for e in segs[0].entries] == ["a", "b"]


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\0" * 100, "empty"),
    (b"hello world, not an archive", "unrecognised data"),
    (b"\x04\x22\x4d\x18" + b"\0" * 20, "legacy frame"),
    (b"BZh91AY&SY", "bzip2"),
    (b"070707" + b"0" * 100, "odc"),
    (b"070701" + b"0" * 50, "truncated"),
    (b"070701" + b"zz" * 60, "not hex"),
    (b"\x1f\x8b\x08\x00" + b"\xff" * 30, "gzip"),
])
def test_reader_names_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ArchiveError, match=message):
        read_archive(data)


def test_errors_inside_a_compressed_segment_say_which_segment() -> None:
    image = _simple({"a": b"1"}) + compress(b"070701" + b"0" * 200, "zstd")
    with pytest.raises(ArchiveError, match="in the zstd segment at offset 512"):
        read_archive(image)


def test_reader_refuses_misaligned_and_trailerless_archives() -> None:
    good = _simple({"a": b"1"})
    with pytest.raises(ArchiveError, match="aligned"):
        read_archive(good + b"\0\0" + good)
    without_trailer = good[:good.index(b"TRAILER!!!") - 110]
    with pytest.raises(ArchiveError, match="TRAILER|truncated"):
        read_archive(without_trailer)


def test_a_cut_image_names_the_entry_its_offsets_and_where_the_data_ends() -> None:
    b = ArchiveBuilder()
    b.add_file("etc/hostname", data=b"live\n")
    b.add_file("usr/bin/big", data=bytes(range(256)) * 8000)
    buf = io.BytesIO()
    b.write(buf)
    data = buf.getvalue()
    head = data.index(b"usr/bin/big\0") - 110                 # the entry's header
    body = head + 110 + len(b"usr/bin/big\0")
    body += -body % 4
    # Cut as a file (uncompressed image) and inside a whole compressed stream.
    for cut in (data[:200000], compress(data[:200000], "gzip")):
        with pytest.raises(ArchiveError) as e:
            read_archive(cut)
        msg = str(e.value)
        assert f"'usr/bin/big' (header at offset {head}) is truncated" in msg, msg
        assert f"its 2048000 bytes of data span offsets {body}-{body + 2048000}" in msg, msg
        assert "the data ends at offset 200000" in msg, msg
        assert "cut short" in e.value.hint


def _offsets(data: bytes) -> list[tuple[int, int, int, int, str]]:
    """(header, name end, data start, data end, name) of each entry of an
    uncompressed archive, decoded independently of the reader."""
    out, pos = [], 0
    while True:
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name_end = pos + 110 + namesize
        dpos = name_end + (-name_end % 4)
        name = data[pos + 110:name_end - 1].decode()
        out.append((pos, name_end, dpos, dpos + size, name))
        if name == "TRAILER!!!":
            return out
        pos = dpos + size + (-size % 4)


def _flat(segs: list) -> list[tuple]:
    return [(s.compression, s.offset, e.name, e.mode, e.ino, e.nlink, e.mtime, e.data, e.target)
            for s in segs for e in s.entries]


def _offsets_named(message: str) -> list[int]:
    return [int(w) for w in re.findall(r"offset (\d+)", message)]


def _error(data: bytes) -> str:
    with pytest.raises(ArchiveError) as e:
        read_archive(data)
    return str(e.value)


VALID = _simple({"bin/sh": b"#!" * 40, "etc/hostname": b"live\n", "usr/empty": b""})
VALID_COMPRESSED = {m: compress(VALID, m) for m in METHODS}
LAYOUT = _offsets(VALID)
_MAGICS = [b"", b"070701", b"070702", b"070707", b"\x1f\x8b\x08\x00", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd",
           b"\x02\x21\x4c\x18", b"\x04\x22\x4d\x18", b"BZh", b"\x89LZO"]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 9), st.sampled_from(_MAGICS), st.binary(max_size=400))
def test_junk_is_refused_naming_where_it_starts(zeros: int, magic: bytes, junk: bytes) -> None:
    """Junk after zero padding (behind any magic): an ArchiveError naming the
    offset where the first non-zero byte is, or saying the image is empty."""
    data = b"\0" * zeros + magic + junk
    msg = _error(data)
    start = next((i for i, b in enumerate(data) if b), None)
    if start is None:
        assert "empty" in msg
    elif start % 4 and data[start:start + 6] in (b"070701", b"070702"):
        assert f"cpio archive at offset {start} is not 4-byte aligned" == msg
    else:
        assert f"offset {start}" in msg, msg


def test_every_cut_of_an_archive_names_the_entry_or_offset_where_it_ends() -> None:
    """Cut anywhere: the reader says which entry (by name and header offset) or
    which offset the data ends in; cut after the trailer it reads everything."""
    whole = _flat(read_archive(VALID))
    for cut in range(len(VALID) + 1):
        data = VALID[:cut]
        head, name_end, dpos, dend, name = next(e for e in reversed(LAYOUT) if e[0] <= max(cut - 1, 0))
        if cut == 0:
            assert "empty" in _error(data)
        elif name == "TRAILER!!!" and cut >= dpos:
            assert _flat(read_archive(data)) == whole, cut
        elif cut == head:
            assert f"ends at offset {cut} without its TRAILER!!! entry" in _error(data), cut
        elif cut < head + 6:                        # part of a magic: not a header
            assert f"offset {head}" in _error(data), cut
        elif cut < head + 110:
            assert f"truncated cpio header at offset {head}:" in _error(data), cut
        elif cut < name_end:
            assert f"the name of the cpio entry at offset {head} is truncated" in _error(data), cut
        elif cut < dend or cut < dpos:
            msg = _error(data)
            assert f"cpio entry {name!r} (header at offset {head}) is truncated" in msg, (cut, msg)
            assert f"the data ends at offset {cut}" in msg
        else:                                       # in the padding after an entry's data
            assert f"ends at offset {cut} without its TRAILER!!! entry" in _error(data), cut


@settings(max_examples=400, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(0, 255))
def test_one_changed_byte_of_an_archive(at: int, value: int) -> None:
    """A byte changed anywhere in an uncompressed archive: in an entry's data the
    entry reads back with exactly that byte changed; in padding nothing changes;
    a header field that stops being hex, or a broken magic, is an error naming
    the entry's header offset; a field that stays hex changes only that entry
    (or is an error naming an offset)."""
    data = bytearray(VALID)
    old, data[at] = data[at], value
    whole = read_archive(VALID)[0].entries
    k, (head, name_end, dpos, dend, name) = next(
        (i, e) for i, e in reversed(list(enumerate(LAYOUT))) if e[0] <= at)
    after = LAYOUT[k + 1][0] if k + 1 < len(LAYOUT) else len(VALID)
    if value == old or (name_end <= at < dpos) or (dend <= at < after and name != "TRAILER!!!"):
        assert read_archive(bytes(data))[0].entries == whole     # the same byte, or padding
    elif dpos <= at < dend:
        got = read_archive(bytes(data))[0].entries
        assert got[:k] == whole[:k] and got[k + 1:] == whole[k + 1:]
        changed = bytearray(whole[k].data)
        changed[at - dpos] = value
        assert got[k].data == bytes(changed) and got[k].name == name
    elif at < head + 6:              # a broken magic (zeroed bytes before it are skipped)
        assert head <= _offsets_named(_error(bytes(data)))[0] <= at + 1
    elif at < head + 110 and not chr(value).isalnum():
        assert f"bad cpio header at offset {head}: field" in _error(bytes(data))
    else:            # a hex digit in a header field, a byte of a name, the zeros after the trailer
        try:
            got = read_archive(bytes(data))[0].entries
        except ArchiveError as e:
            assert "offset" in str(e)
        else:
            assert got[:k] == whole[:k]
            if 6 <= at - head < 110 and (at - head - 6) // 8 not in (6, 11):   # not filesize, namesize
                assert len(got) == len(whole) and got[k + 1:] == whole[k + 1:]


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None)
@given(st.sampled_from([Compression.GZIP, Compression.XZ, Compression.ZSTD]), st.data())
def test_corrupted_checksummed_streams_read_back_exactly_or_are_refused(method: Compression,
                                                                      data: st.DataObject) -> None:
    """gzip, xz and zstd streams carry a checksum: a corrupted or cut stream reads
    back as the original entries (a byte no decoder looks at) or is an
    ArchiveError naming the stream's offset, never anything else."""
    early = _simple({"kernel/x86/microcode/GenuineIntel.bin": b"ucode"})
    stream = VALID_COMPRESSED[method]
    blob = bytearray(early + stream)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(len(early), len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(early) + 1, len(blob)) | st.just(len(blob)))
    try:
        segs = read_archive(bytes(blob[:cut]))
    except ArchiveError as e:
        assert _offsets_named(str(e))[0] >= len(early), str(e)
    else:
        rest = blob[len(early):cut]
        if any(rest):
            assert _flat(segs[1:]) == _flat([replace(read_archive(stream)[0], offset=len(early))])
        else:                                       # nothing but zeros (padding) is left
            assert _flat(segs) == _flat(read_archive(early))


def test_an_empty_compressed_stream_is_refused() -> None:
    for method, stream in (("lz4", b"\x02\x21\x4c\x18"), ("lz4", b"\x02\x21\x4c\x18" + bytes(12)),
                           ("gzip", compress(b"", "gzip")), ("xz", compress(bytes(64), "xz"))):
        assert _error(_simple({"a": b"1"}) + stream) == (
            f"the {method} stream at offset 512 holds no cpio archive "
            f"({0 if method != 'xz' else 64} bytes after decompression, all zero)")


# -- the commands -----------------------------------------------------------

def _raw_entry(name: str, mode: int, data: bytes = b"", ino: int = 1, nlink: int = 1) -> bytes:
    """An independent newc encoder, used to craft archives the builder refuses to write."""
    bname = name.encode() + b"\0"
    head = b"070701" + b"".join(b"%08X" % v for v in (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0,
                                                      len(bname), 0)) + bname
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def _raw_archive(*entries: bytes) -> bytes:
    return b"".join(entries) + _raw_entry("TRAILER!!!", 0)


def test_ls_lists_every_segment_and_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "img"
    img.write_bytes(_simple({"kernel/x86/microcode/AuthenticAMD.bin": b"amd"})
                    + compress(archive_bytes(build(FIXED, tmp_path)), "zstd"))
    assert cli.main(["ls", str(img)]) == 0
    out = capsys.readouterr().out.splitlines()
    segs = read_archive(img.read_bytes())
    assert out[0].startswith("segment 0: none at offset 0, 4 entries")
    assert out[5].startswith(f"segment 1: zstd at offset {segs[1].offset}, {len(segs[1].entries)} entries")
    lines = {line.strip() for line in out}
    for e in segs[1].entries:
        assert format_entry(e) in lines
    assert any(line.startswith("crw-------") and "5, 1" in line and line.endswith(" dev/console")
               for line in lines)
    assert any(line.startswith("lrwxrwxrwx") and line.endswith(" bin/sh -> busybox") for line in lines)
    assert any(line.startswith("-rwsr-xr-x") and "with space" in line for line in lines)


def test_extract_command_writes_all_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "img"
    img.write_bytes(_simple({"early": b"e"}) + compress(archive_bytes(build(FIXED, tmp_path)), "lz4"))
    assert cli.main(["extract", str(img), str(tmp_path / "out"), "--no-nodes"]) == 0
    out = capsys.readouterr().out
    reason = "(nodes were switched off)" if IS_ROOT else "(only root can make it)"
    assert f"skipped dev/console: char node not made {reason}" in out
    assert f"skipped run/fifo: fifo node not made {reason}" in out
    want = expected(FIXED, with_nodes=False)
    want["early"] = ("file", 0o644, hashlib.sha256(b"e").hexdigest(), None)
    assert snapshot(tmp_path / "out") == want


@pytest.mark.parametrize("entries", [
    [("../escape", stat.S_IFREG | 0o644, b"x")],
    [("a/../../escape", stat.S_IFREG | 0o644, b"x")],
    [("ok", stat.S_IFREG | 0o644, b"x"), ("..", stat.S_IFDIR | 0o755, b"")],
])
def test_extract_refuses_names_that_escape(tmp_path: Path, entries: list,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "img"
    img.write_bytes(_raw_archive(*(_raw_entry(n, m, d, ino=i + 1) for i, (n, m, d) in enumerate(entries))))
    assert cli.main(["extract", str(img), str(tmp_path / "out")]) == 1
    assert "escape" in capsys.readouterr().err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()


def test_extract_refuses_to_write_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    img = _raw_archive(_raw_entry("lib", stat.S_IFLNK | 0o777, str(outside).encode(), ino=1),
                       _raw_entry("lib/passwd", stat.S_IFREG | 0o644, b"pwned", ino=2))
    with pytest.raises(cli.CommandError, match="not a directory"):
        extract(read_archive(img), tmp_path / "out")
    assert list(outside.iterdir()) == []


def test_extract_links_hardlinks_whichever_link_carries_the_data(tmp_path: Path) -> None:
    # Data on the first link (as some writers do) as well as on the last (GNU cpio, us).
    first = _raw_archive(_raw_entry("a", stat.S_IFREG | 0o644, b"data", ino=7, nlink=2),
                         _raw_entry("b", stat.S_IFREG | 0o644, b"", ino=7, nlink=2))
    last = _raw_archive(_raw_entry("a", stat.S_IFREG | 0o644, b"", ino=7, nlink=2),
                        _raw_entry("b", stat.S_IFREG | 0o644, b"data", ino=7, nlink=2))
    for i, img in enumerate((first, last)):
        out = tmp_path / str(i)
        extract(read_archive(img), out)
        assert (out / "a").read_bytes() == (out / "b").read_bytes() == b"data"
        assert (out / "a").stat().st_ino == (out / "b").stat().st_ino


def test_ls_on_a_missing_or_bad_file_is_a_clear_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ls", str(tmp_path / "nope")]) == 1
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "bad").write_bytes(b"\x89PNG....")
    assert cli.main(["ls", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err
    assert "unrecognised data at offset 0" in err and "hint:" in err


def test_flatten_gives_every_hard_link_its_data_and_later_segments_win(tmp_path: Path) -> None:
    first = archive_bytes(build(FIXED, tmp_path))
    image = first + compress(_simple({"bin/sh": b"replaced", "new": b"n"}), "gzip")
    tree = flatten(read_archive(image))
    body = FIXED.items["bin/busybox"][2]
    assert tree["bin/busybox"].data == tree["bin/hard"].data == tree["sbin/hard2"].data == body
    assert tree["bin/hard"].size == len(body)
    assert tree["bin/sh"].data == b"replaced" and tree["bin/sh"].target is None
    assert tree["new"].data == b"n" and tree["usr/lib/abs"].target == "/usr/lib/empty"


def test_add_tree_copies_a_directory_with_modes_links_and_hard_links(tmp_path: Path) -> None:
    src = tmp_path / "skel"
    (src / "etc/init.d").mkdir(parents=True)
    (src / "etc/init.d/rc").write_text("#!/bin/sh\n")
    os.chmod(src / "etc/init.d/rc", 0o750)
    os.link(src / "etc/init.d/rc", src / "etc/rc.link")
    (src / "etc/mtab").symlink_to("/proc/self/mounts")
    os.chmod(src / "etc", 0o700)
    b = ArchiveBuilder()
    b.add_tree("skel", src)
    tree = flatten(read_archive(archive_bytes(b)))
    assert sorted(tree) == ["skel", "skel/etc", "skel/etc/init.d", "skel/etc/init.d/rc", "skel/etc/mtab",
                            "skel/etc/rc.link"]
    assert tree["skel/etc"].mode == stat.S_IFDIR | 0o700
    assert tree["skel/etc/init.d/rc"].mode == stat.S_IFREG | 0o750
    assert tree["skel/etc/init.d/rc"].ino == tree["skel/etc/rc.link"].ino
    assert tree["skel/etc/rc.link"].data == b"#!/bin/sh\n"
    assert tree["skel/etc/mtab"].target == "/proc/self/mounts"
    os.mkfifo(src / "fifo")
    with pytest.raises(ArchiveError, match="special files"):
        ArchiveBuilder().add_tree("skel", src)


class _CountingSink:
    """A non-seekable output that keeps only a running hash."""

    def __init__(self) -> None:
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, b: bytes) -> int:
        self.size += len(b)
        self.sha.update(b)
        return len(b)


def test_writer_streams_file_contents_instead_of_holding_them(tmp_path: Path) -> None:
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.truncate(64 << 20)  # sparse: 64 MiB of zeros, cheap to read
    b = ArchiveBuilder()
    b.add_file("a/big", src=big)
    os.link(big, tmp_path / "big2")
    b.add_file("b/big2", src=tmp_path / "big2")
    sink = _CountingSink()
    tracemalloc.start()
    try:
        n = b.write(sink)  # type: ignore[arg-type]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == sink.size and (64 << 20) < n < (64 << 20) + 4096  # the hard link stored once
    assert peak < 4 << 20, f"write() held {peak} bytes at once"


def test_image_bytes_puts_the_early_archive_first_uncompressed() -> None:
    early, main = ArchiveBuilder(), ArchiveBuilder()
    early.add_file("kernel/x86/microcode/AuthenticAMD.bin", data=b"amd")
    main.add_file("init", data=b"#!/bin/sh\n", mode=0o755)
    img = image_bytes(main, "zstd", mtime=7, early=early)
    segs = read_archive(img)
    assert [s.compression for s in segs] == ["none", "zstd"] and segs[1].offset % 512 == 0
    assert flatten(segs)["init"].mtime == 7
    assert image_bytes(main, "zstd", mtime=7, early=early) == img
    assert [s.compression for s in read_archive(image_bytes(main, "gzip"))] == ["gzip"]
