"""Host-only mode on this machine (a VM: virtio-blk root, ext4), checked against
what /proc/mounts and /sys say directly."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from packer import hostonly
from packer.kernel import KernelTree


def _proc_root() -> tuple[str, str]:
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fstype = line.split()[:3]
        if mnt == "/":
            root = (dev, fstype)
    return root


def _sys_modaliases() -> set[str]:
    out = set()
    for dirpath, _dirs, files in os.walk("/sys/devices"):
        if "modalias" in files:
            try:
                text = Path(dirpath, "modalias").read_text().strip()
            except OSError:
                continue
            if text:
                out.add(text)
    return out


@pytest.fixture(scope="module")
def scan() -> hostonly.HostScan:
    return hostonly.scan_host()


def test_root_filesystem_matches_proc_mounts(scan: hostonly.HostScan) -> None:
    assert (scan.root_device, scan.root_fstype) == _proc_root()


def test_modaliases_match_sysfs(scan: hostonly.HostScan) -> None:
    # udev's MODALIAS property is the sysfs modalias file of each device.
    assert set(scan.modaliases) == _sys_modaliases()


def test_root_chain_walks_up_to_the_bus_driver(scan: hostonly.HostScan) -> None:
    dev = Path("/sys/class/block") / Path(scan.root_device).name
    expected = []
    p = dev.resolve()
    while p != Path("/sys/devices"):
        drv = p / "driver"
        if drv.is_symlink():
            expected.append(os.path.basename(os.readlink(drv)))
        p = p.parent
    assert expected, "the root device has no driver in its parents"
    assert [d for d in scan.root_drivers if d in expected] == expected
    if scan.root_device.startswith("/dev/vd"):
        assert "virtio_blk" in scan.root_drivers


@pytest.mark.slow
def test_host_only_module_set_is_a_small_subset(scan: hostonly.HostScan, kernel: KernelTree,
                                                tmp_path: Path) -> None:
    from packer.kmod import ModuleTree
    tree = ModuleTree(kernel.moddir)
    universal = tree.closure(tree.select(groups=("storage", "usb", "cdrom", "fs", "live", "keyboard")))
    mods = tree.closure(hostonly.host_modules(tree, scan))
    assert scan.root_fstype in mods
    assert "virtio_blk" in mods and "virtio_pci" in mods
    assert {"loop", "squashfs", "overlay"} <= mods
    assert len(mods) < len(universal) / 4, (len(mods), len(universal))


def test_root_found_by_device_number_when_the_mount_source_has_no_node(
        monkeypatch: pytest.MonkeyPatch, scan: hostonly.HostScan) -> None:
    # Some systems show "/dev/root" in /proc/mounts: fall back to st_dev of /.
    monkeypatch.setattr(hostonly, "root_filesystem", lambda mountpoint="/": ("/dev/root", scan.root_fstype))
    other = hostonly.scan_host()
    assert other.root_drivers == scan.root_drivers


def test_unfollowable_root_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hostonly, "root_filesystem", lambda mountpoint="/": ("overlay", "overlay"))
    monkeypatch.setattr(hostonly, "_from_mount_dev", lambda ctx: None)
    with pytest.raises(hostonly.CommandError, match="overlay") as e:
        hostonly.scan_host()
    assert "universal" in e.value.hint
