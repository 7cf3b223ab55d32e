"""`liveinit wraith [ROOT]`: the files and directories written since boot, by top directory."""
from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from packer import wraith
from packer.errors import CommandError
from packer.progress import human


def parse_time(text: str) -> float:
    """Seconds since the epoch ('1733560000', '@1733560000.5') or an ISO date ('2026-12-07T08:00')."""
    try:
        return float(text.removeprefix("@"))
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise CommandError(f"--since {text!r} is not a time",
                           hint="give seconds since 1970 (e.g. $(date +%s)) or an ISO date, "
                                "e.g. 2026-12-07T08:00") from None


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("root", type=Path, nargs="?", default=Path("/"),
                        help="the running system's root (default /); mounts below it are not entered")
    parser.add_argument("--since", metavar="TIME",
                        help="list what changed after TIME (default: the boot time, /proc/stat btime)")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write the list here (for `liveinit image --writable-from FILE`), "
                             "not to stdout")


def run(args: argparse.Namespace) -> int:
    since = parse_time(args.since) if args.since else wraith.boot_time()
    groups = wraith.wraith(args.root, since)
    text = wraith.render(groups)
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    if not args.quiet and (args.output or not sys.stdout.isatty()):
        total = sum(len(g.paths) for g in groups)
        when = datetime.fromtimestamp(since).isoformat(timespec="seconds")
        print(f"{total} paths written in {args.root} since {when}, "
              f"{human(sum(g.size for g in groups))} in files", file=sys.stderr)
    return 0
