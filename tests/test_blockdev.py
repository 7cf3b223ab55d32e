"""blockdev: enumeration from real captured sysfs trees and built ones, /dev
nodes made with mknod, identification checked against blkid and sfdisk."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from liveinit import blockdev
from liveinit.blockdev import BlockDevice
from qemu.fakesysfs import SysfsBuilder, machine

DATA = Path(__file__).parent / "data" / "sysfs"
MiB = 1 << 20


def by_name(devs):
    return {d.name: d for d in devs}


def test_scan_captured_q35_ahci():
    m, _ = machine(DATA / "q35-ahci")
    devs = by_name(blockdev.scan(m))
    assert sorted(devs) == ["sda", "sda1", "sda2", "sr0"]
    assert devs["sda"] == BlockDevice("sda", 8, 0, 64 * MiB, False, False, False, "sda", 0)
    assert devs["sda1"] == BlockDevice("sda1", 8, 1, 16 * MiB, False, False, True, "sda", 1)
    assert devs["sda2"].partno == 2 and devs["sda2"].disk == "sda" and devs["sda2"].partition
    sr0 = devs["sr0"]
    assert (sr0.major, sr0.minor, sr0.removable, sr0.readonly, sr0.optical) == (11, 0, True, True, True)
    assert sr0.size == 736 * 512


def test_scan_captured_usb_stick_is_removable():
    m, _ = machine(DATA / "usb-xhci")
    devs = by_name(blockdev.scan(m))
    assert devs["sda"].removable and devs["sda1"].removable  # a partition inherits its disk's flag
    assert not devs["sda"].optical


def test_scan_captured_nvme_and_virtio_names():
    for name, disk, major in (("nvme", "nvme0n1", 259), ("virtio-blk", "vda", 254)):
        m, _ = machine(DATA / name)
        devs = by_name(blockdev.scan(m))
        assert devs[disk].major == major and not devs[disk].partition
        parts = [d for d in devs.values() if d.partition]
        assert {p.disk for p in parts} == {disk} and sorted(p.partno for p in parts) == [1, 2]


def test_scan_skips_ram_empty_and_unbacked_loops(tmp_path):
    b = SysfsBuilder(tmp_path)
    b.disk(None, "ram0", 1, 0, 8192)
    b.disk(None, "sdb", 8, 16, 0, removable=True)     # card reader without a card
    b.loop(0)                                           # no backing file
    b.loop(1, "/run/liveinit/iso/live.iso", 4096)
    b.disk(None, "mmcblk0", 179, 0, 1 << 20)
    m, _ = machine(tmp_path)
    assert [d.name for d in blockdev.scan(m)] == ["loop1", "mmcblk0"]


def test_scan_falls_back_to_sys_block(tmp_path):
    b = SysfsBuilder(tmp_path)
    disk = b.disk(None, "hda", 3, 0, 1 << 20)
    b.partition(disk, "hda1", 1, 3, 1, 1 << 19)
    shutil.rmtree(tmp_path / "sys" / "class")
    m, _ = machine(tmp_path)
    devs = by_name(blockdev.scan(m))
    assert sorted(devs) == ["hda", "hda1"] and devs["hda1"].disk == "hda" and devs["hda1"].partno == 1


def test_node_is_made_when_missing(tmp_path):
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "sda").write_bytes(b"")
    m, sysc = machine(tmp_path)
    sda = BlockDevice("sda", 8, 0, MiB, False, False, False, "sda", 0)
    sr0 = BlockDevice("sr0", 11, 0, MiB, True, True, False, "sr0", 0)
    assert blockdev.node(m, sda) == "/dev/sda"
    assert blockdev.node(m, sr0) == "/dev/sr0"
    assert sysc.of("mknod") == [("mknod", "/dev/sr0", "b", 11, 0)]


def blkid(path: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True).stdout
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def test_identify_against_blkid_and_sfdisk(tmp_path):
    """The disk node carries a GPT, the partition node a vfat filesystem."""
    b = SysfsBuilder(tmp_path)
    disk = b.disk(None, "sdc", 8, 32, 65536, removable=True)
    b.partition(disk, "sdc1", 1, 8, 33, 32768)
    dev = tmp_path / "dev"
    dev.mkdir()
    with open(dev / "sdc", "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["sfdisk", "-q", str(dev / "sdc")], check=True, text=True,
                   input="label: gpt\nsize=16M, type=L, name=LIVE-STICK\n")
    with open(dev / "sdc1", "wb") as f:
        f.truncate(16 * MiB)
    subprocess.run(["mkfs.vfat", "-n", "LIVEUSB", "-i", "1234ABCD", str(dev / "sdc1")],
                   check=True, capture_output=True)
    m, sysc = machine(tmp_path)
    devs = by_name(blockdev.scan(m))
    info = blockdev.identify(m, devs["sdc1"])
    oracle = blkid(dev / "sdc1")
    for key in ("TYPE", "UUID", "LABEL"):
        assert info[key] == oracle[key]
    table = json.loads(subprocess.run(["sfdisk", "-J", str(dev / "sdc")], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]["partitions"][0]
    assert info["PARTUUID"].lower() == table["uuid"].lower()
    assert info["PARTLABEL"] == table["name"] == "LIVE-STICK"
    whole = blockdev.identify(m, devs["sdc"])
    assert "PARTUUID" not in whole and "LABEL" not in whole
    assert sysc.of("mknod") == []
