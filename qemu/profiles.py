"""Boot-lab profiles: how the medium is attached (storage) and what boots it (firmware).

A profile name is a storage name ("nvme"), a named firmware combination
("bios-cd", "bios-usb", "uefi-cd") or "STORAGE+FIRMWARE" ("nvme+uefi").
Storage profiles default to direct kernel boot (-kernel/-initrd/-append),
which the runtime cannot tell from a firmware boot but which skips the
firmware's own seconds."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS.fd")
# Secure Boot: the SMM-protected build (its variable store only writable from
# SMM, so q35 with smm=on) and a variable store with Microsoft's keys enrolled.
OVMF_SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")



@dataclass(frozen=True)
class Storage:
    """A way to attach the live medium: machine type and QEMU devices."""

    name: str
    machine: str                  # "pc" (i440fx + PIIX IDE) or "q35" (ICH9 AHCI)
    description: str
    devices: tuple[str, ...]      # -device values; {drive} is the drive id, {boot} ",bootindex=0" or ""
    media: str = "disk"           # "disk" or "cdrom" (the -drive media=)
    readonly: bool = True         # False: attached writable with snapshot=on
    power_of_two: bool = False    # sd-card: QEMU wants the image size to be a power of two
    drivers: tuple[str, ...] = ()  # the guest modules that make the medium appear (for the docs/tests)

    def args(self, image: Path, drive_id: str = "live", boot: bool = False) -> list[str]:
        """QEMU arguments that attach `image` through this storage path."""
        drive = f"file={image},if=none,id={drive_id},format=raw,media={self.media}"
        # Devices that refuse read-only drives (ide-hd, sd-card) get a
        # snapshot: the guest may write, the image file never changes.
        drive += ",readonly=on" if self.readonly else ",snapshot=on"
        out = ["-drive", drive]
        bootidx = ",bootindex=0" if boot else ""
        for dev in self.devices:
            out += ["-device", dev.format(drive=drive_id, boot=bootidx)]
        return out


class Firmware(StrEnum):
    """What starts the kernel: QEMU itself (direct), SeaBIOS or OVMF."""

    DIRECT = "direct"
    BIOS = "bios"
    UEFI = "uefi"
    SECUREBOOT = "secureboot"

    @property
    def description(self) -> str:
        return FIRMWARE_DESCRIPTIONS[self]

    @property
    def machine_options(self) -> str:
        """What the firmware adds to -machine (Secure Boot's OVMF needs SMM)."""
        return ",smm=on" if self is Firmware.SECUREBOOT else ""

    def args(self, vars_copy: Path | None = None) -> list[str]:
        """Firmware arguments; UEFI needs a writable copy of OVMF_VARS.fd."""
        if self is Firmware.SECUREBOOT:
            # The MS-keys store is attached with snapshot=on: every boot starts
            # from the enrolled keys and the file never changes (no copy needed).
            return ["-global", "driver=cfi.pflash01,property=secure,value=on",
                    "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_SECBOOT_CODE}",
                    "-drive", f"if=pflash,format=raw,unit=1,snapshot=on,file={OVMF_MS_VARS}"]
        if self is not Firmware.UEFI:
            return []  # SeaBIOS is QEMU's default; direct boot adds -kernel later
        if vars_copy is None:
            raise ValueError("UEFI boots need a writable copy of OVMF_VARS.fd")
        return ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]


FIRMWARE_DESCRIPTIONS: dict[Firmware, str] = {
    Firmware.DIRECT: "QEMU loads the kernel and initramfs (-kernel/-initrd/-append)",
    Firmware.BIOS: "SeaBIOS boots the medium (isolinux)",
    Firmware.UEFI: "OVMF boots the medium (GRUB from the EFI system partition)",
    Firmware.SECUREBOOT: "OVMF with Secure Boot on and Microsoft's keys (shim, signed GRUB; q35 only)",
}


@dataclass(frozen=True)
class Profile:
    """A storage path plus a firmware: one way to boot the image."""

    name: str
    storage: Storage
    firmware: Firmware

    @property
    def direct(self) -> bool:
        return self.firmware is Firmware.DIRECT

    def args(self, image: Path, vars_copy: Path | None = None) -> list[str]:
        """Machine, firmware and medium arguments (no accel, memory, console, kernel)."""
        return (["-machine", self.storage.machine + self.firmware.machine_options]
                + self.firmware.args(vars_copy) + self.storage.args(image, boot=not self.direct))


STORAGES: dict[str, Storage] = {s.name: s for s in (
    Storage("virtio-blk", "pc", "virtio block device", ("virtio-blk-pci,drive={drive}{boot}",),
            drivers=("virtio_pci", "virtio_blk")),
    Storage("virtio-scsi", "pc", "CD on a virtio SCSI HBA",
            ("virtio-scsi-pci,id=vscsi0", "scsi-cd,drive={drive},bus=vscsi0.0{boot}"), media="cdrom",
            drivers=("virtio_pci", "virtio_scsi", "sr_mod")),
    Storage("ide-cd", "pc", "CD on the PIIX IDE controller (i440fx PC)",
            ("ide-cd,drive={drive},bus=ide.1{boot}",), media="cdrom", drivers=("ata_piix", "sr_mod")),
    Storage("ahci-cd", "q35", "CD on the ICH9 AHCI controller (q35)",
            ("ide-cd,drive={drive},bus=ide.2{boot}",), media="cdrom", drivers=("ahci", "sr_mod")),
    Storage("ahci-disk", "q35", "disk on the ICH9 AHCI controller (q35)",
            ("ide-hd,drive={drive},bus=ide.2{boot}",), readonly=False, drivers=("ahci", "sd_mod")),
    Storage("usb-xhci", "q35", "USB stick on an xHCI (USB 3) controller",
            ("qemu-xhci,id=xhci0", "usb-storage,bus=xhci0.0,drive={drive},removable=on{boot}"),
            drivers=("xhci_pci", "usb_storage", "sd_mod")),
    Storage("usb-ehci", "pc", "USB stick on an EHCI (USB 2) controller",
            ("usb-ehci,id=ehci0", "usb-storage,bus=ehci0.0,drive={drive},removable=on{boot}"),
            drivers=("ehci_pci", "usb_storage", "sd_mod")),
    Storage("nvme", "q35", "NVMe namespace", ("nvme,drive={drive},serial=liveinit0{boot}",),
            drivers=("nvme",)),
    # sr cannot read the capacity here ("Hardware Error"): isofs's direct mount fails with
    # EIO, liveinit mounts the CD through a read-only loop device (issue 12).
    Storage("megasas-cd", "pc", "CD on a MegaRAID SAS gen2 HBA (megasas-gen2)",
            ("megasas-gen2,id=mega0", "scsi-cd,drive={drive},bus=mega0.0{boot}"), media="cdrom",
            drivers=("megaraid_sas", "sr_mod")),
    Storage("scsi-lsi", "pc", "disk on a classic LSI 53C895A SCSI HBA",
            ("lsi53c895a,id=lsi0", "scsi-hd,drive={drive},bus=lsi0.0{boot}"),
            drivers=("sym53c8xx", "sd_mod")),
    Storage("sd-card", "pc", "SD card on an SDHCI PCI controller",
            ("sdhci-pci", "sd-card,drive={drive}"), readonly=False, power_of_two=True,
            drivers=("sdhci_pci", "mmc_block")),
)}

# Firmware boots worth a name of their own.
NAMED: dict[str, tuple[str, Firmware]] = {
    "bios-cd": ("ide-cd", Firmware.BIOS),
    "bios-usb": ("usb-ehci", Firmware.BIOS),
    "uefi-cd": ("ahci-cd", Firmware.UEFI),
    "uefi-usb": ("usb-xhci", Firmware.UEFI),
    "secureboot-cd": ("ahci-cd", Firmware.SECUREBOOT),
    "secureboot-usb": ("usb-xhci", Firmware.SECUREBOOT),
}


def profile(name: str) -> Profile:
    """Resolve a profile name; raises KeyError naming the valid choices."""
    fw: str
    if name in NAMED:
        storage, fw = NAMED[name]
    elif "+" in name:
        storage, fw = name.split("+", 1)
    else:
        storage, fw = name, Firmware.DIRECT
    if storage not in STORAGES or fw not in set(Firmware):
        raise KeyError(f"unknown profile {name!r}; choose one of {', '.join(names())} "
                       f"or STORAGE+FIRMWARE ({'|'.join(Firmware)})")
    if fw == Firmware.SECUREBOOT and STORAGES[storage].machine != "q35":
        q35 = ", ".join(s for s, st in STORAGES.items() if st.machine == "q35")
        raise KeyError(f"profile {name!r}: Secure Boot's OVMF needs SMM, which only the q35 machine has; "
                       f"choose a q35 storage ({q35})")
    return Profile(name, STORAGES[storage], Firmware(fw))


def names() -> list[str]:
    """Every named profile: the storage ones (direct boot), then the firmware ones."""
    return list(STORAGES) + list(NAMED)
