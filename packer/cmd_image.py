"""`liveinit image ROOT --output X.iso`: a bootable live ISO of a root tree, `/` included.

The same path for the running system (`liveinit image /`) and any other root: one file
system, the default and the user's excludes, the live clean-up of the copy and the
root's own kernel (packer/snapshot.py); then the squashfs, initramfs and ISO
(packer/image.py). `liveinit netboot` makes its image of a root through `pack_root` too."""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packer import config, image, snapshot
from packer.config import Kind
from packer.errors import CommandError
from packer.kernel import KernelTree
from packer.progress import human

# One table feeds the flags and the TOML config file (--config), as for `pack` and `usb`.
SETTINGS: tuple[config.Setting, ...] = (
    config.Setting("output", Kind.PATH, None, "ISO file to write", short="-o", metavar="FILE"),
    config.Setting("kernel-root", Kind.PATH, None, "unpacked kernel package (boot/vmlinuz-KVER, "
                   "lib/modules/KVER); default: the root's own newest kernel", metavar="DIR"),
    config.Setting("kver", Kind.STR, None, "which of the root's kernels (default: the newest with its "
                   "modules)", metavar="KVER"),
    config.Setting("test-kernel", Kind.BOOL, False, "boot the fetched Debian test kernel (the demo's and "
                   "the lab's) instead of the root's own"),
    config.Setting("initrd", Kind.PATH, None, "prebuilt initramfs; the medium gets the identity its /init "
                   "carries (default: pack one with the liveinit packer)", metavar="FILE"),
    config.Setting("identity", Kind.STR, None, "identity string of the medium (default: the one in "
                   "--initrd's /init, else derived from the squashfs and the kernel version)", metavar="ID"),
    config.Setting("compression", Kind.CHOICE, image.SquashfsCompression.ZSTD.value, "squashfs compression",
                   choices=tuple(image.SquashfsCompression)),
    config.Setting("label", Kind.STR, image.DEFAULT_LABEL, "ISO volume label", metavar="LABEL"),
    config.Setting("cmdline", Kind.STR, "", "extra kernel parameters for every menu entry", metavar="TEXT"),
    config.Setting("console", Kind.STR, image.DEFAULT_CONSOLE, "console parameters", metavar="TEXT"),
    config.Setting("menu-entry", Kind.LIST, (), "an extra boot menu entry 'TITLE=kernel parameters' "
                   "(repeatable)", metavar="'TITLE=PARAMS'"),
    config.Setting("all-root", Kind.BOOL, False, "make every file in the squashfs owned by root (for a "
                   "tree built by an unprivileged user; default: keep owners and setuid/setgid bits)"),
    config.Setting("secure-boot", Kind.BOOL, True, "UEFI boots through the signed chain (shim, signed "
                   "GRUB) when the kernel is signed and one is found (docs/SECUREBOOT.md)"),
    config.Setting("include-mount", Kind.LIST, (), "also pack this mount point below ROOT (repeatable; "
                   "default: one file system, other mounts stay empty directories)", metavar="DIR"),
    config.Setting("exclude", Kind.LIST, (), "leave out what this mksquashfs wildcard matches, relative "
                   "to ROOT ('... NAME' at any depth; repeatable)", metavar="PATTERN"),
    config.Setting("exclude-from", Kind.LIST, (), "leave out the patterns in FILE, one a line",
                   metavar="FILE"),
    config.Setting("hostname", Kind.STR, None, "the live system's hostname (/etc/hostname, /etc/hosts)",
                   metavar="NAME"),
    config.Setting("keep-identity", Kind.BOOL, False, "keep the host's fstab disk entries, machine-id and "
                   "ssh host keys in the copy (default: disabled, emptied, left out)"),
    config.Setting("writable-from", Kind.PATH, None, "a `liveinit wraith` list: the paths the bind method "
                   "(union=bind, the fallback without overlayfs) makes writable, instead of /etc, /var, "
                   "/tmp, /root and /home", metavar="FILE"),
    config.Setting("workdir", Kind.PATH, None, "directory for scratch files (the squashfs is built there)",
                   metavar="DIR"),
)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("root", type=Path, help="root filesystem tree to put on the medium (/ for the "
                        "running system)")
    config.add_arguments(parser, SETTINGS)


def kernel_for(root: Path, kernel_root: Path | None, kver: str | None, test_kernel: bool) -> KernelTree:
    """The kernel a medium of `root` boots (also `liveinit usb`'s): --kernel-root's, the
    test kernel, or the root's own (packer.snapshot.root_kernel)."""
    if test_kernel:
        from qemu.testkernel import fetch_kernel
        return fetch_kernel()
    if kernel_root is not None:
        return snapshot.root_kernel(kernel_root, kver)
    return snapshot.root_kernel(root, kver)


@dataclass(frozen=True)
class Packed:
    """A live ISO of a root (`pack_root`) and what its copy took."""

    result: image.ImageResult
    plan: snapshot.Plan


def pack_root(root: Path, output: Path, kernel: KernelTree, v: Mapping[str, Any],
              say: Callable[[str], None], draw: Callable[[str], None] | None,
              entries: tuple[image.MenuEntry, ...] = image.MENU, label: str = image.DEFAULT_LABEL,
              secure_boot: bool | None = None) -> Packed:
    """The live ISO of `root` at `output`, made as `liveinit image` makes it: the
    snapshot's excludes and live clean-up (packer.snapshot.plan) from the settings
    `v` (SETTINGS' fields but the ISO's own: output, label, menu-entry, which are
    `output`, `label` and `entries`), then packer.image; files changed meanwhile are warned
    about. `draw`: mksquashfs' progress line (None: none). `secure_boot`
    overrides the setting (None: `v`'s)."""
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory", hint="pass the root filesystem tree to put on the "
                           "medium (/ for the running system)")
    with tempfile.TemporaryDirectory(prefix="liveinit-snapshot-", dir=v["workdir"]) as tmp:
        work = Path(tmp)
        plan = snapshot.plan(root, work, outputs=(output, work),
                             include_mounts=tuple(Path(p) for p in v["include_mount"]),
                             exclude=tuple(v["exclude"]),
                             exclude_from=tuple(Path(p) for p in v["exclude_from"]),
                             hostname=v["hostname"], keep_identity=v["keep_identity"],
                             writable_from=v["writable_from"])
        for line in plan.cleanup:
            say(f"live copy: {line}")
        say(f"packing {root}: {plan.files} files, {human(plan.bytes_in)} (kernel {kernel.version})")
        progress = snapshot.ProgressLine(plan.bytes_in, draw) if draw else None
        start_ns = time.time_ns()
        result = image.build_image(root, output, kernel, initrd=v["initrd"], identity=v["identity"],
                                   compression=v["compression"], label=label, cmdline=v["cmdline"],
                                   console=v["console"], all_root=v["all_root"], workdir=work,
                                   secure_boot=v["secure_boot"] if secure_boot is None else secure_boot,
                                   excludes=plan.excludes, pseudo_file=plan.pseudo_file, progress=progress,
                                   entries=entries)
        changed = snapshot.changed_since(root, plan.excludes, start_ns)
    if changed:
        print(f"warning: {len(changed)} files changed while they were packed (the copy may hold the old, "
              "the new or a torn version; stop what writes them, or --exclude them):", file=sys.stderr)
        for c in changed:
            print(f"  {c.path}: {c.why}", file=sys.stderr)
    return Packed(result, plan)


def run(args: argparse.Namespace) -> int:
    v: dict[str, Any] = config.values(args, SETTINGS)
    root: Path = args.root
    if v["output"] is None:
        raise CommandError("no output file", hint="pass --output FILE.iso (or `output` in the --config file)")
    if not root.is_dir():
        raise CommandError(f"{root} is not a directory", hint="pass the root filesystem tree to put on the "
                           "medium (/ for the running system)")
    say = (lambda s: None) if args.quiet else print
    entries = image.MENU + tuple(image.menu_entry(spec, i) for i, spec in enumerate(v["menu_entry"], 1))
    kernel = kernel_for(root, v["kernel_root"], v["kver"], v["test_kernel"])
    t0 = time.monotonic()
    draw = None if args.quiet else snapshot.terminal_progress()
    packed = pack_root(root, v["output"], kernel, v, say, draw, entries, v["label"])
    result, plan = packed.result, packed.plan
    if not result.secure_boot:
        print(f"warning: {result.efi_loader}", file=sys.stderr)
    say(f"{result.iso}: {human(result.iso_size)} in {time.monotonic() - t0:.1f} s: {plan.files} files, "
        f"{human(plan.bytes_in)} in, squashfs {human(result.squashfs_size)}; "
        f"label={result.label} identity={result.identity} kernel={kernel.version}")
    if result.secure_boot:
        say(f"UEFI with Secure Boot: {result.efi_loader}")
    return 0
