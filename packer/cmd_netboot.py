"""`liveinit netboot SOURCE OUTDIR --url URL`: a network boot tree (PXE for
BIOS and UEFI, the image over HTTP) from a root directory or a liveinit ISO.

A root directory is packed exactly as `liveinit image` packs it (the same
settings, excludes and live clean-up: cmd_image.pack_root) into a scratch ISO,
and the tree is made from that ISO: one way to turn a root into a live image."""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from packer import cmd_image, config, netboot, snapshot
from packer.errors import CommandError
from packer.kernel import KernelTree

# `liveinit image`'s table, less what only an ISO has; the same flags and --config keys.
ISO_ONLY = ("output", "label", "menu-entry")
SETTINGS: tuple[config.Setting, ...] = tuple(s for s in cmd_image.SETTINGS if s.name not in ISO_ONLY)
# What an ISO source does not take: its image, initramfs and kernel are reused as they are.
FOR_ANY_SOURCE = ("console", "cmdline", "secure-boot", "workdir")


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("source", type=Path,
                        help="a root filesystem tree (packed as `liveinit image` packs it), or an ISO made "
                             "by `liveinit image`")
    parser.add_argument("outdir", type=Path,
                        help="the tree to write (new, empty, or an earlier netboot tree)")
    parser.add_argument("--url", required=True, help="the HTTP URL OUTDIR will be served under, "
                        "e.g. http://192.168.1.10/netboot (the image is URL/live/filesystem.squashfs)")
    config.add_arguments(parser, SETTINGS)


def from_root(root: Path, outdir: Path, base: str, kernel: KernelTree, v: Mapping[str, Any],
              say: Callable[[str], None] = lambda s: None,
              draw: Callable[[str], None] | None = None) -> netboot.NetbootResult:
    """The tree of root directory `root` booting `kernel`, with the settings `v` (SETTINGS' fields)."""
    netboot.image_url(base)     # a bad --url is refused before the packing, not after
    netboot.prepare(outdir)
    with tempfile.TemporaryDirectory(prefix="liveinit-netboot-", dir=v["workdir"]) as tmp:
        iso = Path(tmp) / "live.iso"
        # the ISO's own UEFI loader is not used: the tree gets its network one
        cmd_image.pack_root(root, iso, kernel, v, say, draw, secure_boot=False)
        return netboot.from_iso(iso, outdir, base, console=v["console"], extra=v["cmdline"],
                                secure_boot=v["secure_boot"], root=root)


def run(args: argparse.Namespace) -> int:
    v: dict[str, Any] = config.values(args, SETTINGS)
    say: Callable[[str], None] = (lambda s: None) if args.quiet else print
    if args.source.is_dir():
        kernel = cmd_image.kernel_for(args.source, v["kernel_root"], v["kver"], v["test_kernel"])
        draw = None if args.quiet else snapshot.terminal_progress()
        result = from_root(args.source, args.outdir, args.url, kernel, v, say, draw)
    else:
        given = [f"--{s.name}" for s in SETTINGS
                 if s.name not in FOR_ANY_SOURCE and v[s.field] and v[s.field] != s.default]
        if given:
            raise CommandError(f"{', '.join(given)}: only for a root directory source; {args.source} is an "
                               "ISO whose kernel, initramfs and image are reused as they are",
                               hint="drop them, or pass the root directory instead of the ISO")
        result = netboot.from_iso(args.source, args.outdir, args.url, console=v["console"],
                                  extra=v["cmdline"], secure_boot=v["secure_boot"])
    if not result.secure_boot:
        print(f"warning: UEFI network boot: {result.efi_loader}", file=sys.stderr)
    say(f"{result.outdir}: {len(result.files)} files, image {result.image_size / 2**20:.1f} MiB "
        f"at {result.image_url}")
    say(f"boot entries: {result.cmdline}")
    if result.secure_boot:
        say(f"UEFI with Secure Boot: {result.efi_loader}")
    say(f"serve it as {result.outdir / netboot.README} says (dnsmasq for TFTP, any HTTP server)")
    return 0
