"""`liveinit install-hooks`: the kernel hooks that pack each installed kernel's
initramfs (what they do, and how they live with initramfs-tools and dracut:
packer/hooks.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from packer import hooks
from packer.errors import CommandError


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                        help="install into the system rooted at DIR, e.g. a chroot (default: /)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_true",
                      help="make liveinit the generator: set initramfs-tools' and dracut's kernel hooks "
                           "aside (dpkg-divert --local; --restore brings them back)")
    mode.add_argument("--restore", action="store_true",
                      help="undo --replace and keep liveinit's hooks (its image goes beside the others')")
    mode.add_argument("--remove", action="store_true", help="undo --replace and remove liveinit's hooks")


def run(args: argparse.Namespace) -> int:
    root: Path = args.root
    if not root.is_dir():
        raise CommandError(f"--root {root} is not a directory", hint="give the root of the target system")
    if args.remove:
        done = hooks.remove(root)
    elif args.restore:
        done = hooks.restore(root)
    else:
        done = hooks.install(root)
        if args.replace:
            done += hooks.replace(root)
    if not args.quiet:
        for line in done or ["nothing to do: already in place"]:
            print(line)
        if not args.remove:
            other = hooks.other_generator(root)
            print(f"/boot/{hooks.DEBIAN_IMAGE}KVER is made by {other}; liveinit's image is "
                  f"/boot/{hooks.SIDE_IMAGE}KVER (--replace makes liveinit the generator)" if other else
                  f"/boot/{hooks.DEBIAN_IMAGE}KVER is made by liveinit, with the settings of {hooks.CONFIG}")
    return 0
