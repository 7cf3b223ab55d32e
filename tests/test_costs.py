"""The boot costs: durations summed by kind, and the seam's timing wrapper."""
from __future__ import annotations

import _thread

import pytest

from liveinit.costs import KINDS, LOADS, MOUNTS, PROBING, WAITS, Costs, Timed


class Calls:
    def __init__(self) -> None:
        self.held = {"loop0": 3}

    def finit_module(self, fd: int, params: str = "") -> bool:
        return fd == 5

    def mount(self, *a) -> None:
        raise OSError(16, "busy")

    def chdir(self, path: str) -> str:
        return path


def test_totals_sum_by_kind_in_a_fixed_order() -> None:
    p = Costs()
    p.add(WAITS, 0.010)
    p.add(LOADS, 0.100)
    p.add(LOADS, 0.050)
    p.add("something new", 0.001)
    t = p.totals()
    assert list(t) == [LOADS, WAITS, "something new"]
    assert t[LOADS] == (2, pytest.approx(150.0)) and t[WAITS] == (1, pytest.approx(10.0))
    assert p.summary() == "module loads 150 ms (2), device waits 10 ms (1), something new 1 ms (1)"
    assert Costs().summary() == "" and Costs().totals() == {}
    assert set(KINDS) >= {LOADS, MOUNTS, WAITS, PROBING}


def test_timed_counts_loads_and_mounts_even_when_they_fail_and_passes_the_rest() -> None:
    p = Costs()
    sys_ = Timed(Calls(), p)
    assert sys_.finit_module(5) is True and sys_.finit_module(6, "x=1") is False
    with pytest.raises(OSError):
        sys_.mount("a", "/b", "ext4", 0, None)
    assert sys_.chdir("/x") == "/x"       # not a timed kind: the object's own method
    assert sys_.held == {"loop0": 3}       # attributes pass through
    assert [k for k, _ in p.spent] == [LOADS, LOADS, MOUNTS]


def test_work_is_thread_cpu_time_and_waits_are_wall_time() -> None:
    import time
    p = Costs()
    b = p.begin(WAITS)
    time.sleep(0.05)
    p.end(WAITS, b)
    b = p.begin(PROBING)
    time.sleep(0.05)                    # sleeping uses no CPU: not probing work
    p.end(PROBING, b)
    t = p.totals()
    assert t[WAITS][1] >= 45 and t[PROBING][1] < 20


def test_threads_add_without_losing_any() -> None:
    p = Costs()
    locks = [_thread.allocate_lock() for _ in range(4)]

    def work(done) -> None:
        for _ in range(2000):
            p.add(LOADS, 0.001)
        done.release()

    for lock in locks:
        lock.acquire()
        _thread.start_new_thread(work, (lock,))
    assert all(lock.acquire(True, 30) for lock in locks)
    assert p.totals()[LOADS][0] == 8000
