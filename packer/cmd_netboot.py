"""`liveinit netboot SOURCE OUTDIR --url URL`: a network boot tree (PXE for
BIOS and UEFI, the image over HTTP) from a root directory or a liveinit ISO."""
from __future__ import annotations

import argparse
from pathlib import Path

from packer import image, netboot
from packer.cmd_image import kernel_for


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("source", type=Path,
                        help="a root filesystem tree, or an ISO made by `liveinit image`")
    parser.add_argument("outdir", type=Path,
                        help="the tree to write (new, empty, or an earlier netboot tree)")
    parser.add_argument("--url", required=True, help="the HTTP URL OUTDIR will be served under, "
                        "e.g. http://192.168.1.10/netboot (the image is URL/live/filesystem.squashfs)")
    parser.add_argument("--kernel-root", type=Path, help="unpacked kernel package (root source only; "
                        "default: the root's own newest kernel)")
    parser.add_argument("--kver", help="which of the root's kernels (default: the newest with its modules)")
    parser.add_argument("--test-kernel", action="store_true",
                        help="boot the fetched Debian test kernel (the demo's) instead of the root's own")
    parser.add_argument("--initrd", type=Path,
                        help="prebuilt initramfs (root source only; default: pack one)")
    parser.add_argument("--identity", help="identity of the image (root source only)")
    parser.add_argument("--compression", choices=list(image.SquashfsCompression),
                        default=image.SquashfsCompression.ZSTD,
                        help="squashfs compression (root source only)")
    parser.add_argument("--all-root", action="store_true", help="every file in the squashfs owned by root")
    parser.add_argument("--console", default=netboot.DEFAULT_CONSOLE, help="console parameters")
    parser.add_argument("--cmdline", default="", help="extra kernel parameters for the boot entries")


def run(args: argparse.Namespace) -> int:
    if args.source.is_dir():
        kernel = kernel_for(args.source, args.kernel_root, args.kver, args.test_kernel)
        result = netboot.from_root(args.source, args.outdir, kernel, args.url,
                                   initrd=args.initrd, identity=args.identity, compression=args.compression,
                                   all_root=args.all_root, console=args.console, extra=args.cmdline)
    else:
        result = netboot.from_iso(args.source, args.outdir, args.url, console=args.console,
                                  extra=args.cmdline)
    if not args.quiet:
        print(f"{result.outdir}: {len(result.files)} files, image {result.image_size / 2**20:.1f} MiB "
              f"at {result.image_url}")
        print(f"boot entries: {result.cmdline}")
        print(f"serve it as {result.outdir / netboot.README} says (dnsmasq for TFTP, any HTTP server)")
    return 0
