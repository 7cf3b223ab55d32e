"""`liveinit capture-sysfs`: copy the discovery-relevant part of a sysfs tree.

The copy is what liveinit's coldplug and block scan read, nothing more: per
device the modalias, uevent, PCI ids, block numbers and flags, the driver
link; the /sys/bus, /sys/class/block and /sys/block symlinks; the names in
/sys/module. Small text files and relative symlinks, so a tree captured on
one machine replays on another (tests/data/sysfs/*)."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from packer.errors import CommandError

# Files copied from every device directory.
FILES = frozenset(("modalias", "uevent", "vendor", "device", "subsystem_vendor", "subsystem_device",
                   "class", "dev", "size", "removable", "ro", "partition", "start", "backing_file"))
# /sys/devices/virtual holds thousands of class devices (tty, mem, net...): only block matters.
VIRTUAL_KEEP = ("block",)
MAX_FILE = 4096


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--root", default="/", type=Path,
                        help="the machine root whose sys/ is captured (default /)")
    parser.add_argument("--force", action="store_true", help="replace DEST if it exists")
    parser.add_argument("dest", type=Path, help="directory to write (DEST/sys/...)")


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE)
    except OSError:  # write-only or erroring attributes
        return None


def _link(src: str, dst: Path) -> None:
    try:
        target = os.readlink(src)
    except OSError:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.is_symlink():
        os.symlink(target, dst)


def capture(sysroot: Path, dest: Path) -> int:
    """Copy from sysroot (a /sys) into dest (DEST/sys); returns the number of entries written."""
    count = 0
    devices = sysroot / "devices"
    for dirpath, dirnames, filenames in os.walk(devices):
        rel = os.path.relpath(dirpath, sysroot)
        if rel == "devices/virtual":
            dirnames[:] = [d for d in dirnames if d in VIRTUAL_KEEP]
        dirnames.sort()
        # os.walk lists symlinked dirs (driver, subsystem, device) in dirnames: never follow them.
        for name in list(dirnames):
            if os.path.islink(os.path.join(dirpath, name)):
                dirnames.remove(name)
                if name == "driver":
                    _link(os.path.join(dirpath, name), dest / rel / name)
                    count += 1
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            if name == "driver" and os.path.islink(p):
                _link(p, dest / rel / name)
                count += 1
            elif name in FILES and not os.path.islink(p):
                data = _read(p)
                if data is None:
                    continue
                out = dest / rel / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(data)
                count += 1
    for group in ("class/block", "block"):
        entries = os.scandir(sysroot / group) if (sysroot / group).is_dir() else ()
        for entry in sorted(entries, key=lambda d: d.name):
            _link(entry.path, dest / group / entry.name)
            count += 1
    bus = sysroot / "bus"
    for b in sorted(os.listdir(bus)) if bus.is_dir() else ():
        for sub, pick in (("devices", None), ("drivers", "module")):
            base = bus / b / sub
            if not base.is_dir():
                continue
            for e in sorted(os.listdir(base)):
                src = base / e if pick is None else base / e / pick
                if os.path.islink(src):
                    _link(str(src), dest / os.path.relpath(src, sysroot))
                    count += 1
    module = sysroot / "module"
    for name in sorted(os.listdir(module)) if module.is_dir() else ():
        (dest / "module" / name).mkdir(parents=True, exist_ok=True)
        count += 1
    return count


def run(args: argparse.Namespace) -> int:
    sysroot = args.root / "sys"
    if not (sysroot / "devices").is_dir():
        raise CommandError(f"{sysroot} has no devices/ directory: not a sysfs tree",
                           hint="pass --root pointing at a machine root (or a captured tree) "
                                "that contains sys/")
    if args.dest.exists():
        if not args.force and any(args.dest.iterdir()):
            raise CommandError(f"{args.dest} exists and is not empty", hint="use --force to replace it")
        shutil.rmtree(args.dest)
    n = capture(sysroot, args.dest / "sys")
    if not args.quiet:
        print(f"captured {n} entries from {sysroot} into {args.dest / 'sys'}")
    return 0
