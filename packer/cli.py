"""The `liveinit` command: one entry point, one subcommand per host task.

Each subcommand lives in its own module, imported only when used, so that
`liveinit ldd` does not pay for QEMU or pyudev. A command module provides
`configure(parser)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys

from packer.errors import CommandError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "pack": ("packer.cmd_pack", "build an initramfs that carries the liveinit runtime"),
    "ldd": ("packer.cmd_ldd", "print the ELF closure of binaries, interpreter included"),
    "modalias": ("packer.cmd_modalias", "print the kernel modules that match modaliases"),
    "ls": ("packer.cmd_archive", "list every segment of an initramfs"),
    "extract": ("packer.cmd_archive", "extract every segment of an initramfs into a directory"),
    "probe": ("packer.cmd_probe", "identify a block device or image file, like blkid -p"),
    "image": ("packer.cmd_image", "build a bootable live ISO / USB image from a root directory"),
    "usb": ("packer.cmd_usb", "write a live USB stick (or disk image) that BIOS and UEFI boot"),
    "verify": ("packer.cmd_verify", "check a live medium (ISO, device, directory) against its SHA256SUMS"),
    "netboot": ("packer.cmd_netboot", "write a network boot tree: PXE for BIOS and UEFI, image over HTTP"),
    "wraith": ("packer.cmd_wraith", "list the files and directories written since boot, by top directory"),
    "demo-root": ("qemu.demoroot", "build the small embedded demo root"),
    "boot": ("qemu.cmd_boot", "boot an image in the QEMU boot lab"),
    "fetch-kernel": ("qemu.testkernel", "fetch and unpack the Debian test kernel into the cache"),
    "capture-sysfs": ("qemu.cmd_capture", "copy the discovery-relevant part of /sys into a fake tree"),
    "bench": ("bench.cmd_bench", "benchmark liveinit against other initramfs generators"),
    "install-hooks": ("packer.cmd_hooks", "install the kernel hooks that pack each new kernel's initramfs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="liveinit", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_module, helptext) in COMMANDS.items():
        sub.add_parser(name, help=helptext, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the global switches and the command name first, then let the
    # command's own module describe the rest.
    top, rest = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[top.command][0])
    cmd_parser = argparse.ArgumentParser(prog=f"liveinit {top.command}",
                                         description=COMMANDS[top.command][1])
    module.configure(cmd_parser, top.command)
    args = cmd_parser.parse_args(rest)
    args.command, args.quiet, args.verbose = top.command, top.quiet, top.verbose
    try:
        return int(module.run(args) or 0)
    except CommandError as e:
        print(f"liveinit {top.command}: error: {e}", file=sys.stderr)
        if e.hint:
            print(f"  hint: {e.hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `liveinit ls IMAGE | head`: the reader left; not an error of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (stdout for the rest of the process)
        return 0


if __name__ == "__main__":
    sys.exit(main())
