"""liveinit usb: the layout math, the checks before a write, and a stick image built and inspected."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packer import blockdev_host as bh
from packer import secureboot, usb
from packer.cli import main
from packer.cmd_usb import check_device, confirm
from packer.errors import CommandError
from packer.kernel import KernelTree

MIB = usb.MIB


# -- sizes and layout ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("512M", 512 * MIB), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("4096", 4096), ("64k", 65536),
    ("1T", 1 << 40), (" 8 MB ", 8 * MIB),
])
def test_parse_size(text: str, value: int) -> None:
    assert usb.parse_size(text, "--size") == value


@pytest.mark.parametrize("text", ["", "big", "-1G", "1X", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(CommandError, match="is not a size"):
        usb.parse_size(text, "--size")


def test_fat_needed_has_a_floor_and_grows_with_the_files() -> None:
    assert usb.fat_needed([1000]) == usb.FAT_MIN
    big = usb.fat_needed([700 * MIB, 8 * MIB, 30 * MIB])
    assert big % MIB == 0 and big >= 738 * MIB + usb.FAT_OVERHEAD


def test_plan_whole_disk_is_fat() -> None:
    lay = usb.plan(1000 * MIB + 12345, 100 * MIB)
    assert lay.persistence is None
    assert (lay.fat.start, lay.fat.size, lay.fat.type, lay.fat.bootable) == (MIB, 999 * MIB, "c", True)


def test_plan_persistence_size_and_rest() -> None:
    lay = usb.plan(1000 * MIB, 100 * MIB, persistence=300 * MIB)
    assert lay.fat.size == 1000 * MIB - MIB - 300 * MIB
    assert lay.persistence == usb.Partition(lay.fat.end, 300 * MIB, "83")
    rest = usb.plan(1000 * MIB, 100 * MIB, persistence="rest")
    assert rest.fat.size == 100 * MIB + usb.FAT_FREE
    assert rest.persistence is not None and rest.persistence.end == 1000 * MIB
    fixed = usb.plan(1000 * MIB, 100 * MIB, fat_size=200 * MIB, persistence="rest")
    assert (fixed.fat.size, fixed.persistence and fixed.persistence.size) == (200 * MIB, 799 * MIB)
    for p in (*lay.partitions, *rest.partitions):
        assert p.start % MIB == 0 and p.size % MIB == 0


def test_plan_rest_on_a_tight_disk_keeps_the_minimum_persistence() -> None:
    needed = 100 * MIB
    lay = usb.plan(MIB + needed + usb.PERSISTENCE_MIN + 10 * MIB, needed, persistence="rest")
    assert lay.fat.size >= needed
    assert lay.persistence is not None and lay.persistence.size >= usb.PERSISTENCE_MIN


def test_too_small_says_how_much_is_needed() -> None:
    with pytest.raises(CommandError) as e:
        usb.plan(64 * MIB, 100 * MIB)
    assert "needs at least 101.0 MiB (105906176 bytes" in str(e.value)
    assert "--size 101M" in e.value.hint
    with pytest.raises(CommandError, match=r"needs at least 401\.0 MiB .*300\.0 MiB persistence"):
        usb.plan(200 * MIB, 100 * MIB, persistence=300 * MIB)
    with pytest.raises(CommandError, match="smaller than the live files need"):
        usb.plan(1000 * MIB, 100 * MIB, fat_size=50 * MIB)
    with pytest.raises(CommandError, match="--persistence 1.0 MiB is too small"):
        usb.plan(1000 * MIB, 100 * MIB, persistence=MIB)


def test_sfdisk_script() -> None:
    lay = usb.plan(1000 * MIB, 100 * MIB, persistence="rest")
    assert lay.sfdisk_script(0xABCD1234) == (
        "label: dos\nlabel-id: 0xabcd1234\nunit: sectors\n\n"
        "start=2048, size=335872, type=c, bootable\n"
        "start=337920, size=1710080, type=83\n")


@pytest.mark.parametrize("label, out", [("livestick", "LIVESTICK"), ("MY_STICK-1", "MY_STICK-1")])
def test_check_label(label: str, out: str) -> None:
    assert usb.check_label(label) == out


@pytest.mark.parametrize("label", ["", "TWELVE_CHARS", "with space", "é"])
def test_check_label_rejects(label: str) -> None:
    with pytest.raises(CommandError, match="bad FAT label"):
        usb.check_label(label)


def test_persistence_arg() -> None:
    part = usb.plan(1000 * MIB, 100 * MIB, persistence="rest")
    assert usb.persistence_arg(part, None) == "liveinit.persistence=LABEL=persistence"
    plain = usb.plan(1000 * MIB, 100 * MIB)
    assert usb.persistence_arg(plain, 64 * MIB) == "liveinit.persistence=/persistence.img"
    assert usb.persistence_arg(plain, None) == ""


# -- the checks before a write: fake sysfs and proc trees -----------------------------------------

USB_PATH = "devices/pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host6/target6:0:0/6:0:0:0/block"
ATA_PATH = "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block"


def _disk(sys: Path, name: str, devno: str, path: str, removable: str = "1", parts: int = 2,
          holders: dict[str, str] | None = None) -> None:
    d = sys / path / name
    (d / "device").mkdir(parents=True)
    (d / "holders").mkdir()
    for f, v in (("dev", devno), ("size", str(2 * 15_000_000)), ("removable", removable), ("ro", "0")):
        (d / f).write_text(v + "\n")
    (d / "device" / "vendor").write_text("SanDisk \n")
    (d / "device" / "model").write_text("Cruzer Blade    \n")
    major, minor = devno.split(":")
    block = sys / "class" / "block"
    block.mkdir(parents=True, exist_ok=True)
    (block / name).symlink_to(os.path.relpath(d, block))
    for i in range(1, parts + 1):
        p = d / f"{name}{i}"
        (p / "holders").mkdir(parents=True)
        for f, v in (("dev", f"{major}:{int(minor) + i}"), ("size", "2048000"), ("partition", str(i))):
            (p / f).write_text(v + "\n")
        (block / p.name).symlink_to(os.path.relpath(p, block))
    for owner, holder in (holders or {}).items():
        target = d if owner == name else d / owner
        (target / "holders" / holder).mkdir()


def _proc(proc: Path, mounts: list[tuple[str, str, str]], swaps: tuple[str, ...] = ()) -> None:
    (proc / "self").mkdir(parents=True)
    lines = [f"{20 + i} 1 {devno} / {mp} rw,relatime shared:1 - ext4 {src} rw"
             for i, (devno, src, mp) in enumerate(mounts)]
    (proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
    (proc / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n"
                                + "".join(f"{s}\tpartition\t1000\t0\t-2\n" for s in swaps))


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Path]:
    sys, proc = tmp_path / "sys", tmp_path / "proc"
    _disk(sys, "sda", "8:0", ATA_PATH, removable="0")
    _disk(sys, "sdb", "8:16", USB_PATH, removable="1")
    return sys, proc


def test_a_free_usb_stick_may_be_written(fake: tuple[Path, Path]) -> None:
    sys, proc = fake
    _proc(proc, [("8:2", "/dev/sda2", "/")])
    disk = bh.inspect_disk("sdb", sys)
    assert (disk.bus, disk.removable, disk.model) == ("usb", True, "SanDisk Cruzer Blade")
    assert disk.size == 15_360_000_000
    assert [p.name for p in disk.partitions] == ["sdb1", "sdb2"]
    assert bh.refusals(disk, bh.host_state(proc)) == [] and bh.needs_force(disk) == []


def test_the_root_disk_is_refused(fake: tuple[Path, Path]) -> None:
    sys, proc = fake
    _proc(proc, [("8:2", "/dev/sda2", "/"), ("8:1", "/dev/sda1", "/boot/efi")])
    why = bh.refusals(bh.inspect_disk("sda", sys), bh.host_state(proc))
    assert why == ["sda holds the running system's root filesystem (/dev/sda2)",
                   "/dev/sda1 is mounted on /boot/efi"]
    assert bh.needs_force(bh.inspect_disk("sda", sys)) == [
        "sda is not a removable disk (removable=0, bus ata)"]


def test_a_mounted_partition_and_a_swap_are_refused(fake: tuple[Path, Path]) -> None:
    sys, proc = fake
    _proc(proc, [("8:2", "/dev/sda2", "/"), ("8:17", "/dev/sdb1", "/media/my stick")], swaps=("/dev/sdb2",))
    (proc / "self" / "mountinfo").write_text((proc / "self" / "mountinfo").read_text()
                                             .replace("/media/my stick", "/media/my\\040stick"))
    why = bh.refusals(bh.inspect_disk("sdb", sys), bh.host_state(proc))
    assert why == ["/dev/sdb1 is mounted on /media/my stick",
                   "/dev/sdb2 is an active swap (swapoff it first)"]


def test_holders_and_partitions_are_refused(tmp_path: Path) -> None:
    sys, proc = tmp_path / "sys", tmp_path / "proc"
    _disk(sys, "sdc", "8:32", USB_PATH, holders={"sdc2": "dm-0"})
    _proc(proc, [("8:2", "/dev/sda2", "/")])
    state = bh.host_state(proc)
    assert bh.refusals(bh.inspect_disk("sdc", sys), state) == [
        "sdc2 is in use by dm-0 (LVM, dm-crypt or md)"]
    part = bh.inspect_disk("sdc1", sys)
    assert part.partition_of == "sdc"
    assert bh.refusals(part, state) == ["sdc1 is a partition of sdc: give the whole disk"]


def test_confirmation_wants_the_device_name(fake: tuple[Path, Path]) -> None:
    sys, _ = fake
    disk = bh.inspect_disk("sdb", sys)
    said: list[str] = []
    asked: list[str] = []

    def ask(answer: str) -> Callable[[str], str]:
        def prompt(text: str) -> str:
            asked.append(text)
            return answer
        return prompt

    assert confirm("/dev/sdb", disk, ask("sdb"), said.append)
    assert confirm("/dev/sdb", disk, ask("/dev/sdb\n"), said.append)
    assert not confirm("/dev/sdb", disk, ask("yes"), said.append)
    assert not confirm("/dev/sdb", disk, ask(""), said.append)
    assert said[0] == "liveinit usb will ERASE everything on /dev/sdb:"
    assert "SanDisk Cruzer Blade, 14.3 GiB (15360000000 bytes), usb, removable" in said[1]
    assert [s.strip() for s in said[2:4]] == ["sdb1: 1000.0 MiB", "sdb2: 1000.0 MiB"]
    assert asked[0] == "Type the device name (sdb) to write it, anything else to stop: "


def test_file_target_backing_a_mounted_loop_is_refused(tmp_path: Path) -> None:
    sys, proc = tmp_path / "sys", tmp_path / "proc"
    _disk(sys, "loop7", "7:7", "devices/virtual/block", removable="0", parts=0)
    img = tmp_path / "stick.img"
    img.write_bytes(b"")
    (sys / "devices/virtual/block/loop7/loop").mkdir()
    (sys / "devices/virtual/block/loop7/loop/backing_file").write_text(f"{img}\n")
    _proc(proc, [("8:2", "/dev/sda2", "/"), ("7:7", "/dev/loop7", "/mnt")])
    assert bh.file_refusals(img, bh.host_state(proc), sys) == [
        f"{img} is attached as /dev/loop7, which is in use: /dev/loop7 is mounted on /mnt"]
    _proc(tmp_path / "proc2", [("8:2", "/dev/sda2", "/")], swaps=(str(img),))
    assert bh.file_refusals(img, bh.host_state(tmp_path / "proc2"), sys) == [f"{img} is an active swap file"]


# -- real devices: the root's, and loop devices ---------------------------------------------------

def test_the_running_roots_device_is_refused(tmp_path: Path) -> None:
    """A node with the root file system's device number (as /dev/root or a by-id link would be)."""
    root = bh.host_state().root
    assert root is not None
    major, minor = map(int, root.devno.split(":"))
    if major == 0:
        pytest.fail(f"the root here is {root.source} (no block device): run on a host booted from a disk")
    node = tmp_path / "rootdev"
    os.mknod(node, 0o600 | 0o060000, os.makedev(major, minor))
    with pytest.raises(CommandError, match="holds the running system's root filesystem"):
        check_device(node, force=True, yes=True)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Path]:
    img = tmp_path / "loop.img"
    with img.open("wb") as f:
        f.truncate(160 * MIB)
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True,
                         text=True).stdout.strip()
    try:
        yield Path(dev)
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


def test_a_mounted_loop_device_is_refused_even_with_force(loop: Path, tmp_path: Path) -> None:
    subprocess.run(["mkfs.ext4", "-q", "-F", str(loop)], check=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", str(loop), str(mnt)], check=True)
    try:
        with pytest.raises(CommandError, match=rf"refusing to write {loop}: {loop} is mounted on {mnt}"):
            check_device(loop, force=True, yes=True)
        # ... and the file behind it as a file target
        source = tmp_path / "some.iso"
        source.write_bytes(b"")     # the target is checked before the source is read
        assert main(["usb", str(source), str(tmp_path / "loop.img")]) == 1
        why = bh.file_refusals(tmp_path / "loop.img", bh.host_state())
        assert why == [f"{tmp_path / 'loop.img'} is attached as {loop}, which is in use: "
                       f"{loop} is mounted on {mnt}"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_fixed_loop_device_needs_force(loop: Path) -> None:
    with pytest.raises(CommandError, match=r"not a removable disk \(removable=0, bus virtual\)") as e:
        check_device(loop, force=False, yes=True)
    assert "--force" in e.value.hint
    assert check_device(loop, force=True, yes=True).name == loop.name


def test_without_yes_and_no_terminal_it_asks_for_yes(loop: Path) -> None:
    with pytest.raises(CommandError, match="needs a confirmation and stdin is not a terminal"):
        check_device(loop, force=True, yes=False)


# -- a stick image built from the demo root, then inspected -------------------------------------

@pytest.fixture(scope="module")
def demo_iso(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packer import image
    from qemu.demoroot import build_demo_root
    work = tmp_path_factory.mktemp("usb-demo")
    root = build_demo_root(work / "root")
    return image.build_image(root, work / "demo.iso", kernel, all_root=True).iso


def _sfdisk(path: Path) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(["sfdisk", "-J", str(path)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["partitiontable"]


def _mtools(*argv: str, input: bytes | None = None) -> str:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(list(argv), check=True, capture_output=True, env=env, input=input).stdout.decode()


@pytest.mark.slow
def test_stick_image_with_a_persistence_partition(demo_iso: Path, tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    conf = tmp_path / "usb.toml"
    conf.write_text('persistence = "rest"\nlabel = "demostick"\nmenu-entry = ["Safe mode=nomodeset"]\n')
    assert main(["usb", str(demo_iso), str(stick), "--size", "200M", "--config", str(conf)]) == 0
    table = _sfdisk(stick)
    assert table["label"] == "dos"
    fat, pers = table["partitions"]
    assert (fat["start"], fat["type"], fat.get("bootable")) == (2048, "c", True)
    assert (pers["type"], pers["start"] + pers["size"]) == ("83", 200 * MIB // 512)
    assert stick.read_bytes()[:440] == usb.SYSLINUX_MBR.read_bytes()[:440]
    img = f"{stick}@@{fat['start'] * 512}"
    listing = _mtools("mdir", "-/", "-a", "-b", "-i", img, "::/")
    for f in ("::/live/filesystem.squashfs", "::/live/vmlinuz", "::/live/initrd.img", "::/live/liveinit.id",
              "::/syslinux/ldlinux.sys", "::/syslinux/syslinux.cfg", "::/syslinux/menu.c32",
              "::/EFI/BOOT/BOOTX64.EFI", "::/boot/grub/grub.cfg"):
        assert f in listing.splitlines(), listing
    # the signed chain (the Debian kernel is signed): shim, the signed GRUB beside it, MokManager,
    # and the early config where that GRUB reads it, finding the stick by its label
    for f in ("::/EFI/BOOT/grubx64.efi", "::/EFI/BOOT/mmx64.efi", "::/EFI/debian/grub.cfg"):
        assert f in listing.splitlines(), listing
    assert "--label DEMOSTICK" in _mtools("mtype", "-i", img, "::/EFI/debian/grub.cfg")
    shim = tmp_path / "shim.efi"
    _mtools("mcopy", "-i", img, "::/EFI/BOOT/BOOTX64.EFI", str(shim))
    assert secureboot.read_pe(shim.read_bytes()).section(".vendor_cert") is not None
    assert "Volume in drive : is DEMOSTICK" in _mtools("mdir", "-i", img, "::/")
    syslinux_cfg = _mtools("mtype", "-i", img, "::/syslinux/syslinux.cfg")
    grub_cfg = _mtools("mtype", "-i", img, "::/boot/grub/grub.cfg")
    assert syslinux_cfg.count("liveinit.persistence=LABEL=persistence") == 6    # 5 entries + 1 custom
    assert "MENU LABEL Safe mode" in syslinux_cfg and "nomodeset" in syslinux_cfg
    assert grub_cfg.count("liveinit.persistence=LABEL=persistence") == 6
    assert 'menuentry "Safe mode"' in grub_cfg
    # the live files are the ISO's, byte for byte
    iso_sq = tmp_path / "iso.squashfs"
    subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(demo_iso), "-extract",
                    "/live/filesystem.squashfs", str(iso_sq)], check=True, capture_output=True)
    stick_sq = tmp_path / "stick.squashfs"
    _mtools("mcopy", "-i", img, "::/live/filesystem.squashfs", str(stick_sq))
    assert stick_sq.read_bytes() == iso_sq.read_bytes()
    # an ordinary FAT drive: a file goes in and comes back
    note = tmp_path / "note.txt"
    note.write_text("the user's file\n")
    _mtools("mcopy", "-i", img, str(note), "::/note.txt")
    assert _mtools("mtype", "-i", img, "::/note.txt") == "the user's file\n"
    blkid = subprocess.run(["blkid", "-p", "-O", str(pers["start"] * 512), str(stick)], capture_output=True,
                           text=True, check=True).stdout
    assert 'LABEL="persistence"' in blkid and 'TYPE="ext4"' in blkid
    subprocess.run(["e2fsck", "-fn", f"{stick}?offset={pers['start'] * 512}"], check=True,
                   capture_output=True)


@pytest.mark.slow
def test_stick_image_with_a_persistence_file(demo_iso: Path, tmp_path: Path) -> None:
    stick = tmp_path / "stick.img"
    with stick.open("wb") as f:
        f.truncate(160 * MIB)      # an existing file is used as it is
    assert main(["usb", str(demo_iso), str(stick), "--persistence-file", "32M"]) == 0
    (fat,) = _sfdisk(stick)["partitions"]
    assert fat["start"] + fat["size"] == 160 * MIB // 512
    img = f"{stick}@@1M"
    pimg = tmp_path / "p.img"
    _mtools("mcopy", "-i", img, "::/persistence.img", str(pimg))
    assert pimg.stat().st_size == 32 * MIB
    assert 'LABEL="persistence"' in subprocess.run(["blkid", "-p", str(pimg)], capture_output=True,
                                                   text=True).stdout
    assert "liveinit.persistence=/persistence.img" in _mtools("mtype", "-i", img, "::/syslinux/syslinux.cfg")


@pytest.mark.slow
def test_no_secure_boot_gives_the_unsigned_grub_with_a_warning(demo_iso: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    stick = tmp_path / "stick.img"
    assert main(["usb", str(demo_iso), str(stick), "--size", "100M", "--no-secure-boot"]) == 0
    captured = capsys.readouterr()
    assert "warning: Secure Boot not asked for" in captured.err and "Access Denied" in captured.err
    assert "unsigned GRUB (UEFI)" in captured.out
    img = f"{stick}@@1M"
    listing = _mtools("mdir", "-/", "-a", "-b", "-i", img, "::/EFI").splitlines()
    assert listing == ["::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI"], listing
    grub = tmp_path / "grub.efi"
    _mtools("mcopy", "-i", img, "::/EFI/BOOT/BOOTX64.EFI", str(grub))
    assert not secureboot.authenticode_signed(secureboot.read_pe(grub.read_bytes()))


@pytest.mark.slow
def test_a_target_too_small_is_rejected_before_writing(demo_iso: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    stick = tmp_path / "small.img"
    stick.write_bytes(b"\xaa" * (40 * MIB))
    assert main(["usb", str(demo_iso), str(stick)]) == 1
    err = capsys.readouterr().err
    assert "the target holds 40.0 MiB (41943040 bytes); this stick needs at least 65.0 MiB" in err
    assert "--size 65M" in err
    assert stick.read_bytes() == b"\xaa" * (40 * MIB)


@pytest.mark.slow
def test_a_failed_write_leaves_nothing_bootable(demo_iso: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    stick = tmp_path / "stick.img"
    assert main(["usb", str(demo_iso), str(stick), "--size", "100M"]) == 0
    assert _sfdisk(stick)["partitions"]

    def flaky(fd: int, region: usb.Region) -> None:
        raise CommandError(f"read-back of the {region.what} differs")
    monkeypatch.setattr(usb, "_verify", flaky)
    assert main(["usb", str(demo_iso), str(stick)]) == 1
    assert stick.read_bytes()[:MIB] == bytes(MIB)         # no partition table, no boot code
    assert subprocess.run(["sfdisk", "-J", str(stick)], capture_output=True).returncode != 0


@pytest.mark.slow
def test_a_loop_device_target_is_written_and_verified(demo_iso: Path, loop: Path) -> None:
    assert main(["usb", str(demo_iso), str(loop), "--force", "--yes", "--label", "LOOPSTICK"]) == 0
    assert _sfdisk(loop)["partitions"][0]["bootable"] is True
    assert "Volume in drive : is LOOPSTICK" in _mtools("mdir", "-i", f"{loop}@@1M", "::/")
