"""QEMU: findiso= finds a liveinit ISO on a Windows-formatted disk, NTFS and exFAT partitions.

The ISO file is put there without mounting on this host: ntfscp (ntfs-3g's tools) into the
NTFS partition, exfat-fuse through a loop device into the exFAT one. The Debian 6.1 kernel has
exfat but no NTFS driver, so the initramfs carries ntfs-3g and the fuse module; a kernel with
ntfs3 (the universal image's fs group) mounts NTFS itself."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from packer.kernel import KernelTree

pytestmark = [pytest.mark.slow, pytest.mark.qemu]
MIB = 1 << 20
ISO_PATH = "/isos/liveinit demo.iso"      # a space, as Windows users name files
NTFS_ISO_PATH = "/liveinit-demo.iso"      # ntfscp copies into an existing directory: the root


@pytest.fixture(scope="module")
def demo(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the demo ISO, its initramfs with ntfs-3g and fuse)."""
    from packer import image
    from packer.config import PackConfig
    from packer.initramfs import build
    from qemu.demoroot import build_demo_root
    if shutil.which("ntfscp") is None or shutil.which("mount.exfat-fuse") is None:
        pytest.fail("apt-get install ntfs-3g exfat-fuse exfatprogs")
    work = tmp_path_factory.mktemp("findiso")
    initrd = work / "initrd.img"
    build(PackConfig(output=initrd, kver=kernel.version, moddir=kernel.moddir, identity="findiso-demo",
                     binaries=(shutil.which("ntfs-3g") or "/usr/bin/ntfs-3g",), modules=("fuse",)))
    iso = image.build_image(build_demo_root(work / "root"), work / "demo.iso", kernel, initrd=initrd,
                            all_root=True).iso
    return iso, initrd


def _disk(tmp: Path, fs_image: Path, ptype: str) -> Path:
    """A DOS-partitioned disk whose partition 1 (at 1 MiB) is `fs_image`."""
    disk = tmp / "disk.img"
    with disk.open("wb") as f:
        f.truncate(MIB + fs_image.stat().st_size)
    subprocess.run(["sfdisk", "-q", str(disk)], input=f"start=2048, type={ptype}\n", text=True, check=True)
    with disk.open("r+b") as f, fs_image.open("rb") as src:
        f.seek(MIB)
        shutil.copyfileobj(src, f)
    return disk


def _ntfs(tmp: Path, iso: Path) -> Path:
    part = tmp / "ntfs.img"
    with part.open("wb") as f:
        f.truncate(iso.stat().st_size + 32 * MIB)
    subprocess.run(["mkfs.ntfs", "-F", "-Q", "-L", "Windows", str(part)], check=True, capture_output=True)
    subprocess.run(["ntfscp", str(part), str(iso), NTFS_ISO_PATH], check=True, capture_output=True)
    return _disk(tmp, part, "7")


def _exfat(tmp: Path, iso: Path) -> Path:
    part = tmp / "exfat.img"
    with part.open("wb") as f:
        f.truncate(iso.stat().st_size + 32 * MIB)
    subprocess.run(["mkfs.exfat", "-L", "STICK", str(part)], check=True, capture_output=True)
    mnt = tmp / "mnt"
    mnt.mkdir()
    loop = subprocess.run(["losetup", "-f", "--show", str(part)], check=True, capture_output=True,
                          text=True).stdout.strip()
    try:
        subprocess.run(["mount.exfat-fuse", loop, str(mnt)], check=True, capture_output=True)
        try:
            (mnt / ISO_PATH.lstrip("/")).parent.mkdir()
            shutil.copyfile(iso, mnt / ISO_PATH.lstrip("/"))
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
    return _disk(tmp, part, "7")


@pytest.mark.parametrize("fs", ["ntfs", "exfat"])
def test_findiso_on_a_windows_partition_boots(demo: tuple[Path, Path], kernel: KernelTree,
                                              tmp_path: Path, fs: str) -> None:
    from liveinit import fsprobe
    from qemu import lab
    iso, initrd = demo
    disk = _ntfs(tmp_path, iso) if fs == "ntfs" else _exfat(tmp_path, iso)
    assert fsprobe.probe(str(disk), MIB)["TYPE"] == fs
    path = NTFS_ISO_PATH if fs == "ntfs" else ISO_PATH
    res = lab.boot("virtio-blk", kernel=kernel, initrd=initrd, disks=(disk,),
                   cmdline=f'findiso="{path}"', timeout=600)
    assert res.success, f"{res.reason}\n{res.console[-3000:]}"
    assert f"findiso: {path} on /dev/vda1 ({fs})" in res.console
    if fs == "ntfs":
        assert "NTFS mounted by ntfs-3g" in res.console
    assert res.demo["root"] == "overlay"
