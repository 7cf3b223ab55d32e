"""One writer at a time for a cache entry shared between processes.

Two `liveinit` runs (or two test workers) may build the same cached thing at
once: a debootstrap tree, downloaded packages, a prepared disk image. The
first takes an exclusive lock beside the entry and builds it; the others
wait on the lock, then find it built."""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(entry: Path) -> Iterator[None]:
    """Hold `ENTRY.lock` (created as needed) exclusively while the block runs."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{entry}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)   # closing releases the lock
