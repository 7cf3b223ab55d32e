"""scripts/fuzz.py kept working: every target runs a few hundred inputs with no
crash, inputs are reproducible, and a crash, a Python hang and a parser stuck
in C code are each caught and written out with a reproducer."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "fuzz.py"
sys.path.insert(0, str(SCRIPT.parent))

import fuzz  # noqa: E402

COUNT = 300


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_target_runs_without_a_crash(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--count", str(COUNT), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    names = {t["target"] for t in summary["targets"]}
    assert {"cmdline.parse", "uevent.parse", "cpio.read_archive", "fsprobe.probe", "fsprobe.partition_table",
            "kmodindex.loads", "modules.alias", "modprobe.d"} <= names
    assert {f"fsprobe.{t}" for t in fuzz.fsprobe.FILESYSTEM_TYPES} <= names
    for t in summary["targets"]:
        assert t["inputs"] == COUNT and t["crashes"] == {}, t
        assert (out / t["target"] / "slowest.bin").exists()
    table = fuzz.markdown(summary).splitlines()     # what docs/RELIABILITY.md shows
    assert len(table) == 2 + len(names) and all(f"| {COUNT} | 0 |" in row for row in table[2:])
    # The mutations reach both sides of each parser: accepted and refused inputs.
    by_name = {t["target"]: t for t in summary["targets"]}
    for name in ("cpio.read_archive", "fsprobe.probe", "fsprobe.ext4", "fsprobe.partition_table",
                 "uevent.parse"):
        assert 0.05 * COUNT < by_name[name]["accepted"] < 0.95 * COUNT, by_name[name]


def _target(call: object, allowed: tuple[type[BaseException], ...] = ()) -> fuzz.Target:
    return fuzz.Target("fake", call, [b"seed one", b"seed two"], allowed=allowed)  # type: ignore[arg-type]


def test_inputs_are_a_function_of_seed_target_and_number() -> None:
    t = _target(lambda data: data)
    first = [fuzz.make_input(7, t, i) for i in range(200)]
    assert first == [fuzz.make_input(7, t, i) for i in range(200)]
    assert first[:2] == t.seeds                      # the seeds themselves come first
    assert first != [fuzz.make_input(8, t, i) for i in range(200)]
    assert len(set(first)) > 150


def test_crashes_and_hangs_are_recorded_with_reproducers(tmp_path: Path) -> None:
    def parser(data: bytes) -> object:
        if data == b"seed two":
            raise KeyError("boom")                    # not the documented error
        if len(data) == 8 and data != b"seed one":
            time.sleep(5)                             # a Python-level hang
        raise ValueError("refused")                   # the documented error
    t = _target(parser, allowed=(ValueError,))
    res = fuzz.run_isolated(t, 1, 40, budget=60, input_timeout=0.2)
    assert res.count == 40
    keyerror = [s for s in res.crashes if s.startswith("KeyError at")]
    assert keyerror and res.crashes[keyerror[0]] == [1]
    hangs = res.crashes.get("hang over 0.2 s", [])
    assert hangs == [i for i in range(2, 40) if len(fuzz.make_input(1, t, i)) == 8
                     and fuzz.make_input(1, t, i) != b"seed one"]
    assert len(hangs) >= 3
    fuzz.save(t, res, 1, tmp_path)
    text = (tmp_path / "fake" / "crash0-1.txt").read_text()
    assert "KeyError" in text and "--seed 1 --only fake --replay 1" in text
    assert (tmp_path / "fake" / "crash0-1.bin").read_bytes() == b"seed two"


def test_a_parser_stuck_in_c_code_is_killed_and_the_run_goes_on() -> None:
    def parser(data: bytes) -> object:
        if data == b"seed two":
            sum(range(10**15))                        # a C loop: no signal handler runs until it ends
        return data
    t = _target(parser)
    t0 = time.monotonic()
    res = fuzz.run_isolated(t, 1, 20, budget=60, input_timeout=0.3)
    assert time.monotonic() - t0 < 20
    assert res.crashes == {"killed: no return (stuck in C code)": [1]}
    assert res.count == 20 and res.accepted >= 15
