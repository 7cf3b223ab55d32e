"""The discovery object (loader + background coldplug + uevents + root first)
and the coldplug scheduler's messages, on built sysfs trees: each message
does what it says, the root-first policy lives in one place, the coldplug
stage line reports the background run's own time, and the null loader and
listener implement the whole interfaces."""
from __future__ import annotations

import inspect
import io
import time
from pathlib import Path

import pytest

from qemu.fakes import FakeUevents
from liveinit import coldplug as coldplug_mod
from liveinit.cmdline import RootSpec, parse
from liveinit.coldplug import (LOAD_ENDED, RELEASE, STOP, Coldplug, Job, LeaveOut, LoadEnded, Release,
                               RootFirst, Stop)
from liveinit.discovery import NET_LEFT, Discovery, NullListener, NullLoader, leave_out, root_first
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.modload import ModuleLoader
from liveinit.uevent import UeventListener
from qemu.fakesysfs import KMOD_DIR, GrowingSyscalls, SysfsBuilder
from test_coldplug import small_index


class World:
    """An AHCI controller and a virtio disk whose vda appears once virtio_blk loads;
    a load of a module in `slow` takes that many seconds."""

    def __init__(self, tmp_path: Path, slow: dict[str, float] | None = None) -> None:
        index, _ = small_index(tmp_path)
        b = SysfsBuilder(tmp_path)
        b.pci(0x8086, 0x2922, 0x010601, slot="0000:00:01.1")
        vpci = b.pci(0x1AF4, 0x1001, 0x010000, slot="0000:00:04.0")
        slow = slow or {}

        def on_load(mod: str, mods: list[str]) -> None:
            time.sleep(slow.get(mod, 0.0))
            if mod == "virtio_pci":
                b.virtio(vpci, 0, 2)
            elif mod == "virtio_blk":
                b.disk(None, "vda", 254, 0, 65536)

        self.root = tmp_path
        self.sys = GrowingSyscalls(str(tmp_path), on_load)
        self.m = Machine(str(tmp_path), self.sys)
        self.out = io.StringIO()
        self.log = Log(out=self.out)
        self.loader = ModuleLoader(self.m, index, KMOD_DIR, parse(""), self.log)
        self.events = FakeUevents()

    def discovery(self, **kw: object) -> Discovery:
        return Discovery(self.m, self.loader, self.events, self.log, **kw)

    def stage_lines(self) -> list[str]:
        return [ln for ln in self.out.getvalue().splitlines() if ln.startswith("liveinit: stage ")]


# -- the scheduler's messages -------------------------------------------------------
def test_messages_are_plain_records() -> None:
    job = Job(("ahci",), "pci 0000:00:1f.2", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01")
    assert job == Job(("ahci",), "pci 0000:00:1f.2", job.alias) and hash(job) == hash(Job(*job._values()))
    with pytest.raises(AttributeError):
        job.names = ()    # type: ignore[misc]
    assert (LOAD_ENDED, RELEASE, STOP) == (LoadEnded(), Release(), Stop())
    assert len({type(LOAD_ENDED), type(RELEASE), type(STOP), type(job)}) == 4


def test_root_first_wants_the_jobs_of_its_kind_only() -> None:
    first = root_first(RootSpec("path", "/dev/vda", False))
    assert first == RootFirst("vda", ("virtio:", "pci:v00001AF4"), (), ("pci", "virtio"))
    assert first.wants(Job(("virtio_blk",), "virtio virtio0", "virtio:d00000002v00001AF4"))
    assert not first.wants(Job(("ahci",), "pci", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"))
    nvme = root_first(RootSpec("path", "/dev/nvme0n1p2", False))
    assert nvme is not None and nvme.wants(Job(("nvme",), "pci", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02"))
    assert root_first(None) is None and root_first(RootSpec("label", "root", False)) is None


def test_stop_leaves_what_is_held_and_release_lets_it_go(tmp_path: Path) -> None:
    """Root first holds the AHCI job back; a Stop message leaves it, a Release loads it."""
    for message in ("stop", "release"):
        w = World(tmp_path / message, {"virtio_blk": 0.3})
        cp = Coldplug(w.m, w.loader, w.log)
        cp.start(3, root_first(RootSpec("path", "/dev/vda", False)))
        deadline = time.monotonic() + 5
        while "virtio_pci" not in w.loader.loaded and time.monotonic() < deadline:
            time.sleep(0.01)
        getattr(cp, message)()              # while virtio_blk still loads: ahci is held
        assert cp.wait(5) and not cp.running and cp.ended is not None
        if message == "stop":
            assert cp.stopped and [j.names for j in cp.left] == [("ahci",)]
            assert "ahci" not in w.loader.loaded and "virtio_blk" in w.loader.loaded
        else:
            assert not cp.stopped and cp.left == [] and cp.held == []
            assert {"ahci", "virtio_blk"} <= set(w.loader.loaded)


def test_a_uevent_during_the_run_is_a_job_message_loaded_by_the_run(tmp_path: Path) -> None:
    w = World(tmp_path, {"virtio_pci": 0.3})
    cp = Coldplug(w.m, w.loader, w.log)
    cp.start(3)
    ev = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:05.0/virtio9", "SUBSYSTEM": "virtio",
          "MODALIAS": "virtio:d00000002v00001AF4"}
    assert cp.handle_event(ev) == []         # queued to the scheduler, not loaded here
    assert cp.wait(5)
    assert "virtio_blk" in w.loader.loaded and "virtio/virtio9" in cp.seen


def test_a_failing_load_does_not_stop_the_others(tmp_path: Path, monkeypatch) -> None:
    w = World(tmp_path)
    real = w.loader.load_matches

    def load_matches(names, reason, alias=""):
        if "ahci" in names:
            raise RuntimeError("broken driver")
        return real(names, reason, alias)

    monkeypatch.setattr(w.loader, "load_matches", load_matches)
    cp = Coldplug(w.m, w.loader, w.log)
    cp.start(2)
    assert cp.wait(5)
    assert {"virtio_pci", "virtio_blk"} <= set(w.loader.loaded)
    assert "coldplug: loading ahci for pci 0000:00:01.1" in w.out.getvalue()


# -- the discovery object -----------------------------------------------------------
def test_coldplug_stage_line_is_the_background_runs_own_time(tmp_path: Path) -> None:
    w = World(tmp_path, {"ahci": 0.4})
    d = w.discovery()
    since = time.monotonic()
    d.start(None, since)
    assert d.running and w.stage_lines() == []     # no line while it runs
    assert d.finish(5) and not d.running
    assert d.ms is not None and d.ms >= 400 and d.waited > 0.2
    assert d.ms == pytest.approx((d.coldplug.ended - since) * 1000)
    assert w.stage_lines() == [f"liveinit: stage coldplug {d.ms:.0f} ms"]
    assert "coldplug: 3 devices with a modalias" in w.out.getvalue()
    waited = d.waited
    assert d.finish(5) and w.stage_lines() == [f"liveinit: stage coldplug {d.ms:.0f} ms"]   # once
    assert d.waited == waited
    assert w.m.costs.totals()["device waits"][0] >= 1      # the join is a wait in the costs


def test_finish_with_a_timeout_says_so_and_joins_later(tmp_path: Path) -> None:
    w = World(tmp_path, {"ahci": 0.5})
    d = w.discovery()
    d.start(None, time.monotonic())
    assert not d.finish(0.05)
    assert "coldplug still loading modules after 0.05 s; going on" in w.out.getvalue()
    assert w.stage_lines() == [] and d.ms is None
    assert d.finish() and d.ms is not None and len(w.stage_lines()) == 1


def test_device_root_found_stops_unless_persistence_or_findiso_will_look(tmp_path: Path) -> None:
    for cmdline, stopped in (("root=/dev/vda", True), ("root=/dev/vda persistence", False),
                             ("root=/dev/vda findiso=/x.iso", False)):
        w = World(tmp_path / str(len(cmdline)), {"virtio_blk": 0.2})
        cfg = parse(cmdline)
        d = w.discovery()
        d.start(parse("root=/dev/vda"), time.monotonic())
        assert d.coldplug.first is not None
        d.device_root_found(cfg)
        assert d.finish(5)
        assert d.coldplug.stopped == stopped
        assert ("ahci" in w.loader.loaded) != stopped
        assert bool(d.left) == stopped


def test_events_load_their_drivers_and_count_as_waits(tmp_path: Path) -> None:
    w = World(tmp_path)
    usb = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:01.1/ata1/host0/target0:0:0/0:0:0:0",
           "SUBSYSTEM": "scsi", "MODALIAS": "scsi:t-0x00"}
    blk = {"ACTION": "add", "DEVPATH": "/devices/x/block/sda", "SUBSYSTEM": "block"}
    w.events = FakeUevents([[usb, blk]])
    d = w.discovery()                      # no background run: loaded at once
    before = d.last_event
    assert d.events(0.5) == [usb, blk]
    assert w.loader.loaded["sd_mod"] == "uevent scsi 0:0:0:0 scsi:t-0x00"
    assert d.last_event > before
    assert w.m.costs.totals()["device waits"][0] == 1


def test_settled_needs_coldplug_over_no_slow_bus_and_quiet(tmp_path: Path, monkeypatch) -> None:
    w = World(tmp_path, {"ahci": 0.3})
    d = w.discovery()
    d.start(None, time.monotonic())
    assert not d.settled()                  # coldplug still loading
    assert d.finish(5)
    d.last_event = time.monotonic()
    assert not d.settled()                  # an event just now
    d.last_event -= 1.0
    assert d.settled()
    SysfsBuilder(tmp_path).module("usb_storage")
    assert not d.settled()                  # USB disks show up late


def test_without_a_module_index_nothing_walks_but_the_stage_line_comes(tmp_path: Path) -> None:
    w = World(tmp_path)
    d = Discovery(w.m, NullLoader(), NullListener(), w.log, walk=False)
    d.start(parse("root=/dev/vda"), time.monotonic())
    assert not d.running and d.coldplug.seen == set()
    assert d.finish() and d.ms is not None and len(w.stage_lines()) == 1
    assert w.sys.of("finit_module") == []


def test_no_thread_means_coldplug_in_order_now(tmp_path: Path, monkeypatch) -> None:
    w = World(tmp_path)

    def refuse(*a):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(coldplug_mod._thread, "start_new_thread", refuse)
    d = w.discovery()
    d.start(None, time.monotonic())
    assert not d.running and {"ahci", "virtio_pci", "virtio_blk"} <= set(w.loader.loaded)
    assert d.finish() and d.ms is not None


def _public(cls: type) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


def test_the_null_loader_and_listener_implement_the_whole_interfaces(tmp_path: Path) -> None:
    loader_methods = {"load", "load_alias", "match", "match_pci", "load_matches", "is_present"}
    assert loader_methods <= _public(ModuleLoader) and _public(NullLoader) == loader_methods
    for name in loader_methods:
        assert (list(inspect.signature(getattr(NullLoader, name)).parameters)
                == list(inspect.signature(getattr(ModuleLoader, name)).parameters))
    null = NullLoader()
    assert (null.loaded, null.failed, null.unfit) == ({}, {}, {})
    assert {"fileno", "poll", "close"} == _public(NullListener) <= _public(UeventListener)
    t = time.monotonic()
    assert NullListener().poll(5) == [] and time.monotonic() - t < 1   # sleeps at most 0.25 s


# -- network controllers: left to the booted system unless the root needs the network ------------
NIC_ALIASES = [("pci:v00008086d000010D3sv*sd*bc*sc*i*", "e1000e"), ("virtio:d00000001v*", "virtio_net"),
               ("pci:v00008086d00002922sv*sd*bc*sc*i*", "ahci"), ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"),
               ("scsi:t-0x00*", "sd_mod"), ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"),
               ("virtio:d00000002v*", "virtio_blk")]
URL = "http://10.0.2.100/live/filesystem.squashfs"


class NetWorld(World):
    """World plus an Intel 82574L (e1000e, PCI class 020000) and a virtio-net device
    (virtio0, appears with virtio_pci beside the disk's virtio1)."""

    def __init__(self, tmp_path: Path) -> None:
        deps = {"ahci": [], "sd_mod": [], "virtio_pci": [], "virtio_blk": [], "e1000e": [], "virtio_net": []}
        index, _ = small_index(tmp_path, deps=deps, aliases=NIC_ALIASES)
        b = SysfsBuilder(tmp_path)
        b.pci(0x8086, 0x2922, 0x010601, slot="0000:00:01.1")
        b.pci(0x8086, 0x10D3, 0x020000, slot="0000:00:03.0")
        vnet = b.pci(0x1AF4, 0x1000, 0x020000, slot="0000:00:05.0")
        vblk = b.pci(0x1AF4, 0x1001, 0x010000, slot="0000:00:04.0")

        def on_load(mod: str, mods: list[str]) -> None:
            if mod == "virtio_pci":
                b.virtio(vnet, 0, 1)
                b.virtio(vblk, 1, 2)
            elif mod == "virtio_blk":
                b.disk(None, "vda", 254, 0, 65536)

        self.root = tmp_path
        self.sys = GrowingSyscalls(str(tmp_path), on_load)
        self.m = Machine(str(tmp_path), self.sys)
        self.out = io.StringIO()
        self.log = Log(out=self.out)
        self.loader = ModuleLoader(self.m, index, KMOD_DIR, parse(""), self.log)
        self.events = FakeUevents()


def test_leave_out_is_the_network_unless_the_root_needs_it() -> None:
    net = leave_out(parse("root=/dev/sda1"))
    assert net == LeaveOut(("virtio:d00000001v",), ("bc02",), NET_LEFT) == leave_out(parse(""))
    assert net.wants(Job(("virtio_net",), "virtio virtio0", "virtio:d00000001v00001AF4"))
    assert net.wants(Job(("e1000",), "pci", "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"))
    assert net.wants(Job(("mlx4_core",), "pci", "pci:v000015B3d00001003sv000015B3sd00000006bc02sc80i00"))
    assert not net.wants(Job(("virtio_blk",), "virtio virtio1", "virtio:d00000002v00001AF4"))
    assert not net.wants(Job(("ahci",), "pci", "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"))
    assert not net.wants(Job(("xhci_pci",), "pci", "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"))
    for needs_network in (f"root=live:{URL}", f"fetch={URL}", "root=/dev/sda1 ip=dhcp",
                          "ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off"):
        assert leave_out(parse(needs_network)) is None, needs_network
    assert leave_out(None) is None


@pytest.mark.parametrize("cmdline, left", [("", True), ("root=/dev/sda1", True), (f"root=live:{URL}", False),
                                            ("ip=dhcp", False)])
def test_network_controllers_are_left_to_the_booted_system(tmp_path: Path, cmdline: str, left: bool) -> None:
    """A live medium or a disk root: the NIC drivers are never loaded, and the record
    says what was left and why; a URL root or ip=: they load like any driver."""
    w = NetWorld(tmp_path)
    d = w.discovery()
    d.start(parse(cmdline), time.monotonic())
    assert d.finish(5)
    loaded = set(w.loader.loaded)
    assert {"virtio_pci", "virtio_blk"} <= loaded
    assert ("e1000e" in loaded, "virtio_net" in loaded) == (not left, not left)
    spared = [job.names for job in d.coldplug.spared]
    if left:
        # the virtio-net's PCI function is a network controller too; virtio_pci loads for the disk
        assert sorted(spared) == [("e1000e",), ("virtio_net",), ("virtio_pci",)]
        (entry,) = [e for e in d.left if NET_LEFT in e]
        assert "e1000e for pci 0000:00:03.0 [8086:10d3] class 020000" in entry
        assert "virtio_net for virtio virtio0 virtio:d00000001v00001AF4" in entry
        assert "virtio_pci" not in entry            # it is in the kernel: nothing was left
        assert "coldplug: left to the booted system: " in w.out.getvalue()
        assert [c[1] for c in w.sys.of("finit_module") if c[1] in ("e1000e", "virtio_net")] == []
    else:
        assert spared == [] and not any(NET_LEFT in e for e in d.left)


def test_a_hotplugged_nic_is_left_too(tmp_path: Path) -> None:
    """A NIC's uevent after coldplug ended goes the same way (USB or PCI hotplug)."""
    w = NetWorld(tmp_path)
    ev = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:09.0/virtio7", "SUBSYSTEM": "virtio",
          "MODALIAS": "virtio:d00000001v00001AF4"}
    w.events = FakeUevents([[ev]])
    d = w.discovery()
    d.start(parse(""), time.monotonic())
    assert d.finish(5)
    assert d.events(0.5) == [ev]
    assert "virtio_net" not in w.loader.loaded
    assert d.coldplug.spared[-1].reason == "uevent virtio virtio7 virtio:d00000001v00001AF4"
    w2 = NetWorld(tmp_path / "url")
    w2.events = FakeUevents([[ev]])
    d2 = w2.discovery()
    d2.start(parse(f"root=live:{URL}"), time.monotonic())
    assert d2.finish(5) and d2.events(0.5) == [ev] and "virtio_net" in w2.loader.loaded
