"""Live media: the demo root, the squashfs and the hybrid ISO (checked with
xorriso, blkid, unsquashfs and mtools as oracles), and firmware boots of the
ISO in QEMU with a hand-made busybox initramfs, so the medium is proven
independently of the liveinit runtime."""
from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from liveinit.contract import DEMO_MODULES, DEMO_OK, Settings
from packer import image
from packer.cpio import ArchiveBuilder, image_bytes
from packer.errors import CommandError
from packer.kernel import KernelTree
from qemu import lab
from qemu.demoroot import INIT_SCRIPT, _is_static, build_demo_root

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


def liveinit_like_initrd(path: Path, identity: str | None, method: str = "xz") -> Path:
    """A small initramfs whose /init is what `liveinit pack` writes (render_init itself)."""
    from packer.initramfs import render_init
    ar = ArchiveBuilder()
    settings = Settings(kver="6.1.0-56-amd64", identity=identity or "")
    ar.add_file("init", data=render_init("/usr/bin/python3.11", settings), mode=0o755)
    ar.add_dir("usr/lib/liveinit")
    path.write_bytes(image_bytes(ar, method))
    return path


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
    return image.build_image(demo_root, out, kernel, initrd=fake_initrd, identity="test-identity-1", all_root=True)


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
    line = next(ln for ln in INIT_SCRIPT.splitlines() if ln.startswith(f'echo "{DEMO_OK} '))
    for key in ("uptime=", "root=", "writable=", "persisted=", "init="):
        assert key in line
    assert "liveinit.demo=poweroff" in INIT_SCRIPT and "poweroff -f" in INIT_SCRIPT


def test_demo_init_reports_modules_and_the_boot_record(tmp_path: Path) -> None:
    """Run the init's report lines with busybox on a fake /proc/modules and /run."""
    lines = INIT_SCRIPT.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("record=no"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith(f'echo "{DEMO_MODULES} '))
    snippet = "\n".join(lines[start:end + 1])
    (tmp_path / "modules").write_text("nvme 49152 2 - Live 0x0\nahci 45056 0 - Live 0x0\n"
                                      "nvme_core 180224 3 nvme, Live 0x0\n")
    for has_record in (True, False):
        run = tmp_path / "run/liveinit"
        run.mkdir(parents=True, exist_ok=True)
        (run / "boot.json").unlink(missing_ok=True)
        if has_record:
            (run / "boot.json").write_text("{}")
        script = snippet.replace("/proc/modules", str(tmp_path / "modules")).replace(
            "/run/liveinit/boot.json", str(run / "boot.json"))
        out = subprocess.run(["/bin/busybox", "sh", "-c", script], capture_output=True, text=True,
                             check=True, env={"PATH": "/bin:/usr/bin"}).stdout
        rep = lab.parse_console(out)
        assert rep.modules == ("ahci", "nvme", "nvme_core")
        assert rep.boot_record is has_record


def test_is_static_uses_the_elf_closure(tmp_path: Path) -> None:
    assert _is_static(Path("/bin/busybox"))
    assert not _is_static(Path("/bin/ls"))
    # A static binary that names ld-linux near its start (here in a note) is still static:
    # the ELF program headers decide, not a byte grep.
    src = tmp_path / "st.c"
    src.write_text('__attribute__((section(".note.mark"), used)) static const char mark[] = '
                   '"built against ld-linux-x86-64.so.2";\nint main(void) { return 0; }\n')
    subprocess.run(["gcc", "-static", "-o", str(tmp_path / "st"), str(src)], check=True)
    assert b"ld-linux" in (tmp_path / "st").read_bytes()[:65536]
    assert _is_static(tmp_path / "st")
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\necho ld-linux\n")
    script.chmod(0o755)
    with pytest.raises(CommandError, match="not an ELF"):
        build_demo_root(tmp_path / "r", busybox=script)


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


def test_source_date_epoch_is_the_packers(monkeypatch: pytest.MonkeyPatch) -> None:
    from packer import config
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert image.source_date_epoch() == 1700000000 == config.PackConfig().epoch
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "soon")
    with pytest.raises(CommandError, match="SOURCE_DATE_EPOCH='soon' is not an integer"):
        image.source_date_epoch()
    # one parser for the initramfs and the medium: the same function
    assert image.source_date_epoch is config.source_date_epoch
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")
    assert image.source_date_epoch() == 0 == config.PackConfig().epoch


def test_squashfs_xz_and_bad_compression(demo_root: Path, tmp_path: Path) -> None:
    x = image.build_squashfs(demo_root, tmp_path / "x.sqfs", compression="xz")
    assert "xz" in subprocess.run(["unsquashfs", "-s", str(x)], capture_output=True, text=True).stdout
    with pytest.raises(CommandError):
        image.build_squashfs(demo_root, tmp_path / "y.sqfs", compression="brotli")


def test_squashfs_refuses_a_tree_without_init(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    with pytest.raises(CommandError, match="sbin/init"):
        image.build_squashfs(tmp_path, tmp_path / "out.sqfs")


def _owner_tree(root: Path) -> Path:
    """A root with what a debootstrap tree has: a setgid-shadow tool, a user's mail spool."""
    (root / "sbin").mkdir(parents=True)
    (root / "sbin/init").write_text("#!/bin/sh\n")
    (root / "sbin/init").chmod(0o755)
    (root / "usr/bin").mkdir(parents=True)
    chage = root / "usr/bin/chage"
    chage.write_bytes(b"\x7fELF not really")
    os.chown(chage, 0, 42)
    chage.chmod(0o2755)
    (root / "var/mail").mkdir(parents=True)
    os.chown(root / "var/mail", 0, 8)
    (root / "var/mail/alice").write_text("mail\n")
    os.chown(root / "var/mail/alice", 1234, 8)
    return root


def _listing(sqfs: Path) -> dict[str, tuple[str, str]]:
    """unsquashfs -lln as the oracle: path -> (mode string, uid/gid)."""
    out = subprocess.run(["unsquashfs", "-lln", "-d", "", str(sqfs)], capture_output=True, text=True,
                         check=True).stdout
    return {ln.split()[-1]: (ln.split()[0], ln.split()[1]) for ln in out.splitlines() if ln[:1] in "dl-"}


def test_squashfs_keeps_owners_by_default(tmp_path: Path) -> None:
    root = _owner_tree(tmp_path / "root")
    kept = _listing(image.build_squashfs(root, tmp_path / "kept.sqfs"))
    assert kept["/usr/bin/chage"] == ("-rwxr-sr-x", "0/42")        # setgid shadow, not setgid root
    assert kept["/var/mail/alice"][1] == "1234/8"
    assert kept["/var/mail"][1] == "0/8"
    flat = _listing(image.build_squashfs(root, tmp_path / "flat.sqfs", all_root=True))
    assert flat["/usr/bin/chage"] == ("-rwxr-sr-x", "0/0")
    assert flat["/var/mail/alice"][1] == "0/0"


def test_cli_image_keeps_owners_unless_all_root(tmp_path: Path, fake_initrd: Path, kernel: KernelTree) -> None:
    from packer.cli import main
    root = _owner_tree(tmp_path / "root")
    base = ["image", str(root), "--initrd", str(fake_initrd), "--identity", "owners",
            "--kernel-root", str(kernel.root)]
    for extra, owner in (([], "1234/8"), (["--all-root"], "0/0")):
        iso = tmp_path / f"o{len(extra)}.iso"
        assert main([*base, "--output", str(iso), *extra]) == 0
        sqfs = image.extract(iso, image.SQUASHFS_PATH, tmp_path / f"o{len(extra)}.sqfs")
        assert _listing(sqfs)["/var/mail/alice"][1] == owner


# ---- identity of a prebuilt initramfs --------------------------------------------

@pytest.mark.parametrize("method", ["xz", "none"])
def test_identity_is_read_from_the_initrd(demo_root: Path, kernel: KernelTree, tmp_path: Path,
                                          method: str) -> None:
    rd = liveinit_like_initrd(tmp_path / "rd.img", "carried-id-7", method)
    assert image.initrd_identity(rd) == ("carried-id-7", "")
    res = image.build_image(demo_root, tmp_path / "a.iso", kernel, initrd=rd)
    assert res.identity == "carried-id-7"
    assert image.extract(res.iso, image.IDENTITY_PATH, tmp_path / "id").read_text() == "carried-id-7\n"
    same = image.build_image(demo_root, tmp_path / "b.iso", kernel, initrd=rd, identity="carried-id-7")
    assert same.identity == "carried-id-7"


def test_identity_conflicting_with_the_initrd_is_refused(demo_root: Path, kernel: KernelTree,
                                                          tmp_path: Path) -> None:
    rd = liveinit_like_initrd(tmp_path / "rd.img", "carried-id-7")
    with pytest.raises(CommandError, match="conflicts with the identity 'carried-id-7'") as e:
        image.build_image(demo_root, tmp_path / "a.iso", kernel, initrd=rd, identity="other")
    assert "--identity" in e.value.hint
    assert not (tmp_path / "a.iso").exists()


def test_initrd_without_identity_needs_one(demo_root: Path, kernel: KernelTree, fake_initrd: Path,
                                           tmp_path: Path) -> None:
    no_id = liveinit_like_initrd(tmp_path / "noid.img", None)
    shell = ArchiveBuilder()
    shell.add_file("init", data=b"#!/bin/sh\nexec /bin/sh\n", mode=0o755)
    handmade = tmp_path / "handmade.img"
    handmade.write_bytes(image_bytes(shell, "gzip"))
    for rd, why in ((no_id, "not a liveinit initramfs"), (handmade, "not a liveinit initramfs"),
                    (fake_initrd, "not an initramfs this packer can read")):
        with pytest.raises(CommandError, match=why) as e:
            image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=rd)
        assert "--identity" in e.value.hint
        assert image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=rd,
                                 identity="given").identity == "given"


def test_cli_image_takes_the_identity_of_its_initrd(demo_root: Path, kernel: KernelTree, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from packer.cli import main
    rd = liveinit_like_initrd(tmp_path / "rd.img", "cli-carried")
    base = ["image", str(demo_root), "--initrd", str(rd), "--kernel-root", str(kernel.root)]
    assert main([*base, "--output", str(tmp_path / "a.iso")]) == 0
    assert "identity=cli-carried" in capsys.readouterr().out
    assert image.extract(tmp_path / "a.iso", image.IDENTITY_PATH, tmp_path / "id").read_text() == "cli-carried\n"
    assert main([*base, "--output", str(tmp_path / "b.iso"), "--identity", "wrong"]) == 1
    err = capsys.readouterr().err
    assert "conflicts" in err and "hint:" in err and "Traceback" not in err


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
    a = image.build_image(demo_root, tmp_path / "a.iso", kernel, initrd=fake_initrd, identity="repro")
    b = image.build_image(demo_root, tmp_path / "b.iso", kernel, initrd=fake_initrd, identity="repro")
    assert sha256(a.iso) == sha256(b.iso)
    sqfs = image.build_squashfs(demo_root, tmp_path / "c.sqfs")
    assert image.default_identity(sqfs, kernel.version) == image.default_identity(sqfs, kernel.version)
    assert image.default_identity(sqfs, kernel.version).startswith("liveinit-")


def test_image_errors_are_clear(demo_root: Path, kernel: KernelTree, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not a directory"):
        image.build_image(tmp_path / "nope", tmp_path / "x.iso", kernel, initrd=tmp_path / "i")
    with pytest.raises(CommandError, match="label"):
        image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=tmp_path / "i", label="bad label!")
    with pytest.raises(CommandError, match="initramfs .*missing not found"):
        image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=tmp_path / "missing")
    with pytest.raises(CommandError, match=r"(?s)--cmdline 'toram liveinit.debgu' is not a valid.*"
                                           r"liveinit.debgu: unknown liveinit parameter"):
        image.build_image(demo_root, tmp_path / "x.iso", kernel, initrd=tmp_path / "missing",
                          cmdline="toram liveinit.debgu")
    assert not (tmp_path / "x.iso").exists()


# ---- firmware boots with the hand-made initramfs ----------------------------------

@pytest.fixture(scope="module")
def handmade_iso(demo_root: Path, kernel: KernelTree, depmod_root: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("handmade")
    identity = "handmade-test-identity"
    rd = handmade_initramfs(depmod_root, kernel.version, work / "initrd.img", identity)
    return image.build_image(demo_root, work / "live.iso", kernel, initrd=rd, identity=identity, all_root=True).iso


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
