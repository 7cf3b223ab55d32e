"""`liveinit usb SOURCE TARGET`: write a live stick (or a disk image file) that BIOS and UEFI boot.

SOURCE is a root directory (packed as `liveinit image` packs it) or an ISO that
`liveinit image` made; TARGET a block device or an image file. See packer/usb.py
for the layout, packer/blockdev_host.py for the checks before a device is written."""
from __future__ import annotations

import argparse
import getpass
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from packer import blockdev_host, blocktools, config, image, snapshot, usb
from packer.config import Kind
from packer.errors import CommandError
from packer.progress import human

BOOT_LOADERS = 2 << 20   # syslinux and the menus on the FAT, rounded up (the UEFI loader is counted)
PASSPHRASE_TRIES = 5     # typed twice each: a mismatch or an empty one asks again, this many times

# Settings that may come from a TOML config file too (one table feeds both, as for
# `pack`); --force and --yes never do: consent to erase a disk is given on the
# command line, each time.
SETTINGS: tuple[config.Setting, ...] = (
    config.Setting("size", Kind.STR, None, "create TARGET as an image file of this size (e.g. 2G)",
                   metavar="SIZE"),
    config.Setting("label", Kind.STR, None, "FAT volume label, up to 11 of A-Z 0-9 _ - "
                   "(default: the ISO's label)", metavar="LABEL"),
    config.Setting("persistence", Kind.STR, None, "an ext4 persistence partition of SIZE, or 'rest' of "
                   "the stick", metavar="SIZE|rest"),
    config.Setting("persistence-file", Kind.STR, None, f"an ext4 persistence image {usb.PERSISTENCE_IMAGE} "
                   "of SIZE on the FAT", metavar="SIZE"),
    config.Setting("persistence-encrypt", Kind.BOOL, False, "encrypt the --persistence partition (LUKS2, "
                   "an ext4 inside; the passphrase asked twice, or --passphrase-file; the boot asks for it: "
                   "docs/PERSISTENCE.md)"),
    config.Setting("passphrase-file", Kind.PATH, None, "read the passphrase of --persistence-encrypt from "
                   "FILE (for scripts; one trailing newline is dropped)", metavar="FILE"),
    config.Setting("luks-iter-time", Kind.INT, None, "argon2id time to unlock on this host, in ms "
                   "(default: cryptsetup's, 2000)", metavar="MS"),
    config.Setting("luks-pbkdf-memory", Kind.INT, usb.PBKDF_MEMORY_KIB, "argon2id memory in KiB; every PC "
                   f"that opens the stick needs it free (default {usb.PBKDF_MEMORY_KIB})", metavar="KIB"),
    config.Setting("keymap", Kind.LIST, (), "console keymap(s) for typing the passphrase (kbd or XKB names, "
                   "e.g. de-latin1): packed into the image (ROOT source), the first named on the boot "
                   "menu as vconsole.keymap=", metavar="NAME"),
    config.Setting("fat-size", Kind.STR, None, "size of the FAT partition (default: the whole stick, or "
                   f"what persistence leaves; with --persistence rest, the live files + "
                   f"{usb.FAT_FREE // usb.MIB} MiB)", metavar="SIZE"),
    config.Setting("menu-entry", Kind.LIST, (), "an extra boot menu entry 'TITLE=kernel parameters' "
                   "(repeatable)", metavar="'TITLE=PARAMS'"),
    config.Setting("cmdline", Kind.STR, "", "extra kernel parameters for every menu entry", metavar="TEXT"),
    config.Setting("console", Kind.STR, image.DEFAULT_CONSOLE, "console parameters (ROOT source)",
                   metavar="TEXT"),
    config.Setting("compression", Kind.CHOICE, image.SquashfsCompression.ZSTD.value,
                   "squashfs compression (ROOT source)", choices=tuple(image.SquashfsCompression)),
    config.Setting("kernel-root", Kind.PATH, None, "unpacked kernel package (ROOT source; default: the "
                   "root's own newest kernel, as `liveinit image`)", metavar="DIR"),
    config.Setting("initrd", Kind.PATH, None, "prebuilt initramfs (ROOT source, as `liveinit image`)",
                   metavar="FILE"),
    config.Setting("identity", Kind.STR, None, "identity string (ROOT source, as `liveinit image`)",
                   metavar="ID"),
    config.Setting("all-root", Kind.BOOL, False, "make every file in the squashfs owned by root "
                   "(ROOT source)"),
    config.Setting("secure-boot", Kind.BOOL, True, "UEFI boots through the signed chain (shim, the "
                   "distribution's signed GRUB) when the kernel is signed; --no-secure-boot: an unsigned "
                   "GRUB (docs/SECUREBOOT.md)"),
    config.Setting("workdir", Kind.PATH, None, "directory for scratch files (the FAT is built there "
                   "first, as big as the files on it)", metavar="DIR"),
)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("source", type=Path, help="root directory, or an ISO made by `liveinit image`")
    parser.add_argument("target", type=Path, help="block device (a USB stick) or image file")
    config.add_arguments(parser, SETTINGS)
    parser.add_argument("--force", action="store_true",
                        help="write a disk that is not removable (never one that is mounted or in use)")
    parser.add_argument("--yes", action="store_true", help="do not ask to type the device name")


def confirm(path: str, disk: blockdev_host.DiskInfo, ask: Callable[[str], str],
            say: Callable[[str], None]) -> bool:
    """Show what is on the disk and ask the user to type its name."""
    say(f"liveinit usb will ERASE everything on {path}:")
    for line in blockdev_host.describe(disk, path):
        say("  " + line)
    answer = ask(f"Type the device name ({disk.name}) to write it, anything else to stop: ").strip()
    return answer in (disk.name, f"/dev/{disk.name}", path)


def check_device(path: Path, force: bool, yes: bool, ask: Callable[[str], str] = input,
                 say: Callable[[str], None] = print, sys_root: Path = blockdev_host.SYS,
                 proc: Path = blockdev_host.PROC) -> blockdev_host.DiskInfo:
    """Refuse a device in use (mounted, root, swap, held) or fixed (without --force); confirm."""
    name = blockdev_host.disk_name(path, sys_root)
    disk = blockdev_host.inspect_disk(name, sys_root)
    state = blockdev_host.host_state(proc)
    hard = blockdev_host.refusals(disk, state)
    if hard:
        raise CommandError(f"refusing to write {path}: " + "; ".join(hard),
                           hint="unmount it (and swapoff) first, or choose the stick's own device")
    soft = blockdev_host.needs_force(disk)
    if soft and not force:
        raise CommandError(f"refusing to write {path}: " + "; ".join(soft),
                           hint="check `lsblk -o NAME,SIZE,RM,TRAN,MODEL`; --force writes it anyway")
    if not yes:
        if not sys.stdin.isatty() and ask is input:
            raise CommandError(f"writing {path} needs a confirmation and stdin is not a terminal",
                               hint="pass --yes once you are sure it is the right device")
        if not confirm(str(path), disk, ask, say):
            raise CommandError(f"not confirmed: {path} left untouched")
    return disk


def check_target(target: Path, size: int | None, force: bool, yes: bool,
                 say: Callable[[str], None]) -> None:
    """Before minutes of building: is TARGET a device we may write (confirmed), or a usable file?"""
    if target.exists() and stat.S_ISBLK(os.stat(target).st_mode):
        check_device(target, force, yes, say=say)
        return
    if target.exists():
        if not target.is_file():
            raise CommandError(f"{target} is neither a block device nor a regular file")
        why = blockdev_host.file_refusals(target, blockdev_host.host_state())
        if why:
            raise CommandError(f"refusing to write {target}: " + "; ".join(why))
        if size is not None and size != target.stat().st_size:
            raise CommandError(f"{target} exists ({human(target.stat().st_size)}) and --size asks for "
                               f"{human(size)}",
                               hint="remove the file first, or drop --size to write it as is")
    elif size is None:
        raise CommandError(f"{target} does not exist", hint="pass --size SIZE to create an image file")


def read_passphrase(path: Path | None, ask: Callable[[str], str] = getpass.getpass,
                    say: Callable[[str], None] = print) -> bytearray:
    """The persistence passphrase: FILE's bytes (one trailing newline dropped), or typed twice
    on the terminal without echo (a mismatch or an empty one asks again). Only in memory: the
    caller wipes the bytearray; it reaches cryptsetup on a pipe."""
    if path is not None:
        try:
            data = bytearray(path.read_bytes())
        except OSError as e:
            raise CommandError(f"--passphrase-file {path}: {e.strerror}") from None
        if data.endswith(b"\n"):
            del data[-1:]
        if not data:
            raise CommandError(f"--passphrase-file {path} is empty", hint="put the passphrase in it")
        return data
    if ask is getpass.getpass and not sys.stdin.isatty():
        raise CommandError("--persistence-encrypt asks for the passphrase and stdin is not a terminal",
                           hint="pass --passphrase-file FILE in scripts")
    for _ in range(PASSPHRASE_TRIES):
        first = ask("Passphrase for the encrypted persistence partition: ")
        if not first:
            say("an empty passphrase is refused: type one")
            continue
        if ask("The same passphrase again: ") != first:
            say("the two passphrases differ: again")
            continue
        return bytearray(first.encode())
    raise CommandError(f"no passphrase agreed after {PASSPHRASE_TRIES} tries: nothing was written")


def run(args: argparse.Namespace) -> int:
    v = config.values(args, SETTINGS)
    say: Callable[[str], None] = (lambda s: None) if args.quiet else print
    t0 = time.monotonic()
    target: Path = args.target
    source: Path = args.source
    if v["persistence"] and v["persistence_file"]:
        raise CommandError("--persistence and --persistence-file exclude each other",
                           hint="a partition (--persistence) or a file on the FAT (--persistence-file)")
    persist: int | str | None = None
    if v["persistence"]:
        persist = "rest" if v["persistence"] == "rest" else usb.parse_size(v["persistence"], "--persistence")
    pfile = usb.parse_size(v["persistence_file"], "--persistence-file") if v["persistence_file"] else None
    encrypt: bool = v["persistence_encrypt"]
    keymaps: tuple[str, ...] = tuple(v["keymap"])
    if encrypt and persist is None:
        raise CommandError("--persistence-encrypt encrypts a persistence partition and none is asked for",
                           hint="add --persistence SIZE or --persistence rest (an encrypted "
                                "--persistence-file is not supported)")
    if v["passphrase_file"] is not None and not encrypt:
        raise CommandError("--passphrase-file without --persistence-encrypt",
                           hint="add --persistence-encrypt, or drop --passphrase-file")
    fat_size = usb.parse_size(v["fat_size"], "--fat-size") if v["fat_size"] else None
    size = usb.parse_size(v["size"], "--size") if v["size"] else None
    entries = image.MENU + tuple(image.menu_entry(spec, i) for i, spec in enumerate(v["menu_entry"], 1))
    if not source.exists():
        raise CommandError(f"{source} does not exist", hint="give a root directory or an ISO file")
    check_target(target, size, args.force, args.yes, say)
    epoch = config.source_date_epoch()
    passphrase = read_passphrase(v["passphrase_file"], say=say) if encrypt else bytearray()
    try:
        return _write(args, v, source, target, size, persist, pfile, fat_size, entries, keymaps, passphrase,
                      epoch, t0, say)
    finally:
        passphrase[:] = bytes(len(passphrase))     # this copy at least; see docs/PERSISTENCE.md


def _write(args: argparse.Namespace, v: dict[str, Any], source: Path, target: Path, size: int | None,
           persist: int | str | None, pfile: int | None, fat_size: int | None,
           entries: tuple[image.MenuEntry, ...], keymaps: tuple[str, ...], passphrase: bytearray, epoch: int,
           t0: float, say: Callable[[str], None]) -> int:
    encryption = None
    if passphrase:
        encryption = usb.Encryption(passphrase, usb.host_device_mapper(), v["luks_iter_time"],
                                    v["luks_pbkdf_memory"])
    # What the runtime then needs in the image: cryptsetup (and mke2fs when it makes the
    # ext4 on the first open), the keymaps.
    programs = () if encryption is None else ("cryptsetup",) + (() if encryption.format_inside
                                                                 else ("mke2fs",))
    with usb.scratch_dir(v["workdir"]) as tmp:
        work = Path(tmp)
        # the live files, exactly as `liveinit image` puts them on its ISO
        if source.is_dir():
            say(f"packing {source} as `liveinit image` does...")
            from packer.cmd_image import kernel_for
            kernel = kernel_for(source, v["kernel_root"], None, False)
            snap = snapshot.plan(source, work, outputs=(target, work))   # its live copy, as `image` makes it
            result = image.build_image(source, work / "live.iso", kernel,
                                       initrd=v["initrd"], identity=v["identity"],
                                       compression=v["compression"], label=v["label"] or image.DEFAULT_LABEL,
                                       cmdline=v["cmdline"],
                                       console=v["console"], all_root=v["all_root"], workdir=work,
                                       secure_boot=v["secure_boot"], excludes=snap.excludes,
                                       pseudo_file=snap.pseudo_file,
                                       layers=("luks",) if encryption else (), keymap=keymaps,
                                       binaries=tuple(str(blocktools.tool_path(p)) for p in programs
                                                      if p != "cryptsetup"))
            live = usb.live_files_from_iso(result.iso, work)
            base = live.cmdline
        else:
            live = usb.live_files_from_iso(source, work)
            base = " ".join(filter(None, (live.cmdline, v["cmdline"])))
        lacks = usb.initrd_lacks(live.live / Path(image.INITRD_PATH).name, programs, keymaps)
        if lacks:
            raise CommandError(f"the initramfs {'of ' + str(source) if v['initrd'] is None else v['initrd']} "
                               f"lacks {', '.join(lacks)}, which the stick's boot needs",
                               hint="give the root directory as SOURCE (usb packs them), or pack an "
                                    "initramfs with `liveinit pack --with luks --binaries "
                                    "/usr/sbin/mke2fs --keymap NAME` and make the ISO with --initrd")
        label = usb.check_label(v["label"] or live.label)
        efi_work = work / "efi"
        efi_work.mkdir()
        # the kernel on the stick decides, as for the ISO: signed -> shim and the signed GRUB
        loader = image.efi_loader(efi_work, label, epoch, live.live / Path(image.KERNEL_PATH).name,
                                  source if source.is_dir() else None, v["secure_boot"])
        if not loader.signed:
            print(f"warning: {loader.message}", file=sys.stderr)

        disk_size = size if size is not None else usb.target_size(target)
        sizes = ([f.stat().st_size for f in live.files] + [src.stat().st_size for _, src in loader.files]
                 + [BOOT_LOADERS] + ([pfile] if pfile else []))
        layout = usb.plan(disk_size, usb.fat_needed(sizes), fat_size, persist)
        cmdline = " ".join(filter(None, (base, usb.persistence_arg(layout, pfile, encryption is not None),
                                         f"vconsole.keymap={keymaps[0]}" if keymaps else "")))
        config.check_cmdline(cmdline)
        if size is not None and not target.exists():
            with target.open("xb") as f:
                f.truncate(size)

        say(f"building the FAT32 file system '{label}' ({human(layout.fat.size)})...")
        fat = usb.build_fat(work, layout.fat, live, label, cmdline, entries, loader.files, pfile,
                            epoch=epoch)
        mbr = usb.mbr_sector(layout, usb.disk_id_for(live.identity), work)
        header = None
        if encryption is not None and layout.persistence is not None:
            say("making the LUKS2 header (argon2id: takes a few seconds)...")
            header = usb.luks_header(work, layout.persistence.size, encryption)
        regions = usb.write_stick(target, layout, fat, mbr, say=say, luks=header, encryption=encryption)
    say(f"{target}: written and verified ({human(sum(r.length for r in regions))} read back, sha256 equal) "
        f"in {time.monotonic() - t0:.1f} s; label={label} identity={live.identity}")
    say(f"  partition 1: FAT32 {human(layout.fat.size)}: live files, syslinux (BIOS), "
        + (f"UEFI with Secure Boot: {loader.message}" if loader.signed else "unsigned GRUB (UEFI)"))
    if layout.persistence is not None and encryption is not None:
        say(f"  partition 2: LUKS2 '{usb.PERSISTENCE_LABEL}' {human(layout.persistence.size)} (encrypted "
            "persistence; its ext4 " + ("made here)" if encryption.format_inside else
                                        "is made on the first boot: no device-mapper on this host)"))
    elif layout.persistence is not None:
        say(f"  partition 2: ext4 '{usb.PERSISTENCE_LABEL}' {human(layout.persistence.size)} (persistence)")
    elif pfile:
        say(f"  persistence: {usb.PERSISTENCE_IMAGE} ({human(pfile)}) on the FAT")
    return 0
