"""Live media: squashfs of a root, then a hybrid ISO that boots everywhere.

The ISO holds `/live/filesystem.squashfs` (what the runtime searches for),
`/live/liveinit.id` (the identity also baked into the initramfs), the kernel
and initramfs at `/live/vmlinuz` and `/live/initrd.img`, and two boot loaders
with the same menu: isolinux for BIOS (El Torito, and the isohybrid MBR so the
same file boots as a USB disk) and a standalone GRUB in a FAT EFI system
partition image for UEFI. Everything is built without root (mtools, xorriso)
and reproducibly: timestamps come from SOURCE_DATE_EPOCH (default 0)."""
from __future__ import annotations

import ast
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from liveinit.contract import ID_FILE, INITRD_FILE, KERNEL_FILE, LIVE_IMAGE
from packer import secureboot, tools
from packer.config import check_cmdline, source_date_epoch
from packer.errors import CommandError
from packer.kernel import KernelTree
from packer.snapshot import DEFAULT_EXCLUDES, ProgressLine, run_mksquashfs

# Where things are in the ISO's tree (the contract's absolute medium paths).
SQUASHFS_PATH = LIVE_IMAGE.lstrip("/")
IDENTITY_PATH = ID_FILE.lstrip("/")
KERNEL_PATH = KERNEL_FILE.lstrip("/")
INITRD_PATH = INITRD_FILE.lstrip("/")
EFI_IMAGE_PATH = "boot/grub/efi.img"
GRUB_CFG_PATH = "boot/grub/grub.cfg"



class SquashfsCompression(StrEnum):
    """mksquashfs -comp methods the live image may use (zstd first: the default)."""

    ZSTD = "zstd"
    XZ = "xz"
    GZIP = "gzip"
    LZ4 = "lz4"


DEFAULT_LABEL = "LIVEINIT"
# Both consoles: messages on the screen and the serial port; /dev/console is
# the last one, the serial port, which is where the boot lab listens.
DEFAULT_CONSOLE = "console=tty0 console=ttyS0,115200"

ISOLINUX_DIR = Path("/usr/lib/ISOLINUX")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
SYSLINUX_FILES = ("ldlinux.c32", "libcom32.c32", "libutil.c32", "menu.c32")
GRUB_EFI_MODULES = ("part_gpt", "part_msdos", "iso9660", "fat", "search", "search_label",
                    "search_fs_file", "configfile", "normal", "linux", "echo", "test", "ls", "cat",
                    "all_video", "efi_gop", "gfxterm", "sleep", "halt", "reboot")
BOOT_MENU_TIMEOUT_S = 3


@dataclass(frozen=True)
class MenuEntry:
    """One boot menu entry, the same in isolinux and GRUB."""

    key: str      # isolinux label
    title: str
    extra: str    # appended to the base cmdline


MENU: tuple[MenuEntry, ...] = (
    MenuEntry("live", "liveinit live system", ""),
    MenuEntry("toram", "liveinit live system (copy to RAM)", "toram"),
    MenuEntry("debug", "liveinit live system (debug messages)", "liveinit.debug debug"),
    MenuEntry("shell", "liveinit: shell before searching the medium", "liveinit.break=findroot"),
    MenuEntry("shell-handover", "liveinit: shell before starting init", "liveinit.break=handover"),
)


def menu_entry(spec: str, number: int) -> MenuEntry:
    """A custom entry from `--menu-entry 'TITLE=kernel parameters'` (the `number`th one)."""
    title, sep, extra = spec.partition("=")
    title, extra = title.strip(), extra.strip()
    if not sep or not title or any(c in title for c in '"\\\n$'):
        raise CommandError(f"bad menu entry {spec!r}",
                           hint="write it as 'TITLE=kernel parameters', a title without quotes, "
                                "backslashes or '$', e.g. 'Safe graphics=nomodeset'")
    check_cmdline(extra, f"menu entry {title!r}:")
    return MenuEntry(f"custom{number}", title, extra)


@dataclass(frozen=True)
class ImageResult:
    """What `build_image` made."""

    iso: Path
    squashfs_size: int
    iso_size: int
    identity: str
    label: str
    cmdline: str
    files: tuple[str, ...] = field(default=())
    secure_boot: bool = False     # UEFI boots through the signed chain (shim, signed GRUB)
    efi_loader: str = ""          # which chain, or the warning saying why not and what Secure Boot does


def _env(epoch: int) -> dict[str, str]:
    return {**os.environ, "SOURCE_DATE_EPOCH": str(epoch)}


def build_squashfs(root: Path, output: Path, compression: str = SquashfsCompression.ZSTD,
                   excludes: tuple[str, ...] = DEFAULT_EXCLUDES, all_root: bool = False,
                   epoch: int | None = None, pseudo_file: Path | None = None,
                   progress: ProgressLine | None = None) -> Path:
    """mksquashfs `root` into `output`, reproducibly (same tree -> same bytes).

    Owners and groups are kept (setgid-shadow tools, /var/mail, the journal
    need theirs); `all_root` makes every file root's, for a tree built by an
    unprivileged user whose uid means nothing on the live system. `pseudo_file`:
    mksquashfs pseudo-file definitions (packer.snapshot's clean-up); `progress`
    draws mksquashfs' progress."""
    if compression not in set(SquashfsCompression):
        raise CommandError(f"unknown squashfs compression {compression!r}",
                           hint="choose one of " + ", ".join(SquashfsCompression))
    if not (root / "sbin" / "init").exists() and not (root / "sbin" / "init").is_symlink():
        raise CommandError(f"{root} has no /sbin/init: not a root filesystem",
                           hint="use `liveinit demo-root DIR` or debootstrap to make one")
    epoch = source_date_epoch() if epoch is None else epoch
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["mksquashfs", str(root), str(output), "-noappend", "-quiet", "-no-progress",
           "-comp", compression, "-mkfs-time", str(epoch), "-all-time", str(epoch)]
    if all_root:
        cmd.append("-all-root")
    if pseudo_file is not None:
        cmd += ["-pf", str(pseudo_file)]
    if excludes:
        cmd += ["-wildcards", "-e", *excludes]
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}  # it conflicts with -all-time
    run_mksquashfs(cmd, f"build the squashfs of {root}", env, progress)
    return output


def default_identity(squashfs: Path, kernel_version: str) -> str:
    """An identity derived from the build inputs: same root + kernel -> same id."""
    h = hashlib.sha256(kernel_version.encode() + b"\0")
    with squashfs.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "liveinit-" + h.hexdigest()[:16]


INIT_SETTINGS = "SETTINGS"   # the name render_init gives the baked settings in /init


def baked_settings(init: str) -> dict[str, object] | None:
    """The settings a liveinit /init bakes (`SETTINGS = {...}`, written by
    packer.initramfs.render_init), read as a literal, never executed; None
    when `init` is not such a script."""
    try:
        tree = ast.parse(init)
    except SyntaxError:
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == INIT_SETTINGS
                                                 for t in node.targets)):
            try:
                settings = ast.literal_eval(node.value)
            except ValueError:
                return None
            return settings if isinstance(settings, dict) else None
    return None


def initrd_identity(initrd: Path) -> tuple[str | None, str]:
    """(the identity baked into a liveinit initramfs' /init, or None; why not).

    Reads every segment (plain or compressed cpio) like the kernel unpacks
    them: the last /init wins."""
    from packer.cpio import flatten, read_archive
    try:
        tree = flatten(read_archive(Path(initrd).read_bytes()))
    except CommandError as e:   # ArchiveError, CompressionError
        return None, f"it is not an initramfs this packer can read ({e})"
    init = tree.get("init") or tree.get("./init")
    if init is None or init.kind != "file":
        return None, "it has no /init file"
    settings = baked_settings(init.data.decode("utf-8", errors="replace")) or {}
    ident = settings.get("identity")
    if not isinstance(ident, str) or not ident:
        return None, "its /init carries no liveinit identity (not a liveinit initramfs)"
    return ident, ""


def identity_for_initrd(initrd: Path, requested: str | None) -> str:
    """The identity to write on a medium whose initramfs is `initrd`: the one
    its /init looks for. `requested` (--identity) must agree with it, and is
    required when the initramfs carries none."""
    carried, why = initrd_identity(initrd)
    if carried is None:
        if requested is None:
            raise CommandError(f"cannot tell which medium {initrd} looks for: {why}",
                               hint="pass --identity ID with the identity that initramfs searches for "
                                    "(or pack a liveinit one: `liveinit pack --identity ID`)")
        return requested
    if requested is not None and requested != carried:
        raise CommandError(f"--identity {requested!r} conflicts with the identity {carried!r} baked into "
                           f"{initrd}'s /init: the runtime would not recognise its own medium",
                           hint=f"drop --identity (the medium then gets {carried!r}), or repack the "
                                "initramfs with `liveinit pack --identity ID`")
    return carried


def pack_initramfs(kernel: KernelTree, output: Path, identity: str, cmdline: str = "",
                   layers: tuple[str, ...] = (), keymap: tuple[str, ...] = (),
                   binaries: tuple[str, ...] = ()) -> Path:
    """Build the liveinit initramfs for `kernel` (packer.initramfs), carrying `identity`;
    `layers`, `keymap`, `binaries`: as `liveinit pack --with/--keymap/--binaries`."""
    from packer.config import PackConfig
    from packer.initramfs import build
    build(PackConfig(output=output, kver=kernel.version, moddir=kernel.moddir, identity=identity,
                     cmdline=cmdline, layers=layers, keymap=keymap, binaries=binaries))
    return output


def isolinux_cfg(label: str, cmdline: str, entries: tuple[MenuEntry, ...] = MENU) -> str:
    """The BIOS boot menu (isolinux, serial and screen; syslinux reads the same)."""
    lines = ["SERIAL 0 115200", "UI menu.c32", f"MENU TITLE {label}: liveinit live system",
             f"TIMEOUT {BOOT_MENU_TIMEOUT_S * 10}", "PROMPT 0", f"DEFAULT {entries[0].key}", ""]
    for e in entries:
        lines += [f"LABEL {e.key}", f"  MENU LABEL {e.title}", f"  LINUX /{KERNEL_PATH}",
                  f"  INITRD /{INITRD_PATH}", f"  APPEND {' '.join(filter(None, (cmdline, e.extra)))}", ""]
    return "\n".join(lines)


def grub_cfg(label: str, cmdline: str, entries: tuple[MenuEntry, ...] = MENU) -> str:
    """The UEFI boot menu (GRUB), same entries as isolinux."""
    lines = ["set default=0", f"set timeout={BOOT_MENU_TIMEOUT_S}", "insmod all_video", ""]
    for e in entries:
        lines += [f'menuentry "{e.title}" {{',
                  f"  linux /{KERNEL_PATH} {' '.join(filter(None, (cmdline, e.extra)))}",
                  f"  initrd /{INITRD_PATH}", "}", ""]
    return "\n".join(lines)


def _grub_embedded_cfg(label: str) -> str:
    # The standalone image only finds the ISO (by its volume label) and reads
    # the real menu from it, so one binary works for CD and USB-disk boots.
    return (f"search --no-floppy --set=root --label {label}\n"
            "set prefix=($root)/boot/grub\n"
            f"configfile ($root)/{GRUB_CFG_PATH}\n")


def build_grub_efi(work: Path, label: str, epoch: int) -> Path:
    """work/BOOTX64.EFI: a GRUB that finds the medium labelled `label` and reads its menu."""
    embedded = work / "grub-embedded.cfg"
    embedded.write_text(_grub_embedded_cfg(label))
    efi = work / "BOOTX64.EFI"
    # grub-mkimage rather than grub-mkstandalone: the standalone tool packs
    # its modules in a memdisk tar stamped with the current time, so two
    # builds differ; a core image with the modules built in is reproducible.
    tools.run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(efi), "-p", "/boot/grub", "-c", str(embedded),
          *GRUB_EFI_MODULES], "build the GRUB EFI binary", env=_env(epoch))
    return efi


def efi_loader(work: Path, label: str, epoch: int, kernel_image: Path, root: Path | None,
               secure_boot: bool = True) -> secureboot.EfiLoader:
    """The UEFI loader files of a medium labelled `label` (ISO or stick): the
    signed chain when there is one for `kernel_image` (see packer.secureboot),
    else the standalone GRUB; both read the same menu."""
    return secureboot.efi_loader(work, kernel_image, root, _grub_embedded_cfg(label),
                                 lambda: build_grub_efi(work, label, epoch), secure_boot)


def parent_dirs(files: tuple[tuple[str, Path], ...]) -> list[str]:
    """Every directory above the destinations of `files`, parents first (what mmd must make)."""
    return sorted({"/".join(dest.split("/")[:i]) for dest, _ in files for i in range(1, dest.count("/") + 1)})


def build_efi_image(work: Path, files: tuple[tuple[str, Path], ...], epoch: int) -> Path:
    """A FAT image holding `files` ((path in the image, source) pairs), made without root."""
    img = work / "efi.img"
    size_kib = sum(src.stat().st_size // 1024 + 4 for _, src in files) + 512
    size_kib += (-size_kib) % 64
    img.unlink(missing_ok=True)
    tools.run(["mkfs.vfat", "-C", "--invariant", "-i", "4c495645", "-n", "LIVEINITEFI", str(img),
          str(size_kib)], "format the EFI system partition image", env=_env(epoch))
    tools.run(["mmd", "-i", str(img), *(f"::/{d}" for d in parent_dirs(files))],
              "make directories in the EFI image", env=_env(epoch))
    for dest, src in files:
        own = work / "esp" / dest     # a copy to stamp: the sources may be the root's or the cache's
        _copy(src, own)
        os.utime(own, (epoch, epoch))
        tools.run(["mcopy", "-m", "-i", str(img), str(own), f"::/{dest}"],
             f"copy {dest} into the EFI image", env=_env(epoch))
    return img


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def build_iso(tree: Path, output: Path, label: str, epoch: int) -> Path:
    """xorriso: ISO9660 + Rock Ridge + Joliet, El Torito BIOS + EFI, isohybrid MBR/GPT."""
    mbr = ISOLINUX_DIR / "isohdpfx.bin"
    if not mbr.exists():
        raise CommandError(f"{mbr} not found", hint="apt-get install isolinux")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    tools.run(["xorriso", "-as", "mkisofs", "-o", str(output), "-quiet",
          "-iso-level", "3", "-full-iso9660-filenames", "-volid", label, "-R", "-J", "-joliet-long",
          "-isohybrid-mbr", str(mbr),
          "-c", "isolinux/boot.cat", "-b", "isolinux/isolinux.bin",
          "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
          "-eltorito-alt-boot", "-e", EFI_IMAGE_PATH, "-no-emul-boot", "-isohybrid-gpt-basdat",
          str(tree)], f"write the ISO {output}", env=_env(epoch))
    return output


def build_image(root: Path, output: Path, kernel: KernelTree, initrd: Path | None = None,
                identity: str | None = None, compression: str = SquashfsCompression.ZSTD,
                label: str = DEFAULT_LABEL,
                cmdline: str = "", console: str = DEFAULT_CONSOLE, all_root: bool = False,
                workdir: Path | None = None, secure_boot: bool = True,
                excludes: tuple[str, ...] = DEFAULT_EXCLUDES, pseudo_file: Path | None = None,
                progress: ProgressLine | None = None,
                entries: tuple[MenuEntry, ...] = MENU, layers: tuple[str, ...] = (),
                keymap: tuple[str, ...] = (), binaries: tuple[str, ...] = ()) -> ImageResult:
    """Build a bootable hybrid live ISO of `root` at `output`.

    `initrd`: a prebuilt initramfs; the medium gets the identity its /init
    carries (`identity`, if given, must match; it is required for an
    initramfs that carries none). None packs one with the liveinit packer,
    with `identity` or one derived from the squashfs and kernel.
    `cmdline` is appended to every menu entry. `all_root`: see build_squashfs.
    `secure_boot`: boot UEFI through the signed chain when the kernel is
    signed and one is found (efi_loader); False: the unsigned GRUB.
    `excludes`, `pseudo_file`, `progress`: see build_squashfs (packer.snapshot.plan
    makes them for a live copy of a running system). `entries`: the boot menu.
    `layers`, `keymap`, `binaries`: what the packed initramfs carries besides the
    universal set (pack_initramfs; ignored with `initrd`)."""
    root, output = Path(root), Path(output)
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory",
                           hint="pass the root filesystem tree to put on the medium")
    if not kernel.vmlinuz.exists():
        raise CommandError(f"kernel image {kernel.vmlinuz} not found", hint="run `liveinit fetch-kernel`")
    if not label or len(label) > 32 or not all(c.isalnum() or c in "_-" for c in label):
        raise CommandError(f"bad volume label {label!r}", hint="use up to 32 letters, digits, '_' or '-'")
    check_cmdline(cmdline)
    check_cmdline(console, "--console")
    if initrd is not None:
        if not Path(initrd).is_file():
            raise CommandError(f"initramfs {initrd} not found", hint="check the --initrd path")
        identity = identity_for_initrd(Path(initrd), identity)
    epoch = source_date_epoch()
    with tempfile.TemporaryDirectory(prefix="liveinit-image-", dir=workdir) as tmp:
        work = Path(tmp)
        tree = work / "tree"
        squash = build_squashfs(root, tree / SQUASHFS_PATH, compression, excludes, all_root, epoch,
                                pseudo_file, progress)
        identity = identity or default_identity(squash, kernel.version)
        (tree / IDENTITY_PATH).write_text(identity + "\n")
        if initrd is None:
            initrd = pack_initramfs(kernel, work / "initrd.img", identity, layers=layers, keymap=keymap,
                                    binaries=binaries)
        _copy(kernel.vmlinuz, tree / KERNEL_PATH)
        _copy(Path(initrd), tree / INITRD_PATH)
        full_cmdline = " ".join(filter(None, (console, cmdline)))
        for name in ("isolinux.bin",):
            _copy(ISOLINUX_DIR / name, tree / "isolinux" / name)
        for name in SYSLINUX_FILES:
            _copy(SYSLINUX_MODULES / name, tree / "isolinux" / name)
        (tree / "isolinux" / "isolinux.cfg").write_text(isolinux_cfg(label, full_cmdline, entries))
        (tree / GRUB_CFG_PATH).parent.mkdir(parents=True, exist_ok=True)
        (tree / GRUB_CFG_PATH).write_text(grub_cfg(label, full_cmdline, entries))
        loader = efi_loader(work, label, epoch, kernel.vmlinuz, root, secure_boot)
        if loader.config is not None:   # a CD boot's signed GRUB looks on the ISO 9660 tree
            _copy(loader.config[1], tree / loader.config[0])
        shutil.copyfile(build_efi_image(work, loader.files, epoch), tree / EFI_IMAGE_PATH)
        from packer.verify import write_sums
        # The medium check (liveinit.check, `liveinit verify`) reads it; xorriso's
        # -boot-info-table rewrites isolinux.bin inside the ISO, so it cannot be listed.
        write_sums(tree, skip=("isolinux/isolinux.bin",))
        files = tuple(sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file()))
        for p in tree.rglob("*"):
            os.utime(p, (epoch, epoch), follow_symlinks=False)
        os.utime(tree, (epoch, epoch))
        build_iso(tree, output, label, epoch)
        return ImageResult(iso=output, squashfs_size=squash.stat().st_size, iso_size=output.stat().st_size,
                           identity=identity, label=label, cmdline=full_cmdline, files=files,
                           secure_boot=loader.signed, efi_loader=loader.message)


def extract(iso: Path, member: str, dest: Path) -> Path:
    """Copy one file (e.g. 'live/vmlinuz') out of an ISO with xorriso, no mount."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    tools.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", "/" + member.lstrip("/"),
               str(dest)],
         f"extract {member} from {iso}")
    if not dest.exists():
        raise CommandError(f"{iso} has no /{member}", hint="is it an ISO made by `liveinit image`?")
    return dest
