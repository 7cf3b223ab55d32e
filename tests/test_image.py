"""Live media: the demo root, the squashfs and the hybrid ISO (checked with
xorriso, blkid, unsquashfs and mtools as oracles), and firmware boots of the
ISO in QEMU with a hand-made busybox initramfs, so the medium is proven
independently of the liveinit runtime."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from packer import image
from packer.cli import CommandError
from packer.demoroot import INIT_SCRIPT, SUCCESS_MARKER, build_demo_root
from packer.kernelpkg import KernelTree
from qemu import lab

HANDMADE_MARK = "handmade-initramfs: running"
# What the hand-made /init loads (with their dependencies, ordered by kmod):
# enough for IDE/AHCI CDs and USB sticks, the media the firmware boots use.
HANDMADE_MODULES = ("ata_piix", "ahci", "sr_mod", "sd_mod", "xhci_pci", "ehci_pci", "usb_storage",
                    "isofs", "loop", "squashfs", "overlay")

HANDMADE_INIT = """#!/bin/sh
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
$bb mount -t devtmpfs devtmpfs /dev
echo "{mark}"
for m in $($bb cat /modules.order); do $bb insmod /$m 2>/dev/null; done
$bb mkdir -p /run/medium /run/ro /run/rw /root
i=0
while [ $i -lt 300 ]; do
  for d in /dev/sr* /dev/sd* /dev/vd*; do
    [ -b "$d" ] || continue
    $bb mount -t iso9660 -o ro "$d" /run/medium 2>/dev/null || continue
    if [ "$($bb cat /run/medium/live/liveinit.id 2>/dev/null)" = "{identity}" ]; then
      echo "handmade-initramfs: medium $d"; break 2
    fi
    $bb umount /run/medium
  done
  $bb usleep 100000; i=$((i+1))
done
$bb mount -t squashfs -o loop,ro /run/medium/live/filesystem.squashfs /run/ro || echo "liveinit: FAILED: no squashfs"
$bb mount -t tmpfs tmpfs /run/rw && $bb mkdir -p /run/rw/upper /run/rw/work
$bb mount -t overlay overlay -o lowerdir=/run/ro,upperdir=/run/rw/upper,workdir=/run/rw/work /root
$bb mount --move /dev /root/dev
$bb umount /proc /sys
exec $bb switch_root /root /sbin/init
"""


def module_order(depmod_base: Path, kver: str, names: tuple[str, ...]) -> list[Path]:
    """The .ko files to insmod, in kmod's order (modprobe --show-depends as the oracle)."""
    out: list[Path] = []
    for name in names:
        text = subprocess.run(["modprobe", "-d", str(depmod_base), "-S", kver, "--show-depends", name],
                              capture_output=True, text=True, check=True).stdout
        for line in text.splitlines():
            if line.startswith("insmod "):
                p = Path(line.split()[1])
                if p not in out:
                    out.append(p)
    return out


def handmade_initramfs(depmod_base: Path, kver: str, out: Path, identity: str) -> Path:
    """A busybox initramfs in the style of bench/peers/mklive.sh, finding the medium by identity."""
    tree = out.parent / (out.name + ".tree")
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    for d in ("bin", "dev", "proc", "sys", "run", "root", "lib"):
        (tree / d).mkdir(parents=True)
    subprocess.run(["cp", "/bin/busybox", str(tree / "bin/busybox")], check=True)
    (tree / "bin/sh").symlink_to("busybox")
    order = []
    for ko in module_order(depmod_base, kver, HANDMADE_MODULES):
        rel = f"lib/{ko.name}"
        subprocess.run(["cp", str(ko), str(tree / rel)], check=True)
        order.append(rel)
    (tree / "modules.order").write_text("\n".join(order) + "\n")
    init = tree / "init"
    init.write_text(HANDMADE_INIT.replace("{mark}", HANDMADE_MARK).replace("{identity}", identity))
    init.chmod(0o755)
    files = subprocess.run("find . -mindepth 1 | LC_ALL=C sort", shell=True, cwd=tree, capture_output=True,
                           check=True).stdout
    cpio = subprocess.run(["cpio", "-o", "-H", "newc", "-R", "0:0", "--quiet"], cwd=tree, input=files,
                          capture_output=True, check=True).stdout
    out.write_bytes(cpio)
    return out


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_root(tmp_path_factory.mktemp("demo") / "root")


@pytest.fixture(scope="module")
def fake_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("initrd") / "initrd.img"
    p.write_bytes(b"070701 not a real initramfs, only its place on the medium matters here\n")
    return p


@pytest.fixture(scope="module")
def iso(demo_root: Path, fake_initrd: Path, kernel: KernelTree,
        tmp_path_factory: pytest.TempPathFactory) -> image.ImageResult:
    out = tmp_path_factory.mktemp("iso") / "demo.iso"
    return image.build_image(demo_root, out, kernel, initrd=fake_initrd, identity="test-identity-1")


# ---- demo root ---------------------------------------------------------------

def test_demo_root_is_a_busybox_system(demo_root: Path) -> None:
    assert (demo_root / "bin/busybox").is_file()
    assert (demo_root / "bin/sh").exists()
    assert (demo_root / "bin/ls").resolve() == (demo_root / "bin/busybox").resolve() or \
        (demo_root / "bin/ls").readlink() == Path("/bin/busybox")
    assert "ID=liveinit-demo" in (demo_root / "etc/os-release").read_text()
    init = demo_root / "sbin/init"
    assert init.stat().st_mode & 0o111
    assert init.read_text() == INIT_SCRIPT
    # busybox's own shell parser as the oracle for the init script's syntax
    subprocess.run(["/bin/busybox", "sh", "-n", str(init)], check=True)


def test_demo_init_prints_the_contract_line(demo_root: Path) -> None:
    line = next(ln for ln in INIT_SCRIPT.splitlines() if ln.startswith(f'echo "{SUCCESS_MARKER} '))
    for key in ("uptime=", "root=", "writable=", "persisted=", "init="):
        assert key in line
    assert "liveinit.demo=poweroff" in INIT_SCRIPT and "poweroff -f" in INIT_SCRIPT


def test_demo_root_refuses_a_foreign_dir_but_rebuilds_its_own(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(CommandError, match="not a demo root"):
        build_demo_root(tmp_path)
    assert (tmp_path / "x").read_text() == "keep me"
    again = tmp_path / "demo"
    build_demo_root(again)
    (again / "leftover").write_text("from the last run")
    build_demo_root(again)
    assert not (again / "leftover").exists() and (again / "sbin/init").exists()


# ---- squashfs ----------------------------------------------------------------

def test_squashfs_is_reproducible_and_excludes_pseudo_fs(demo_root: Path, tmp_path: Path) -> None:
    (demo_root / "proc" / "junk").write_text("must not be packed")
    (demo_root / "tmp" / "junk").write_text("must not be packed")
    try:
        a = image.build_squashfs(demo_root, tmp_path / "a.sqfs")
        b = image.build_squashfs(demo_root, tmp_path / "b.sqfs")
    finally:
        (demo_root / "proc" / "junk").unlink()
        (demo_root / "tmp" / "junk").unlink()
    assert sha256(a) == sha256(b)
    listing = subprocess.run(["unsquashfs", "-lls", "-d", "", str(a)], capture_output=True, text=True,
                             check=True).stdout
    names = {ln.split()[-1] if "->" not in ln else ln.split()[-3] for ln in listing.splitlines()
             if ln[:1] in "dl-"}
    assert "/proc" in names and "/tmp" in names and "/sbin/init" in names
    assert "/proc/junk" not in names and "/tmp/junk" not in names
    assert "zstd" in subprocess.run(["unsquashfs", "-s", str(a)], capture_output=True, text=True).stdout


def test_squashfs_xz_and_bad_compression(demo_root: Path, tmp_path: Path) -> None:
    x = image.build_squashfs(demo_root, tmp_path / "x.sqfs", compression="xz")
    assert "xz" in subprocess.run(["unsquashfs", "-s", str(x)], capture_output=True, text=True).stdout
    with pytest.raises(CommandError):
        image.build_squashfs(demo_root, tmp_path / "y.sqfs", compression="brotli")


def test_squashfs_refuses_a_tree_without_init(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(CommandError, match="sbin/init"):
        image.build_squashfs(tmp_path, tmp_path / "out.sqfs")


# ---- ISO -----------------------------------------------------------------------

def test_iso_layout(iso: image.ImageResult, tmp_path: Path) -> None:
    for member in (image.SQUASHFS_PATH, image.IDENTITY_PATH, image.KERNEL_PATH, image.INITRD_PATH,
                   "isolinux/isolinux.bin", "isolinux/isolinux.cfg", image.GRUB_CFG_PATH, image.EFI_IMAGE_PATH):
        assert member in iso.files
    ident = image.extract(iso.iso, image.IDENTITY_PATH, tmp_path / "id")
    assert ident.read_text().strip() == "test-identity-1"
    # blkid as the oracle for the filesystem identity
    out = subprocess.run(["blkid", "-p", "-o", "export", str(iso.iso)], capture_output=True, text=True).stdout
    assert "TYPE=iso9660" in out and "LABEL=LIVEINIT" in out


def test_iso_boot_records(iso: image.ImageResult) -> None:
    rep = subprocess.run(["xorriso", "-indev", str(iso.iso), "-report_el_torito", "plain"],
                         capture_output=True, text=True).stdout
    assert "El Torito boot img :   1  BIOS" in rep
    assert "El Torito boot img :   2  UEFI" in rep
    assert "isohybrid" in rep
    mbr = iso.iso.read_bytes()[:512]
    assert mbr[510:512] == b"\x55\xaa"
    # isohybrid: a bootable partition over the whole image (BIOS USB boots) and
    # one of type 0xef over the EFI image (UEFI USB boots); fdisk as the oracle
    entries = [mbr[446 + 16 * i: 446 + 16 * (i + 1)] for i in range(4)]
    assert entries[0][0] == 0x80
    assert 0xef in [e[4] for e in entries]
    fdisk = subprocess.run(["fdisk", "-l", str(iso.iso)], capture_output=True, text=True).stdout
    assert "EFI" in fdisk


def test_efi_system_partition_holds_grub(iso: image.ImageResult, tmp_path: Path) -> None:
    efi = image.extract(iso.iso, image.EFI_IMAGE_PATH, tmp_path / "efi.img")
    listing = subprocess.run(["mdir", "-b", "-i", str(efi), "::/EFI/BOOT"], capture_output=True,
                             text=True, check=True).stdout
    assert "BOOTX64.EFI" in listing
    subprocess.run(["mcopy", "-i", str(efi), "::/EFI/BOOT/BOOTX64.EFI", str(tmp_path / "g.efi")], check=True)
    assert (tmp_path / "g.efi").read_bytes()[:2] == b"MZ"   # a PE image


def test_both_menus_offer_the_same_entries(iso: image.ImageResult, tmp_path: Path) -> None:
    iso_cfg = image.extract(iso.iso, "isolinux/isolinux.cfg", tmp_path / "i.cfg").read_text()
    grub = image.extract(iso.iso, image.GRUB_CFG_PATH, tmp_path / "g.cfg").read_text()
    for text in (iso_cfg, grub):
        assert "toram" in text
        assert "liveinit.break=" in text
        assert "liveinit.debug" in text
        assert "console=ttyS0" in text
        assert "root=" not in text
    assert iso_cfg.count("LABEL ") - iso_cfg.count("MENU LABEL") == len(image.MENU)
    assert grub.count("menuentry ") == len(image.MENU)


def test_iso_is_reproducible(demo_root: Path, fake_initrd: Path, kernel: KernelTree, tmp_path: Path) -> None:
    a = image.build_image(demo_root, tmp_path / "a.iso", kernel, initrd=fake_initrd)
    b = image.build_image(demo_root, tmp_path / "b.iso", kernel, initrd=fake_initrd)
    assert sha256(a.iso) == sha256(b.iso)
    assert a.identity == b.identity and a.identity.startswith("liveinit-")


def test_image_errors_are_clear(demo_root: Path, kernel: KernelTree, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not a directory"):
        image.build_image(tmp_path / "nope", tmp_path / "x.iso", kernel, initrd=tmp_path / "i")
    with pytest.raises(CommandError, match="label"):
        image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=tmp_path / "i", label="bad label!")
    with pytest.raises(CommandError, match="initramfs"):
        image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=tmp_path / "missing")


# ---- firmware boots with the hand-made initramfs ----------------------------------

@pytest.fixture(scope="module")
def handmade_iso(demo_root: Path, kernel: KernelTree, depmod_root: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("handmade")
    identity = "handmade-test-identity"
    rd = handmade_initramfs(depmod_root, kernel.version, work / "initrd.img", identity)
    return image.build_image(demo_root, work / "live.iso", kernel, initrd=rd, identity=identity).iso


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("profile", ["bios-cd", "bios-usb", "uefi-cd"])
def test_firmware_boots_the_iso(handmade_iso: Path, profile: str) -> None:
    # Firmware boots use the ISO's own menu (no poweroff): the lab stops QEMU
    # once the demo line is seen.
    res = lab.boot(profile, image=handmade_iso, timeout=240)
    assert res.success, f"{res.reason}\n{res.console[-3000:]}"
    assert HANDMADE_MARK in res.console            # the initramfs ran
    assert res.timings.run_init is not None        # the kernel handed over to /init
    assert res.demo["root"] == "overlay" and res.demo["writable"] == "yes"
    assert ("GNU GRUB" if profile.startswith("uefi") else "ISOLINUX") in res.console
    assert image.MENU[0].title in res.console


# ---- the commands ----------------------------------------------------------------

def test_cli_demo_root_and_image(tmp_path: Path, fake_initrd: Path, kernel: KernelTree,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from packer.cli import main
    assert main(["demo-root", str(tmp_path / "r")]) == 0
    assert main(["image", str(tmp_path / "r"), "--output", str(tmp_path / "o.iso"), "--initrd", str(fake_initrd),
                 "--kernel-root", str(kernel.root), "--identity", "cli-id", "--compression", "xz",
                 "--label", "CLI_TEST"]) == 0
    out = capsys.readouterr().out
    assert "identity=cli-id" in out and "label=CLI_TEST" in out
    assert image.extract(tmp_path / "o.iso", image.IDENTITY_PATH, tmp_path / "id").read_text() == "cli-id\n"
    assert main(["image", str(tmp_path / "missing"), "--output", str(tmp_path / "x.iso"),
                 "--initrd", str(fake_initrd)]) == 1
    err = capsys.readouterr().err
    assert "missing is not a directory" in err and "hint:" in err


@pytest.mark.slow
def test_packed_initramfs_carries_the_media_identity(demo_root: Path, kernel: KernelTree, tmp_path: Path) -> None:
    """The identity contract without booting: the ISO's live/liveinit.id is baked into /init."""
    from packer.cpio import read_archive
    res = image.build_image(demo_root, tmp_path / "real.iso", kernel, identity="contract-id-42")
    rd = image.extract(res.iso, image.INITRD_PATH, tmp_path / "initrd.img").read_bytes()
    entries = {e.name: e for seg in read_archive(rd) for e in seg.entries}
    init = entries.get("init") or entries["./init"]
    assert b"contract-id-42" in init.data
    assert image.extract(res.iso, image.IDENTITY_PATH, tmp_path / "id").read_text() == "contract-id-42\n"
