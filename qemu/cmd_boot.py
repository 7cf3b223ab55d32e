"""`liveinit boot IMAGE --profile NAME`: boot an image in the QEMU lab."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packer.cli import CommandError
from qemu import lab, profiles


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("image", type=Path, nargs="?", help="live ISO (or disk image) to boot")
    parser.add_argument("--profile", default="ide-cd", help="machine profile (default ide-cd); "
                        "see --list-profiles; STORAGE+FIRMWARE also works, e.g. nvme+uefi")
    parser.add_argument("--list-profiles", action="store_true", help="list the profiles and exit")
    parser.add_argument("--append", default="", help="extra kernel parameters (direct kernel boot)")
    parser.add_argument("--kernel", type=Path, help="kernel image for direct boot (default: from the ISO)")
    parser.add_argument("--initrd", type=Path, help="initramfs for direct boot (default: from the ISO)")
    parser.add_argument("--timeout", type=float, default=lab.DEFAULT_TIMEOUT_S,
                        help=f"seconds before giving up (default {lab.DEFAULT_TIMEOUT_S:.0f})")
    parser.add_argument("--success", default=lab.DEFAULT_SUCCESS,
                        help=f"regex of the console line that means success (default {lab.DEFAULT_SUCCESS!r})")
    parser.add_argument("--disk", type=Path, action="append", default=[],
                        help="extra writable virtio disk (e.g. a persistence partition); repeatable")
    parser.add_argument("--memory", type=int, default=lab.DEFAULT_MEMORY_MIB, help="guest RAM in MiB")
    parser.add_argument("--log", type=Path, help="keep the console log in this file")
    parser.add_argument("--interactive", action="store_true",
                        help="attach the console to this terminal and do not power off "
                             "(Ctrl-A X quits QEMU)")


def list_profiles() -> str:
    rows = [f"{'profile':<14} {'machine':<7} {'firmware':<8} description"]
    for name in profiles.names():
        p = profiles.profile(name)
        rows.append(f"{name:<14} {p.storage.machine:<7} {p.firmware.name:<8} {p.storage.description}"
                    + ("" if p.direct else f"; {p.firmware.description}"))
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    if args.list_profiles:
        print(list_profiles())
        return 0
    if args.image is None and args.kernel is None:
        raise CommandError("nothing to boot", hint="pass an ISO (liveinit image) or --kernel and --initrd")
    if args.image is not None and not args.image.is_file():
        raise CommandError(f"{args.image} not found", hint="build it with `liveinit image ROOT --output X.iso`")
    try:
        prof = profiles.profile(args.profile)
    except KeyError as e:
        raise CommandError(str(e.args[0]), hint="liveinit boot --list-profiles")
    if not prof.direct and (args.append or args.kernel or args.initrd):
        print(f"liveinit boot: note: {prof.name} boots through the firmware and the ISO's menu; "
              "--append/--kernel/--initrd only apply to direct kernel boots", file=sys.stderr)
    result = lab.boot(args.profile, kernel=args.kernel, initrd=args.initrd, image=args.image,
                      cmdline=args.append, timeout=args.timeout, success=args.success,
                      poweroff=not args.interactive, disks=tuple(args.disk), memory=args.memory,
                      log_path=args.log, echo=None if (args.quiet or args.interactive) else sys.stdout,
                      interactive=args.interactive)
    print(result.summary())
    if args.log is None and not result.success:
        print(f"console log: {result.log_path}", file=sys.stderr)
    return 0 if result.success else 1
