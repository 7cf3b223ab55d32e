"""A segmented image: one compressed cpio per part that changes at its own pace.

The kernel unpacks any number of concatenated (compressed) cpio archives,
in order, into the same rootfs. The image is therefore cut into:

- `modules`: the modules a boot loads only on some machines, each its own
  `.ko.xz` (packer/modstore.py); the segment itself is not compressed
  (compressing compressed files again only costs unpack time);
- `kernel`: the modules a boot is likely to load, as plain .ko, and the
  firmware (change with the kernel or the module selection);
- `python`: the interpreter, its stdlib pycs and extensions, the shared
  libraries, busybox and env (change when the host's packages do);
- `runtime`: everything small that changes often: /init and its settings,
  the liveinit pycs, the module index, the skeleton, /dev nodes, --files.

Each segment's compressed bytes are cached under `<cache>/segments/`, keyed
by the SHA-256 of its exact uncompressed bytes, the codec settings and the
identity of the compressor (liblzma / zlib / zstd program), so a warm pack
compresses only what changed and the output is the same bytes whether the
cache was cold or warm. The big stable segments can thus use the strongest
(slowest) settings. Segments missing from the cache are compressed in
parallel threads (lzma and zlib release the GIL; zstd is a subprocess).

The kernel's unpacker does not create missing parent directories: every
segment carries its own (cpio.ArchiveBuilder.split)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from packer.compress import Codec, Compression
from packer.config import AUTO
from packer.errors import CommandError

MODULES, KERNEL, PYTHON, RUNTIME = "modules", "kernel", "python", "runtime"
ORDER = (MODULES, KERNEL, PYTHON, RUNTIME)  # stored first: after a legacy lz4 stream the kernel reads on
STORED = Codec(Compression.NONE)           # the modules segment: its files are compressed already
CACHE_DIR = "segments"
CACHE_LIMIT = 512 << 20                    # bytes kept in the cache, least recently used dropped
CACHE_FORMAT = b"liveinit-segment-3"     # bump when compress() output or the file format changes
DIGEST_LEN = 32                            # each file: blob + sha256(blob)

# Measured (docs/PERFORMANCE-boot.md): what a user waits for is the kernel's
# unpack plus the boot, and under QEMU TCG the kernel unpacks zstd ~4x faster
# than xz; the long tail of modules, which made xz worth its unpack time,
# now sits compressed module by module in the stored `modules` segment.
AUTO_CODECS: dict[str, Codec] = {
    MODULES: STORED,
    KERNEL: Codec(Compression.ZSTD, 19),
    PYTHON: Codec(Compression.ZSTD, 19),
    RUNTIME: Codec(Compression.ZSTD, 19),
}


def codecs(method: str, level: int | None) -> dict[str, Codec]:
    """Codec per segment: `auto` is AUTO_CODECS, any Compression applies to all
    but the modules segment, which is always stored (its files are compressed)."""
    if method == AUTO:
        if level is not None:
            raise CommandError("--compress-level needs an explicit --compress method",
                               hint="the auto profile sets a level per segment; e.g. --compress xz "
                                    "--compress-level 6")
        return dict(AUTO_CODECS)
    return {name: STORED if name == MODULES else Codec(Compression(method), level) for name in ORDER}


@dataclass(frozen=True)
class SegmentInfo:
    """One segment as written: its name, codec, sizes, and whether the cache had it."""

    name: str
    codec: str
    entries: int
    uncompressed: int
    compressed: int
    cached: bool
    seconds: float            # compression time (0 when cached)


def _compressor_identity(method: Compression) -> str:
    """What, besides the settings, decides the compressed bytes: the library or tool."""
    if method is Compression.XZ:
        import lzma  # noqa: F401  (maps liblzma into this process)
        return _mapped("liblzma") or "liblzma?"
    if method is Compression.GZIP:
        import zlib
        return "zlib " + zlib.ZLIB_RUNTIME_VERSION
    if method in (Compression.ZSTD, Compression.LZ4):
        tool = shutil.which(method)
        if tool is None:
            return f"{method}?"     # compress() says it is missing
        st = os.stat(tool)
        return f"{os.path.realpath(tool)} {st.st_size} {st.st_mtime_ns}"
    return method


def _mapped(lib: str) -> str | None:
    """Path, size and mtime of the shared library `lib` this process has mapped."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split(None, 5)[-1].strip()
                if f"/{lib}." in path:
                    st = os.stat(path)
                    return f"{path} {st.st_size} {st.st_mtime_ns}"
    except OSError:
        pass
    return None


class SegmentCache:
    """Compressed segments on disk, keyed by content and codec (see the module doc)."""

    def __init__(self, root: Path, limit: int = CACHE_LIMIT) -> None:
        self.root = Path(root) / CACHE_DIR
        self.limit = limit
        self.write_error: str | None = None    # why the last put() could not store, if it failed
        self._ids: dict[str, str] = {}

    def key(self, data: bytes, codec: Codec) -> str:
        """The cache key of `data` compressed with `codec`."""
        if codec.method not in self._ids:
            self._ids[codec.method] = _compressor_identity(codec.method)
        h = hashlib.sha256(CACHE_FORMAT)
        for part in (repr(codec), self._ids[codec.method], sys.version):
            h.update(part.encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.seg"

    def get(self, key: str) -> bytes | None:
        """The cached bytes, or None; a hit refreshes the entry's age.

        A damaged file (its SHA-256 trailer does not match) is dropped and
        counts as a miss, so the image is never built from bad bytes."""
        p = self._path(key)
        try:
            raw = p.read_bytes()
        except OSError:
            return None
        blob, digest = raw[:-DIGEST_LEN], raw[-DIGEST_LEN:]
        if not blob or hashlib.sha256(blob).digest() != digest:
            p.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(p)
        return blob

    def put(self, key: str, blob: bytes) -> None:
        """Store atomically; a read-only or full cache is not an error, just slower."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
                f.write(hashlib.sha256(blob).digest())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self._path(key))
            self.prune()
        except OSError as e:
            self.write_error = f"{e.filename or self.root}: {e.strerror}"

    def prune(self) -> None:
        """Drop the least recently used entries beyond `limit` bytes."""
        entries = []
        for p in self.root.glob("*.seg"):
            try:
                st = p.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, p))
        total = sum(e[1] for e in entries)
        for _mtime, size, p in sorted(entries, key=lambda e: (e[0], e[2].name)):
            if total <= self.limit:
                break
            p.unlink(missing_ok=True)
            total -= size


def compress_all(parts: list[tuple[str, bytes, int, Codec]],
                 cache: SegmentCache | None) -> list[tuple[bytes, SegmentInfo]]:
    """Compress each (name, raw cpio, entries, codec), from the cache when it has them.

    Returns (compressed bytes, info) in the order given."""
    results: list[tuple[bytes, SegmentInfo] | None] = [None] * len(parts)
    todo: list[tuple[int, str | None]] = []
    for i, (name, raw, n, codec) in enumerate(parts):
        if codec.method is Compression.NONE:    # stored as is: nothing to compress or cache
            results[i] = (raw, SegmentInfo(name, str(codec), n, len(raw), len(raw), False, 0.0))
            continue
        key = cache.key(raw, codec) if cache is not None else None
        blob = cache.get(key) if cache is not None and key is not None else None
        if blob is not None:
            results[i] = (blob, SegmentInfo(name, str(codec), n, len(raw), len(blob), True, 0.0))
        else:
            todo.append((i, key))

    def work(i: int) -> tuple[bytes, float]:
        t0 = time.perf_counter()
        blob = parts[i][3].compress(parts[i][1])
        return blob, time.perf_counter() - t0

    # Biggest first, so the longest job starts at once.
    todo.sort(key=lambda t: -len(parts[t[0]][1]))
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
        futures = [(i, key, pool.submit(work, i)) for i, key in todo]
        for i, key, fut in futures:
            blob, secs = fut.result()
            name, raw, n, codec = parts[i]
            if cache is not None and key is not None:
                cache.put(key, blob)
            results[i] = (blob, SegmentInfo(name, str(codec), n, len(raw), len(blob), False, secs))
    return [r for r in results if r is not None]
