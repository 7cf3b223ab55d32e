"""`liveinit verify ISO|DEVICE|DIR`: check a live medium against its SHA256SUMS."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("target", type=Path, help="an ISO, a device (/dev/sdb, /dev/sr0) or a directory")


def run(args: argparse.Namespace) -> int:
    from packer.verify import verify
    res = verify(args.target, None if args.quiet else lambda line: print(line, file=sys.stderr))
    for line in res.lines():
        print(line)
    if not res.ok:
        print(f"{args.target}: {len(res.bad)} of {res.files + len(res.bad)} files are damaged or missing",
              file=sys.stderr)
    return 0 if res.ok else 1
