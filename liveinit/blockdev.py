"""Block devices from sysfs: what exists, its /dev node, and what it holds.

Without udev nothing names devices for us: /sys/class/block lists disks and
partitions (falling back to /sys/block and its partition subdirectories on
old kernels), the `dev` file gives major:minor, and fsprobe reads the
superblock. Nodes are created with mknod when devtmpfs has not made them yet."""
from __future__ import annotations

import os

from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.fsprobe import PartitionTable
    from liveinit.machine import Machine

CLASS_BLOCK = "/sys/class/block"
SYS_BLOCK = "/sys/block"
DEV = "/dev"
SECTOR = 512
SKIP_PREFIXES = ("ram",)


class BlockDevice(Plain):
    """A disk or partition: name, major, minor, size (bytes), removable, readonly,
    partition, disk (the parent disk's name, itself for a disk), partno (0 for a disk)."""

    __slots__ = ("name", "major", "minor", "size", "removable", "readonly", "partition",
                 "disk", "partno")
    name: str
    major: int
    minor: int
    size: int
    removable: bool
    readonly: bool
    partition: bool
    disk: str
    partno: int

    @property
    def optical(self) -> bool:
        return self.name.startswith("sr")


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return None


def _device(name: str, path: str, disk: str | None) -> BlockDevice | None:
    if name.startswith(SKIP_PREFIXES):
        return None
    devno = _read(path + "/dev")
    if not devno or ":" not in devno:
        return None
    try:
        major, minor = (int(x) for x in devno.split(":", 1))
        size = int(_read(path + "/size") or "0") * SECTOR
    except ValueError:
        return None
    if size == 0:  # empty CD tray, unused loop/nbd
        return None
    if name.startswith("loop") and not _read(path + "/loop/backing_file"):
        return None
    partno = _read(path + "/partition")
    is_part = partno is not None
    if is_part and disk is None:
        # /sys/class/block/sda1 -> .../block/sda/sda1: the parent directory is the disk.
        disk = os.path.basename(os.path.dirname(os.path.realpath(path)))
    parent = path if not is_part else os.path.dirname(os.path.realpath(path))
    removable = _read(parent + "/removable") == "1"
    return BlockDevice(name=name, major=major, minor=minor, size=size, removable=removable,
                       readonly=_read(path + "/ro") == "1", partition=is_part,
                       disk=disk if is_part else name,
                       partno=int(partno) if partno is not None and partno.isdigit() else 0)


def scan(m: Machine) -> list[BlockDevice]:
    """Every usable disk and partition, sorted by name."""
    found: list[BlockDevice] = []
    base = m.path(CLASS_BLOCK)
    try:
        names = sorted(os.listdir(base))
    except OSError:
        names = None
    if names is not None:
        for name in names:
            dev = _device(name, base + "/" + name, None)
            if dev is not None:
                found.append(dev)
        return found
    # No /sys/class/block (CONFIG_SYSFS_DEPRECATED): disks in /sys/block, partitions inside.
    base = m.path(SYS_BLOCK)
    for name in sorted(m.listdir(SYS_BLOCK)):
        dev = _device(name, base + "/" + name, None)
        if dev is None:
            continue
        found.append(dev)
        for sub in sorted(m.listdir(SYS_BLOCK + "/" + name)):
            if sub.startswith(name):
                part = _device(sub, base + "/" + name + "/" + sub, name)
                if part is not None:
                    found.append(part)
    return found


def node(m: Machine, dev: BlockDevice) -> str:
    """/dev/NAME (as seen by the machine), created with mknod when missing."""
    path = DEV + "/" + dev.name
    if not os.path.exists(m.path(path)):
        m.sys.mknod(m.path(path), "b", dev.major, dev.minor, 0o600)
    return path


def identify(m: Machine, dev: BlockDevice) -> dict[str, str]:
    """fsprobe's blkid-style keys for the device, with PARTUUID/PARTLABEL for partitions."""
    from liveinit import fsprobe
    path = m.path(node(m, dev))
    try:
        info = dict(fsprobe.probe(path))
    except OSError:
        info = {}
    if dev.partition:
        if "PART_ENTRY_UUID" in info:
            info.setdefault("PARTUUID", info["PART_ENTRY_UUID"])
        if "PART_ENTRY_NAME" in info:
            info.setdefault("PARTLABEL", info["PART_ENTRY_NAME"])
        if "PARTUUID" not in info:
            info.update(_partition_entry(m, dev))
    return info


def _partition_entry(m: Machine, dev: BlockDevice) -> dict[str, str]:
    """PARTUUID/PARTLABEL of `dev` from its disk's partition table."""
    from liveinit import fsprobe
    path = DEV + "/" + dev.disk
    if not os.path.exists(m.path(path)):
        devno = _read(m.path(CLASS_BLOCK + "/" + dev.disk + "/dev")) or ""
        if ":" not in devno:
            return {}
        a, b = devno.split(":", 1)
        node(m, BlockDevice(dev.disk, int(a), int(b), 0, False, False, False, dev.disk, 0))
    try:
        table = fsprobe.read_partition_table(m.path(path))
    except OSError:
        return {}
    if table is None:
        return {}
    return partition_keys(table, dev.partno)


def partition_keys(table: PartitionTable, partno: int) -> dict[str, str]:
    """PARTUUID/PARTLABEL for partition number `partno` of a fsprobe.PartitionTable."""
    for p in table.partitions:
        if p.number == partno:
            out = {}
            if p.uuid:
                out["PARTUUID"] = p.uuid
            if p.name:
                out["PARTLABEL"] = p.name
            return out
    return {}
