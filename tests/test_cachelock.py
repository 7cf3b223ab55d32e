"""packer.cachelock: a second process waits for the first to finish the entry."""
from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from packer.cachelock import locked


def _build(entry: str, log: str) -> None:
    with locked(Path(entry)):
        with open(log, "a") as f:
            f.write("start\n")
        time.sleep(0.3)
        with open(log, "a") as f:
            f.write("end\n")


def test_builders_take_turns(tmp_path: Path) -> None:
    entry, log = tmp_path / "cache" / "tree", tmp_path / "log"
    procs = [multiprocessing.Process(target=_build, args=(str(entry), str(log))) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    # Never two builders inside at once: starts and ends alternate.
    assert log.read_text().split() == ["start", "end"] * 3
    assert (tmp_path / "cache" / "tree.lock").exists()
