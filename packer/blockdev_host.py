"""Is this the disk the user meant, and may it be overwritten? (host side, before a write)

Reads the kernel's own view: /sys/class/block (size, removable, model, partitions,
holders, the device path that tells the bus), /proc/self/mountinfo (every mount,
by device number) and /proc/swaps. `sys` and `proc` are roots so the checks run
against fake trees in tests. A device that is mounted, holds the running root or
an active swap, or is used by another block device (LVM, dm-crypt, md) is never
written; a device that is not removable only with --force."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from packer.errors import CommandError

SYS = Path("/sys")
PROC = Path("/proc")
SECTOR = 512


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    devno: str          # "MAJ:MIN"
    source: str         # /dev/sdb1, tmpfs, ...
    mountpoint: str


@dataclass(frozen=True)
class HostState:
    """What the running system uses: its mounts and active swaps."""

    mounts: tuple[Mount, ...]
    swaps: tuple[str, ...]        # paths from /proc/swaps (devices or files)

    @property
    def root(self) -> Mount | None:
        return next((m for m in reversed(self.mounts) if m.mountpoint == "/"), None)


@dataclass(frozen=True)
class PartInfo:
    """A partition of the disk, for the confirmation."""

    name: str
    devno: str
    size: int
    holders: tuple[str, ...]


@dataclass(frozen=True)
class DiskInfo:
    """A whole disk as sysfs describes it."""

    name: str                      # sdb, loop3, mmcblk0
    devno: str
    size: int                      # bytes
    removable: bool                # /sys/block/X/removable
    bus: str                       # "usb", "mmc", "pci", "virtual" ... from the sysfs device path
    model: str
    readonly: bool
    partition_of: str | None       # set when the name is a partition (sdb1 -> sdb)
    partitions: tuple[PartInfo, ...]
    holders: tuple[str, ...]
    backing_file: str | None       # loop devices

    @property
    def devnos(self) -> frozenset[str]:
        return frozenset([self.devno, *(p.devno for p in self.partitions)])


def _unescape(text: str) -> str:
    """mountinfo and /proc/swaps escape space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\" and len(text[i + 1:i + 4]) == 3 and text[i + 1:i + 4].isdigit():
            out.append(chr(int(text[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def host_state(proc: Path = PROC) -> HostState:
    """The mounts and swaps of the running system."""
    mounts = []
    for line in (proc / "self" / "mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 2:
            mounts.append(Mount(f[2], _unescape(r[1]), _unescape(f[4])))
    swaps = []
    try:
        for line in (proc / "swaps").read_text().splitlines()[1:]:
            if line.split():
                swaps.append(_unescape(line.split()[0]))
    except FileNotFoundError:
        pass
    return HostState(tuple(mounts), tuple(swaps))


def _read(path: Path, default: str = "") -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return default


def _holders(d: Path) -> tuple[str, ...]:
    try:
        return tuple(sorted(p.name for p in (d / "holders").iterdir()))
    except OSError:
        return ()


def _bus(devpath: Path) -> str:
    """The transport, from where the device sits in /sys/devices (what udev's ID_BUS derives from)."""
    parts = devpath.parts
    if "virtual" in parts:
        return "virtual"
    for bus in ("usb", "mmc", "nvme", "ata", "virtio", "scsi"):
        if any(p.startswith(bus) for p in parts):
            return bus
    return "pci" if any(p.startswith("pci") for p in parts) else "unknown"


def _udev_bus(name: str) -> str | None:
    """ID_BUS from the udev database, when this host runs udev."""
    try:
        import pyudev
        dev = pyudev.Devices.from_name(pyudev.Context(), "block", name)
        return dev.properties.get("ID_BUS") or None
    except (ImportError, LookupError, OSError):   # no udev database (containers), no such device
        return None


def disk_name(path: Path, sys: Path = SYS) -> str:
    """The kernel name of the block device node `path` (through symlinks like /dev/disk/by-id)."""
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device")
    devno = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return os.path.basename(os.path.realpath(sys / "dev" / "block" / devno))


def inspect_disk(name: str, sys: Path = SYS) -> DiskInfo:
    """Everything sysfs says about block device `name`."""
    link = sys / "class" / "block" / name
    if not link.exists():
        raise FileNotFoundError(f"no block device {name} in {sys}/class/block")
    d = Path(os.path.realpath(link))
    partition_of = d.parent.name if (d / "partition").exists() else None
    parts = []
    for sub in sorted(d.iterdir()):
        if sub.is_dir() and (sub / "partition").exists():
            parts.append(PartInfo(sub.name, _read(sub / "dev"), int(_read(sub / "size", "0")) * SECTOR,
                                  _holders(sub)))
    vendor, model = _read(d / "device" / "vendor"), _read(d / "device" / "model")
    backing = _read(d / "loop" / "backing_file") or None
    bus = _bus(d.relative_to(sys) if d.is_relative_to(sys) else d)
    if sys == SYS and bus not in ("virtual",):
        bus = _udev_bus(name) or bus
    described = " ".join(filter(None, (vendor, model))) or (f"loop on {backing}" if backing else "")
    return DiskInfo(name=name, devno=_read(d / "dev"), size=int(_read(d / "size", "0")) * SECTOR,
                    removable=_read(d / "removable") == "1", bus=bus, model=described,
                    readonly=_read(d / "ro") == "1", partition_of=partition_of, partitions=tuple(parts),
                    holders=_holders(d), backing_file=backing)


def _devno_of(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISBLK(st.st_mode):
        return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return None


def refusals(disk: DiskInfo, state: HostState) -> list[str]:
    """Every reason the disk must not be written, --force or not (empty: none)."""
    why = []
    if disk.partition_of:
        why.append(f"{disk.name} is a partition of {disk.partition_of}: give the whole disk")
    root = state.root
    if root is not None and (root.devno in disk.devnos or _devno_of(root.source) in disk.devnos):
        why.append(f"{disk.name} holds the running system's root filesystem ({root.source})")
    for m in state.mounts:
        if m is not root and (m.devno in disk.devnos or _devno_of(m.source) in disk.devnos):
            why.append(f"{m.source} is mounted on {m.mountpoint}")
    names = {disk.name, *(p.name for p in disk.partitions)}
    for swap in state.swaps:
        if _devno_of(swap) in disk.devnos or (swap.startswith("/dev/") and swap[5:] in names):
            why.append(f"{swap} is an active swap (swapoff it first)")
    for owner, holders in [(disk.name, disk.holders)] + [(p.name, p.holders) for p in disk.partitions]:
        if holders:
            why.append(f"{owner} is in use by {', '.join(holders)} (LVM, dm-crypt or md)")
    if disk.readonly:
        why.append(f"{disk.name} is read-only (a write-protect switch?)")
    return why


def needs_force(disk: DiskInfo) -> list[str]:
    """Reasons to refuse unless --force: a fixed disk is rarely the stick the user meant."""
    if disk.removable or disk.bus in ("usb", "mmc"):
        return []
    return [f"{disk.name} is not a removable disk (removable=0, bus {disk.bus})"]


def file_refusals(path: Path, state: HostState, sys: Path = SYS) -> list[str]:
    """Reasons an image file must not be written: it backs an active swap or a loop device in use."""
    why = []
    real = os.path.realpath(path)
    if any(os.path.realpath(s) == real for s in state.swaps):
        why.append(f"{path} is an active swap file")
    block = sys / "class" / "block"
    for link in sorted(block.iterdir()) if block.is_dir() else ():
        backing = _read(link / "loop" / "backing_file")
        if backing and os.path.realpath(backing.removesuffix(" (deleted)")) == real:
            loop = inspect_disk(link.name, sys)
            used = refusals(loop, state)
            if used:
                why.append(f"{path} is attached as /dev/{link.name}, which is in use: " + "; ".join(used))
    return why


def describe(disk: DiskInfo, path: str) -> list[str]:
    """Lines for the confirmation: model, size, bus, partitions."""
    from packer.progress import human
    kind = "removable" if disk.removable else "fixed"
    lines = [f"{path}: {disk.model or 'unknown model'}, {human(disk.size)} ({disk.size} bytes), "
             + f"{disk.bus}, {kind}"]
    if not disk.partitions:
        lines.append("  no partitions")
    for p in disk.partitions:
        fs = ""
        node = f"/dev/{p.name}"
        if os.path.exists(node):
            try:
                from packer.cmd_probe import identify
                keys = identify(node)
                fs = " ".join(f"{k}={keys[k]}" for k in ("TYPE", "LABEL") if keys.get(k))
            except (CommandError, OSError):   # an unreadable partition is still listed
                fs = ""
        lines.append(f"  {p.name}: {human(p.size)} {fs}".rstrip())
    return lines
