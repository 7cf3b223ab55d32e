"""liveinit.fsprobe against the real oracle: images made by the real mkfs tools
(on regular files, no root), compared key by key with `blkid -p -o export`,
partition lists with `partx` (libblkid's partition reader)."""
from __future__ import annotations

import os
import random
import shlex
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fsimages import FIXED_UUID, IMAGES, make_images
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from liveinit import fsprobe
from packer import cmd_probe

# Every key fsprobe can emit: blkid's values for these must equal ours, and
# blkid must print each one we print.
SUPPORTED = {
    "TYPE", "USAGE", "UUID", "UUID_SUB", "LABEL", "LABEL_FATBOOT", "VERSION", "BLOCK_SIZE",
    "SEC_TYPE", "EXT_JOURNAL", "SYSTEM_ID", "VOLUME_SET_ID", "PUBLISHER_ID", "DATA_PREPARER_ID",
    "APPLICATION_ID", "BOOT_SYSTEM_ID", "VOLUME_ID", "LOGICAL_VOLUME_ID", "PTTYPE", "PTUUID",
}


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_images(tmp_path_factory.mktemp("fsprobe"))


def blkid(path: Path, offset: int | None = None, size: int | None = None) -> dict[str, str]:
    """blkid -p -o export, values as blkid escapes them, without DEVNAME."""
    cmd = ["blkid", "-p", "-o", "export"]
    if offset is not None:
        cmd += ["-O", str(offset)]
    if size is not None:
        cmd += ["-S", str(size)]
    res = subprocess.run(cmd + [str(path)], capture_output=True)
    keys = dict(line.split("=", 1) for line in os.fsdecode(res.stdout).splitlines() if "=" in line)
    keys.pop("DEVNAME", None)
    return keys


def escaped(keys: dict[str, str]) -> dict[str, str]:
    return {k: cmd_probe.export_value(v) for k, v in keys.items()}


def assert_like_blkid(path: Path, offset: int | None = None, size: int | None = None) -> dict[str, str]:
    theirs = blkid(path, offset, size)
    mine = fsprobe.probe(str(path), offset or 0, size)
    assert set(mine) <= SUPPORTED
    assert escaped(mine) == {k: v for k, v in theirs.items() if k in SUPPORTED}
    return mine


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_whole_image_like_blkid(images: dict[str, Path], name: str) -> None:
    mine = assert_like_blkid(images[name])
    if name in ("empty", "zeros"):
        assert mine == {}
    else:
        assert "TYPE" in mine or "PTTYPE" in mine


def test_expected_identities(images: dict[str, Path]) -> None:
    """A few facts independent of blkid, so an oracle regression cannot hide a bug."""
    p = {n: fsprobe.probe(str(f)) for n, f in images.items()}
    assert p["ext2"]["UUID"] == FIXED_UUID and p["ext2"]["TYPE"] == "ext2"
    assert p["ext3"]["SEC_TYPE"] == "ext2" and p["ext4"]["LABEL"] == "ext4 label"
    assert p["jbd"]["TYPE"] == "jbd" and p["jbd"]["USAGE"] == "other"
    assert [p[f"vfat{n}"]["VERSION"] for n in (12, 16, 32)] == ["FAT12", "FAT16", "FAT32"]
    assert p["vfat16"]["UUID"] == "1234-ABCD" and p["vfat16"]["LABEL"] == "MY DISK"
    assert p["vfat32-relabel"]["LABEL"] == "NEWLAB"
    assert p["swap"]["LABEL"] == "swlab" and p["swap"]["UUID"] == FIXED_UUID
    assert p["iso-joliet"]["LABEL"] == "Long Mixed Case Label"
    assert p["iso-hybrid"]["TYPE"] == "iso9660" and p["iso-hybrid"]["PTTYPE"] == "dos"
    assert p["squashfs"] == {"VERSION": "4.0", "TYPE": "squashfs", "USAGE": "filesystem"}
    assert p["gpt-disk"]["PTTYPE"] == "gpt" and "TYPE" not in p["gpt-disk"]


def partx(path: Path) -> list[dict[str, str]]:
    out = subprocess.run(["partx", "-o", "NR,START,SECTORS,TYPE,UUID,NAME,FLAGS,SCHEME", "-P", str(path)],
                         capture_output=True, text=True).stdout
    return [dict(kv.split("=", 1) for kv in shlex.split(line)) for line in out.splitlines()]


@pytest.mark.parametrize("name", ["dos-disk", "gpt-disk", "iso-hybrid", "iso-hybrid-gpt", "exfat"])
def test_partition_list_like_partx(images: dict[str, Path], name: str) -> None:
    table = fsprobe.read_partition_table(str(images[name]))
    assert table is not None
    mine = [{"NR": str(p.number), "START": str(p.start), "SECTORS": str(p.size), "TYPE": p.type,
             "UUID": p.uuid, "NAME": p.name, "FLAGS": f"0x{p.flags:x}", "SCHEME": table.type}
            for p in table.partitions]
    assert mine == partx(images[name])


def test_no_partition_table(images: dict[str, Path]) -> None:
    for name in ("ext4", "vfat32", "iso", "zeros", "empty"):
        assert fsprobe.read_partition_table(str(images[name])) is None


@pytest.mark.parametrize("name", ["dos-disk", "gpt-disk"])
def test_filesystems_inside_partitions(images: dict[str, Path], name: str) -> None:
    disk = images[name]
    table = fsprobe.read_partition_table(str(disk))
    assert table is not None
    for part in table.partitions:
        off, size = part.start * 512, part.size * 512
        assert_like_blkid(disk, off, size)
        full = fsprobe.probe_partition(str(disk), part.number)
        assert full["PART_ENTRY_NUMBER"] == str(part.number)
        assert full["PART_ENTRY_UUID"] == part.uuid and full["PART_ENTRY_SCHEME"] == table.type
        assert full["PART_ENTRY_OFFSET"] == str(part.start) and full["PART_ENTRY_SIZE"] == str(part.size)
        assert ("PART_ENTRY_NAME" in full) == bool(part.name)
    if name == "gpt-disk":
        root = fsprobe.probe_partition(str(disk), 1)
        assert root["TYPE"] == "ext4" and root["LABEL"] == "inpart"
        assert root["PART_ENTRY_NAME"] == "root" and root["PART_ENTRY_FLAGS"] == "0x5"
        assert fsprobe.probe_partition(str(disk), 2)["LABEL"] == "ESP"
    assert fsprobe.probe_partition(str(disk), 99) == {}
    assert fsprobe.partition_entry(str(disk), 99) == {}


def _put(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _copy(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.mark.parametrize("base", ["btrfs", "vfat16", "xfs"])
def test_ambivalent_is_unknown(images: dict[str, Path], tmp_path: Path, base: str) -> None:
    """An ext2 superblock planted in another filesystem: blkid -p refuses to choose, so do we."""
    img = _copy(images[base], tmp_path / f"{base}+ext2.img")
    _put(img, 1024, images["ext2"].read_bytes()[1024:2048])
    res = subprocess.run(["blkid", "-p", "-o", "export", str(img)], capture_output=True, text=True)
    assert res.stdout == "" and "ambivalent" in res.stderr
    assert fsprobe.probe(str(img)) == {}


def test_protective_mbr_without_gpt(images: dict[str, Path], tmp_path: Path) -> None:
    """Both GPT headers broken: blkid -p says PTTYPE=PMBR; with only the primary
    broken it reads the backup header at the end of the disk."""
    img = _copy(images["gpt-disk"], tmp_path / "pmbr.img")
    _put(img, 512, b"XX")
    backup = assert_like_blkid(img)
    assert backup["PTTYPE"] == "gpt"
    _put(img, img.stat().st_size - 512, b"XX")
    assert assert_like_blkid(img) == {"PTTYPE": "PMBR"}
    assert fsprobe.read_partition_table(str(img)) is None


@pytest.mark.parametrize("date", [b"\0", b"2026\0", b"0000000000000000\0", b"0000000000000000\x01",
                                  b"\0" * 16 + b"\x04"])
def test_iso_uuid_from_odd_dates(images: dict[str, Path], tmp_path: Path, date: bytes) -> None:
    """The UUID comes from the modification date, else the creation date, cut at a NUL."""
    img = _copy(images["iso"], tmp_path / "date.img")
    _put(img, 0x8000 + 830, date)
    assert_like_blkid(img)


@pytest.mark.parametrize("major", [0, 1, 3])
def test_squashfs3_versions_like_blkid(images: dict[str, Path], tmp_path: Path, major: int) -> None:
    """A squashfs superblock of major version < 4 is squashfs3, with the fixed 1 KiB
    block size blkid reports (found by mutating real superblocks)."""
    img = _copy(images["squashfs"], tmp_path / "sq3.img")
    _put(img, 28, struct.pack("<H", major))
    assert assert_like_blkid(img) == {"VERSION": f"{major}.0", "BLOCK_SIZE": "1024", "TYPE": "squashfs3",
                                      "USAGE": "filesystem"}


def test_iso_and_udf_may_coexist_with_a_table(images: dict[str, Path]) -> None:
    keys = fsprobe.probe(str(images["iso-hybrid"]))
    assert keys["TYPE"] == "iso9660" and keys["PTUUID"]


def test_corrupted_metadata_like_blkid(images: dict[str, Path], tmp_path: Path) -> None:
    """Checksums blkid 2.38 verifies (GPT) reject, the ones it ignores do not."""
    for name, off in (("ext4", 1024 + 0x200), ("xfs", 0x100), ("btrfs", 0x10000 + 0x300),
                      ("gpt-disk", 512 + 0x50), ("gpt-disk", 1024 + 0x10), ("erofs", 1024 + 0x70),
                      ("exfat", 300), ("f2fs-csum", 1024 + 0x200), ("udf", 256 * 512 + 0x30)):
        img = _copy(images[name], tmp_path / f"bad-{name}-{off}.img")
        with open(img, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ 0x5A]))
        assert_like_blkid(img)


def test_cli_output_matches_blkid(images: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    names = ["ext4-odd-label", "iso-hybrid", "vfat12", "udf"]
    paths = [str(images[n]) for n in names]

    class Args:
        files = paths
        offset = 0
        size = None
    assert cmd_probe.run(Args()) == 0  # type: ignore[arg-type]
    ours = capsys.readouterr().out
    res = subprocess.run(["blkid", "-p", "-o", "export"] + paths, capture_output=True)
    want = [b for b in os.fsdecode(res.stdout).split("\n\n")]
    got = ours.split("\n\n")
    assert len(got) == len(want) == 4
    for g, w in zip(got, want, strict=True):
        gl, wl = g.strip().splitlines(), w.strip().splitlines()
        assert gl[0] == wl[0]                       # DEVNAME first
        assert set(gl) == {line for line in wl if line.split("=", 1)[0] in SUPPORTED | {"DEVNAME"}}

    class Nothing:
        files = [str(images["ext4"]), str(images["zeros"]), str(images["udf"])]
        offset = 0
        size = None
    assert cmd_probe.run(Nothing()) == 2  # type: ignore[arg-type]
    res = subprocess.run(["blkid", "-p", "-o", "export"] + Nothing.files, capture_output=True)
    assert res.returncode == 2   # blkid too stops at the first unknown file
    assert capsys.readouterr().out == os.fsdecode(res.stdout)


def test_cli_through_the_command_table(images: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from packer.cli import main
    assert main(["probe", str(images["iso-hybrid"])]) == 0
    res = subprocess.run(["blkid", "-p", "-o", "export", str(images["iso-hybrid"])], capture_output=True)
    assert capsys.readouterr().out == os.fsdecode(res.stdout)
    disk, table = images["gpt-disk"], fsprobe.read_partition_table(str(images["gpt-disk"]))
    assert table is not None
    off, size = table.partitions[0].start * 512, table.partitions[0].size * 512
    assert main(["probe", "-O", str(off), "-S", str(size), str(disk)]) == 0
    res = subprocess.run(["blkid", "-p", "-o", "export", "-O", str(off), "-S", str(size), str(disk)],
                         capture_output=True)
    assert capsys.readouterr().out == os.fsdecode(res.stdout)
    assert main(["probe", "/nonexistent/disk"]) == 1
    assert "cannot open /nonexistent/disk" in capsys.readouterr().err


@contextmanager
def loop_device(image: Path, *options: str) -> Iterator[str]:
    """A loop device over `image` (losetup OPTIONS), detached afterwards."""
    loop = subprocess.run(["losetup", "-f", "--show", *options, str(image)],
                          capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield loop
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)


@pytest.mark.root
@pytest.mark.parametrize("name", ["iso-hybrid", "iso-hybrid-big", "gpt-disk", "vfat32", "ext4", "vfat12"])
def test_block_device_like_blkid(images: dict[str, Path], name: str) -> None:
    """The same answers through a real (loop) block device node (a 1 MiB hybrid
    ISO is a "small disk": blkid -p shows only its partition table)."""
    with loop_device(images[name], "-r") as loop:
        theirs = blkid(Path(loop))
        mine = fsprobe.probe(loop)
        assert escaped(mine) == {k: v for k, v in theirs.items() if k in SUPPORTED}
        assert mine


@pytest.mark.root
@pytest.mark.parametrize("script", [
    "label: gpt\nsize=16MiB, type=L, name=four\ntype=L\n",
    "label: dos\nlabel-id: 0xdeadbeef\nsize=16MiB, type=83\ntype=5\nsize=8MiB, type=83\nsize=4MiB, type=83\n",
])
def test_4k_sector_disks_like_partx(tmp_path: Path, script: str) -> None:
    """Tables written by sfdisk on a 4096-byte-sector loop device: starts and
    sizes still in 512-byte units, as blkid gives them."""
    img = tmp_path / "4k.img"
    img.write_bytes(b"")
    os.truncate(img, 64 << 20)
    with loop_device(img, "-b", "4096") as loop:
        subprocess.run(["sfdisk", "-q", "--no-reread", loop], input=script, text=True, check=True,
                       capture_output=True)
        dev = Path(loop)
        assert escaped(fsprobe.probe(loop)) == {k: v for k, v in blkid(dev).items() if k in SUPPORTED}
        table = fsprobe.read_partition_table(loop)
        assert table is not None and len(table.partitions) >= 2
        got = [{"NR": str(p.number), "START": str(p.start), "SECTORS": str(p.size), "TYPE": p.type,
                "UUID": p.uuid, "NAME": p.name, "FLAGS": f"0x{p.flags:x}", "SCHEME": table.type}
               for p in table.partitions]
        assert got == partx(dev)


@pytest.mark.root
def test_sector_size_from_sysfs_equals_the_ioctl(tmp_path: Path) -> None:
    """sysfs gives what BLKSSZGET gives (here a 4096-byte-sector loop device), without importing fcntl."""
    import fcntl
    img = tmp_path / "4k.img"
    img.write_bytes(b"")
    os.truncate(img, 8 << 20)
    with loop_device(img, "-b", "4096") as loop:
        fd = os.open(loop, os.O_RDONLY)
        try:
            rdev = os.fstat(fd).st_rdev
            ioctl = struct.unpack("i", fcntl.ioctl(fd, fsprobe.BLKSSZGET, b"\0" * 4))[0]
            assert fsprobe._sector_size(fd, rdev) == ioctl == 4096
        finally:
            os.close(fd)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(fsprobe.ProbeError, match="cannot open"):
        fsprobe.probe(str(tmp_path / "nope"))


HEAD = (1 << 20) + (1 << 18)   # past btrfs' 1 MiB minimum and udf's anchor at 256 * 2048
# where superblocks, boot sectors, partition tables and volume descriptors live
HOT = (0, 0x1B0, 0x200, 0x400, 0x800, 0x8000, 0x8800, 0x9000, 0x10000, 0x20000, 0x80000, 0xFF6)


def like_blkid_or_empty(path: Path) -> None:
    """probe() never raises, and says what blkid says (for the keys it knows)."""
    mine = fsprobe.probe(str(path))
    assert isinstance(mine, dict)
    assert escaped(mine) == {k: v for k, v in blkid(path).items() if k in SUPPORTED}
    table = fsprobe.read_partition_table(str(path))
    assert table is None or isinstance(table, fsprobe.PartitionTable)


@pytest.fixture(scope="module")
def heads(images: dict[str, Path]) -> list[bytes]:
    out = []
    for name, f in sorted(images.items()):
        if name not in ("empty", "zeros"):
            with open(f, "rb") as fh:
                out.append(fh.read(HEAD))
    return out


def _read_ranges(path: Path) -> list[tuple[int, int]]:
    """The byte ranges probe() reads of `path` (what its probers look at)."""
    reads: list[tuple[int, int]] = []
    read = fsprobe._Dev.read

    def recording(dev: fsprobe._Dev, off: int, n: int) -> bytes | None:
        if off >= 0 and n > 0:
            reads.append((off, off + n))
        return read(dev, off, n)
    setattr(fsprobe._Dev, "read", recording)  # noqa: B010 -- a method swapped for the call
    try:
        fsprobe.probe(str(path))
    finally:
        setattr(fsprobe._Dev, "read", read)  # noqa: B010
    size = path.stat().st_size
    return sorted({(a, min(b, size)) for a, b in reads if a < size})


# One real image of each kind blkid and fsprobe both know, and of each partition table.
MUTANT_BASES = ("ext2", "ext3", "ext4", "jbd", "vfat12", "vfat16", "vfat32", "exfat", "squashfs", "erofs",
                "btrfs", "xfs", "f2fs-csum", "swap", "udf", "iso-joliet", "dos-disk", "gpt-disk")
MUTANTS_EACH = 14


def test_mutants_of_real_superblocks_like_blkid(images: dict[str, Path], tmp_path: Path) -> None:
    """Real superblocks with 1-3 bytes changed where the probers read: the same
    answer as blkid -p on every mutant. Counted, so the comparison is known to
    be between answers, not between two empty results: most mutants must still
    be recognised, and some must change or lose blkid's answer."""
    rng = random.Random(12)
    f = tmp_path / "mutant.img"
    recognised = changed = 0
    for base in MUTANT_BASES:
        head = images[base].read_bytes()[:HEAD]
        f.write_bytes(head)
        original = blkid(f)
        assert original, base
        ranges = _read_ranges(f)
        for _ in range(MUTANTS_EACH):
            buf = bytearray(head)
            edits = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                a, b = rng.choice(ranges)
                # half in the first bytes of a read, where magics, sizes and offsets are
                at = rng.randrange(a, min(b, a + 96) if rng.random() < 0.5 else b)
                buf[at] = rng.choice((0, 0xFF, buf[at] ^ (1 << rng.randrange(8)), rng.randrange(256)))
                edits.append((at, buf[at]))
            f.write_bytes(bytes(buf))
            theirs = blkid(f)
            mine = fsprobe.probe(str(f))
            assert escaped(mine) == {k: v for k, v in theirs.items() if k in SUPPORTED}, (base, edits)
            recognised += bool(theirs)
            changed += theirs != original
    total = len(MUTANT_BASES) * MUTANTS_EACH
    print(f"{recognised} of {total} mutants recognised by blkid, {changed} answers changed")
    assert recognised >= total // 2
    assert changed >= total // 10


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(max_examples=250, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(min_value=0, max_value=10_000), edits=st.lists(
    st.tuples(st.sampled_from(HOT), st.integers(min_value=0, max_value=1023),
              st.sampled_from([0, 1, 0x20, 0x29, 0x55, 0x80, 0xAA, 0xEE, 0xFF]) | st.integers(0, 255)),
    min_size=1, max_size=24))
def test_mutated_superblocks_like_blkid(heads: list[bytes], tmp_path: Path, which: int,
                                        edits: list[tuple[int, int, int]]) -> None:
    """Real superblocks with bytes changed: never an exception, never a hang,
    and the same answer as blkid -p (ambivalent and rejected cases included)."""
    buf = bytearray(heads[which % len(heads)])
    for base, delta, val in edits:
        if base + delta < len(buf):
            buf[base + delta] = val
    f = tmp_path / "mutant.img"
    f.write_bytes(bytes(buf))
    like_blkid_or_empty(f)


DISK_SECTORS = 8192
_entry = st.tuples(st.sampled_from([0, 0x80]) | st.integers(0, 255),
                   st.sampled_from([0x83, 0x05, 0x0F, 0x85, 0x0C, 0]) | st.integers(0, 255),
                   st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32, 64, 2048]) | st.integers(0, DISK_SECTORS + 64),
                   st.sampled_from([1, 2, 8, 64, 2048]) | st.integers(0, DISK_SECTORS))


def _mbr(entries: list[tuple[int, int, int, int]], disk_id: int = 0) -> bytes:
    sector = bytearray(512)
    struct.pack_into("<I", sector, 440, disk_id)
    for i, (boot, ptype, start, size) in enumerate(entries[:4]):
        sector[446 + 16 * i] = boot
        sector[446 + 16 * i + 4] = ptype
        struct.pack_into("<II", sector, 446 + 16 * i + 8, start, size)
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(primary=st.lists(_entry, min_size=0, max_size=4), disk_id=st.integers(0, 2**32 - 1),
       ebrs=st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 5, 8, 12, 16, 20, 32, 36, 64, 68, 2048])
                               | st.integers(1, DISK_SECTORS - 1), st.lists(_entry, max_size=4)), max_size=8))
def test_random_dos_tables_like_partx(tmp_path: Path, primary: list[tuple[int, int, int, int]],
                                      disk_id: int, ebrs: list[tuple[int, list[tuple[int, int, int, int]]]]
                                      ) -> None:
    """MBRs and chains of EBRs (loops, junk, overlaps): the partition list partx
    reads with libblkid, and blkid's PTTYPE/PTUUID."""
    img = tmp_path / "mbr.img"
    img.write_bytes(bytes(DISK_SECTORS * 512))
    for sector, entries in ebrs:
        _put(img, sector * 512, _mbr(entries))
    _put(img, 0, _mbr(primary, disk_id))
    like_blkid_or_empty(img)
    table = fsprobe.read_partition_table(str(img))
    want = partx(img)
    got = [] if table is None else [
        {"NR": str(p.number), "START": str(p.start), "SECTORS": str(p.size), "TYPE": p.type,
         "UUID": p.uuid, "NAME": p.name, "FLAGS": f"0x{p.flags:x}", "SCHEME": table.type}
        for p in table.partitions]
    assert got == want


def test_probe_cost(images: dict[str, Path]) -> None:
    """Probing one device natively stays in the low milliseconds."""
    costs = {}
    for name in ("ext4", "vfat32", "iso-hybrid", "squashfs", "btrfs", "gpt-disk", "zeros"):
        t0 = time.perf_counter()
        for _ in range(20):
            fsprobe.probe(str(images[name]))
        costs[name] = (time.perf_counter() - t0) / 20
    print("fsprobe cost per device (ms):", {k: round(v * 1000, 2) for k, v in costs.items()})
    assert max(costs.values()) < 0.05
