"""Coldplug on real captured sysfs trees (tests/data/sysfs/*, from QEMU guests)
and on built trees: the modules loaded are the ones kmod's modprobe picks for
the same modaliases, new devices revealed by a load are handled in the next
pass, bound devices are skipped, and the walk stays cheap at 1,000 devices."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from qemu.fakes import FakeUevents
from liveinit.coldplug import Coldplug, Job
from liveinit.discovery import Discovery
from liveinit.kmodindex import ModuleIndex
from liveinit.modload import ModuleLoader
from liveinit.cmdline import parse
from packer.modindex import from_moddir
from qemu.fakesysfs import (KMOD_DIR, StagedTree, SysfsBuilder, link_kernel_modules, machine,
                           populate, quiet_log, write_moddir)

DATA = Path(__file__).parent / "data" / "sysfs"
CAPTURES = sorted(p.name for p in DATA.iterdir() if (p / "sys").is_dir())


@pytest.fixture(scope="session")
def kindex(depmod_root: Path, kernel) -> tuple[ModuleIndex, Path, str]:
    moddir = depmod_root / "lib" / "modules" / kernel.version
    return from_moddir(str(moddir)), moddir, kernel.version


def coldplug(m, loader, log, workers: int = 3) -> int:
    """Coldplug as the boot runs it (in the background, `workers` loads at once), joined;
    returns the modules it loaded."""
    discovery = Discovery(m, loader, FakeUevents(), log)
    discovery.start(None, since=time.monotonic(), workers=workers)
    assert discovery.finish(30)
    return discovery.coldplug.loaded


def staged(name: str, tmp_path: Path, kindex):
    index, moddir, kver = kindex
    root = tmp_path / name
    tree = StagedTree(DATA / name, root)
    kdir = link_kernel_modules(root, moddir, kver)
    m, sysc = machine(root, lambda mod, mods: tree.materialize(mods))
    log = quiet_log()
    loader = ModuleLoader(m, index, kdir, parse(""), log)
    return m, sysc, loader, log, tree


def modprobe_oracle(depmod_root: Path, kver: str, aliases: set[str], tmp_path: Path) -> set[str]:
    """Every module kmod's modprobe would insert for these modaliases (deps included)."""
    empty = tmp_path / "no-modprobe.d"
    empty.mkdir(exist_ok=True)
    out: set[str] = set()
    for a in sorted(aliases):
        r = subprocess.run(["modprobe", "-d", str(depmod_root), "-S", kver, "-C", str(empty),
                            "--show-depends", "-q", a], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            if line.startswith("insmod "):
                out.add(os.path.basename(line.split()[1]).split(".ko")[0].replace("-", "_"))
    return out


def unbound_modaliases(capture: Path) -> set[str]:
    """Modaliases of bus devices that are not bound to a built-in driver in the capture."""
    out = set()
    for bus in (capture / "sys" / "bus").iterdir():
        devs = bus / "devices"
        if not devs.is_dir():
            continue
        for d in devs.iterdir():
            alias = d / "modalias"
            if not alias.is_file() or not alias.read_text().strip():
                continue
            if (d / "driver").is_symlink() and not (d / "driver" / "module").is_symlink():
                continue  # a built-in driver took it: nothing to load
            out.add(alias.read_text().strip())
    return out


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_tree_loads_what_modprobe_would(name, tmp_path, kindex, depmod_root):
    m, sysc, loader, log, tree = staged(name, tmp_path, kindex)
    n = coldplug(m, loader, log)
    expected = modprobe_oracle(depmod_root, kindex[2], unbound_modaliases(DATA / name), tmp_path)
    assert set(loader.loaded) == expected
    assert n == len(expected)
    assert not loader.failed
    # Each module inserted once, and everything the guest's own modprobe loop loaded is there.
    names = [c[1] for c in sysc.of("finit_module")]
    assert len(names) == len(set(names))
    guest = set((DATA / name / "loaded.txt").read_text().split())
    assert guest <= set(loader.loaded)


# What a person expects per machine: the driver, and the disk drivers found on the next pass.
EXPECTED = {
    "q35-ahci": ("ahci", ("sd_mod", "sr_mod")),
    "pc-ide": ("ata_piix", ("sr_mod",)),
    "virtio-blk": ("virtio_pci", ("virtio_blk",)),
    "nvme": ("nvme", ()),
    "usb-xhci": ("xhci_pci", ("usb_storage", "sd_mod")),
}


@pytest.mark.parametrize("name", CAPTURES)
def test_captured_tree_multi_pass_order(name, tmp_path, kindex):
    m, sysc, loader, log, tree = staged(name, tmp_path, kindex)
    coldplug(m, loader, log)
    hba, later = EXPECTED[name]
    order = [c[1] for c in sysc.of("finit_module")]
    assert hba in order
    assert loader.loaded[hba].startswith("pci 0000:")
    for mod in later:
        # Only visible after the HBA driver "ran": a later pass found it.
        assert order.index(mod) > order.index(hba), (mod, order)
        assert not loader.loaded[mod].startswith("pci ")


def test_pci_reason_names_slot_ids_and_class(tmp_path, kindex):
    m, sysc, loader, log, tree = staged("q35-ahci", tmp_path, kindex)
    coldplug(m, loader, log)
    assert loader.loaded["ahci"] == "pci 0000:00:1f.2 [8086:2922] class 010601"
    assert loader.loaded["libahci"] == "dep of ahci"
    assert "loaded ahci: pci 0000:00:1f.2 [8086:2922] class 010601" in log.out.getvalue()


def small_index(tmp_path: Path, **kw) -> tuple[ModuleIndex, Path]:
    deps = kw.pop("deps", {"ahci": ["libahci", "libata"], "libahci": ["libata"], "libata": ["scsi_mod"],
                           "scsi_mod": [], "sd_mod": ["scsi_mod"], "sr_mod": ["scsi_mod", "cdrom"],
                           "cdrom": [], "virtio_pci": [], "virtio_blk": [], "e1000e": []})
    aliases = kw.pop("aliases", [
        ("pci:v00008086d00002922sv*sd*bc*sc*i*", "ahci"), ("pci:v*d*sv*sd*bc01sc06i01*", "ahci"),
        ("scsi:t-0x00*", "sd_mod"), ("scsi:t-0x05*", "sr_mod"),
        ("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"), ("virtio:d00000002v*", "virtio_blk"),
        ("pci:v00008086d000010D3sv*sd*bc*sc*i*", "e1000e")])
    moddir = write_moddir(tmp_path, deps, aliases, **kw)
    return from_moddir(str(moddir), (str(tmp_path / "etc" / "modprobe.d"),)), moddir


def test_tree_grows_after_each_load(tmp_path):
    """ahci reveals two scsi devices; sd_mod reveals nothing; virtio_pci reveals virtio0."""
    index, _ = small_index(tmp_path)
    b = SysfsBuilder(tmp_path)
    ahci = b.ahci_disk()
    vpci = b.pci(0x1AF4, 0x1001, 0x010000)

    def on_load(mod, mods):
        if mod == "ahci":
            b.scsi(ahci / "ata1", "0:0:0:0", 0)
            b.scsi(ahci / "ata2", "1:0:0:0", 5)
        elif mod == "virtio_pci":
            b.virtio(vpci, 0, 2)

    m, sysc = machine(tmp_path, on_load)
    log = quiet_log()
    loader = ModuleLoader(m, index, KMOD_DIR, parse(""), log)
    cp = Coldplug(m, loader, log)
    assert cp.run() == len(loader.loaded)
    order = [c[1] for c in sysc.of("finit_module")]
    assert set(order[:5]) == {"scsi_mod", "libata", "libahci", "ahci", "virtio_pci"}  # pass 1
    assert order.index("scsi_mod") < order.index("libata") < order.index("libahci") < order.index("ahci")
    assert set(order[5:]) == {"virtio_blk", "sd_mod", "cdrom", "sr_mod"}            # pass 2
    assert order.index("sd_mod") > order.index("ahci")
    assert order.index("virtio_blk") > order.index("virtio_pci")
    assert loader.loaded["sr_mod"] == "scsi 1:0:0:0 scsi:t-0x05"
    # Nothing new now: another run inserts nothing.
    before = len(sysc.calls)
    assert cp.run() == 0
    assert len(sysc.calls) == before


def test_bound_devices_and_loaded_modules_are_skipped(tmp_path):
    index, _ = small_index(tmp_path)
    b = SysfsBuilder(tmp_path)
    b.pci(0x8086, 0x2922, 0x010601, driver="ahci", module="ahci")   # already bound
    b.pci(0x8086, 0x10D3, 0x020000)                                  # unbound NIC
    b.module("e1000e")                                               # ...but its module is in
    m, sysc = machine(tmp_path)
    loader = ModuleLoader(m, index, KMOD_DIR, parse(""), quiet_log())
    assert coldplug(m, loader, quiet_log()) == 0
    assert sysc.of("finit_module") == []


def test_blacklisted_module_not_loaded_for_a_device(tmp_path):
    index, _ = small_index(tmp_path, modprobe_d="blacklist e1000e\n")
    b = SysfsBuilder(tmp_path)
    b.pci(0x8086, 0x10D3, 0x020000)
    b.ahci_disk()
    m, sysc = machine(tmp_path)
    loader = ModuleLoader(m, index, KMOD_DIR, parse("modprobe.blacklist=ahci"), quiet_log())
    coldplug(m, loader, quiet_log())
    assert sysc.of("finit_module") == []
    assert set(loader.skipped) == {"ahci", "e1000e"}


def test_uevent_add_with_modalias_loads_its_driver(tmp_path):
    index, _ = small_index(tmp_path)
    SysfsBuilder(tmp_path)
    m, sysc = machine(tmp_path)
    log = quiet_log()
    loader = ModuleLoader(m, index, KMOD_DIR, parse(""), log)
    cp = Coldplug(m, loader, log)
    ev = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
          "SUBSYSTEM": "scsi", "MODALIAS": "scsi:t-0x00"}
    assert cp.handle_event(ev) == ["sd_mod"]
    assert cp.handle_event({**ev, "ACTION": "remove"}) == []
    assert cp.handle_event({"ACTION": "add", "DEVPATH": "/devices/x", "SUBSYSTEM": "block"}) == []
    assert loader.loaded["sd_mod"] == "uevent scsi 0:0:0:0 scsi:t-0x00"


@pytest.mark.parametrize("n", [10, 100, 1000])
def test_builder_scale_walk_is_fast(n, tmp_path, kindex):
    """Walk + match of a built tree with n devices, against the full Debian alias index."""
    index, moddir, kver = kindex
    b = SysfsBuilder(tmp_path)
    populate(b, n)
    kdir = link_kernel_modules(tmp_path, moddir, kver)
    m, sysc = machine(tmp_path)
    loader = ModuleLoader(m, index, kdir, parse(""), quiet_log())
    cp = Coldplug(m, loader, quiet_log())
    t = time.perf_counter()
    cp.walk()
    elapsed = time.perf_counter() - t
    seen = len(cp.seen)
    assert seen >= n
    assert {"xhci_pci", "virtio_blk"} <= set(loader.loaded)
    assert "ahci" not in loader.loaded  # /sys/module/ahci exists: already in the kernel
    print(f"\ncoldplug walk+match, {n} devices ({seen} bus entries): {elapsed * 1000:.1f} ms")
    assert elapsed < 0.002 * n + 0.5   # linear, a few ms per device at worst on a loaded host


# -- liveinit capture-sysfs -----------------------------------------------------

def test_capture_roundtrips_a_captured_tree(tmp_path):
    """Capturing a captured tree gives it back exactly: files, contents, links."""
    from packer.cli import main
    dest = tmp_path / "copy"
    assert main(["-q", "capture-sysfs", "--root", str(DATA / "q35-ahci"), str(dest)]) == 0
    r = subprocess.run(["diff", "-r", "--no-dereference", str(DATA / "q35-ahci" / "sys"), str(dest / "sys")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_capture_of_this_host_reads_the_same_as_the_host(tmp_path):
    from liveinit import blockdev
    from packer.cli import main
    from qemu.fakesysfs import machine as fake_machine
    dest = tmp_path / "host"
    assert main(["-q", "capture-sysfs", str(dest)]) == 0
    live, _ = fake_machine(Path("/"))
    copy, _ = fake_machine(dest)
    assert blockdev.scan(copy) == blockdev.scan(live)
    host_aliases = {p.read_text().strip() for p in Path("/sys/bus").glob("*/devices/*/modalias")
                    if p.read_text().strip()}
    copied = {p.read_text().strip() for p in (dest / "sys" / "bus").glob("*/devices/*/modalias")
              if p.read_text().strip()}
    assert copied == host_aliases


def test_capture_refuses_a_non_sysfs_root(tmp_path, capsys):
    from packer.cli import main
    assert main(["capture-sysfs", "--root", str(tmp_path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "has no devices/ directory: not a sysfs tree" in err and "hint: pass --root" in err


# -- uevent --------------------------------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402

from liveinit.uevent import UeventListener, parse as parse_uevent  # noqa: E402

_key = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=12)
_val = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=40)


@given(st.sampled_from(["add", "remove", "change", "bind", "unbind"]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789:./-_", min_size=1, max_size=60),
       st.dictionaries(_key, _val, max_size=8))
def test_uevent_parse_roundtrip(action, devpath, env):
    devpath = "/" + devpath
    env = {k: v for k, v in env.items() if k not in ("ACTION", "DEVPATH")}
    msg = f"{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0" + "".join(f"{k}={v}\0" for k, v in env.items())
    assert parse_uevent(msg.encode()) == {"ACTION": action, "DEVPATH": devpath, **env}


def test_uevent_parse_ignores_udev_broadcasts():
    assert parse_uevent(b"libudev\0\xfe\xed\xca\xfe rest") is None


def test_uevent_listener_opens_a_netlink_socket():
    listener = UeventListener(None)
    try:
        assert listener.fileno() >= 0
        t = time.perf_counter()
        listener.poll(0.05)   # whatever the host sends (usually nothing) within 50 ms
        assert time.perf_counter() - t < 1
    finally:
        listener.close()


# -- in parallel, root first -------------------------------------------------------

from liveinit import coldplug as coldplug_mod  # noqa: E402
from liveinit import discovery as discovery_mod  # noqa: E402
from liveinit.cmdline import RootSpec, parse as parse_cmdline  # noqa: E402
from qemu.fakesysfs import GrowingSyscalls  # noqa: E402
from liveinit.machine import Machine  # noqa: E402


class SlowSyscalls(GrowingSyscalls):
    """Loads take `delays[name]` seconds outside any lock (module init probing hardware)."""

    def __init__(self, root: str, on_load, delays: dict[str, float]) -> None:
        super().__init__(root, on_load)
        self.delays = delays
        self.ended: dict[str, float] = {}

    def finit_module(self, fd: int, params: str = "", flags: int = 0) -> bool:
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).split(".ko")[0]
        time.sleep(self.delays.get(name, 0.0))
        fresh = super().finit_module(fd, params, flags)
        self.ended[name] = time.monotonic()
        return fresh


def ide_and_virtio(tmp_path: Path, delays: dict[str, float]):
    """An AHCI controller walked before a virtio-blk disk whose vda appears with virtio_blk."""
    index, _ = small_index(tmp_path)
    b = SysfsBuilder(tmp_path)
    b.pci(0x8086, 0x2922, 0x010601, slot="0000:00:01.1")
    vpci = b.pci(0x1AF4, 0x1001, 0x010000, slot="0000:00:04.0")

    def on_load(mod, mods):
        if mod == "virtio_pci":
            b.virtio(vpci, 0, 2)
        elif mod == "virtio_blk":
            b.disk(None, "vda", 254, 0, 65536)

    sysc = SlowSyscalls(str(tmp_path), on_load, delays)
    m = Machine(str(tmp_path), sysc)
    log = quiet_log()
    return m, sysc, ModuleLoader(m, index, KMOD_DIR, parse(""), log), log


def test_a_slow_driver_does_not_delay_another_device(tmp_path):
    m, sysc, loader, log = ide_and_virtio(tmp_path, {"ahci": 0.6})
    assert coldplug(m, loader, log, workers=3) == len(loader.loaded)
    assert {"ahci", "virtio_pci", "virtio_blk"} <= set(loader.loaded)
    assert sysc.ended["virtio_blk"] < sysc.ended["ahci"]       # loaded while ahci "probed"
    assert "coldplug: 3 devices with a modalias" in log.out.getvalue()


def test_one_worker_is_the_sequential_order(tmp_path):
    m, sysc, loader, log = ide_and_virtio(tmp_path, {"ahci": 0.2})
    coldplug(m, loader, log, workers=1)
    assert sysc.ended["virtio_blk"] > sysc.ended["ahci"]       # pass 2, after all of pass 1


def test_each_module_is_inserted_once_across_threads(tmp_path):
    index, _ = small_index(tmp_path)
    b = SysfsBuilder(tmp_path)
    for slot in range(6):   # six virtio devices, one driver
        b.pci(0x1AF4, 0x1000 + slot, 0x010000, slot=f"0000:00:0{slot}.0")
    sysc = SlowSyscalls(str(tmp_path), None, {"virtio_pci": 0.2})
    m = Machine(str(tmp_path), sysc)
    loader = ModuleLoader(m, index, KMOD_DIR, parse(""), quiet_log())
    coldplug(m, loader, quiet_log(), workers=3)
    assert [c[1] for c in sysc.of("finit_module")] == ["virtio_pci"]


def discover(m, loader, log, root: RootSpec | None = None) -> Discovery:
    """The boot's discovery, its coldplug started in the background."""
    d = Discovery(m, loader, FakeUevents(), log)
    d.start(None if root is None else parse_cmdline("").replace(root=root), since=time.monotonic())
    return d


def device_root_found(d: Discovery, tmp_path: Path, name: str) -> None:
    """What the root search does once /dev/NAME is there (a device root, nothing else asked)."""
    deadline = time.monotonic() + 5
    while not (tmp_path / "sys/class/block" / name).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    d.device_root_found(parse_cmdline(f"root=/dev/{name}"))


def test_root_first_holds_other_buses_and_stop_leaves_them(tmp_path):
    m, sysc, loader, log = ide_and_virtio(tmp_path, {})
    d = discover(m, loader, log, RootSpec("path", "/dev/vda", False))
    cp = d.coldplug
    assert cp.running and cp.first is not None and cp.first.device == "vda"
    device_root_found(d, tmp_path, "vda")
    assert d.finish(5)
    assert {"virtio_pci", "virtio_blk"} <= set(loader.loaded)
    assert "ahci" not in loader.loaded and "libata" not in loader.loaded
    assert [job.names for job in cp.left] == [("ahci",)]
    assert "left to the booted system: ahci for pci 0000:00:01.1" in log.out.getvalue()
    assert d.left == ["ahci for pci 0000:00:01.1 [8086:2922] class 010601"]
    assert not d.running and not cp.running


def test_root_first_releases_the_rest_when_the_root_is_elsewhere(tmp_path):
    """root=/dev/vdb but the virtio disk is vda: once virtio is done, everything loads."""
    m, sysc, loader, log = ide_and_virtio(tmp_path, {})
    cp = discover(m, loader, log, RootSpec("path", "/dev/vdb", False)).coldplug
    assert cp.wait(5)
    assert sysc.ended["ahci"] > sysc.ended["virtio_blk"]
    assert cp.left == [] and cp.held == []


def virtio_and_platform(tmp_path: Path):
    """A virtio disk (vda with virtio_blk) and a PC speaker on the platform bus."""
    deps = {"virtio_pci": [], "virtio_blk": [], "pcspkr": []}
    aliases = [("pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio_pci"), ("virtio:d00000002v*", "virtio_blk"),
               ("platform:pcspkr", "pcspkr")]
    index, _ = small_index(tmp_path, deps=deps, aliases=aliases)
    b = SysfsBuilder(tmp_path)
    vpci = b.pci(0x1AF4, 0x1001, 0x010000, slot="0000:00:04.0")
    b.device(None, "pcspkr", "platform", "platform:pcspkr")

    def on_load(mod, mods):
        if mod == "virtio_pci":
            b.virtio(vpci, 0, 2)
        elif mod == "virtio_blk":
            b.disk(None, "vda", 254, 0, 65536)

    sysc = SlowSyscalls(str(tmp_path), on_load, {})
    m = Machine(str(tmp_path), sysc)
    log = quiet_log()
    return m, sysc, ModuleLoader(m, index, KMOD_DIR, parse(""), log), log


def test_root_first_does_not_walk_the_other_buses_before_the_root(tmp_path):
    """root=/dev/vda: pci and virtio only; the platform bus is the booted system's."""
    m, sysc, loader, log = virtio_and_platform(tmp_path)
    d = discover(m, loader, log, RootSpec("path", "/dev/vda", False))
    cp = d.coldplug
    device_root_found(d, tmp_path, "vda")
    assert d.finish(5)
    assert set(loader.loaded) == {"virtio_pci", "virtio_blk"}
    assert cp.devices == 2                       # the speaker's modalias was never read
    assert "platform" in cp.unwalked
    assert d.left[-1].startswith("the devices on ") and "platform" in d.left[-1]
    assert "not walked: root first" in log.out.getvalue()


def test_root_first_walks_the_other_buses_when_the_root_is_not_there(tmp_path):
    m, sysc, loader, log = virtio_and_platform(tmp_path)
    cp = discover(m, loader, log, RootSpec("path", "/dev/vdb", False)).coldplug
    assert cp.wait(5)
    assert set(loader.loaded) == {"virtio_pci", "virtio_blk", "pcspkr"}
    assert sysc.ended["pcspkr"] > sysc.ended["virtio_blk"] and cp.unwalked == []


def test_releasing_root_first_walks_the_rest(tmp_path):
    """The root search wants every driver (a live medium, persistence): finish without stop."""
    m, sysc, loader, log = virtio_and_platform(tmp_path)
    d = discover(m, loader, log, RootSpec("path", "/dev/vda", False))
    assert d.finish(5)
    assert "pcspkr" in loader.loaded and d.left == []


def test_root_first_needs_a_telling_name(tmp_path):
    m, sysc, loader, log = ide_and_virtio(tmp_path, {})
    for spec in (RootSpec("path", "/dev/sda1", False), RootSpec("uuid", "x", False),
                 RootSpec("path", "/dev/vda", True)):
        assert discovery_mod.root_first(spec) is None
        cp = discover(m, loader, log, spec).coldplug
        assert cp.wait(5) and cp.first is None and cp.held == [] and cp.unwalked == []
    assert discovery_mod.root_first(RootSpec("path", "/dev/nvme0n1p2", False)).buses == ("pci", "nvme")


def test_uevent_during_a_background_run_is_handed_to_it(tmp_path):
    m, sysc, loader, log = ide_and_virtio(tmp_path, {"virtio_pci": 0.3})
    d = discover(m, loader, log)
    ev = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:04.0/virtio0",
          "SUBSYSTEM": "virtio", "MODALIAS": "virtio:d00000002v00001AF4"}
    assert d.coldplug.handle_event(ev) == []          # nothing loaded in the caller's thread
    assert d.finish(5)
    assert "virtio0" in loader.loaded["virtio_blk"]    # the run loaded it (event or walk)


def test_no_threads_means_coldplug_in_order(tmp_path, monkeypatch):
    """A kernel refusing new threads must not cost the boot its drivers."""
    m, sysc, loader, log = ide_and_virtio(tmp_path, {})

    def refuse(*a):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(coldplug_mod._thread, "start_new_thread", refuse)
    d = discover(m, loader, log)
    assert not d.running and d.coldplug.wait(0)
    assert {"ahci", "virtio_pci", "virtio_blk"} <= set(loader.loaded)
    assert "coldplug in the background impossible" in log.out.getvalue()


def test_a_device_announced_as_the_background_run_ends_is_not_lost(tmp_path):
    """An SD card shows up (uevent) right after the run's last walk saw nothing new.
    Its modalias is only in the uevent (mmc cards have no modalias file): the run
    must load what the event handed over before it ends."""
    index, _ = small_index(tmp_path, deps={"sdhci_pci": [], "mmc_block": []},
                           aliases=[("pci:v00001B36d00000007sv*sd*bc*sc*i*", "sdhci_pci"),
                                    ("mmc:block", "mmc_block")])
    b = SysfsBuilder(tmp_path)
    host = b.pci(0x1B36, 0x0007, 0x080501, slot="0000:00:02.0")
    ev = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:02.0/mmc_host/mmc0/mmc0:0001",
          "SUBSYSTEM": "mmc", "MODALIAS": "mmc:block"}

    class CardAfterLastWalk(Coldplug):
        fired = False

        def _unseen(self):
            found = list(super()._unseen())
            if not found and not self.fired and self.running:
                CardAfterLastWalk.fired = True
                b.device(host, "mmc0:0001", "mmc")      # no modalias file
                assert self.handle_event(ev) == []      # running: handed over to the run
            return iter(found)

    sysc = SlowSyscalls(str(tmp_path), None, {})
    m = Machine(str(tmp_path), sysc)
    log = quiet_log()
    loader = ModuleLoader(m, index, KMOD_DIR, parse(""), log)
    cp = CardAfterLastWalk(m, loader, log)
    cp.start(3)
    assert cp.wait(5) and CardAfterLastWalk.fired
    assert loader.loaded.get("mmc_block") == "uevent mmc mmc0:0001 mmc:block"
