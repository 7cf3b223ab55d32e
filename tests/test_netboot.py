"""`liveinit netboot` and the network boot end to end.

Host side: the tree's layout, its SHA256SUMS (sha256sum -c as the oracle),
the boot entries, the README, the initramfs's identity and NIC drivers, the
signed UEFI chain (shim, the signed network GRUB, the menu at its prefix) and
the unsigned fallback, a tree from an ISO, a tree from a root packed as
`liveinit image` packs it (the live clean-up), refusals. In QEMU (nothing
leaves the machine): the guest reaches only an HTTP server on the host's
127.0.0.1 through a guestfwd rule with restrict=on; it boots the demo live
system with root=live:http://... by direct kernel boot (virtio-net; e1000
with a connection dropped mid-download and resumed), through SeaBIOS's and
OVMF's PXE (QEMU's TFTP serves the boot loader, kernel and initramfs), through
OVMF's PXE with Secure Boot on and Microsoft's keys (shim, signed GRUB,
lockdown), and refuses a damaged image and a missing one; the Secure Boot
firmware refuses the unsigned UEFI boot file.

The guestfwd target is `cmd:busybox nc 127.0.0.1 PORT`, one relay process per
connection: a `tcp:127.0.0.1:PORT` target is a single chardev connection that
serves the guest's first connection only (measured: SHA256SUMS came, the
image's request never reached the server)."""
from __future__ import annotations

import argparse
import hashlib
import subprocess
from pathlib import Path

import pytest
from httpfake import FakeHttp
from hypothesis import given
from hypothesis import strategies as st
from test_secureboot_boot import FIRMWARE_REFUSES, LOCKED_DOWN, SECURE_BOOT_ON, UNSIGNED_MODULE_REFUSED

from liveinit import sha256sums
from liveinit.contract import CHECKSUMS_FILE, DEMO_OK, ID_FILE, INITRD_FILE, KERNEL_FILE, LIVE_IMAGE
from packer import cmd_netboot, config, image, netboot, secureboot
from packer.busybox import BUSYBOX
from packer.cli import main
from packer.cpio import flatten, read_archive
from packer.errors import CommandError
from packer.kernel import KernelTree
from qemu import lab
from qemu.demoroot import build_demo_root

GUEST_SERVER = "10.0.2.100"
BASE = f"http://{GUEST_SERVER}/"
IMAGE_URL = BASE + LIVE_IMAGE.lstrip("/")
BOOT_TIMEOUT_S = 400
NICS = {"virtio-net-pci": "virtio_net", "e1000": "e1000"}


MACHINE_ID = "0123456789abcdef0123456789abcdef\n"


def settings(**given: object) -> dict[str, object]:
    """`liveinit netboot`'s settings: the defaults and `given` (field names)."""
    return config.values(argparse.Namespace(), cmd_netboot.SETTINGS) | given


@pytest.fixture(scope="module")
def tree(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> netboot.NetbootResult:
    """The demo live system as a netboot tree, built once for the module, from a
    root that has a host identity for the live clean-up to remove."""
    work = tmp_path_factory.mktemp("netboot")
    root = build_demo_root(work / "root")
    (root / "etc" / "machine-id").write_text(MACHINE_ID)
    (root / "etc" / "ssh").mkdir(exist_ok=True)
    (root / "etc" / "ssh" / "ssh_host_ed25519_key").write_text("host key\n")
    (root / "tmp" / "scratch").mkdir(parents=True, exist_ok=True)
    return cmd_netboot.from_root(root, work / "tree", BASE, kernel, settings(all_root=True))


def unsquash(*argv: str) -> str:
    """unsquashfs as the oracle: `-l -d '' IMAGE` lists, `-cat IMAGE PATH` reads."""
    return subprocess.run(["unsquashfs", *argv], check=True, capture_output=True, text=True).stdout


def served(tree: netboot.NetbootResult) -> dict[str, bytes]:
    """What the HTTP server serves: the tree's live/ directory."""
    live = tree.outdir / "live"
    return {f"/live/{p.name}": p.read_bytes() for p in live.iterdir()}


def netdev(port: int, nic: str, tftp: Path | None = None, bootfile: str = "", uefi: bool = False
           ) -> tuple[str, ...]:
    """QEMU user networking with nothing reachable but 10.0.2.100:80 -> 127.0.0.1:port.

    A UEFI PXE boot is OVMF's own (NetworkPkg), as on a PC: the NIC gets no iPXE
    option ROM (romfile=; SeaBIOS has no network stack and needs it). QEMU's iPXE
    ROMs (Debian's 2019 build) answer shim's TFTP read with the buffer's size, not
    the file's, and shim refuses grubx64.efi ("Malformed binary after Attribute
    Certificate Table")."""
    opts = "user,id=n0,restrict=on"
    if tftp is not None:
        opts += f",tftp={tftp},bootfile={bootfile}"
    opts += f",guestfwd=tcp:{GUEST_SERVER}:80-cmd:{BUSYBOX} nc 127.0.0.1 {port}"
    boot = (",bootindex=0" if tftp else "") + (",romfile=" if uefi else "")
    return ("-netdev", opts, "-device", f"{nic},netdev=n0{boot}")


# -- SHA256SUMS ---------------------------------------------------------------------

names = st.text(st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="\\"), min_size=1,
                max_size=30)


@given(st.dictionaries(names, st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=8))
def test_sha256sums_round_trip(digests: dict[str, str]) -> None:
    assert sha256sums.parse(sha256sums.render(digests)) == digests


def test_sha256sums_lines_and_lookup(tmp_path: Path) -> None:
    a, b = "a" * 64, "B" * 64
    sums = sha256sums.parse(f"{a}  live/filesystem.squashfs\n\n{b} *other.img\n")
    assert sums == {"live/filesystem.squashfs": a, "other.img": b.lower()}
    assert sha256sums.for_path(sums, "/netboot/live/filesystem.squashfs") == a
    assert sha256sums.for_path({"filesystem.squashfs": b, "live/filesystem.squashfs": a},
                               "/x/live/filesystem.squashfs") == a     # the longest match wins
    assert sha256sums.for_path(sums, "/live/xfilesystem.squashfs") is None   # only at a '/' boundary
    assert sha256sums.for_path({"./live/filesystem.squashfs": a}, "/live/filesystem.squashfs?v=2") == a
    with pytest.raises(ValueError, match="line 2"):
        sha256sums.parse(f"{a}  ok\nnot a line\n")
    # sha256sum -c reads what render writes
    (tmp_path / "f.bin").write_bytes(b"liveinit")
    digest = hashlib.sha256(b"liveinit").hexdigest()
    (tmp_path / "SUMS").write_text(sha256sums.render({"f.bin": digest}))
    assert subprocess.run(["sha256sum", "-c", "SUMS"], cwd=tmp_path, capture_output=True).returncode == 0


# -- the tree -----------------------------------------------------------------------

def test_tree_layout_checksums_and_entries(tree: netboot.NetbootResult) -> None:
    out = tree.outdir
    for f in ("pxelinux.0", "ldlinux.c32", netboot.PXELINUX_CFG, netboot.UEFI_BOOT, netboot.GRUB_NET_CFG,
              "README.md", *(p.lstrip("/") for p in (KERNEL_FILE, INITRD_FILE, LIVE_IMAGE, ID_FILE,
                                                     CHECKSUMS_FILE))):
        assert f in tree.files, f
    check = subprocess.run(["sha256sum", "-c", CHECKSUMS_FILE.lstrip("/")], cwd=out, capture_output=True,
                           text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 3, check.stdout + check.stderr
    sums = sha256sums.parse((out / CHECKSUMS_FILE.lstrip("/")).read_text())
    want = hashlib.sha256((out / LIVE_IMAGE.lstrip("/")).read_bytes()).hexdigest()
    assert sha256sums.for_path(sums, "/live/filesystem.squashfs") == want
    assert tree.image_url == IMAGE_URL and f"root=live:{IMAGE_URL} ip=dhcp" in tree.cmdline
    pxe = (out / netboot.PXELINUX_CFG).read_text()
    assert f"APPEND {tree.cmdline}" in pxe and "IPAPPEND 2" in pxe and "KERNEL live/vmlinuz" in pxe
    grub = (out / netboot.GRUB_NET_CFG).read_text()
    assert f"linux {KERNEL_FILE} {tree.cmdline} BOOTIF=${{net_default_mac}}" in grub
    readme = (out / "README.md").read_text()
    for words in ("enable-tftp", f"tftp-root={out.resolve()}",
                  'pxe-service=tag:efi64,X86-64_EFI,"liveinit (UEFI)",bootnetx64.efi',
                  "dhcp-boot=tag:!efi64,pxelinux.0", "dhcp-boot=tag:efi64,bootnetx64.efi", "alias",
                  "python3 -m http.server"):
        assert words in readme, words
    # the initramfs looks for this image's identity and carries the NIC drivers (the net group)
    assert image.initrd_identity(out / INITRD_FILE.lstrip("/"))[0] == tree.identity
    assert (out / ID_FILE.lstrip("/")).read_text().strip() == tree.identity
    packed = {Path(p).name.split(".ko")[0] for p in flatten(read_archive((out / INITRD_FILE.lstrip("/"))
                                                                       .read_bytes())) if ".ko" in p}
    assert {"virtio_net", "e1000", "e1000e", "igb", "r8169", "vmxnet3", "tg3"} <= packed


def test_uefi_boots_through_the_signed_chain(tree: netboot.NetbootResult) -> None:
    """shim is the UEFI boot file, the signed network GRUB sits where shim fetches
    it, and the menu where that GRUB's built-in prefix points (read from the binary)."""
    out = tree.outdir
    assert tree.secure_boot and "signed network GRUB" in tree.efi_loader, tree.efi_loader
    chain = secureboot.signed_chain(out / KERNEL_FILE.lstrip("/"), layout=secureboot.NETWORK)
    assert (out / "bootnetx64.efi").read_bytes() == chain.shim.read_bytes()
    grub = (out / "grubx64.efi").read_bytes()
    assert grub == chain.grub.read_bytes() and chain.grub.name == "grubnetx64.efi.signed"
    assert secureboot.authenticode_signed(secureboot.read_pe(grub))
    prefix = secureboot.grub_prefix(grub, secureboot.read_pe(grub))
    assert prefix == netboot.GRUB_NET_PREFIX == "/grub"
    assert chain.config_path == netboot.GRUB_NET_CFG and netboot.GRUB_NET_CFG in tree.files
    assert (out / netboot.GRUB_NET_CFG).read_text() == netboot.grub_net_cfg(tree.cmdline)
    assert "mmx64.efi" in tree.files and not any("fbx64" in f for f in tree.files)
    assert "grubnetx64.efi" not in tree.files


def test_unsigned_fallback_keeps_the_boot_file_and_the_menu(tree: netboot.NetbootResult,
                                                            tmp_path: Path) -> None:
    out = tree.outdir
    res = netboot.write_tree(tmp_path / "tree", out / KERNEL_FILE.lstrip("/"), out / INITRD_FILE.lstrip("/"),
                             out / LIVE_IMAGE.lstrip("/"), tree.identity, BASE, secure_boot=False)
    assert not res.secure_boot and "unsigned GRUB" in res.efi_loader and "Access Denied" in res.efi_loader
    boot = (res.outdir / netboot.UEFI_BOOT).read_bytes()
    pe = secureboot.read_pe(boot)
    assert not secureboot.authenticode_signed(pe)
    assert secureboot.grub_prefix(boot, pe) == netboot.GRUB_NET_PREFIX    # same prefix, same menu place
    assert (res.outdir / netboot.GRUB_NET_CFG).read_text() == netboot.grub_net_cfg(res.cmdline)
    assert "grubx64.efi" not in res.files and "mmx64.efi" not in res.files
    # an unsigned kernel: the same fallback, with the reason
    unsigned_kernel = tmp_path / "vmlinuz"
    unsigned_kernel.write_bytes(b"not a PE image")
    res = netboot.write_tree(tmp_path / "tree2", unsigned_kernel, out / INITRD_FILE.lstrip("/"),
                             out / LIVE_IMAGE.lstrip("/"), tree.identity, BASE)
    assert not res.secure_boot and "as an EFI image" in res.efi_loader, res.efi_loader


def test_a_tree_from_a_root_is_its_live_copy(tree: netboot.NetbootResult) -> None:
    """The image is the one `liveinit image` would make: the host's identity cleaned
    up (machine-id emptied, ssh host keys left out) and /tmp's contents excluded."""
    sfs = tree.outdir / LIVE_IMAGE.lstrip("/")
    listing = unsquash("-l", "-d", "", str(sfs))
    assert "/etc/machine-id" in listing and "/sbin/init" in listing
    assert "ssh_host_ed25519_key" not in listing and "/tmp/scratch" not in listing
    assert unsquash("-cat", str(sfs), "etc/machine-id") == ""
    assert (tree.outdir.parent / "root" / "etc" / "machine-id").read_text() == MACHINE_ID   # the host's


@pytest.mark.slow
def test_cli_netboot_of_a_root_takes_image_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """`liveinit netboot ROOT` takes `liveinit image`'s settings (flags and --config) and
    packs the root the same way; an ISO source refuses the root-only ones."""
    root = tmp_path / "root"
    for d in ("etc/ssh", "tmp/x", "sbin", "boot", "lib/modules/6.1.0-13-amd64", "home/u/.cache"):
        (root / d).mkdir(parents=True)
    (root / "sbin" / "init").write_text("#!/bin/sh\n")
    (root / "boot" / "vmlinuz-6.1.0-13-amd64").write_bytes(b"the root's own kernel")
    (root / "etc" / "machine-id").write_text(MACHINE_ID)
    (root / "etc" / "ssh" / "ssh_host_rsa_key").write_text("key\n")
    (root / "home" / "u" / ".cache" / "c").write_text("cache\n")
    (root / "tmp" / "x" / "y").write_text("tmp\n")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"070701 not a real initramfs\n")
    toml = tmp_path / "netboot.toml"
    toml.write_text('hostname = "netlive"\nexclude = ["home/*/.cache"]\n')
    out = tmp_path / "tree"
    assert main(["netboot", str(root), str(out), "--url", "http://192.168.1.10/nb", "--initrd", str(initrd),
                 "--identity", "nb-1", "--config", str(toml)]) == 0
    said = capsys.readouterr()
    assert "live copy: /etc/machine-id emptied" in said.out and "live copy: hostname netlive" in said.out
    assert "warning: UEFI network boot: no Secure Boot" in said.err          # a kernel that is not a PE
    assert (out / KERNEL_FILE.lstrip("/")).read_bytes() == b"the root's own kernel"
    assert (out / ID_FILE.lstrip("/")).read_text() == "nb-1\n"
    sfs = out / LIVE_IMAGE.lstrip("/")
    listing = unsquash("-l", "-d", "", str(sfs))
    assert "ssh_host_rsa_key" not in listing and "/tmp/x" not in listing and "/home/u/.cache" not in listing
    assert unsquash("-cat", str(sfs), "etc/hostname") == "netlive\n"
    assert unsquash("-cat", str(sfs), "etc/machine-id") == ""
    iso = image.build_image(root, tmp_path / "live.iso", KernelTree("6.1.0-13-amd64", root), initrd=initrd,
                            identity="nb-1", secure_boot=False).iso
    assert main(["netboot", str(iso), str(tmp_path / "tree2"), "--url", "http://192.168.1.10/nb",
                 "--config", str(toml)]) != 0
    assert "--exclude, --hostname: only for a root directory source" in capsys.readouterr().err
    assert not (tmp_path / "tree2").exists()


def test_refuses_a_directory_it_did_not_write(tree: netboot.NetbootResult, tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(CommandError, match="not a liveinit netboot tree"):
        out = tree.outdir
        netboot.write_tree(tmp_path, out / KERNEL_FILE.lstrip("/"), out / INITRD_FILE.lstrip("/"),
                           out / LIVE_IMAGE.lstrip("/"), tree.identity, BASE)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    with pytest.raises(CommandError, match="https is not supported at boot"):
        netboot.image_url("https://example.org/netboot")
    assert netboot.image_url("http://Server:8080/pxe/") == "http://server:8080/pxe/live/filesystem.squashfs"


@pytest.mark.slow
def test_a_tree_from_an_iso_keeps_its_files(tree: netboot.NetbootResult, kernel: KernelTree,
                                            tmp_path: Path) -> None:
    iso = image.build_image(tree.outdir.parent / "root", tmp_path / "demo.iso", kernel, all_root=True,
                            secure_boot=False).iso
    got = netboot.from_iso(iso, tmp_path / "tree", "http://192.168.1.10/nb")
    assert got.secure_boot      # the ISO's kernel is signed: the chain from the host or Debian's packages
    for name in (KERNEL_FILE, INITRD_FILE, LIVE_IMAGE):
        assert (tmp_path / "tree" / name.lstrip("/")).read_bytes() == \
            image.extract(iso, name, tmp_path / "x" / name.lstrip("/")).read_bytes()
    assert got.identity == image.initrd_identity(tmp_path / "tree" / INITRD_FILE.lstrip("/"))[0]
    assert got.image_url == "http://192.168.1.10/nb/live/filesystem.squashfs"


# -- QEMU -----------------------------------------------------------------------------

def _lines(res: lab.BootResult) -> str:
    return "\n".join(ln for ln in res.console.splitlines() if "liveinit: " in ln and "loaded " not in ln)


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("nic, drop", [("virtio-net-pci", False), ("e1000", True)])
def test_direct_boot_downloads_verifies_and_boots(tree: netboot.NetbootResult, nic: str, drop: bool) -> None:
    files = served(tree)
    cut = len(files[LIVE_IMAGE]) // 3
    with FakeHttp(files) as srv:
        if drop:   # the connection dies a third of the way in: the runtime resumes with a Range
            srv.drops[LIVE_IMAGE] = [cut]
        res = lab.boot("virtio-blk", kernel=tree.outdir / KERNEL_FILE.lstrip("/"),
                       initrd=tree.outdir / INITRD_FILE.lstrip("/"), cmdline=f"root=live:{IMAGE_URL}",
                       extra_args=netdev(srv.port, nic), timeout=BOOT_TIMEOUT_S)
        requests = list(srv.requests)
    assert res.success, f"{res.reason}\n{res.console[-4000:]}"
    assert res.demo["root"] == "overlay" and res.demo["writable"] == "yes" and res.demo["init"] == "1"
    assert NICS[nic] in (res.report.modules or ()), res.report.modules
    assert "SHA-256 verified" in res.console and "netboot: downloading " + IMAGE_URL in res.console
    assert "root: /run/liveinit/ram/filesystem.squashfs (squashfs) + tmpfs via overlay" in res.console
    image_requests = [r for p, r in requests if p == LIVE_IMAGE]
    if drop:
        assert image_requests == ["", f"bytes={cut}-"], requests
        assert f"retrying in 0.5 s from byte {cut}" in res.console, _lines(res)
        assert "1 resumes" in res.console
    else:
        assert requests == [("/live/SHA256SUMS", ""), (LIVE_IMAGE, "")]
    print(res.summary(), f"kernel->init {res.timings.init_started}s")


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("firmware, loader", [("bios", "PXELINUX"), ("uefi", "GNU GRUB")])
def test_pxe_boot_then_http(tree: netboot.NetbootResult, firmware: str, loader: str) -> None:
    """The firmware's PXE ROM fetches the boot loader from QEMU's TFTP server, the
    loader the kernel and initramfs, the runtime the image over HTTP."""
    bootfile = "pxelinux.0" if firmware == "bios" else netboot.UEFI_BOOT   # shim, then the signed GRUB
    with FakeHttp(served(tree)) as srv:
        res = lab.boot(f"virtio-blk+{firmware}", extra_args=netdev(srv.port, "virtio-net-pci", tree.outdir,
                                                                 bootfile, uefi=firmware == "uefi"),
                       timeout=BOOT_TIMEOUT_S)
        requests = [p for p, _ in srv.requests]
    assert res.success, f"{res.reason}\n{res.console[-4000:]}"
    assert loader in res.console and "-kernel" not in res.command
    assert f"root=live:{IMAGE_URL} ip=dhcp" in res.console
    assert "BOOTIF=" in res.console.split("Command line:", 1)[1].splitlines()[0]   # the NIC PXE used
    assert requests == ["/live/SHA256SUMS", LIVE_IMAGE] and "SHA-256 verified" in res.console
    print(res.summary())


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("case", ["damaged", "missing"])
def test_a_damaged_or_missing_image_is_refused(tree: netboot.NetbootResult, case: str) -> None:
    files = served(tree)
    url = IMAGE_URL
    if case == "damaged":
        data = bytearray(files[LIVE_IMAGE])
        data[len(data) // 2] ^= 0xFF
        files[LIVE_IMAGE] = bytes(data)
    else:
        url = BASE + "live/missing.squashfs"
    with FakeHttp(files) as srv:
        res = lab.boot("virtio-blk", kernel=tree.outdir / KERNEL_FILE.lstrip("/"),
                       initrd=tree.outdir / INITRD_FILE.lstrip("/"), cmdline=f"root=live:{url}",
                       extra_args=netdev(srv.port, "virtio-net-pci"), timeout=BOOT_TIMEOUT_S)
    assert not res.success and res.report.emergency_shell, res.console[-3000:]
    failure = res.report.failure or ""
    if case == "damaged":
        ram = "/run/liveinit/ram/filesystem.squashfs"
        assert failure.startswith(f"checksum mismatch: {url} downloaded to {ram}"), failure
    else:
        assert failure.startswith(f"HTTP: {url}: HTTP 404"), failure
    assert f"netboot: image {url}, network eth0 10.0.2.15/24 (dhcp)" in res.console, _lines(res)
    assert "root=live:URL (or fetch=URL)" in (res.report.hint or "")


@pytest.mark.qemu
@pytest.mark.slow
def test_pxe_boot_under_secure_boot(tree: netboot.NetbootResult) -> None:
    """OVMF with Secure Boot on and Microsoft's keys (q35, SMM) PXE-boots shim from
    QEMU's TFTP server; shim fetches the signed network GRUB, GRUB its menu at its
    prefix and the signed kernel; the runtime loads the NIC driver under lockdown
    and boots the image from HTTP."""
    with FakeHttp(served(tree)) as srv:
        res = lab.boot("secureboot-cd", extra_args=netdev(srv.port, "virtio-net-pci", tree.outdir,
                                                            netboot.UEFI_BOOT, uefi=True),
                       timeout=BOOT_TIMEOUT_S)
        requests = [p for p, _ in srv.requests]
    assert res.success and DEMO_OK in res.console, f"{res.reason}\n{res.console[-4000:]}"
    assert "GNU GRUB" in res.console and "-kernel" not in res.command
    assert SECURE_BOOT_ON in res.console and LOCKED_DOWN in res.console
    assert UNSIGNED_MODULE_REFUSED not in res.console
    assert {"virtio_net", "squashfs", "overlay", "loop"} <= set(res.report.modules or ()), res.report.modules
    assert f"root=live:{IMAGE_URL} ip=dhcp" in res.console
    assert requests == ["/live/SHA256SUMS", LIVE_IMAGE] and "SHA-256 verified" in res.console
    print(res.summary())


@pytest.mark.qemu
@pytest.mark.slow
def test_secure_boot_refuses_the_unsigned_boot_file(tree: netboot.NetbootResult, tmp_path: Path) -> None:
    """The check is real: the same tree with the unsigned GRUB is refused by the firmware."""
    out = tree.outdir
    unsigned = netboot.write_tree(tmp_path / "tree", out / KERNEL_FILE.lstrip("/"),
                                  out / INITRD_FILE.lstrip("/"), out / LIVE_IMAGE.lstrip("/"), tree.identity,
                                  BASE, secure_boot=False)
    with FakeHttp(served(unsigned)) as srv:
        res = lab.boot("secureboot-cd", extra_args=netdev(srv.port, "virtio-net-pci", unsigned.outdir,
                                                            netboot.UEFI_BOOT, uefi=True),
                       timeout=BOOT_TIMEOUT_S, success=FIRMWARE_REFUSES)
    assert res.success, f"the firmware did not refuse the unsigned GRUB: {res.reason}\n{res.console[-3000:]}"
    assert "GNU GRUB" not in res.console and "Linux version" not in res.console
