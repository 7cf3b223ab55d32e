"""`liveinit boot IMAGE --profile NAME`: boot an image in the QEMU lab."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from liveinit.contract import DEMO_OK
from packer.errors import CommandError
from qemu import lab, profiles


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("image", type=Path, nargs="?",
                        help="live ISO (or disk image) to boot, or an initramfs (booted directly "
                             "with --kernel, default the fetched test kernel)")
    parser.add_argument("--profile", default="ide-cd", help="machine profile (default ide-cd); "
                        "see --list-profiles; STORAGE+FIRMWARE also works, e.g. nvme+uefi")
    parser.add_argument("--list-profiles", action="store_true", help="list the profiles and exit")
    parser.add_argument("--append", default="", help="extra kernel parameters (direct kernel boot)")
    parser.add_argument("--kernel", type=Path, help="kernel image for direct boot (default: from the ISO)")
    parser.add_argument("--initrd", type=Path, help="initramfs for direct boot (default: from the ISO)")
    parser.add_argument("--timeout", type=float, default=lab.DEFAULT_TIMEOUT_S,
                        help=f"seconds before giving up (default {lab.DEFAULT_TIMEOUT_S:.0f})")
    parser.add_argument("--success", default=lab.DEFAULT_SUCCESS,
                        help="regex of the console line that means success "
                             f"(default {lab.DEFAULT_SUCCESS!r})")
    parser.add_argument("--disk", type=Path, action="append", default=[],
                        help="extra writable virtio disk (e.g. a persistence partition); repeatable")
    parser.add_argument("--memory", type=int, default=lab.DEFAULT_MEMORY_MIB, help="guest RAM in MiB")
    parser.add_argument("--log", type=Path, help="keep the console log in this file (otherwise "
                        "nothing is left behind)")
    parser.add_argument("--interactive", action="store_true",
                        help="attach the console to this terminal and do not power off "
                             "(Ctrl-A X quits QEMU)")


def list_profiles() -> str:
    rows = [f"{'profile':<14} {'machine':<7} {'firmware':<8} description"]
    for name in profiles.names():
        p = profiles.profile(name)
        rows.append(f"{name:<14} {p.storage.machine:<7} {p.firmware:<8} {p.storage.description}"
                    + ("" if p.direct else f"; {p.firmware.description}"))
    return "\n".join(rows)


def success_pattern(text: str) -> re.Pattern[str]:
    """--success compiled, or a CommandError naming the bad pattern."""
    try:
        return re.compile(text)
    except re.error as e:
        raise CommandError(f"--success {text!r} is not a valid regular expression: {e}",
                           hint="escape regex characters, e.g. --success 'login: \\(' or use a "
                                f"plain word such as --success {DEMO_OK}") from None


def is_initramfs(path: Path) -> bool:
    """True when `path` starts like an initramfs: a newc cpio archive, plain or
    compressed (packer.compress.detect); an ISO or disk image does not."""
    from packer.compress import detect
    with path.open("rb") as f:
        return detect(f.read(16)) is not None


def run(args: argparse.Namespace) -> int:
    if args.list_profiles:
        print(list_profiles())
        return 0
    success = success_pattern(args.success)
    if args.image is None and args.kernel is None:
        raise CommandError("nothing to boot", hint="pass an ISO (liveinit image), an initramfs, "
                           "or --kernel and --initrd")
    if args.image is not None and not args.image.is_file():
        raise CommandError(f"{args.image} not found",
                           hint="build it with `liveinit image ROOT --output X.iso`")
    try:
        prof = profiles.profile(args.profile)
    except KeyError as e:
        raise CommandError(str(e.args[0]), hint="liveinit boot --list-profiles") from None
    if args.image is not None and is_initramfs(args.image):
        # An initramfs, not a medium: boot it directly, like --initrd.
        if args.initrd is not None:
            raise CommandError(f"{args.image} is an initramfs and --initrd {args.initrd} is another one",
                               hint="pass only one initramfs")
        if not prof.direct:
            raise CommandError(f"{args.image} is an initramfs: the firmware profile {prof.name} needs a "
                               "bootable medium (an ISO)",
                               hint="use a storage profile (direct kernel boot), e.g. --profile virtio-blk, "
                                    "or build an ISO with `liveinit image ROOT --initrd FILE`")
        args.initrd, args.image = args.image, None
        if args.kernel is None:
            from qemu.testkernel import fetch_kernel
            args.kernel = fetch_kernel().vmlinuz
    if args.image is None and (args.initrd is None or not prof.direct):
        raise CommandError("nothing to boot: " + ("no initramfs (--initrd) for --kernel" if prof.direct
                                                  else f"the firmware profile {prof.name} needs an ISO"),
                           hint="pass an ISO (liveinit image) or an initramfs")
    for what, path in (("--kernel", args.kernel), ("--initrd", args.initrd)):
        if path is not None and not Path(path).is_file():
            raise CommandError(f"{what} {path} not found", hint="check the path")
    if not prof.direct and (args.append or args.kernel or args.initrd):
        print(f"liveinit boot: note: {prof.name} boots through the firmware and the ISO's menu; "
              "--append/--kernel/--initrd only apply to direct kernel boots", file=sys.stderr)
    result = lab.boot(args.profile, kernel=args.kernel, initrd=args.initrd, image=args.image,
                      cmdline=args.append, timeout=args.timeout, success=success,
                      poweroff=not args.interactive, disks=tuple(args.disk), memory=args.memory,
                      log_path=args.log, echo=None if (args.quiet or args.interactive) else sys.stdout,
                      interactive=args.interactive)
    print(result.summary())
    if args.log is None and not result.success and args.quiet:
        print(result.console[-2000:], file=sys.stderr, end="")
        print("liveinit boot: rerun with --log FILE to keep the whole console log", file=sys.stderr)
    return 0 if result.success else 1
