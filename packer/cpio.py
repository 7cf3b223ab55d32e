"""The initramfs archive: a deterministic newc cpio writer and a reader.

Writer: entries are collected first and written sorted (parents before
children), owned by 0:0, with mtimes clamped to the `mtime` argument and
inode numbers given in that order, so the same inputs give the same bytes.
File contents are streamed from their source at write time, never held.

Hard links follow GNU cpio: every link of a group carries the same inode
and nlink, and only the last one carries the data. The kernel
(init/initramfs.c) creates the first link, hard-links the later ones to it
by (dev, ino, mode) and writes the data through whichever link has it.

Device nodes and fifos are only described (mode + rdev); the host never
calls mknod, so no root privileges are needed to build an image.

Reader: any number of segments, uncompressed or compressed, with zero
padding between them, as the kernel accepts them."""
from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from packer.compress import (
    CPIO_MAGICS,
    Compression,
    CompressionError,
    compress,
    decompress_stream,
    describe_unknown,
    detect,
)
from packer.errors import CommandError

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
HEADER_LEN = 110
TRAILER = "TRAILER!!!"
BLOCK = 512  # GNU cpio pads the whole archive to this
COPY_CHUNK = 1 << 20
FIRST_INO = 1


class ArchiveError(CommandError):
    """A malformed archive or an impossible entry."""


@dataclass(frozen=True)
class Entry:
    """One archive member as stored. `data` is the file body (the target for a symlink)."""

    name: str
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    size: int
    devmajor: int
    devminor: int
    rdevmajor: int
    rdevminor: int
    ino: int
    data: bytes
    target: str | None = None

    @property
    def kind(self) -> str:
        """"dir", "file", "symlink", "char", "block", "fifo" or "socket"."""
        return _KIND_OF_FMT.get(stat.S_IFMT(self.mode), "unknown")


@dataclass(frozen=True)
class Segment:
    """One cpio archive in an image: its compression, where it starts, its entries."""

    compression: str
    offset: int
    entries: list[Entry] = field(default_factory=list)


_KIND_OF_FMT = {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink",
                stat.S_IFCHR: "char", stat.S_IFBLK: "block", stat.S_IFIFO: "fifo",
                stat.S_IFSOCK: "socket"}


@dataclass
class _Node:
    fmt: int  # S_IFDIR, S_IFREG, ...
    perm: int
    src: Path | None = None
    data: bytes | None = None
    target: str | None = None
    rdev: tuple[int, int] = (0, 0)
    src_key: tuple[int, int] | None = None  # (st_dev, st_ino) of src, for hard links
    src_mtime: int | None = None
    explicit: bool = True  # False for directories created as implied parents


def normalize(name: str) -> str:
    """An image path without leading "/" or "./"; refuses "..", empty and NUL names."""
    if "\0" in name:
        raise ArchiveError(f"archive name {name!r} contains a NUL byte")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts:
        raise ArchiveError(f"archive name {name!r} names the root itself",
                           hint="give a path inside the image, e.g. 'usr/bin/tool'")
    if ".." in parts:
        raise ArchiveError(f"archive name {name!r} contains '..'",
                           hint="give the path inside the image without parent references")
    return "/".join(parts)


def _sort_key(name: str) -> tuple[bytes, ...]:
    # Component-wise: a directory comes right before its own children.
    return tuple(os.fsencode(p) for p in name.split("/"))


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _header(ino: int, mode: int, nlink: int, mtime: int, size: int, rdev: tuple[int, int],
            namesize: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    for v in fields:
        if not 0 <= v <= 0xFFFFFFFF:
            raise ArchiveError(f"value {v} does not fit a newc header field (32 bits)",
                               hint="newc cannot hold files of 4 GiB or more")
    return NEWC_MAGIC + b"".join(b"%08X" % v for v in fields)


class ArchiveBuilder:
    """Collects image entries, then writes them as one deterministic newc archive."""

    def __init__(self) -> None:
        self._nodes: dict[str, _Node] = {}

    # -- collecting -------------------------------------------------------

    def names(self) -> list[str]:
        """Every entry name, in the order write() emits them."""
        return sorted(self._nodes, key=_sort_key)

    def __contains__(self, name: object) -> bool:
        try:
            return isinstance(name, str) and normalize(name) in self._nodes
        except ArchiveError:
            return False

    def __len__(self) -> int:
        return len(self._nodes)

    def _put(self, name: str, node: _Node) -> str:
        name = normalize(name)
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            have = self._nodes.get(parent)
            if have is None:
                self._nodes[parent] = _Node(stat.S_IFDIR, 0o755, explicit=False)
            elif have.fmt != stat.S_IFDIR:
                what = "a symlink" if have.fmt == stat.S_IFLNK else "not a directory"
                raise ArchiveError(f"cannot add {name!r}: {parent!r} is {what} in the image",
                                   hint="add the entry under the real directory path instead")
        old = self._nodes.get(name)
        if old is not None and (old.fmt == stat.S_IFDIR) != (node.fmt == stat.S_IFDIR):
            raise ArchiveError(f"cannot add {name!r} as a {_KIND_OF_FMT[node.fmt]}: "
                               f"it is already a {_KIND_OF_FMT[old.fmt]} in the image")
        if old is not None and old.fmt == stat.S_IFDIR and not node.explicit:
            return name
        self._nodes[name] = node
        return name

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        """A directory (re-adding one, e.g. an implied parent, sets its mode)."""
        self._put(name, _Node(stat.S_IFDIR, stat.S_IMODE(mode)))

    def add_file(self, name: str, src: Path | None = None, data: bytes | None = None,
                 mode: int | None = None) -> None:
        """A regular file from `src` (read at write time) or from `data`.

        `mode` defaults to src's permission bits, else 0o644. Sources that are
        the same inode (hard links, or one file added twice) become hard links."""
        if (src is None) == (data is None):
            raise ArchiveError(f"add_file({name!r}) needs exactly one of src= or data=")
        node = _Node(stat.S_IFREG, 0o644 if mode is None else stat.S_IMODE(mode), data=data)
        if src is not None:
            try:
                st = os.stat(src)
            except OSError as e:
                raise ArchiveError(f"cannot add {name!r}: {src}: {e.strerror}") from None
            if not stat.S_ISREG(st.st_mode):
                raise ArchiveError(f"cannot add {name!r}: {src} is not a regular file")
            node.src, node.src_key, node.src_mtime = Path(src), (st.st_dev, st.st_ino), int(st.st_mtime)
            if mode is None:
                node.perm = stat.S_IMODE(st.st_mode)
        self._put(name, node)

    def add_symlink(self, name: str, target: str) -> None:
        """A symbolic link to `target` (stored verbatim, relative or absolute)."""
        if not target or "\0" in target:
            raise ArchiveError(f"symlink {name!r} needs a non-empty target without NUL bytes")
        self._put(name, _Node(stat.S_IFLNK, 0o777, target=target))

    def add_device(self, name: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        """A character ("c") or block ("b") device node, described only (no mknod)."""
        fmt = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(kind)
        if fmt is None:
            raise ArchiveError(f"device {name!r}: kind must be 'c' or 'b', not {kind!r}")
        self._put(name, _Node(fmt, stat.S_IMODE(mode), rdev=(major, minor)))

    def add_fifo(self, name: str, mode: int = 0o644) -> None:
        """A named pipe."""
        self._put(name, _Node(stat.S_IFIFO, stat.S_IMODE(mode)))

    def add_tree(self, name: str, src: Path) -> None:
        """Directory `src` and everything under it, as `name` (modes and symlinks kept).

        Hard links inside the tree stay hard links; device nodes, fifos and
        sockets in the source are refused (describe them with add_device)."""
        src = Path(src)
        if not src.is_dir() or src.is_symlink():
            raise ArchiveError(f"cannot add tree {name!r}: {src} is not a directory")
        self.add_dir(name, stat.S_IMODE(os.stat(src).st_mode))
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            rel = Path(dirpath).relative_to(src)
            for entry in sorted(dirnames + filenames):
                path = Path(dirpath) / entry
                image = f"{name}/{(rel / entry).as_posix()}"
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    self.add_symlink(image, os.readlink(path))
                elif stat.S_ISDIR(st.st_mode):
                    self.add_dir(image, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(image, src=path)
                else:
                    raise ArchiveError(f"cannot add {path}: special files are not copied from the host",
                                       hint="describe device nodes with add_device() / add_fifo()")

    # -- splitting --------------------------------------------------------

    def split(self, segment_of: Callable[[str], str], order: Sequence[str]) -> dict[str, ArchiveBuilder]:
        """The entries partitioned into one builder per segment, in `order`.

        `segment_of(name)` names each entry's segment. Every segment also
        gets the directories above its entries, with the same modes: the
        kernel's unpacker does not create missing parents, and a later
        segment re-applies a directory's mode. Empty segments are left out."""
        out = {name: ArchiveBuilder() for name in order}
        for name, node in self._nodes.items():
            seg = segment_of(name)
            if seg not in out:
                raise ArchiveError(f"{name!r} is assigned to unknown segment {seg!r}",
                                   hint=f"segments are {', '.join(order)}")
            nodes = out[seg]._nodes
            nodes[name] = node
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                nodes.setdefault(parent, self._nodes[parent])
        return {name: b for name, b in out.items() if len(b)}

    # -- writing ----------------------------------------------------------

    def write(self, out: BinaryIO, mtime: int = 0) -> int:
        """Write the archive (entries, trailer, padding to 512) to `out`; returns bytes written.

        `mtime` is the clamp: entries from a source keep an older source
        mtime, everything else gets `mtime` (SOURCE_DATE_EPOCH, or 0)."""
        names = self.names()
        # Hard-link groups: same source inode; data goes with the last link.
        # The kernel matches links by (ino, mode), so a group also shares the mode.
        groups: dict[tuple[int, int, int], list[str]] = {}
        for name in names:
            key = self._link_key(self._nodes[name])
            if key is not None:
                groups.setdefault(key, []).append(name)
        subdirs: dict[str, int] = {}
        for name in names:
            if self._nodes[name].fmt == stat.S_IFDIR and "/" in name:
                parent = name.rsplit("/", 1)[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1

        written = 0
        next_ino = FIRST_INO
        group_ino: dict[tuple[int, int, int], int] = {}
        for name in names:
            node = self._nodes[name]
            key = self._link_key(node)
            group = groups[key] if key is not None else None
            if key is not None and key in group_ino:
                ino = group_ino[key]
            else:
                ino, next_ino = next_ino, next_ino + 1
                if key is not None:
                    group_ino[key] = ino
            mt = mtime if node.src_mtime is None else max(0, min(node.src_mtime, mtime))
            if node.fmt == stat.S_IFDIR:
                nlink = 2 + subdirs.get(name, 0)
            elif group is not None:
                nlink = len(group)
            else:
                nlink = 1
            written += self._write_entry(out, name, node, ino, nlink, mt,
                                         carries_data=group is None or group[-1] == name)
        written += self._write_raw(out, TRAILER, 0, 0, 1, 0, (0, 0), b"")
        pad = (BLOCK - written % BLOCK) % BLOCK
        out.write(b"\0" * pad)
        return written + pad

    @staticmethod
    def _link_key(node: _Node) -> tuple[int, int, int] | None:
        return None if node.src_key is None else (*node.src_key, node.perm)

    def _write_entry(self, out: BinaryIO, name: str, node: _Node, ino: int, nlink: int,
                     mtime: int, carries_data: bool) -> int:
        mode = node.fmt | node.perm
        if node.fmt == stat.S_IFLNK:
            return self._write_raw(out, name, ino, mode, nlink, mtime, (0, 0),
                                   os.fsencode(node.target or ""))
        if node.fmt != stat.S_IFREG:
            return self._write_raw(out, name, ino, mode, nlink, mtime, node.rdev, b"")
        if not carries_data:
            return self._write_raw(out, name, ino, mode, nlink, mtime, (0, 0), b"")
        if node.data is not None:
            return self._write_raw(out, name, ino, mode, nlink, mtime, (0, 0), node.data)
        assert node.src is not None
        try:
            f = open(node.src, "rb")  # noqa: SIM115 (the `with` below; open errors reported apart)
        except OSError as e:
            raise ArchiveError(f"cannot read {node.src} for {name!r}: {e.strerror}") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            n = self._write_head(out, name, ino, mode, nlink, mtime, (0, 0), size)
            left = size
            while left:
                chunk = f.read(min(COPY_CHUNK, left))
                if not chunk:
                    raise ArchiveError(f"{node.src} shrank while being archived as {name!r}",
                                       hint="do not modify the source tree during a build")
                out.write(chunk)
                left -= len(chunk)
            out.write(b"\0" * _pad4(size))
        return n + size + _pad4(size)

    @staticmethod
    def _write_head(out: BinaryIO, name: str, ino: int, mode: int, nlink: int, mtime: int,
                    rdev: tuple[int, int], size: int) -> int:
        bname = os.fsencode(name) + b"\0"
        head = _header(ino, mode, nlink, mtime, size, rdev, len(bname)) + bname
        head += b"\0" * _pad4(len(head))
        out.write(head)
        return len(head)

    def _write_raw(self, out: BinaryIO, name: str, ino: int, mode: int, nlink: int, mtime: int,
                   rdev: tuple[int, int], data: bytes) -> int:
        n = self._write_head(out, name, ino, mode, nlink, mtime, rdev, len(data))
        out.write(data + b"\0" * _pad4(len(data)))
        return n + len(data) + _pad4(len(data))


def image_bytes(main: ArchiveBuilder, method: str, level: int | None = None, mtime: int = 0,
                early: ArchiveBuilder | None = None) -> bytes:
    """A whole initramfs: the optional uncompressed `early` archive (microcode),
    then `main` compressed with `method`. Each archive ends 512-aligned, so the
    next segment starts where the kernel expects it (4-byte aligned)."""
    parts = []
    for builder in (early, main):
        if builder is not None:
            buf = io.BytesIO()
            builder.write(buf, mtime=mtime)
            parts.append(buf.getvalue())
    parts[-1] = compress(parts[-1], method, level)
    return b"".join(parts)


# -- reading --------------------------------------------------------------

def _hex(buf: bytes, at: int, offset: int) -> int:
    field_ = buf[at:at + 8]
    try:
        if len(field_) != 8 or not field_.isalnum():
            raise ValueError
        return int(field_, 16)
    except ValueError:
        raise ArchiveError(f"bad cpio header at offset {offset}: field {field_!r} is not hex") from None


def parse_cpio(buf: bytes, base: int = 0) -> list[list[Entry]]:
    """Parse one or more concatenated uncompressed newc archives filling `buf`.

    Returns one list of entries per archive; `base` only shifts the offsets
    in error messages. Zero padding between archives is skipped."""
    archives: list[list[Entry]] = []
    pos, n = 0, len(buf)
    while True:
        while pos < n and buf[pos] == 0:
            pos += 1
        if pos >= n:
            return archives
        entries: list[Entry] = []
        while True:
            at = base + pos
            magic = buf[pos:pos + 6]
            if magic not in CPIO_MAGICS:
                what = "truncated data" if len(magic) < 6 else describe_unknown(buf[pos:pos + 8])
                raise ArchiveError(f"expected a newc cpio header at offset {at}, found {what}",
                                   hint="the image is corrupt or truncated")
            if pos + HEADER_LEN > n:
                raise ArchiveError(f"truncated cpio header at offset {at}")
            vals = [_hex(buf, pos + 6 + 8 * i, at) for i in range(13)]
            ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, check = vals
            if namesize == 0 or pos + HEADER_LEN + namesize > n:
                raise ArchiveError(f"cpio entry at offset {at} has an impossible name size {namesize}")
            raw_name = buf[pos + HEADER_LEN:pos + HEADER_LEN + namesize]
            if raw_name[-1:] != b"\0":
                raise ArchiveError(f"cpio entry name at offset {at} is not NUL-terminated")
            name = os.fsdecode(raw_name[:-1])
            dpos = pos + HEADER_LEN + namesize
            dpos += _pad4(dpos)
            if dpos + size > n:
                raise _truncated(name, at, base + dpos, size, base + n)
            data = buf[dpos:dpos + size]
            if magic == CRC_MAGIC and stat.S_ISREG(mode) and sum(data) & 0xFFFFFFFF != check:
                raise ArchiveError(f"checksum mismatch for {name!r} at offset {at}")
            pos = dpos + size + _pad4(size)
            if name == TRAILER:
                break
            target = os.fsdecode(data) if stat.S_ISLNK(mode) else None
            entries.append(Entry(name, mode, uid, gid, nlink, mtime, size, dmaj, dmin,
                                 rmaj, rmin, ino, data, target))
        archives.append(entries)


def _streams(data: bytes) -> Iterator[tuple[Compression, int, bytes]]:
    """(method, offset, uncompressed bytes) of every stream in an image, in
    order: an uncompressed run of cpio archives or one compressed stream.
    Zero padding between them is skipped."""
    pos, n = 0, len(data)
    while True:
        while pos < n and data[pos] == 0:
            pos += 1
        if pos >= n:
            return
        method = detect(data[pos:pos + 8])
        if method is Compression.NONE:
            if pos % 4:
                raise ArchiveError(f"cpio archive at offset {pos} is not 4-byte aligned",
                                   hint="the kernel rejects this ('broken padding'): pad the previous "
                                        "segment with zeros to a multiple of 4")
            end = _uncompressed_end(data, pos)
            yield Compression.NONE, pos, data[pos:end]
        elif method is None:
            raise ArchiveError(f"unrecognised data at offset {pos}: {describe_unknown(data[pos:pos + 8])}",
                               hint="an initramfs holds newc cpio archives, optionally compressed with "
                                    "gzip, xz, zstd or lz4")
        else:
            try:
                _, plain, end = decompress_stream(data, pos)
            except CompressionError as e:
                raise ArchiveError(str(e), hint=e.hint or "the image is corrupt or truncated") from None
            yield method, pos, plain
        pos = end


def read_archive(data: bytes) -> list[Segment]:
    """Every segment of an initramfs image, in order.

    An uncompressed run of cpio archives is one segment per archive; a
    compressed stream is one segment holding all the archives inside it."""
    segments: list[Segment] = []
    for method, pos, plain in _streams(data):
        if method == "none":
            for entries in parse_cpio(plain, pos):
                segments.append(Segment("none", pos, entries))
            continue
        try:
            archives = parse_cpio(plain, 0)
        except ArchiveError as e:
            raise ArchiveError(f"in the {method} segment at offset {pos} (offsets after decompression): "
                               f"{e}", hint=e.hint) from None
        if not archives:
            raise ArchiveError(f"the {method} stream at offset {pos} holds no cpio archive "
                               f"({len(plain)} bytes after decompression, all zero)",
                               hint="the image is corrupt or truncated")
        entries = [e for archive in archives for e in archive]
        segments.append(Segment(method, pos, entries))
    if not segments:
        raise ArchiveError("the image is empty (no cpio archive in it)")
    return segments


def segment_bytes(data: bytes) -> list[tuple[str, bytes]]:
    """(compression, uncompressed cpio bytes) of every segment, in order (for
    feeding other tools, which read one archive at a time)."""
    return [(method, plain) for method, _pos, plain in _streams(data)]


def flatten(segments: list[Segment]) -> dict[str, Entry]:
    """The tree the kernel would unpack: later segments win, and every hard
    link carries its group's data (which the archive stores on one link only)."""
    tree: dict[str, Entry] = {}
    for seg in segments:
        bodies: dict[tuple[int, int, int, int], bytes] = {}
        for e in seg.entries:
            if e.kind == "file" and e.nlink >= 2 and e.size:
                bodies[(e.devmajor, e.devminor, e.ino, e.mode)] = e.data
        for e in seg.entries:
            key = (e.devmajor, e.devminor, e.ino, e.mode)
            if e.kind == "file" and e.nlink >= 2 and not e.size and key in bodies:
                e = replace(e, data=bodies[key], size=len(bodies[key]))
            tree[e.name] = e
    return tree


def _truncated(name: str, at: int, dpos: int, size: int, end: int) -> ArchiveError:
    """The error for an entry whose data runs past the end of what was read."""
    return ArchiveError(f"cpio entry {name!r} (header at offset {at}) is truncated: its {size} bytes of data "
                        f"span offsets {dpos}-{dpos + size}, but the data ends at offset {end} "
                        f"({max(0, end - dpos)} of its bytes present)",
                        hint="the image is cut short (an interrupted write or copy?): build or copy it again")


def _uncompressed_end(data: bytes, pos: int) -> int:
    """End of the one uncompressed archive at `pos` (just after its trailer entry)."""
    n = len(data)
    start = pos
    while True:
        if pos >= n:
            raise ArchiveError(f"the cpio archive at offset {start} ends at offset {n} without its "
                               f"TRAILER!!! entry", hint="the image is cut short: build or copy it again")
        if data[pos:pos + 6] not in CPIO_MAGICS:
            raise ArchiveError(f"expected a newc cpio header at offset {pos} (archive starting at offset "
                               f"{start}), found {describe_unknown(data[pos:pos + 8])}",
                               hint="an uncompressed cpio archive must end with a TRAILER!!! entry")
        if pos + HEADER_LEN > n:
            raise ArchiveError(f"truncated cpio header at offset {pos}: it needs {HEADER_LEN} bytes, "
                               f"the data ends at offset {n}",
                               hint="the image is cut short: build or copy it again")
        size = _hex(data, pos + 54, pos)
        namesize = _hex(data, pos + 94, pos)
        name_end = pos + HEADER_LEN + namesize
        if name_end > n:
            raise ArchiveError(f"the name of the cpio entry at offset {pos} is truncated: it needs offsets "
                               f"up to {name_end}, the data ends at offset {n}",
                               hint="the image is cut short: build or copy it again")
        raw_name = data[pos + HEADER_LEN:name_end]
        is_trailer = raw_name == TRAILER.encode() + b"\0"
        dpos = name_end + _pad4(name_end)
        if dpos + size > n:
            raise _truncated(os.fsdecode(raw_name.rstrip(b"\0")), pos, dpos, size, n)
        pos = dpos + size + _pad4(size)
        if is_trailer:
            return min(pos, n)
