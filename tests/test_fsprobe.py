"""liveinit.fsprobe against the real oracle: images made by the real mkfs tools
(on regular files, no root), compared key by key with `blkid -p -o export`,
partition lists with `partx` (libblkid's partition reader)."""
from __future__ import annotations

import os
import shlex
import struct
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
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
ISOHDPFX = "/usr/lib/ISOLINUX/isohdpfx.bin"
ISOLINUX = "/usr/lib/ISOLINUX/isolinux.bin"
FIXED_UUID = "0badcafe-1234-4321-8765-0123456789ab"

# name -> (size of the sparse file or None when the tool creates it, commands; {f} is the image)
IMAGES: dict[str, tuple[str | None, list[str]]] = {
    "ext2": ("8M", [f"mkfs.ext2 -q -L e2lab -U {FIXED_UUID} {{f}}"]),
    "ext2-nolabel": ("8M", ["mkfs.ext2 -q {f}"]),
    "ext3": ("16M", ["mkfs.ext3 -q -L e3lab {f}"]),
    "ext4": ("32M", [f"mkfs.ext4 -q -L 'ext4 label' -U {FIXED_UUID} {{f}}"]),
    "ext4-4k-nocsum": ("32M", ["mkfs.ext4 -q -b 4096 -O ^metadata_csum -L nocsum {f}"]),
    "ext4-odd-label": ("8M", ["mkfs.ext4 -q -L \"$(printf 'x\\tyé$\\\\')\" {f}"]),
    "jbd": ("8M", ["mkfs.ext4 -q -O journal_dev -L jlab {f}"]),
    "vfat12": ("4M", ["mkfs.vfat -F 12 -n F12LAB {f}"]),
    "vfat12-nolabel": ("4M", ["mkfs.vfat -F 12 {f}"]),
    "vfat16": ("20M", ["mkfs.vfat -F 16 -n 'MY DISK' -i 1234abcd {f}"]),
    "vfat16-nolabel": ("20M", ["mkfs.vfat -F 16 {f}"]),
    "vfat32": ("40M", ["mkfs.vfat -F 32 -n F32LAB {f}"]),
    "vfat32-nolabel": ("40M", ["mkfs.vfat -F 32 {f}"]),
    "vfat16-relabel": ("20M", ["mkfs.vfat -F 16 -n OLDLAB {f}", "mlabel -i {f} ::NEWLAB"]),
    "vfat32-relabel": ("40M", ["mkfs.vfat -F 32 -n OLDLAB {f}", "mlabel -i {f} ::NEWLAB"]),
    "exfat": ("8M", ["mkfs.exfat -L exlab {f}"]),
    "exfat-nolabel": ("8M", ["mkfs.exfat {f}"]),
    "squashfs": (None, ["mksquashfs {d} {f} -noappend -quiet"]),
    "erofs": (None, [f"mkfs.erofs -U {FIXED_UUID} {{f}} {{d}}"]),
    "btrfs": ("128M", ["mkfs.btrfs -q -L btlab {f}"]),
    "xfs": ("300M", ["mkfs.xfs -q -L xflab {f}"]),
    "f2fs": ("64M", ["mkfs.f2fs -q -l f2lab {f}"]),
    "f2fs-csum": ("64M", ["mkfs.f2fs -q -O sb_checksum -l 'f2 lab' {f}"]),
    "swap": ("8M", [f"mkswap -L swlab -U {FIXED_UUID} {{f}}"]),
    "swap-nolabel": ("8M", ["mkswap {f}"]),
    "udf": ("8M", ["mkudffs --label=udflab {f}"]),
    "udf-2048": ("8M", ["mkudffs --blocksize=2048 --label=Ünïcode --vsid=SetId {f}"]),
    "iso": (None, ["xorriso -as mkisofs -quiet -V ISOLAB -o {f} {d}"]),
    "iso-joliet": (None, ["xorriso -as mkisofs -quiet -V 'Long Mixed Case Label' -J -o {f} {d}"]),
    "iso-rockridge": (None, ["xorriso -as mkisofs -quiet -V RRLAB -R -publisher 'Pub Lisher' "
                             "-A 'an app' -sysid LINUX -volset vset -o {f} {d}"]),
    "iso-joliet-rr": (None, ["xorriso -as mkisofs -quiet -V jrlab -J -R -publisher pub -o {f} {d}"]),
    "iso-hybrid": (None, [f"xorriso -as mkisofs -quiet -V HYBLAB -J -R -b isolinux/isolinux.bin "
                          f"-c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "
                          f"-isohybrid-mbr {ISOHDPFX} -o {{f}} {{d}}"]),
    "iso-hybrid-big": (None, ["head -c 3000000 /dev/urandom > {d}/big.bin", f"xorriso -as mkisofs -quiet "
                              f"-V BIGHYB -b isolinux/isolinux.bin -c isolinux/boot.cat -no-emul-boot "
                              f"-boot-load-size 4 -isohybrid-mbr {ISOHDPFX} -o {{f}} {{d}}", "rm {d}/big.bin"]),
    "iso-hybrid-gpt": (None, [f"xorriso -as mkisofs -quiet -V HYBLAB -b isolinux/isolinux.bin "
                              f"-c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "
                              f"-isohybrid-mbr {ISOHDPFX} -isohybrid-gpt-basdat -o {{f}} {{d}}"]),
    "dos-disk": ("64M", ["printf 'label: dos\\nlabel-id: 0x12345678\\nsize=8MiB, type=83, bootable\\n"
                         "size=8MiB, type=c\\ntype=5\\nsize=8MiB, type=83\\nsize=8MiB, type=82\\n'"
                         " | sfdisk -q {f}"]),
    "gpt-disk": ("64M", ["printf 'label: gpt\\nsize=16MiB, type=L, name=root, "
                         "attrs=\"RequiredPartition LegacyBIOSBootable\"\\n"
                         "size=16MiB, type=U, name=\"EFI sys\"\\ntype=L\\n' | sfdisk -q {f}",
                         "mkfs.ext4 -q -L inpart -E offset=1048576 {f} 16M",
                         "mkfs.vfat -F 16 -n ESP --offset 34816 {f} 16384"]),
    "empty": ("1M", []),
    "zeros": ("20M", []),
}


def run(cmd: str, cwd: Path) -> None:
    subprocess.run(["sh", "-ec", cmd], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("fsprobe")
    tree = base / "tree"
    (tree / "isolinux").mkdir(parents=True)
    (tree / "hello.txt").write_text("hello\n")
    (tree / "isolinux" / "isolinux.bin").write_bytes(Path(ISOLINUX).read_bytes())
    out = {}
    for name, (size, cmds) in IMAGES.items():
        f = base / f"{name}.img"
        if size:
            run(f"truncate -s {size} {f}", base)
        for cmd in cmds:
            run(cmd.format(f=shlex.quote(str(f)), d=shlex.quote(str(tree))), base)
        out[name] = f
    return out


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
    for g, w in zip(got, want):
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
def loop_device(image: Path, *options: str):
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


@pytest.mark.slow
@pytest.mark.timeout(600)
@settings(max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=0, max_size=70000))
def test_random_bytes_like_blkid(tmp_path: Path, data: bytes) -> None:
    f = tmp_path / "random.img"
    f.write_bytes(data)
    like_blkid_or_empty(f)


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
