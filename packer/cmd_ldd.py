"""`liveinit ldd FILE...`: the ELF closure of binaries, as `ldd` resolves it.

Prints the absolute paths of the interpreter and every library, sorted and
unique, one per line (the paths as ldd prints them). A static binary adds
nothing. With --files, prints every file an image needs instead: each symlink
met on the way (file or directory) and each final file. With --root, FILEs,
conf files and symlinks are read inside that root; paths printed are inside it."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from packer.elf import resolve


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="ELF executables or shared libraries")
    parser.add_argument("--root", type=Path, default=Path("/"),
                        help="resolve inside this root directory (e.g. a debootstrap tree)")
    parser.add_argument("--files", dest="list_files", action="store_true",
                        help="print every file to copy into an image (symlinks and their targets)")


def in_root(file: str, root: Path) -> Path:
    """FILE as a path inside root; a host path under root is accepted too."""
    prefix = os.path.realpath(root)
    if prefix != "/" and os.path.isabs(file):
        real = os.path.abspath(file)
        if real == prefix or real.startswith(prefix + "/"):
            return Path("/" + os.path.relpath(real, prefix))
    return Path(file)


def run(args: argparse.Namespace) -> int:
    closure = resolve([in_root(f, args.root) for f in args.files], root=args.root)
    lines = closure.files if args.list_files else closure.paths
    try:
        sys.stdout.write("".join(f"{path}\n" for path in lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # `liveinit ldd ... | head`: the reader is gone, which is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
