"""A live copy of a root tree, the running system's `/` included (`liveinit image /`).

What the squashfs takes: one file system (mounts below the root are left as
empty directories unless named with --include-mount), without the default
excludes (the kernel's and the runtime's mounts, temporary files, package
downloads, swap files, lost+found, the output itself) and the user's.

What it changes, in the copy only (the host is never written): fstab entries
of the host's disks and network shares commented out, /etc/machine-id emptied
(systemd makes a new one at boot), the ssh host keys left out, the hostname.
mksquashfs cannot edit a file in flight, so each changed file is excluded and
added back by a pseudo-file definition (-pf) with the new content and the
original's mode and owner.

What it reports: files that changed while they were packed (their mtime or
ctime is after the start: the copy may hold the old, the new or a torn
version), a progress line with throughput and ETA on a terminal (mksquashfs'
own progress bar, read from a pipe), and a summary."""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from liveinit.contract import WRITABLE_LIST
from packer import tools
from packer.errors import CommandError
from packer.kernel import KernelTree
from packer.progress import human

# Contents left out of every live copy (mksquashfs -wildcards patterns relative to the root);
# the directories themselves stay: the runtime and systemd mount over them.
# mksquashfs matches with FNM_PERIOD: '*' skips dot files, so '.*' takes those.
EMPTIED = ("proc", "sys", "dev", "run", "tmp", "var/tmp")
DEFAULT_EXCLUDES = (*(f"{d}/{w}" for d in EMPTIED for w in ("*", ".*")),
                    "var/cache/apt/archives/*.deb", "... lost+found")
SSH_HOST_KEYS = "etc/ssh/ssh_host_*"
MACHINE_ID = "etc/machine-id"                  # emptied: systemd makes a new one at boot
DBUS_MACHINE_ID = "var/lib/dbus/machine-id"     # a copy of it left out: dbus's tmpfiles links it again
# fstab sources that name a disk of the host; network file systems are the host's too.
DISK_SPECS = ("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "ID=", "/dev/")
NETWORK_FS = frozenset(("nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "fuse.sshfs", "davfs", "ceph",
                        "glusterfs", "9p"))
DISABLED = "# liveinit: the host's, disabled in the live copy: "
PROGRESS_RE = re.compile(rb"\]\s+(\d+)/(\d+)\s+(\d+)%")
KERNEL_HINT = ("pass --kernel-root DIR (an unpacked kernel package: boot/vmlinuz-KVER and "
               "lib/modules/KVER), or --kver KVER for another kernel of the root")


# -- what to take ---------------------------------------------------------------------------------

def _unescape(field: str) -> str:
    """A /proc/self/mountinfo path: spaces, tabs, newlines and backslashes are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_below(root: Path, mountinfo: str) -> list[Path]:
    """The mount points strictly below `root`, from /proc/self/mountinfo's text."""
    top = os.path.realpath(root)
    out = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape(fields[4])
        if point != top and point.startswith(top.rstrip("/") + "/"):
            out.append(Path(point))
    return sorted(set(out))


def swap_files(swaps: str) -> list[Path]:
    """Swap files (not partitions) in use, from /proc/swaps."""
    out = []
    for line in swaps.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 1 and fields[1] == "file":
            out.append(Path(_unescape(fields[0])))
    return out


def _rel(root: Path, path: Path) -> str | None:
    """`path` relative to `root` when it is inside it (real paths), else None."""
    top, p = os.path.realpath(root), os.path.realpath(path)
    if p == top or not p.startswith(top.rstrip("/") + "/"):
        return None
    return p[len(top.rstrip("/")) + 1:]


def _pattern(text: str) -> str:
    """A mksquashfs wildcard: relative to the root, escapes kept; '... name' matches at any depth."""
    return text if text.startswith("... ") else text.strip().lstrip("/")


def read_patterns(path: Path) -> list[str]:
    """--exclude-from FILE: one pattern a line; blank lines and '#' comments skipped."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise CommandError(f"cannot read --exclude-from {path}: {e.strerror}") from None
    return [_pattern(x) for x in lines if x.strip() and not x.lstrip().startswith("#")]


def excludes(root: Path, outputs: tuple[Path, ...] = (), include_mounts: tuple[Path, ...] = (),
             extra: tuple[str, ...] = (), mountinfo: str | None = None,
             swaps: str | None = None) -> tuple[str, ...]:
    """Every exclude pattern for a live copy of `root`: the defaults, the contents of mounts
    below it not in `include_mounts` (they stay empty directories), swap files, the `outputs`
    (the image being written, the scratch directory) and the user's `extra`."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    if swaps is None:
        swaps = Path("/proc/swaps").read_text() if Path("/proc/swaps").exists() else ""
    included = {os.path.realpath(p) for p in include_mounts}
    out = list(DEFAULT_EXCLUDES)
    for point in mounts_below(root, mountinfo):
        rel = _rel(root, point)
        if rel is not None and str(point) not in included:
            out += [_glob_escape(rel) + "/*", _glob_escape(rel) + "/.*"]
    for path in (*swap_files(swaps), *outputs):
        rel = _rel(root, path)
        if rel is not None:
            out.append(_glob_escape(rel))
    out += [_pattern(x) for x in extra]
    return tuple(dict.fromkeys(out))


def _glob_escape(rel: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", rel)


def _component_match(name: str, pat: str) -> bool:
    """fnmatch(3) with FNM_PERIOD as mksquashfs calls it: backslash escapes, and a leading
    '.' matched only by a literal one."""
    if name.startswith(".") and not pat.startswith((".", "\\.")):
        return False
    py = re.sub(r"\\(.)", lambda m: "[" + m.group(1) + "]" if m.group(1) in "*?[]" else m.group(1), pat)
    return fnmatch.fnmatchcase(name, py)


def excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    """Whether mksquashfs leaves `rel` out: a pattern matching it or one of its parents
    (component by component, '*' never crossing '/'; '... p' at any depth)."""
    parts = rel.split("/")
    for pat in patterns:
        anywhere = pat.startswith("... ")
        pp = (pat[4:] if anywhere else pat).split("/")
        starts = range(len(parts)) if anywhere else range(1)
        for s in starts:
            seg = parts[s:s + len(pp)]
            if len(seg) == len(pp) and all(_component_match(a, b) for a, b in zip(seg, pp, strict=True)):
                return True
    return False


def walk(root: Path, patterns: tuple[str, ...]) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of everything the copy takes, directories first."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(root / rel if rel else root))
        except OSError:
            continue
        for e in entries:
            r = f"{rel}/{e.name}" if rel else e.name
            if excluded(r, patterns):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            yield r, st
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)


# -- the root's own kernel ------------------------------------------------------------------------

def _version_key(kver: str) -> list[tuple[int, int | str]]:
    return [(0, int(x)) if x.isdigit() else (1, x) for x in re.split(r"(\d+)", kver) if x]


def root_kernel(root: Path, kver: str | None = None) -> KernelTree:
    """The root's own kernel: boot/vmlinuz-`kver`, or the newest boot/vmlinuz-KVER whose
    lib/modules/KVER is there too (the initramfs and the live system load its modules)."""
    found = []
    for img in (root / "boot").glob("vmlinuz-*"):
        v = img.name.removeprefix("vmlinuz-")
        if (root / "lib" / "modules" / v).is_dir():
            found.append(v)
    if kver is not None:
        if kver not in found:
            have = ", ".join(sorted(found, key=_version_key)) or "none"
            raise CommandError(f"{root} has no kernel {kver} (boot/vmlinuz-{kver} with lib/modules/{kver}); "
                               f"kernels there: {have}", hint=KERNEL_HINT)
        return KernelTree(kver, root)
    if not found:
        raise CommandError(f"{root} holds no kernel: no boot/vmlinuz-KVER with its lib/modules/KVER",
                           hint="install one in the root (apt-get install linux-image-amd64), or "
                                + KERNEL_HINT)
    tree = KernelTree(max(found, key=_version_key), root)
    if not os.access(tree.vmlinuz, os.R_OK):
        raise CommandError(f"cannot read {tree.vmlinuz}", hint="run liveinit image as root")
    return tree


# -- the live clean-up of the copy ----------------------------------------------------------------

@dataclass(frozen=True)
class Cleanup:
    """The changes to the copy: paths left out, pseudo-file definitions, what was done."""

    excludes: tuple[str, ...]
    pseudo: tuple[str, ...]
    done: tuple[str, ...]


def live_fstab(text: str) -> tuple[str, int]:
    """fstab with the host's disk and network mounts commented out; (text, how many)."""
    out, n = [], 0
    for line in text.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#") and len(fields) >= 3 and (
                fields[0].startswith(DISK_SPECS) or fields[2] in NETWORK_FS):
            out.append(DISABLED + line)
            n += 1
        else:
            out.append(line)
    return "\n".join(out) + ("\n" if text.endswith("\n") or out else ""), n


def _hosts(text: str, hostname: str) -> str:
    lines = [f"127.0.1.1\t{hostname}" if ln.split()[:1] == ["127.0.1.1"] else ln for ln in text.splitlines()]
    if not any(ln.split()[:1] == ["127.0.1.1"] for ln in lines):
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def live_cleanup(root: Path, work: Path, hostname: str | None = None,
                 keep_identity: bool = False, writable: tuple[str, ...] | None = None) -> Cleanup:
    """What the copy of `root` gets instead of the host's identity (nothing with `keep_identity`
    but the hostname), and the `writable` list (contract.WRITABLE_LIST) when given; new
    contents are written under `work` for the pseudo definitions."""
    new: dict[str, str] = {}
    done: list[str] = []
    excl: list[str] = []
    pseudo = []
    if writable is not None:
        rel = WRITABLE_LIST.lstrip("/")
        new[rel] = "".join(p + "\n" for p in writable)
        done.append(f"{WRITABLE_LIST}: {len(writable)} paths union=bind makes writable")
        parent = Path(rel).parent
        if not (root / parent).is_dir():
            pseudo += [f"{p} d 755 0 0" for p in reversed(parent.parents[:-1]) if not (root / p).is_dir()]
            pseudo.append(f"{parent} d 755 0 0")
    if not keep_identity:
        fstab = root / "etc" / "fstab"
        if fstab.is_file():
            text, n = live_fstab(fstab.read_text(errors="surrogateescape"))
            if n:
                new["etc/fstab"] = text
                done.append(f"/etc/fstab: {n} host disk or network entries disabled")
        p = root / MACHINE_ID
        if p.is_file() and not p.is_symlink() and p.stat().st_size:
            new[MACHINE_ID] = ""
            done.append(f"/{MACHINE_ID} emptied")
        if (root / DBUS_MACHINE_ID).is_file() and not (root / DBUS_MACHINE_ID).is_symlink():
            excl.append(DBUS_MACHINE_ID)
            done.append(f"/{DBUS_MACHINE_ID} left out")
        keys = sorted((root / "etc" / "ssh").glob("ssh_host_*"))
        if keys:
            excl.append(SSH_HOST_KEYS)
            done.append(f"{len(keys)} ssh host key files left out")
    if hostname is not None:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", hostname):
            raise CommandError(f"bad --hostname {hostname!r}", hint="letters, digits and '-', up to 63")
        new["etc/hostname"] = hostname + "\n"
        hosts = root / "etc" / "hosts"
        if hosts.is_file():
            new["etc/hosts"] = _hosts(hosts.read_text(errors="surrogateescape"), hostname)
        done.append(f"hostname {hostname}")
    for i, (rel, content) in enumerate(sorted(new.items())):
        src = work / f"pseudo-{i}"
        src.write_text(content, errors="surrogateescape")
        orig = root / rel
        st = orig.lstat() if orig.is_file() and not orig.is_symlink() else None
        mode, uid, gid = (st.st_mode & 0o7777, st.st_uid, st.st_gid) if st else (0o644, 0, 0)
        pseudo.append(f"{rel} f {mode:o} {uid} {gid} cat {shlex.quote(str(src))}")
        if st is not None or orig.is_symlink():
            excl.append(_glob_escape(rel))
    return Cleanup(tuple(excl), tuple(pseudo), tuple(done))


@dataclass(frozen=True)
class Plan:
    """A snapshot about to be packed: the exclude patterns, the pseudo-file definitions
    (a file under the scratch directory, or None), the clean-up done, what it takes."""

    root: Path
    excludes: tuple[str, ...]
    pseudo_file: Path | None
    cleanup: tuple[str, ...]
    files: int
    bytes_in: int


def plan(root: Path, work: Path, outputs: tuple[Path, ...] = (), include_mounts: tuple[Path, ...] = (),
         exclude: tuple[str, ...] = (), exclude_from: tuple[Path, ...] = (), hostname: str | None = None,
         keep_identity: bool = False, writable_from: Path | None = None) -> Plan:
    """Everything decided before mksquashfs starts (see the module's docstring)."""
    for m in include_mounts:
        if _rel(root, m) is None:
            raise CommandError(f"--include-mount {m} is not below {root}",
                               hint="name a mount point inside the root being packed")
    extra = list(exclude)
    for f in exclude_from:
        extra += read_patterns(f)
    writable = None
    if writable_from is not None:
        from packer.wraith import read_list
        try:
            text = writable_from.read_text()
        except OSError as e:
            raise CommandError(f"cannot read --writable-from {writable_from}: {e.strerror}") from None
        writable = read_list(text, str(writable_from))
    clean = live_cleanup(root, work, hostname, keep_identity, writable)
    patterns = excludes(root, outputs, include_mounts, (*extra, *clean.excludes))
    pseudo_file = None
    if clean.pseudo:
        pseudo_file = work / "pseudo-files"
        pseudo_file.write_text("".join(line + "\n" for line in clean.pseudo))
    files = size = 0
    for _rel_path, st in walk(root, patterns):
        files += 1
        if stat.S_ISREG(st.st_mode):
            size += st.st_size
    return Plan(root, patterns, pseudo_file, clean.done, files, size)


# -- packing, watched -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Changed:
    """A file that changed while it was packed."""

    path: str
    why: str


@dataclass(frozen=True)
class Snapshot:
    """What a snapshot packed: counts, sizes, time, the files that changed meanwhile."""

    files: int
    bytes_in: int
    squashfs_size: int
    seconds: float
    changed: tuple[Changed, ...]
    cleanup: tuple[str, ...]


def changed_since(root: Path, patterns: tuple[str, ...], start_ns: int) -> list[Changed]:
    """Files and directories of the copy whose data or inode changed after `start_ns`."""
    out = []
    for rel, st in walk(root, patterns):
        if st.st_mtime_ns >= start_ns:
            out.append(Changed("/" + rel, "modified while packing"))
        elif st.st_ctime_ns >= start_ns:
            out.append(Changed("/" + rel, "attributes changed while packing"))
    return out


class ProgressLine:
    """mksquashfs' progress bar (`[===] done/total pct%`, blocks) as bytes, throughput and ETA."""

    def __init__(self, total_bytes: int, out: Callable[[str], None]) -> None:
        self.total = total_bytes
        self.out = out
        self.start = time.monotonic()
        self.last = 0.0
        self.width = 0

    def feed(self, chunk: bytes) -> None:
        for m in PROGRESS_RE.finditer(chunk):
            done, total = int(m.group(1)), int(m.group(2))
            now = time.monotonic()
            if total and now - self.last >= 0.2:
                self.last = now
                self.draw(done / total, now - self.start)

    def draw(self, frac: float, elapsed: float) -> None:
        got = frac * self.total
        rate = got / elapsed if elapsed > 0 else 0.0
        eta = (elapsed / frac - elapsed) if frac > 0 else 0.0
        line = (f"packing: {frac * 100:3.0f}%  {human(got)} of {human(self.total)}  "
                f"{human(rate)}/s  ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        self.width = max(self.width, len(line))
        self.out("\r" + line.ljust(self.width))

    def end(self) -> None:
        if self.width:
            self.out("\r" + " " * self.width + "\r")


def run_mksquashfs(cmd: list[str], what: str, env: dict[str, str], progress: ProgressLine | None) -> None:
    """mksquashfs, its progress bar read from a pipe when `progress` draws it."""
    if progress is None:
        tools.run(cmd, what, env=env)
        return
    cmd = [c for c in cmd if c != "-no-progress"] + ["-progress"]
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except FileNotFoundError:
        tools.run(cmd, what, env=env)   # the error naming the package
        return
    stdout, stderr = proc.stdout, proc.stderr
    assert stdout is not None and stderr is not None
    err: list[bytes] = []
    reader = threading.Thread(target=lambda: err.append(stderr.read()), daemon=True)
    reader.start()
    while chunk := os.read(stdout.fileno(), 4096):
        progress.feed(chunk)
    rc = proc.wait()
    reader.join()
    progress.end()
    if rc != 0:
        tail = b"".join(err).decode(errors="replace").strip().splitlines()[-5:]
        raise CommandError(f"mksquashfs failed (exit status {rc}) while trying to {what}"
                           + ("".join("\n  " + x for x in tail)),
                           hint="check the free space where the image is written and the messages above")


def terminal_progress() -> Callable[[str], None] | None:
    """Where a progress line goes: stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return None

    def out(s: str) -> None:
        sys.stderr.write(s)
        sys.stderr.flush()
    return out
