"""End to end: the demo ISO, with the real liveinit initramfs, boots with no
root= on every storage profile (direct kernel boot) and through the firmware
(SeaBIOS CD, SeaBIOS USB disk, OVMF UEFI); the real init finds an overlay
root it can write to; a second boot has forgotten the write (tmpfs), unless a
persistence partition (ext4, by label) carries it across boots.

One ISO is built per session; each boot takes 10-40 s under TCG."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from packer import image
from packer.demoroot import STAMP, build_demo_root
from packer.kernelpkg import KernelTree
from qemu import lab, profiles

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

BOOT_TIMEOUT_S = 240
FIRMWARE_PROFILES = ("bios-cd", "bios-usb", "uefi-cd")
PERSIST_LABEL = "LIVEPERSIST"


@pytest.fixture(scope="session")
def demo_iso(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    """The demo live ISO, built once: demo root + liveinit initramfs (packer) + hybrid ISO."""
    work = tmp_path_factory.mktemp("live-e2e")
    root = build_demo_root(work / "root")
    return image.build_image(root, work / "liveinit-demo.iso", kernel)


def _record(res: lab.BootResult) -> None:
    """Append the boot to $LIVEINIT_BOOT_TABLE (TSV) when set: docs/BOOT-LAB.md's table."""
    table = os.environ.get("LIVEINIT_BOOT_TABLE")
    if table:
        t = res.timings
        with open(table, "a") as f:
            f.write(f"{res.profile}\t{'ok' if res.success else 'FAIL: ' + res.reason}\t{t.run_init}\t"
                    f"{t.in_initramfs}\t{t.handover_ms}\t{dict(t.stages_ms)}\t{res.wall_s}\n")


def _assert_live_boot(res: lab.BootResult) -> None:
    _record(res)
    assert res.success, f"{res.profile}: {res.reason}\n{res.console[-4000:]}"
    assert res.report.init == "/sbin/init", "liveinit did not report handing over to /sbin/init"
    assert res.demo["root"] == "overlay", res.demo
    assert res.demo["writable"] == "yes", res.demo
    assert res.demo["init"] == "1", "the real init must run as PID 1"
    assert res.timings.run_init is not None and res.timings.in_initramfs is not None


@pytest.mark.parametrize("profile", list(profiles.STORAGES))
def test_boots_on_every_storage(demo_iso: image.ImageResult, profile: str) -> None:
    res = lab.boot(profile, image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    assert "root=" not in res.command[res.command.index("-append") + 1]
    _assert_live_boot(res)
    assert res.demo["persisted"] == "no"
    assert "findroot" in res.timings.stages


@pytest.mark.parametrize("profile", FIRMWARE_PROFILES)
def test_firmware_boots(demo_iso: image.ImageResult, profile: str) -> None:
    res = lab.boot(profile, image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    assert "-kernel" not in res.command
    _assert_live_boot(res)
    # the ISO's own loader and menu started the kernel
    assert ("GNU GRUB" if profile.startswith("uefi") else "ISOLINUX") in res.console
    assert image.MENU[0].title in res.console


def test_toram_copies_the_image_and_boots(demo_iso: image.ImageResult) -> None:
    res = lab.boot("virtio-blk", image=demo_iso.iso, cmdline="toram", timeout=BOOT_TIMEOUT_S)
    _assert_live_boot(res)
    assert "liveinit: toram: copying" in res.console


def test_second_boot_has_forgotten_the_write(demo_iso: image.ImageResult) -> None:
    first = lab.boot("virtio-blk", image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    _assert_live_boot(first)
    second = lab.boot("virtio-blk", image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    _assert_live_boot(second)
    assert (first.demo["persisted"], second.demo["persisted"]) == ("no", "no")


def _persistence_disk(path: Path, label: str) -> tuple[Path, Path]:
    """An MBR disk with one ext4 partition labelled `label` at 1 MiB; returns (disk, partition image)."""
    part = path.with_suffix(".part")
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, str(part), "32M"], check=True)
    with path.open("wb") as f:
        f.truncate((1 + 32 + 1) << 20)
    subprocess.run(["sfdisk", "-q", str(path)], input=b"label: dos\nstart=2048, size=65536, type=83\n",
                   check=True)
    subprocess.run(["dd", f"if={part}", f"of={path}", "bs=1M", "seek=1", "conv=notrunc", "status=none"],
                   check=True)
    return path, part


def _partition(disk: Path, out: Path) -> Path:
    subprocess.run(["dd", f"if={disk}", f"of={out}", "bs=1M", "skip=1", "count=32", "status=none"], check=True)
    return out


def test_persistence_partition_keeps_the_write(demo_iso: image.ImageResult, tmp_path: Path) -> None:
    disk, _ = _persistence_disk(tmp_path / "persist.img", PERSIST_LABEL)
    # blkid as the oracle that the label is where the runtime will look
    probe = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(1 << 20), str(disk)],
                           capture_output=True, text=True).stdout
    assert f"LABEL={PERSIST_LABEL}" in probe
    arg = f"liveinit.persistence=LABEL={PERSIST_LABEL}"
    first = lab.boot("ide-cd", image=demo_iso.iso, cmdline=arg, disks=(disk,), timeout=BOOT_TIMEOUT_S)
    _assert_live_boot(first)
    assert first.demo["persisted"] == "no"
    second = lab.boot("ide-cd", image=demo_iso.iso, cmdline=arg, disks=(disk,), timeout=BOOT_TIMEOUT_S)
    _assert_live_boot(second)
    assert second.demo["persisted"] == "yes"
    # debugfs as the oracle: the stamp is in the partition's upper layer
    part = _partition(disk, tmp_path / "after.part")
    listing = subprocess.run(["debugfs", "-R", "ls -p /liveinit-rw/upper" + str(Path(STAMP).parent), str(part)],
                             capture_output=True, text=True).stdout
    assert Path(STAMP).name in listing


def test_break_entry_opens_a_shell_before_the_search(demo_iso: image.ImageResult) -> None:
    """The menu's `liveinit.break=findroot` stops before the medium search with a shell."""
    entry = next(e for e in image.MENU if "liveinit.break=findroot" in e.extra)
    res = lab.boot("ide-cd", image=demo_iso.iso, cmdline=entry.extra, poweroff=False,
                   success=r"liveinit: break before findroot: shell", timeout=BOOT_TIMEOUT_S)
    assert res.success, f"{res.reason}\n{res.console[-3000:]}"
    assert "findroot" not in res.timings.stages and "coldplug" in res.timings.stages
    assert not res.demo
