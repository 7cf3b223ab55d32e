"""Phase timing, a progress line for long phases, and the pack summary.

`Reporter.phase(name)` times a block (like mkosi's complete_step); the
progress line is drawn only when stdout is a terminal and not quiet."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

T = TypeVar("T")
PROGRESS_EVERY = 0.1  # seconds between redraws


@dataclass
class Reporter:
    """Collects phase times and prints according to the verbosity."""

    quiet: bool = False
    verbose: int = 0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    times: dict[str, float] = field(default_factory=dict)

    @property
    def tty(self) -> bool:
        return not self.quiet and self.out.isatty()

    def info(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=self.out)

    def debug(self, msg: str) -> None:
        if self.verbose and not self.quiet:
            print(msg, file=self.out)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase; times of a repeated name add up."""
        t0 = time.perf_counter()
        self.debug(f"{name}...")
        status = self.tty and not self.verbose
        if status:      # a transient status line, erased when the phase ends
            self.out.write(f"\r{name}...")
            self.out.flush()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.times[name] = self.times.get(name, 0.0) + dt
            if status:
                self.out.write("\r" + " " * (len(name) + 3) + "\r")
                self.out.flush()
            self.debug(f"{name}: {dt * 1000:.0f} ms")

    def progress(self, items: Iterable[T], total: int, label: str) -> Iterator[T]:
        """Yield `items`, drawing `label n/total` on a terminal."""
        if not self.tty or total == 0:
            yield from items
            return
        last = 0.0
        for i, item in enumerate(items, 1):
            now = time.perf_counter()
            if now - last >= PROGRESS_EVERY or i == total:
                self.out.write(f"\r{label} {i}/{total}")
                self.out.flush()
                last = now
            yield item
        self.out.write("\r" + " " * (len(label) + 2 * len(str(total)) + 2) + "\r")
        self.out.flush()


def human(n: float) -> str:
    """Bytes as a short human string (1024-based)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
