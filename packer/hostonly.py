"""Host-only mode: pack just the drivers the running machine uses.

pyudev lists every device's MODALIAS and walks the parents of the root block
device (its driver chain: e.g. virtio_blk <- virtio-pci); psutil says which
device is mounted on / and with which filesystem. The module set is then the
modules matching those modaliases, the drivers of the chain, the root
filesystem's module and, for a live boot, loop + squashfs + overlay; the
caller adds the closure.

Limits: a root on dm/md/LVM is followed through its `slaves/`; network roots
(nfs, nbd) and a root on a module-less fuse filesystem are not handled."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from packer.errors import CommandError

LIVE_MODULES = ("loop", "squashfs", "overlay", "isofs")


@dataclass(frozen=True)
class HostScan:
    """What the running machine needs to find its root: the host scan."""

    modaliases: tuple[str, ...]     # every device's MODALIAS, sorted, unique
    root_device: str                # e.g. /dev/vda
    root_fstype: str                # e.g. ext4
    root_drivers: tuple[str, ...]   # driver and module names up the root device's parents
    root_modaliases: tuple[str, ...]
    layers: tuple[str, ...] = ()    # LUKS/LVM/md under the root (packer.blocktools.Layer values)


def root_filesystem(mountpoint: str = "/") -> tuple[str, str]:
    """(device, fstype) mounted on `mountpoint`, from psutil."""
    import psutil
    found = [p for p in psutil.disk_partitions(all=True) if p.mountpoint == mountpoint]
    if found:
        return found[-1].device, found[-1].fstype     # the last mount on / is the one in use
    raise CommandError(f"psutil finds nothing mounted on {mountpoint}",
                       hint="--host-only needs /proc mounted; build without --host-only instead")


def _driver_chain(device: object, seen: set[str]) -> tuple[list[str], list[str]]:
    """Drivers/modules and modaliases of `device`, its parents and (dm/md) its slaves."""
    import pyudev
    drivers: list[str] = []
    aliases: list[str] = []
    for dev in [device, *device.ancestors]:  # type: ignore[attr-defined]
        if dev.sys_path in seen:
            continue
        seen.add(dev.sys_path)
        if dev.driver:
            drivers.append(dev.driver)
        module = os.path.join(dev.sys_path, "driver", "module")
        if os.path.islink(module):
            drivers.append(os.path.basename(os.readlink(module)))
        alias = dev.properties.get("MODALIAS")
        if alias:
            aliases.append(alias)
    slaves = Path(device.sys_path) / "slaves"  # type: ignore[attr-defined]
    if slaves.is_dir():
        for s in sorted(slaves.iterdir()):
            sub = pyudev.Devices.from_sys_path(device.context, str(s.resolve()))  # type: ignore[attr-defined]
            d, a = _driver_chain(sub, seen)
            drivers += d
            aliases += a
    return drivers, aliases


def _from_mount_dev(ctx: object) -> object | None:
    """The block device whose number / is mounted from (None for btrfs/overlay/tmpfs roots)."""
    import pyudev
    try:
        return pyudev.Devices.from_device_number(ctx, "block", os.stat("/").st_dev)
    except (pyudev.DeviceNotFoundError, ValueError, OSError):
        return None


def scan_host() -> HostScan:
    """Collect the running machine's modaliases and root device chain."""
    import pyudev
    try:
        ctx = pyudev.Context()
    except ImportError as e:  # libudev missing
        raise CommandError(f"pyudev cannot start: {e}", hint="apt-get install libudev1") from None
    aliases = sorted({d.properties["MODALIAS"] for d in ctx.list_devices() if d.properties.get("MODALIAS")})
    device, fstype = root_filesystem("/")
    why = ""
    try:
        root = pyudev.Devices.from_device_file(ctx, device)
    except (pyudev.DeviceNotFoundError, ValueError, OSError) as e:
        why = str(e)
        root = _from_mount_dev(ctx)        # e.g. "/dev/root", which has no node
    if root is None:
        raise CommandError(f"the root device {device} is not a block device udev knows ({why})",
                           hint="--host-only cannot follow this root (overlay/network/container?); "
                           "pack the universal image instead")
    drivers, root_aliases = _driver_chain(root, set())
    from packer.blocktools import layers_below
    layers = layers_below(root.sys_name)  # type: ignore[attr-defined]
    return HostScan(modaliases=tuple(aliases), root_device=device, root_fstype=fstype,
                       root_drivers=tuple(dict.fromkeys(drivers)),
                       root_modaliases=tuple(dict.fromkeys(root_aliases)),
                       layers=tuple(sorted(layers)))


def _normal(name: str) -> str:
    return name.replace("-", "_")


def host_modules(tree: object, scan: HostScan, live: bool = True) -> set[str]:
    """Module names (before closure) the image needs on this machine.

    `tree` is a packer.kmod.ModuleTree; names it does not have (built-in
    drivers, drivers of another kernel) are skipped."""
    names: set[str] = set()
    available = {_normal(n) for n in tree.select(globs=("*",))}  # type: ignore[attr-defined]
    names |= match_modaliases(tree, scan.modaliases)
    for d in scan.root_drivers:
        if _normal(d) in available:
            names.add(_normal(d))
    fs = _normal(scan.root_fstype)
    if fs in available:
        names.add(fs)
    if live:
        names |= {m for m in LIVE_MODULES if m in available}
    return names


def match_modaliases(tree: object, aliases: tuple[str, ...]) -> set[str]:
    """Modules of `tree` whose alias patterns match any of `aliases` (kmod rules)."""
    out: set[str] = set()
    for a in aliases:
        out.update(tree.match(a))  # type: ignore[attr-defined]
    return out
