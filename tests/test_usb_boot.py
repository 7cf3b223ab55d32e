"""QEMU: a stick image `liveinit usb` wrote boots from USB through SeaBIOS (syslinux) and OVMF
(GRUB EFI), keeps what the live system wrote on its persistence partition, or in its persistence
file on the FAT, across the two boots, and stays a FAT drive the host reads (clean for fsck.fat),
with the file the test put on it."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from liveinit.contract import DEMO_OK
from packer.cli import main
from packer.kernel import KernelTree
from qemu import lab
from qemu.profiles import STORAGES, Firmware, Profile, Storage

MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass(frozen=True)
class WritableStick(Storage):
    """The lab's USB stick on xHCI, attached read-write: the persistence partition on it must
    keep the first boot's writes for the second (the lab's media are read-only or snapshots)."""

    def args(self, image: Path, drive_id: str = "live", boot: bool = False) -> list[str]:
        out = super().args(image, drive_id, boot)
        out[1] = out[1].replace(",readonly=on", "")
        return out


STICK = WritableStick(**vars(STORAGES["usb-xhci"]))


@pytest.fixture(scope="module")
def demo_iso(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from packer import image
    from qemu.demoroot import build_demo_root
    work = tmp_path_factory.mktemp("usb-boot")
    return image.build_image(build_demo_root(work / "root"), work / "demo.iso", kernel, all_root=True).iso


def _stick(iso: Path, out: Path, *persistence: str) -> Path:
    assert main(["usb", str(iso), str(out), "--size", "300M", *persistence]) == 0
    note = out.parent / "note.txt"
    note.write_text("put there by the host\n")
    subprocess.run(["mcopy", "-i", f"{out}@@1M", str(note), "::/note.txt"], check=True, env=MTOOLS_ENV)
    return out


@pytest.fixture(scope="module")
def stick(demo_iso: Path) -> Path:
    return _stick(demo_iso, demo_iso.parent / "stick.img", "--persistence", "rest")


def _boot(stick: Path, firmware: Firmware, monkeypatch: pytest.MonkeyPatch) -> lab.BootResult:
    prof = Profile(f"stick+{firmware}", STICK, firmware)
    monkeypatch.setattr(lab, "get_profile", lambda name: prof)
    return lab.boot(prof.name, image=stick, timeout=600)


@pytest.mark.slow
@pytest.mark.qemu
def test_stick_boots_bios_then_uefi_and_keeps_the_write(stick: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    first = _boot(stick, Firmware.BIOS, monkeypatch)
    assert first.success, first.console[-3000:]
    assert "SYSLINUX" in first.console and DEMO_OK in first.console
    assert "liveinit.persistence=LABEL=persistence" in first.console          # the menu's default entry
    assert "(ext4) holds the writable layer" in first.console
    assert (first.demo["root"], first.demo["writable"], first.demo["persisted"]) == ("overlay", "yes", "no")

    second = _boot(stick, Firmware.UEFI, monkeypatch)
    assert second.success, second.console[-3000:]
    assert "EFI stub" in second.console or "efi: EFI v" in second.console
    assert (second.demo["root"], second.demo["persisted"]) == ("overlay", "yes")

    _fat_is_clean_and_holds_the_note(stick, tmp_path)


def _fat_is_clean_and_holds_the_note(stick: Path, tmp_path: Path) -> None:
    """The FAT partition is still an ordinary FAT drive holding the host's file."""
    img = f"{stick}@@1M"
    note = subprocess.run(["mtype", "-i", img, "::/note.txt"], check=True, capture_output=True, text=True,
                          env=MTOOLS_ENV).stdout
    assert note == "put there by the host\n"
    fat = tmp_path / "fat.img"
    table = subprocess.run(["sfdisk", "-d", str(stick)], check=True, capture_output=True, text=True).stdout
    start, size = (int(f.split("=")[1]) for f in table.split(f"{stick}1 :")[1].split(",")[:2])
    subprocess.run(["dd", f"if={stick}", f"of={fat}", "bs=512", f"skip={start}", f"count={size}",
                    "status=none"], check=True)
    subprocess.run(["fsck.fat", "-n", str(fat)], check=True, capture_output=True)


@pytest.mark.slow
@pytest.mark.qemu
def test_stick_with_a_persistence_file_keeps_the_write_and_a_clean_fat(
        demo_iso: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stick = _stick(demo_iso, tmp_path / "stick-file.img", "--persistence-file", "64M")
    first = _boot(stick, Firmware.BIOS, monkeypatch)
    assert first.success, first.console[-3000:]
    assert "liveinit.persistence=/persistence.img" in first.console
    # the ext4 image is written through the partition's device; the FAT is never mounted read-write
    assert "the FAT stays read-only" in first.console and "remounted read-write" not in first.console
    assert (first.demo["root"], first.demo["writable"], first.demo["persisted"]) == ("overlay", "yes", "no")

    second = _boot(stick, Firmware.UEFI, monkeypatch)
    assert second.success, second.console[-3000:]
    assert (second.demo["root"], second.demo["persisted"]) == ("overlay", "yes")
    _fat_is_clean_and_holds_the_note(stick, tmp_path)
