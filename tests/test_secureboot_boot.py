"""Secure Boot end to end: the demo ISO boots through shim and Debian's signed
GRUB on OVMF with Secure Boot on and Microsoft's keys enrolled, as a CD and as
a USB disk; the kernel reports Secure Boot and lockdown, and loads its (signed)
modules; so does the stick `liveinit usb` writes from it; the same ISO boots
on OVMF without Secure Boot; an ISO built with the unsigned GRUB is refused by
the firmware, so the check is real.

One signed and one unsigned ISO per module; each boot takes 10-100 s under TCG."""
from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest

from liveinit.contract import DEMO_OK
from liveinit.modload import SIGNATURE_REFUSED
from packer import image
from packer.cli import main
from packer.kernel import KernelTree
from qemu import lab
from qemu.demoroot import build_demo_root

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

BOOT_TIMEOUT_S = 300
SECURE_BOOT_ON = "secureboot: Secure boot enabled"
LOCKED_DOWN = "Kernel is locked down from EFI Secure Boot"
UNSIGNED_MODULE_REFUSED = "unsigned module loading is restricted"
MODULE_SIGNATURE_MARK = b"~Module signature appended~\n"
FIRMWARE_REFUSES = r"failed to (load|start) Boot\d+ .*: (Access Denied|Security Violation)"


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_root(tmp_path_factory.mktemp("sb-root") / "root")


@pytest.fixture(scope="module")
def signed_iso(kernel: KernelTree, demo_root: Path,
               tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    res = image.build_image(demo_root, tmp_path_factory.mktemp("sb-signed") / "demo.iso", kernel,
                            all_root=True)
    assert res.secure_boot, res.efi_loader
    return res


@pytest.fixture(scope="module")
def unsigned_iso(kernel: KernelTree, demo_root: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    res = image.build_image(demo_root, tmp_path_factory.mktemp("sb-unsigned") / "demo.iso", kernel,
                            all_root=True, secure_boot=False)
    assert not res.secure_boot and "Access Denied" in res.efi_loader
    return res


def strip_module_signature(ko: bytes) -> bytes:
    """The module without its appended signature: the PKCS#7 blob, the 12-byte
    struct module_signature describing it, and the magic string after them."""
    assert ko.endswith(MODULE_SIGNATURE_MARK)
    end = len(ko) - len(MODULE_SIGNATURE_MARK) - 12
    _algo, _hash, _id_type, signer_len, key_id_len, sig_len = struct.unpack(">BBBBB3xI", ko[end:end + 12])
    return ko[:end - sig_len - signer_len - key_id_len]


@pytest.fixture(scope="module")
def unsigned_loop_iso(kernel: KernelTree, demo_root: Path,
                      tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    """The demo ISO whose initramfs holds loop.ko with its signature stripped
    (packed from a copy of the kernel tree: symlinks but for that one module)."""
    work = tmp_path_factory.mktemp("sb-unsigned-loop")
    subprocess.run(["cp", "-rs", str(kernel.root), str(work / "kernel")], check=True)
    tree = KernelTree(kernel.version, work / "kernel")
    (ko,) = tree.moddir.rglob("loop.ko")
    stripped = strip_module_signature(ko.read_bytes())
    assert stripped[:4] == b"\x7fELF" and MODULE_SIGNATURE_MARK not in stripped
    ko.unlink()
    ko.write_bytes(stripped)
    return image.build_image(demo_root, work / "demo.iso", tree, all_root=True, secure_boot=False)


def _assert_secure_boot(res: lab.BootResult, medium_fs: str = "isofs") -> None:
    assert res.success, f"{res.summary()}\n{res.console[-3000:]}"
    assert DEMO_OK in res.console
    assert "GNU GRUB" in res.console and image.MENU[0].title in res.console
    assert SECURE_BOOT_ON in res.console
    assert LOCKED_DOWN in res.console
    # modules the runtime loaded (finit_module) were accepted under lockdown
    assert res.report.modules and {medium_fs, "squashfs", "overlay", "loop"} <= set(res.report.modules)
    assert UNSIGNED_MODULE_REFUSED not in res.console


def test_signed_iso_layout(signed_iso: image.ImageResult) -> None:
    assert "EFI/debian/grub.cfg" in signed_iso.files   # where a CD boot's signed GRUB looks
    assert "Debian's packages" in signed_iso.efi_loader or "the host" in signed_iso.efi_loader


def test_cd_boots_under_secure_boot(signed_iso: image.ImageResult) -> None:
    res = lab.boot("secureboot-cd", image=signed_iso.iso, timeout=BOOT_TIMEOUT_S)
    _assert_secure_boot(res)
    assert "sr_mod" in (res.report.modules or ())
    print(res.summary())


def test_usb_disk_boots_under_secure_boot(signed_iso: image.ImageResult) -> None:
    res = lab.boot("secureboot-usb", image=signed_iso.iso, timeout=BOOT_TIMEOUT_S)
    _assert_secure_boot(res)
    assert {"usb_storage", "sd_mod"} <= set(res.report.modules or ())
    print(res.summary())


def test_usb_stick_boots_under_secure_boot(signed_iso: image.ImageResult, tmp_path: Path) -> None:
    """The stick `liveinit usb` writes from the signed ISO boots from USB through its own
    copy of the chain (shim, signed GRUB, the early config in /EFI/debian on the FAT)."""
    stick = tmp_path / "stick.img"
    assert main(["usb", str(signed_iso.iso), str(stick), "--size", "300M"]) == 0
    res = lab.boot("secureboot-usb", image=stick, timeout=BOOT_TIMEOUT_S)
    _assert_secure_boot(res, medium_fs="vfat")
    assert {"usb_storage", "sd_mod"} <= set(res.report.modules or ())
    print(res.summary())


def test_signed_iso_boots_without_secure_boot(signed_iso: image.ImageResult) -> None:
    """shim and the signed GRUB on OVMF with Secure Boot off: no lockdown, same menu."""
    res = lab.boot("uefi-cd", image=signed_iso.iso, timeout=BOOT_TIMEOUT_S)
    assert res.success, f"{res.summary()}\n{res.console[-3000:]}"
    assert "GNU GRUB" in res.console and image.MENU[0].title in res.console
    assert LOCKED_DOWN not in res.console


def test_a_module_without_its_signature_is_refused_by_name(unsigned_loop_iso: image.ImageResult) -> None:
    """module.sig_enforce=1 (as lockdown does for Secure Boot): the kernel rejects
    the stripped loop.ko, the runtime says which module and why, and the live
    image, which needs a loop device, fails with that reason as its hint."""
    res = lab.boot("virtio-blk", image=unsigned_loop_iso.iso, cmdline="module.sig_enforce=1",
                   timeout=BOOT_TIMEOUT_S)
    assert not res.success and res.report.failure, f"{res.summary()}\n{res.console[-3000:]}"
    assert "Loading of unsigned module is rejected" in res.console          # the kernel's own word
    assert f"module loop not loaded: {SIGNATURE_REFUSED}" in res.console
    assert "cannot attach" in res.report.failure and "loop device" in res.report.failure
    hint = res.report.hint or ""
    assert hint.startswith(f"the loop module was not loaded: {SIGNATURE_REFUSED}")
    assert "Key was rejected by service" in hint                  # EKEYREJECTED
    # the signed modules before it were accepted under enforcement
    for mod in ("virtio_blk", "isofs"):
        assert re.search(rf"liveinit: loaded {mod}\b", res.console), mod
    assert "Kernel panic" not in res.console
    print(res.summary())


def test_unsigned_loader_is_refused_by_secure_boot(unsigned_iso: image.ImageResult) -> None:
    res = lab.boot("secureboot-cd", image=unsigned_iso.iso, timeout=BOOT_TIMEOUT_S, success=FIRMWARE_REFUSES)
    assert res.success, f"the firmware did not refuse the unsigned GRUB: {res.reason}\n{res.console[-3000:]}"
    assert "GNU GRUB" not in res.console and "Linux version" not in res.console
    assert DEMO_OK not in res.console
