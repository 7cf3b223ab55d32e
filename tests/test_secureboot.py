"""packer.secureboot against the real signed binaries (Debian's kernel, shim and
GRUB, fetched into the cache), with sbverify (sbsigntool) and openssl as oracles."""
from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from packer import image, kmod, secureboot
from packer.config import DEFAULT_CACHE
from packer.kernel import KernelTree

MODULE_SIGNATURE_MARK = b"~Module signature appended~\n"


@pytest.fixture(scope="module")
def debian_chain() -> Path:
    """The unpacked shim-signed, grub-efi-amd64-signed and shim-helpers packages."""
    return secureboot._fetch_debian_chain(DEFAULT_CACHE)


@pytest.fixture(scope="module")
def shim(debian_chain: Path) -> Path:
    return debian_chain / secureboot.SHIM_PATHS[1]


@pytest.fixture(scope="module")
def signed_grub(debian_chain: Path) -> Path:
    return debian_chain / secureboot.GRUB_PATHS[0]


@pytest.fixture(scope="module")
def unsigned_grub(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Today's loader: grub-mkimage's GRUB, which no one signed."""
    return image.build_grub_efi(tmp_path_factory.mktemp("grub"), image.DEFAULT_LABEL, 0)


def _unsigned_copy(signed: Path, dest: Path) -> Path:
    """`signed` with its security directory zeroed: the same image, no signature."""
    data = bytearray(signed.read_bytes())
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    opt = pe + 24
    dirs = opt + (96 if struct.unpack_from("<H", data, opt)[0] == 0x10B else 112)
    struct.pack_into("<II", data, dirs + 8 * 4, 0, 0)
    dest.write_bytes(bytes(data))
    return dest


def _sbverify_signed(path: Path) -> bool:
    # sbverify (sbsigntool), not osslsigncode: osslsigncode 2.9 calls shim's
    # table of two signatures (Microsoft's 2011 and 2023 CAs) corrupted.
    out = subprocess.run(["sbverify", "--list", str(path)], capture_output=True, text=True)
    return "signature 1" in out.stdout


def _pe(path: Path) -> secureboot.PEImage:
    return secureboot.read_pe(path.read_bytes())


def test_signed_agrees_with_sbverify(kernel: KernelTree, shim: Path, signed_grub: Path,
                                         unsigned_grub: Path, tmp_path: Path) -> None:
    stripped = _unsigned_copy(kernel.vmlinuz, tmp_path / "vmlinuz-unsigned")
    verdicts = {p.name: secureboot.authenticode_signed(_pe(p))
                for p in (kernel.vmlinuz, shim, signed_grub, unsigned_grub, stripped)}
    assert verdicts == {p.name: _sbverify_signed(p)
                        for p in (kernel.vmlinuz, shim, signed_grub, unsigned_grub, stripped)}
    assert verdicts[kernel.vmlinuz.name] and verdicts[shim.name] and verdicts[signed_grub.name]
    assert not verdicts[unsigned_grub.name] and not verdicts[stripped.name]


def test_shim_carries_debians_ca_which_signed_the_kernel_and_grub(kernel: KernelTree, shim: Path,
                                                                   signed_grub: Path) -> None:
    data = shim.read_bytes()
    ca = secureboot.shim_vendor_certificate(secureboot.read_pe(data), data)
    assert ca is not None
    assert b"Debian Secure Boot CA" in secureboot.certificate_subject(ca)
    assert secureboot.signed_by(_pe(kernel.vmlinuz), ca)
    assert secureboot.signed_by(_pe(signed_grub), ca)
    # shim itself is Microsoft's to sign, not Debian's
    assert secureboot.authenticode_signed(_pe(shim)) and not secureboot.signed_by(_pe(shim), ca)


def test_certificate_subject_matches_openssl(shim: Path, tmp_path: Path) -> None:
    data = shim.read_bytes()
    ca = secureboot.shim_vendor_certificate(secureboot.read_pe(data), data)
    assert ca is not None
    (tmp_path / "ca.der").write_bytes(ca)
    der = subprocess.run(["openssl", "x509", "-inform", "der", "-in", str(tmp_path / "ca.der"), "-noout",
                          "-subject", "-nameopt", "RFC2253"], capture_output=True, text=True, check=True)
    assert der.stdout.strip() == "subject=CN=Debian Secure Boot CA"
    assert secureboot.certificate_subject(ca).endswith(b"Debian Secure Boot CA")


def test_signed_grub_reads_grub_cfg_under_its_built_in_prefix(signed_grub: Path, unsigned_grub: Path,
                                                              tmp_path: Path) -> None:
    data = signed_grub.read_bytes()
    pe = secureboot.read_pe(data)
    assert secureboot.grub_prefix(data, pe) == "/EFI/debian"
    assert secureboot.grub_embedded(data, pe)[2] == b"normal (memdisk)/grub.cfg\n"
    # The memdisk's config (a FAT image, read with mtools) sources $prefix/grub.cfg when the prefix exists.
    sec = pe.section("mods")
    assert sec is not None
    _, _, offset, size = struct.unpack_from("<IIQQ", data, sec.offset)
    pos = sec.offset + offset
    while True:
        kind, length = struct.unpack_from("<II", data, pos)
        if kind == 1:   # OBJ_MEMDISK
            (tmp_path / "memdisk").write_bytes(data[pos + 8:pos + length])
            break
        pos += length
    early = subprocess.run(["mtype", "-i", str(tmp_path / "memdisk"), "::/grub.cfg"], capture_output=True,
                           text=True, check=True).stdout
    assert 'if [ -z "$prefix" -o ! -e "$prefix" ]' in early
    assert "source $prefix/grub.cfg" in early
    # the unsigned GRUB: the prefix image.py gives grub-mkimage
    udata = unsigned_grub.read_bytes()
    assert secureboot.grub_prefix(udata, secureboot.read_pe(udata)) == "/boot/grub"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_read_pe_never_crashes(data: bytes) -> None:
    """Any bytes: a PEImage or NotPE, and the readers of a PEImage never raise."""
    for blob in (data, b"MZ" + data, b"MZ" + bytes(58) + struct.pack("<I", 64) + b"PE\0\0" + data):
        try:
            pe = secureboot.read_pe(blob)
        except secureboot.NotPE:
            continue
        assert secureboot.authenticode_signed(pe) in (True, False)
        assert secureboot.grub_prefix(blob, pe) is None or isinstance(secureboot.grub_prefix(blob, pe), str)


def test_truncated_kernel_is_not_pe(kernel: KernelTree) -> None:
    head = kernel.vmlinuz.read_bytes()[:300]
    with pytest.raises(secureboot.NotPE):
        secureboot.read_pe(head)


def _root_with_chain(debian_chain: Path, root: Path, grub: bool = True) -> Path:
    paths = [secureboot.SHIM_PATHS[1], secureboot.MOK_MANAGER_PATHS[0]]
    paths += [secureboot.GRUB_PATHS[0]] if grub else []
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(debian_chain / rel, root / rel)
    return root


def test_chain_from_the_root_and_its_layout(kernel: KernelTree, debian_chain: Path, tmp_path: Path) -> None:
    root = _root_with_chain(debian_chain, tmp_path / "root")
    chain = secureboot.signed_chain(kernel.vmlinuz, root, cache=tmp_path / "no-cache", download=False,
                                    host=tmp_path / "empty-host")
    assert chain.origin == "the root" and chain.note == ""
    assert chain.shim == root / secureboot.SHIM_PATHS[1]
    assert chain.config_path == "EFI/debian/grub.cfg"
    assert dict(chain.files()) == {
        "EFI/BOOT/BOOTX64.EFI": root / secureboot.SHIM_PATHS[1],
        "EFI/BOOT/grubx64.efi": root / secureboot.GRUB_PATHS[0],
        "EFI/BOOT/mmx64.efi": root / secureboot.MOK_MANAGER_PATHS[0],
    }
    # never shim's fallback: it would write boot entries into the machine's NVRAM
    assert not any("fbx64" in dest for dest, _ in chain.files())


def test_root_without_signed_grub_falls_to_the_host(kernel: KernelTree, debian_chain: Path,
                                                    tmp_path: Path) -> None:
    root = _root_with_chain(debian_chain, tmp_path / "root", grub=False)
    host = _root_with_chain(debian_chain, tmp_path / "host")
    chain = secureboot.signed_chain(kernel.vmlinuz, root, download=False, host=host)
    assert chain.origin == "the host" and chain.grub == host / secureboot.GRUB_PATHS[0]


def test_no_chain_anywhere_says_what_is_missing(kernel: KernelTree, debian_chain: Path,
                                                tmp_path: Path) -> None:
    root = _root_with_chain(debian_chain, tmp_path / "root", grub=False)
    with pytest.raises(secureboot.NoSignedChain) as e:
        secureboot.signed_chain(kernel.vmlinuz, root, download=False, host=tmp_path / "empty-host")
    assert "the root has no signed GRUB (" in str(e.value)
    assert "the host has no shim or signed GRUB (" in str(e.value)
    assert "grub-efi-amd64-signed" in e.value.hint
    warning = secureboot.fallback_warning(e.value)
    assert "unsigned GRUB" in warning and "Access Denied" in warning


def test_unsigned_kernel_is_refused_with_the_reason(kernel: KernelTree, debian_chain: Path,
                                                    tmp_path: Path) -> None:
    stripped = _unsigned_copy(kernel.vmlinuz, tmp_path / "vmlinuz")
    root = _root_with_chain(debian_chain, tmp_path / "root")
    with pytest.raises(secureboot.NoSignedChain, match="is not signed"):
        secureboot.signed_chain(stripped, root, download=False)
    with pytest.raises(secureboot.NoSignedChain, match="as an EFI image"):
        secureboot.signed_chain(tmp_path / "missing", root, download=False)


def test_kernel_signed_by_another_key_keeps_the_chain_with_a_note(debian_chain: Path, shim: Path,
                                                                  tmp_path: Path) -> None:
    # shim itself stands in for a kernel signed by a key shim does not carry (Microsoft's).
    root = _root_with_chain(debian_chain, tmp_path / "root")
    chain = secureboot.signed_chain(shim, root, download=False)
    assert "not by the CA built into" in chain.note and "Machine Owner Key" in chain.note


def test_unsigned_loader_in_the_root_is_reported(kernel: KernelTree, debian_chain: Path, unsigned_grub: Path,
                                                 tmp_path: Path) -> None:
    root = _root_with_chain(debian_chain, tmp_path / "root")
    shutil.copyfile(unsigned_grub, root / secureboot.GRUB_PATHS[0])
    with pytest.raises(secureboot.NoSignedChain, match="grubx64.efi.signed is not signed"):
        secureboot.signed_chain(kernel.vmlinuz, root, download=False, host=tmp_path / "empty-host")


def test_packer_keeps_module_signatures_byte_for_byte(kernel: KernelTree, tmp_path: Path) -> None:
    """Under lockdown the kernel checks the signature appended to each .ko: the
    packer's decompression of a .ko.xz must give back the signed file exactly."""
    ko = next(kernel.moddir.rglob("squashfs.ko"))
    signed = ko.read_bytes()
    assert signed.endswith(MODULE_SIGNATURE_MARK)
    xz = tmp_path / "squashfs.ko.xz"
    xz.write_bytes(lzma.compress(signed, check=lzma.CHECK_CRC32))
    assert kmod.module_bytes(xz) == signed
    assert kmod.module_bytes(ko) == signed
