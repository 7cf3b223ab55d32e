"""`liveinit ls IMAGE` and `liveinit extract IMAGE DIR`: look inside an initramfs.

Both read every segment (an early uncompressed cpio, then compressed ones).
extract behaves like the kernel's unpacker (hard links by inode, data
written through whichever link carries it) but never writes outside DIR:
names with "..", and names that would pass through a symlink, are refused."""
from __future__ import annotations

import argparse
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from packer.cpio import Entry, Segment, read_archive
from packer.errors import CommandError

COPY_MODE_BITS = 0o7777


@dataclass(frozen=True)
class ExtractResult:
    """What extract() did: counts per kind and the entries it skipped, with why."""

    created: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def read_image(path: Path) -> list[Segment]:
    """Read and parse an image file, with user-facing errors."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CommandError(f"cannot read {path}: {e.strerror}",
                           hint="give the path of an initramfs image") from None
    return read_archive(data)


def format_entry(e: Entry) -> str:
    """One `ls -l`-style line: mode, links, uid/gid, size or device numbers, mtime, name."""
    size = f"{e.rdevmajor}, {e.rdevminor}" if e.kind in ("char", "block") else str(e.size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.mtime))
    line = f"{stat.filemode(e.mode)} {e.nlink:>3} {e.uid}/{e.gid} {size:>10} {when} {e.name}"
    if e.target is not None:
        line += f" -> {e.target}"
    elif e.kind == "file" and e.nlink > 1:
        line += f"  [hard link, inode {e.ino}]"
    return line


def format_listing(segments: list[Segment]) -> list[str]:
    """The lines `liveinit ls` prints."""
    lines: list[str] = []
    for i, seg in enumerate(segments):
        total = sum(e.size for e in seg.entries)
        lines.append(f"segment {i}: {seg.compression} at offset {seg.offset}, "
                     f"{len(seg.entries)} entries, {total} bytes")
        lines.extend("  " + format_entry(e) for e in seg.entries)
    return lines


def _safe_name(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise CommandError(f"refusing archive entry {name!r}: it would escape the target directory",
                           hint="the image is malicious or corrupt; nothing was extracted")
    return parts


def _parent(dest: Path, parts: list[str]) -> Path:
    """The real directory that will hold `parts[-1]`, creating missing ones.

    Refuses to pass through a symlink: an archive could otherwise plant
    `lib -> /etc` and then write `lib/passwd` outside DEST."""
    d = dest
    for p in parts[:-1]:
        d = d / p
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.mkdir(d, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise CommandError(f"refusing to extract {'/'.join(parts)!r}: {d} is not a directory "
                               f"(a symlink would lead outside the target)")
    return d


def _clear(path: Path, keep_dir: bool) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        os.rmdir(path)
    else:
        os.unlink(path)


def extract(segments: list[Segment], dest: Path, make_nodes: bool | None = None) -> ExtractResult:
    """Extract every segment into `dest`, later segments overwriting earlier ones like the kernel.

    Device nodes and fifos are made only when `make_nodes` (default: running
    as root); otherwise they are reported as skipped."""
    if make_nodes is None:
        make_nodes = os.geteuid() == 0
    is_root = os.geteuid() == 0
    for seg in segments:
        for e in seg.entries:
            _safe_name(e.name)  # refuse before writing anything
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    created, skipped = 0, []
    dir_modes: list[tuple[Path, int, int]] = []
    for seg in segments:
        links: dict[tuple[int, int, int, int], Path] = {}
        for e in seg.entries:
            parts = _safe_name(e.name)
            path = _parent(dest, parts) / parts[-1]
            kind = e.kind
            if kind == "dir":
                _clear(path, keep_dir=True)
                if not path.is_dir():
                    os.mkdir(path, 0o700)
                dir_modes.append((path, e.mode, e.mtime))
            elif kind == "file":
                key = (e.devmajor, e.devminor, e.ino, e.mode)
                first = links.get(key) if e.nlink >= 2 else None
                _clear(path, keep_dir=False)
                if first is not None:
                    os.link(first, path)
                    flags = os.O_WRONLY
                else:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_EXCL
                    if e.nlink >= 2:
                        links[key] = path
                fd = os.open(path, flags | os.O_NOFOLLOW, 0o600)
                try:
                    if e.size:
                        os.ftruncate(fd, e.size)
                        view = memoryview(e.data)
                        while view:
                            view = view[os.write(fd, view):]
                    if is_root:  # before chmod: chown clears set-id bits
                        os.fchown(fd, e.uid, e.gid)
                    os.fchmod(fd, stat.S_IMODE(e.mode))
                finally:
                    os.close(fd)
            elif kind == "symlink":
                _clear(path, keep_dir=False)
                os.symlink(e.target or "", path)
            elif kind in ("char", "block", "fifo"):
                if not make_nodes:
                    skipped.append((e.name, f"{kind} node not made " + (
                        "(nodes were switched off)" if is_root else "(only root can make it)")))
                    continue
                _clear(path, keep_dir=False)
                os.mknod(path, e.mode, os.makedev(e.rdevmajor, e.rdevminor))
                os.chown(path, e.uid, e.gid)
                os.chmod(path, stat.S_IMODE(e.mode))
            else:
                skipped.append((e.name, f"unsupported type {kind}"))
                continue
            if is_root and kind == "symlink":
                os.lchown(path, e.uid, e.gid)
            if kind != "dir":
                os.utime(path, (e.mtime, e.mtime), follow_symlinks=False)
            created += 1
    # Directory modes and times last: a 0o555 dir must still accept its children.
    for path, mode, mtime in reversed(dir_modes):
        if is_root:
            os.lchown(path, 0, 0)
        os.chmod(path, stat.S_IMODE(mode))
        os.utime(path, (mtime, mtime))
    return ExtractResult(created, skipped)


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("image", type=Path, help="initramfs image file")
    if command == "extract":
        parser.add_argument("dest", type=Path, help="directory to extract into (created if missing)")
        parser.add_argument("--no-nodes", action="store_true",
                            help="skip device nodes and fifos even when running as root")


def run(args: argparse.Namespace) -> int:
    segments = read_image(args.image)
    if args.command == "ls":
        print("\n".join(format_listing(segments)))
        return 0
    make_nodes = False if args.no_nodes else None
    result = extract(segments, args.dest, make_nodes)
    for name, why in result.skipped:
        print(f"skipped {name}: {why}")
    if not args.quiet:
        print(f"extracted {result.created} entries from {len(segments)} segment(s) into {args.dest}"
              + (f", skipped {len(result.skipped)}" if result.skipped else ""))
    return 0
