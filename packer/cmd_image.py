"""`liveinit image ROOT --output X.iso`: a bootable live ISO of a root tree."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packer import image
from packer.errors import CommandError
from packer.kernel import KernelTree


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("root", type=Path, help="root filesystem tree to put on the medium")
    parser.add_argument("-o", "--output", type=Path, required=True, help="ISO file to write")
    parser.add_argument("--initrd", type=Path, help="prebuilt initramfs; the medium gets the identity "
                        "its /init carries (default: pack one with the liveinit packer)")
    parser.add_argument("--kernel-root", type=Path, help="unpacked kernel package (boot/vmlinuz-KVER, "
                        "lib/modules/KVER); default: the fetched Debian test kernel")
    parser.add_argument("--identity", help="identity string of the medium (default: the one in "
                        "--initrd's /init, else derived from the squashfs and the kernel version); "
                        "required for an --initrd that is not a liveinit initramfs")
    parser.add_argument("--compression", choices=list(image.SquashfsCompression),
                        default=image.SquashfsCompression.ZSTD,
                        help=f"squashfs compression (default {image.SquashfsCompression.ZSTD})")
    parser.add_argument("--label", default=image.DEFAULT_LABEL, help="ISO volume label")
    parser.add_argument("--cmdline", default="", help="extra kernel parameters for every menu entry")
    parser.add_argument("--console", default=image.DEFAULT_CONSOLE,
                        help=f"console parameters (default {image.DEFAULT_CONSOLE!r})")
    parser.add_argument("--all-root", action="store_true",
                        help="make every file in the squashfs owned by root (for a tree built by an "
                             "unprivileged user; default: keep owners, groups and setuid/setgid bits "
                             "as in ROOT)")
    parser.add_argument("--no-secure-boot", dest="secure_boot", action="store_false",
                        help="UEFI boots an unsigned GRUB even when a signed shim and GRUB are found "
                             "(default: the signed chain when the kernel is signed; docs/SECUREBOOT.md)")


def _kernel(root: Path | None) -> KernelTree:
    if root is None:
        from qemu.testkernel import fetch_kernel
        return fetch_kernel()
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise CommandError(f"no boot/vmlinuz-* under {root}", hint="pass an unpacked linux-image package")
    return KernelTree(vmlinuz[-1].name.removeprefix("vmlinuz-"), root)


def run(args: argparse.Namespace) -> int:
    result = image.build_image(args.root, args.output, _kernel(args.kernel_root), initrd=args.initrd,
                               identity=args.identity, compression=args.compression, label=args.label,
                               cmdline=args.cmdline, console=args.console, all_root=args.all_root,
                               secure_boot=args.secure_boot)
    if not result.secure_boot:
        print(f"warning: {result.efi_loader}", file=sys.stderr)
    if not args.quiet:
        print(f"{result.iso}: {result.iso_size / 2**20:.1f} MiB "
              f"(squashfs {result.squashfs_size / 2**20:.1f} MiB)"
              f" label={result.label} identity={result.identity}")
        if result.secure_boot:
            print(f"UEFI with Secure Boot: {result.efi_loader}")
    return 0
