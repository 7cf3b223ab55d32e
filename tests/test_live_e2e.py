"""End to end: the demo ISO, with the real liveinit initramfs, boots with no
root= on every storage profile (direct kernel boot) and through the firmware
(SeaBIOS CD, SeaBIOS USB disk, OVMF CD, OVMF USB disk); the real init finds an
overlay root it can write to and the runtime's boot record; only the storage
drivers of the hardware the VM has are loaded; a second boot has forgotten the
write (tmpfs), unless a persistence partition (ext4, by label) carries it
across boots.

One ISO is built per session; each boot takes 10-40 s under TCG."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from packer import image
from packer.cpio import flatten, read_archive
from qemu.demoroot import STAMP, build_demo_root
from packer.kernel import KernelTree
from qemu import lab, profiles

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

BOOT_TIMEOUT_S = 240
FIRMWARE_PROFILES = ("bios-cd", "bios-usb", "uefi-cd", "uefi-usb")
PERSIST_LABEL = "LIVEPERSIST"

# What the guest sees, as the modaliases its devices announce (QEMU 7.2's PCI
# ids: `info pci` in the monitor; subsystem 1af4:1100 on every QEMU device).
# modprobe --resolve-alias on the depmod'd tree turns them into the drivers
# that may legitimately load; everything else in the image must stay out.
def _pci(vendor: int, device: int, cls: int) -> str:
    return (f"pci:v{vendor:08X}d{device:08X}sv00001AF4sd00001100"
            f"bc{cls >> 16:02X}sc{(cls >> 8) & 0xff:02X}i{cls & 0xff:02X}")


USB_STICK = "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"   # QEMU usb-storage, bulk-only
SCSI_DISK, SCSI_CD = "scsi:t-0x00", "scsi:t-0x05"
MACHINE_DEVICES = {
    "pc": (_pci(0x8086, 0x7010, 0x010180),),    # PIIX3 IDE: on every i440fx machine
    "q35": (_pci(0x8086, 0x2922, 0x010601),),   # ICH9 AHCI (00:1f.2): on every q35 machine
}
LAB_DEVICES = (_pci(0x1AF4, 0x1005, 0x00FF00), "virtio:d00000004v00001AF4")   # virtio-rng-pci
STORAGE_DEVICES: dict[str, tuple[str, ...]] = {
    "virtio-blk": (_pci(0x1AF4, 0x1001, 0x010000), "virtio:d00000002v00001AF4"),
    "virtio-scsi": (_pci(0x1AF4, 0x1004, 0x010000), "virtio:d00000008v00001AF4", SCSI_CD),
    "ide-cd": (SCSI_CD,),
    "ahci-cd": (SCSI_CD,),
    "ahci-disk": (SCSI_DISK,),
    "usb-xhci": (_pci(0x1B36, 0x000D, 0x0C0330), USB_STICK, SCSI_DISK),
    "usb-ehci": (_pci(0x8086, 0x24CD, 0x0C0320), USB_STICK, SCSI_DISK),
    "nvme": (_pci(0x8086, 0x5845, 0x010802),),
    "scsi-lsi": (_pci(0x1000, 0x0012, 0x010000), SCSI_DISK),
    "megasas-cd": (_pci(0x1000, 0x0079, 0x010400), SCSI_CD),     # MegaRAID SAS 2108 (gen2)
    "sd-card": (_pci(0x1B36, 0x0007, 0x080501), "mmc:block"),
}
# What the runtime loads for the medium itself, whatever the hardware.
LIVE_MODULES = ("loop", "isofs", "squashfs", "overlay")
# The image's storage drivers: controllers, transports and their upper layers.
STORAGE_DIRS = ("kernel/drivers/ata/", "kernel/drivers/scsi/", "kernel/drivers/nvme/", "kernel/drivers/usb/",
                "kernel/drivers/mmc/", "kernel/drivers/message/", "kernel/drivers/block/",
                "kernel/drivers/virtio/", "kernel/drivers/cdrom/", "kernel/drivers/misc/cardreader/",
                "kernel/drivers/pcmcia/")


@pytest.fixture(scope="session")
def demo_iso(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    """The demo live ISO, built once: demo root + liveinit initramfs (packer) + hybrid ISO."""
    work = tmp_path_factory.mktemp("live-e2e")
    root = build_demo_root(work / "root")
    return image.build_image(root, work / "liveinit-demo.iso", kernel, all_root=True)


@pytest.fixture(scope="session")
def image_storage_drivers(demo_iso: image.ImageResult, tmp_path_factory: pytest.TempPathFactory) -> frozenset[str]:
    """Module names of every storage driver the universal initramfs on the ISO carries."""
    rd = image.extract(demo_iso.iso, image.INITRD_PATH, tmp_path_factory.mktemp("rd") / "initrd.img")
    names = set()
    for path in flatten(read_archive(rd.read_bytes())):
        rel = path[path.index("/kernel/") + 1:] if "modules/" in path and "/kernel/" in path else ""
        if ".ko" in rel and rel.startswith(STORAGE_DIRS):
            names.add(Path(rel).name.split(".ko")[0].replace("-", "_"))
    return frozenset(names)


def _modprobe(depmod_root: Path, kver: str, *args: str) -> list[str]:
    return subprocess.run(["modprobe", "-d", str(depmod_root), "-S", kver, *args], capture_output=True,
                          text=True).stdout.split()


def allowed_drivers(prof: profiles.Profile, depmod_root: Path, kver: str) -> set[str]:
    """kmod's answer: the modules matching the VM's devices, with their dependencies."""
    aliases = (*MACHINE_DEVICES[prof.storage.machine], *LAB_DEVICES, *STORAGE_DEVICES[prof.storage.name])
    names = {m for a in aliases for m in _modprobe(depmod_root, kver, "--resolve-alias", a)}
    names |= set(LIVE_MODULES)
    deps = _modprobe(depmod_root, kver, "--show-depends", "-a", *sorted(names))
    return names | {Path(w).name.split(".ko")[0].replace("-", "_") for w in deps if ".ko" in w}


def _assert_only_present_hardware(res: lab.BootResult, storage_drivers: frozenset[str], depmod_root: Path,
                                  kver: str) -> None:
    prof = profiles.profile(res.profile)
    loaded = set(res.report.modules or ())
    missing = set(prof.storage.drivers) - loaded
    assert not missing, f"{res.profile}: the medium's drivers {sorted(missing)} are not loaded: {sorted(loaded)}"
    foreign = (loaded & storage_drivers) - allowed_drivers(prof, depmod_root, kver)
    assert not foreign, (f"{res.profile}: drivers for hardware the VM does not have were loaded: "
                         f"{sorted(foreign)} (all loaded: {sorted(loaded)})")


def _record(res: lab.BootResult) -> None:
    """Append the boot to $LIVEINIT_BOOT_TABLE (TSV) when set: docs/BOOT-LAB.md's table."""
    table = os.environ.get("LIVEINIT_BOOT_TABLE")
    if table:
        t = res.timings
        with open(table, "a") as f:
            f.write(f"{res.profile}\t{'ok' if res.success else 'FAIL: ' + res.reason}\t{t.run_init}\t"
                    f"{t.in_initramfs}\t{t.handover_ms}\t{dict(t.stages_ms)}\t{res.wall_s}\t"
                    f"{','.join(res.report.modules or ())}\n")


def _assert_live_boot(res: lab.BootResult) -> None:
    _record(res)
    assert res.success, f"{res.profile}: {res.reason}\n{res.console[-4000:]}"
    assert res.report.init == "/sbin/init", "liveinit did not report handing over to /sbin/init"
    assert res.demo["root"] == "overlay", res.demo
    assert res.demo["writable"] == "yes", res.demo
    assert res.demo["init"] == "1", "the real init must run as PID 1"
    assert res.timings.run_init is not None and res.timings.in_initramfs is not None
    assert res.report.modules, "the demo init did not report the loaded modules"
    assert res.report.boot_record is True, "no /run/liveinit/boot.json (the runtime's boot record) in the new root"


def test_every_storage_profile_has_a_device_model() -> None:
    assert set(STORAGE_DEVICES) == set(profiles.STORAGES)
    assert {s.machine for s in profiles.STORAGES.values()} <= set(MACHINE_DEVICES)


def test_the_driver_oracle_separates_the_profiles(depmod_root: Path, kernel: KernelTree) -> None:
    """Without booting: kmod's view of each VM needs the profile's own chain and
    excludes the other controllers (so the boot check below can fail)."""
    for name, storage in profiles.STORAGES.items():
        allowed = allowed_drivers(profiles.profile(name), depmod_root, kernel.version)
        assert set(storage.drivers) <= allowed, (name, sorted(allowed))
        for other in {"mpt3sas", "megaraid_sas", "mptspi", "aacraid", "hpsa"} - set(storage.drivers):
            assert other not in allowed, (name, other)
    nvme = allowed_drivers(profiles.profile("nvme"), depmod_root, kernel.version)
    assert not {"usb_storage", "xhci_hcd", "ata_piix", "sym53c8xx", "virtio_blk", "mmc_block"} & nvme
    assert "ata_piix" in allowed_drivers(profiles.profile("ide-cd"), depmod_root, kernel.version)


def test_the_image_carries_every_storage_driver(image_storage_drivers: frozenset[str]) -> None:
    """The universal image has the drivers a wrong probe would load (else 'not loaded' proves nothing)."""
    for m in ("ahci", "ata_piix", "nvme", "usb_storage", "uas", "xhci_pci", "ehci_pci", "mpt3sas",
              "megaraid_sas", "sym53c8xx", "virtio_blk", "virtio_scsi", "sdhci_pci", "mmc_block", "sd_mod"):
        assert m in image_storage_drivers, m
    assert len(image_storage_drivers) > 100


def test_the_check_catches_a_foreign_or_missing_driver(image_storage_drivers: frozenset[str],
                                                      depmod_root: Path, kernel: KernelTree) -> None:
    """The boot check itself, on console text: an nvme VM that loaded the USB stack fails it."""
    def check(mods: str) -> None:
        text = f"LIVEINIT-DEMO-MODULES record=yes modules={mods}\nLIVEINIT-DEMO-OK init=1\n"
        res = lab.BootResult(profile="nvme", success=True, reason="", log_path=None, wall_s=0.0, accel="tcg",
                             command=(), report=lab.parse_console(text), console=text)
        _assert_only_present_hardware(res, image_storage_drivers, depmod_root, kernel.version)

    check("ahci,libahci,libata,loop,nvme,nvme_core,scsi_mod,virtio_pci")
    with pytest.raises(AssertionError, match="usb_storage"):
        check("nvme,nvme_core,usb_storage,xhci_pci,xhci_hcd")
    with pytest.raises(AssertionError, match="mpt3sas"):
        check("nvme,nvme_core,mpt3sas")
    with pytest.raises(AssertionError, match="not loaded"):
        check("ahci,libahci,libata")


@pytest.mark.parametrize("profile", list(profiles.STORAGES))
def test_boots_on_every_storage(demo_iso: image.ImageResult, image_storage_drivers: frozenset[str],
                                depmod_root: Path, kernel: KernelTree, profile: str) -> None:
    res = lab.boot(profile, image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    assert "root=" not in res.command[res.command.index("-append") + 1]
    _assert_live_boot(res)
    _assert_only_present_hardware(res, image_storage_drivers, depmod_root, kernel.version)
    assert res.demo["persisted"] == "no"
    assert "findroot" in res.timings.stages


@pytest.mark.parametrize("profile", FIRMWARE_PROFILES)
def test_firmware_boots(demo_iso: image.ImageResult, image_storage_drivers: frozenset[str],
                        depmod_root: Path, kernel: KernelTree, profile: str) -> None:
    res = lab.boot(profile, image=demo_iso.iso, timeout=BOOT_TIMEOUT_S)
    assert "-kernel" not in res.command
    _assert_live_boot(res)
    _assert_only_present_hardware(res, image_storage_drivers, depmod_root, kernel.version)
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
