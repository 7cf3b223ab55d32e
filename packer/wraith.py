"""The "wraith" list: what a running system wrote since it booted.

Every file, directory, symlink or device node under ROOT whose mtime or ctime
is newer than the boot time (/proc/stat btime) or `since`: mtime catches
content, ctime what keeps an old mtime (dpkg unpacks files with the package's
time; chmod, chown, rename). One file system, like the snapshot: mounts below
ROOT are not entered. The list is one absolute path per line, grouped by top
directory under `# /dir: N paths, SIZE` comments; `read_list` reads it back
(for `liveinit image --writable-from FILE`)."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from packer.errors import CommandError
from packer.progress import human

COMMENT = "#"


@dataclass(frozen=True)
class Written:
    """One path written since `since` (absolute, as the live system sees it)."""

    path: str
    size: int           # bytes of a regular file, 0 for anything else
    is_dir: bool


@dataclass(frozen=True)
class Group:
    """The written paths under one top directory ("/" for files at the top)."""

    top: str
    paths: tuple[Written, ...]

    @property
    def size(self) -> int:
        return sum(w.size for w in self.paths)


def boot_time(proc: Path = Path("/proc")) -> float:
    """The running kernel's boot time, seconds since the epoch (/proc/stat btime)."""
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError as e:
        raise CommandError(f"cannot read {proc}/stat: {e.strerror}", hint="pass --since TIME") from None
    raise CommandError(f"{proc}/stat has no btime line", hint="pass --since TIME")


def walk(root: Path, since: float) -> Iterator[Written]:
    """Every path under `root` (not `root` itself) changed after `since`, staying on
    `root`'s file system."""
    try:
        dev = os.lstat(root).st_dev
    except OSError as e:
        raise CommandError(f"cannot read {root}: {e.strerror}") from None
    stack = [(str(root), "")]
    while stack:
        real, shown = stack.pop()
        try:
            entries = list(os.scandir(real))
        except OSError:
            continue   # unreadable or vanished: nothing to list below it
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_dev != dev:
                continue   # a mount point: another file system
            path = f"{shown}/{entry.name}"
            is_dir = stat.S_ISDIR(st.st_mode)
            if max(st.st_mtime, st.st_ctime) > since:
                yield Written(path, st.st_size if stat.S_ISREG(st.st_mode) else 0, is_dir)
            if is_dir:
                stack.append((entry.path, path))


def wraith(root: Path, since: float) -> tuple[Group, ...]:
    """The written paths grouped by top directory, in path order."""
    groups: dict[str, list[Written]] = {}
    for w in sorted(walk(root, since), key=lambda w: w.path.split("/")):
        parts = w.path.split("/")
        top = "/" + parts[1] if len(parts) > 2 or w.is_dir else "/"
        groups.setdefault(top, []).append(w)
    return tuple(Group(top, tuple(ws)) for top, ws in sorted(groups.items()))


def render(groups: tuple[Group, ...]) -> str:
    """The list: a `# /top: N paths, SIZE` comment, then one path per line."""
    out = []
    for g in groups:
        paths = f"{len(g.paths)} path{'s' if len(g.paths) != 1 else ''}"
        out.append(f"{COMMENT} {g.top}: {paths}, {human(g.size)}")
        out += [w.path for w in g.paths if "\n" not in w.path]
    return "\n".join(out) + ("\n" if out else "")


def read_list(text: str, source: str = "the list") -> tuple[str, ...]:
    """The paths of a wraith list (comments and blank lines skipped); each must be absolute."""
    paths = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(COMMENT):
            continue
        if not line.startswith("/") or "/../" in line + "/":
            raise CommandError(f"{source} line {n}: {line!r} is not an absolute path",
                               hint="one absolute path per line, as `liveinit wraith` prints them")
        paths.append(line.rstrip("/") or "/")
    return tuple(paths)
