"""Coldplug: load the modules for the devices the kernel found before us.

Devices are enumerated through the flat /sys/bus/*/devices listings (every
device that carries a modalias sits on a bus: pci, usb, virtio, scsi, acpi,
platform, hid, mmc, serio, cpu, ...), so one pass is a handful of listdirs
and one small read per new device, and a device seen once is never read
again. PCI devices are matched against the pcimap and the alias index (the
union: the packer keeps pci aliases the pcimap cannot represent). Devices
that already have a driver are skipped. Loading a driver creates new devices
(ahci -> scsi disks -> sd_mod), so passes repeat until one loads nothing;
later arrivals come in as uevents (`handle_event`).

At boot the loads run in parallel (`start`/`coldplug(workers=N)`): module
init is where the time goes (ata_piix probing an empty CD-ROM sleeps for
hundreds of milliseconds under TCG) and finit_module releases the GIL, so
virtio_blk need not wait for it. A driver thread walks the bus listings,
hands each device with something to load to a small pool of threads, and
walks again as soon as any load ends (a load reveals new devices); it stops
when a walk finds nothing new and no load is running. Only `_thread` and
`_queue` are used (`threading` costs ~40 ms of imports under TCG).

Root first: when root= names a device whose name gives its bus away
(/dev/vdX is virtio, /dev/nvmeX NVMe, /dev/mmcblkX MMC/SD), only the buses
that lead to it are walked and only the drivers of its kind are loaded; the
other devices are held back (or not even read) while the root's device may
still appear, and released at once if it does not. Once the root search has
its device it may `stop` the run: nothing more starts, the loads under way
finish, and what was left is the booted system's business (its udev
coldplugs every device again). On a one-CPU machine the walk of the other
buses (acpi, platform, cpu: most of the devices) would otherwise compete with
the root's own module loads."""
from __future__ import annotations

import _thread
import os
import time

from liveinit.profile import PROBING

SYSBUS = "/sys/bus"
# Walked first: storage hangs off these, and the first loads start sooner than
# after reading the modalias of every acpi, cpu and platform device.
EARLY_BUSES = ("pci", "virtio", "scsi", "usb")
MAX_PASSES = 16
WORKERS = 3         # loads at once; more only adds contention on a 1-2 CPU guest
HOLD_MAX = 5.0      # longest time other buses wait for the root's bus (root first)
CLASS_BLOCK = "/sys/class/block/"
# Device name prefix of root= -> (modalias prefixes, PCI class markers) of its
# drivers, and the buses its device hangs off.
ROOT_BUSES = {
    "vd": ((("virtio:", "pci:v00001AF4"), ()), ("pci", "virtio")),
    "nvme": ((("nvme:",), ("bc01sc08",)), ("pci", "nvme")),
    "mmcblk": ((("mmc:", "sdio:"), ("bc08sc05",)), ("pci", "mmc", "sdio")),
}


class Coldplug:
    """Remembers the devices already handled, across passes and uevents."""

    __slots__ = ("m", "loader", "log", "seen", "devices", "running", "loaded", "ms", "_done",
                 "root_dev", "root_bus", "root_walk", "unwalked", "held", "left", "stopping",
                 "_wake", "_mu")

    def __init__(self, m, loader, log) -> None:
        self.m = m
        self.loader = loader
        self.log = log
        self.seen: set[str] = set()     # "bus/name"
        self.devices = 0                # devices with a modalias looked at
        self.running = False            # background loads under way (`start`)
        self.loaded = 0                 # modules loaded by the background run
        self.ms = 0.0                   # its duration
        self._done = None               # lock held while the background run lasts
        self.root_dev = ""              # root first: the root's device name (vda)...
        self.root_bus = None            # ...and (alias prefixes, pci class markers) of its bus
        self.root_walk: tuple = ()      # ...and the buses walked while it goes first
        self.unwalked: list[str] = []   # buses the last walk passed over (root first)
        self.held: list = []            # jobs held back while the root's bus goes first
        self.left: list = []            # jobs never started (`stop`)
        self.stopping = False
        self._wake = None               # the driver's queue: 1 (a load ended), 0 (stop/release), a job (uevent)
        self._mu = _thread.allocate_lock()   # `running` vs handle_event's hand-over

    def run(self) -> int:
        """Pass after pass until nothing new is loaded; returns modules loaded."""
        before = len(self.loader.loaded)
        for _ in range(MAX_PASSES):
            n = len(self.loader.loaded)
            if not self.walk():
                break
            if len(self.loader.loaded) == n:
                break
        return len(self.loader.loaded) - before

    def walk(self) -> int:
        """One pass over the devices not seen yet, loading as it goes; returns how many were new."""
        new = 0
        for bus, name, path in self._unseen():
            new += 1
            job = self._job(bus, name, path)
            if job is not None:
                self.loader.load_matches(*job)
        return new

    def _unseen(self):
        """(bus, name, sysfs path) of each bus device not seen before, marking it seen."""
        root = self.m.path(SYSBUS)
        try:
            buses = sorted((e.name not in EARLY_BUSES, e.name) for e in os.scandir(root))
        except OSError:
            return
        first = self.root_walk if self.root_bus is not None else ()
        self.unwalked = [bus for _, bus in buses if first and bus not in first]
        for _, bus in buses:
            if first and bus not in first:
                continue
            devdir = root + "/" + bus + "/devices"
            try:
                names = sorted(e.name for e in os.scandir(devdir))
            except OSError:
                continue
            for name in names:
                key = bus + "/" + name
                if key in self.seen:
                    continue
                self.seen.add(key)
                yield bus, name, devdir + "/" + name

    def _job(self, bus: str, name: str, path: str):
        """(module names, reason, modalias) to load for an unbound device, or None."""
        begun = self.m.profile.begin(PROBING)
        try:
            return self._match(bus, name, path)
        finally:
            self.m.profile.end(PROBING, begun)

    def _match(self, bus: str, name: str, path: str):
        try:
            with open(path + "/modalias", "rb") as f:
                alias = f.read().decode("ascii", "replace").strip()
        except OSError:
            return None
        if not alias:
            return None
        self.devices += 1
        if os.path.islink(path + "/driver"):
            return None
        loader = self.loader
        if bus == "pci":
            ids = pci_ids(alias)
            if ids is None:
                ids = self._pci_files(path)
            if ids is not None:
                v, d, sv, sd, cls = ids
                reason = f"pci {name} [{v:04x}:{d:04x}] class {cls:06x}"
                # match_pci is the pcimap plus the pci aliases the map cannot represent.
                names = loader.match_pci(ids)
                return (names, reason, alias) if names else None
        names = loader.match(alias)
        return (names, f"{bus} {name} {alias}", alias) if names else None

    # -- in parallel ----------------------------------------------------------

    def start(self, workers: int = WORKERS, root=None) -> None:
        """Load in the background with up to `workers` threads; `wait()` joins.

        root: the RootSpec from the command line, for root first (see the module doc)."""
        if root is not None and root.kind == "path" and not root.live:
            name = root.value[5:] if root.value.startswith("/dev/") else ""
            for prefix, (bus, walk) in ROOT_BUSES.items():
                if name.startswith(prefix) and "/" not in name:
                    self.root_dev, self.root_bus, self.root_walk = name, bus, walk
        from _queue import SimpleQueue
        self._wake = SimpleQueue()
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self.running = True
        _thread.start_new_thread(self._drive, (workers,))

    def stop(self) -> None:
        """Start nothing more (the root is found); loads under way still finish."""
        self.stopping = True
        if self._wake is not None:
            self._wake.put(0)

    def release(self) -> None:
        """Let the jobs held back for the root's bus go (the root search needs everything)."""
        self.root_bus = None
        if self._wake is not None:
            self._wake.put(0)

    def _first(self, job) -> bool:
        """Whether a job may start now: no root first, or it is for the root's bus."""
        if self.root_bus is None:
            return True
        prefixes, classes = self.root_bus
        alias = job[2]
        return alias.startswith(prefixes) or (alias.startswith("pci:") and any(c in alias for c in classes))

    def wait(self, timeout: float = -1) -> bool:
        """Block until the background run ends (True), or `timeout` seconds pass (False)."""
        done = self._done
        if done is None:
            return True
        if not done.acquire(True, timeout):
            return False
        done.release()
        return True

    def run_parallel(self, workers: int = WORKERS) -> int:
        """`start` + `wait`; returns modules loaded."""
        self.start(workers)
        self.wait()
        return self.loaded

    def _drive(self, workers: int) -> None:
        from _queue import Empty, SimpleQueue
        jobs: SimpleQueue = SimpleQueue()
        ended = self._wake           # 1: a load ended; 0: stop() or release(); a job: a uevent
        t0 = time.monotonic()
        before = len(self.loader.loaded)
        threads = pending = 0

        def dispatch(job) -> None:
            nonlocal threads, pending
            if threads < workers:
                try:
                    _thread.start_new_thread(self._work, (jobs, ended))
                    threads += 1
                except RuntimeError:   # no more threads: the ones we have will do
                    if not threads:
                        self.loader.load_matches(*job)
                        return
            jobs.put(job)
            pending += 1

        def take(job) -> None:
            if job is None or all(self.loader.is_present(n) for n in job[0]):
                return
            if self._first(job):
                dispatch(job)
            else:
                self.held.append(job)

        try:
            new: list = []           # jobs from uevents (handle_event)
            while True:
                if self.stopping:
                    self.left, self.held = self.left + self.held + new, []
                else:
                    for job in new:
                        take(job)
                    for bus, name, path in self._unseen():
                        take(self._job(bus, name, path))
                    if (self.held or self.unwalked) and (self.root_bus is None or (
                            not pending and not os.path.exists(self.m.path(CLASS_BLOCK + self.root_dev)))):
                        # Released, or the root's bus is done and no root device: everything goes.
                        self.root_bus = None
                        for job in self.held:
                            dispatch(job)
                        self.held = []
                        if self.unwalked:
                            new = []
                            continue     # walk the other buses now
                new = []
                if not pending and ((not self.held and not self.unwalked) or self.stopping):
                    break
                try:
                    got = ended.get(True, HOLD_MAX)   # a load ended: it may reveal devices
                except Empty:   # held back for too long: nobody stopped or released us
                    self.root_bus = None
                    continue
                if isinstance(got, tuple):
                    new.append(got)
                else:
                    pending -= got
        except BaseException as e:  # noqa: BLE001 - a bug here must not hang the boot
            self.log.warn(f"coldplug stopped early: {type(e).__name__}: {e}")
            while pending:
                got = ended.get()
                pending -= 0 if isinstance(got, tuple) else got
        finally:
            for _ in range(threads):
                jobs.put(None)
            # Uevents handed over after our last look are still queued: load them
            # here (from now on handle_event loads for itself). Their devices may
            # have no modalias file (an SD card's is only in the uevent).
            with self._mu:
                self.running = False
            while True:
                try:
                    got = ended.get(False)
                except Empty:
                    break
                if isinstance(got, tuple):
                    if self.stopping:
                        self.left.append(got)
                    else:
                        self._load_job(got)
            self.loaded = len(self.loader.loaded) - before
            self.ms = (time.monotonic() - t0) * 1000
            self._done.release()

    def _work(self, jobs, ended) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                self._load_job(job)
            finally:
                ended.put(1)

    def _load_job(self, job) -> None:
        try:
            self.loader.load_matches(*job)
        except BaseException as e:  # noqa: BLE001 - one device never stops the others
            self.log.warn(f"coldplug: loading {', '.join(job[0])} for {job[1]}: {type(e).__name__}: {e}")

    def _pci_files(self, path: str):
        vals = []
        for f in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class"):
            try:
                with open(path + "/" + f, "rb") as fh:
                    vals.append(int(fh.read().strip(), 16))
            except (OSError, ValueError):
                return None
        return tuple(vals)

    def handle_event(self, ev: dict) -> list[str]:
        """A hotplug `add` with a MODALIAS: load its modules (USB storage, disks...)."""
        if ev.get("ACTION") != "add":
            return []
        alias = ev.get("MODALIAS")
        if not alias or ev.get("DRIVER"):
            return []
        devpath = ev.get("DEVPATH", "")
        bus = ev.get("SUBSYSTEM", "")
        name = devpath.rsplit("/", 1)[-1]
        self.seen.add(bus + "/" + name)
        reason = f"uevent {bus} {name} {alias}"
        with self._mu:
            if self.running:
                # The background run loads it, in its order (root first); the
                # alias travels with the job: some devices have no modalias file.
                self._wake.put((self.loader.match(alias), reason, alias))
                return []
        return self.loader.load_alias(alias, reason)


def pci_ids(alias: str):
    """(vendor, device, subvendor, subdevice, class) from a pci: modalias, or None.

    The kernel writes "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X"."""
    if len(alias) != 53 or not alias.startswith("pci:v"):
        return None
    try:
        return (int(alias[5:13], 16), int(alias[14:22], 16), int(alias[24:32], 16),
                int(alias[34:42], 16),
                (int(alias[44:46], 16) << 16) | (int(alias[48:50], 16) << 8) | int(alias[51:53], 16))
    except ValueError:
        return None


def coldplug(m, loader, log, workers: int = WORKERS) -> int:
    """Load modules for every present device until nothing new appears; returns modules loaded.

    With workers > 1 the loads run in parallel (see the module docstring)."""
    cp = Coldplug(m, loader, log)
    t0 = time.monotonic()
    n = cp.run_parallel(workers) if workers > 1 else cp.run()
    log.info(f"coldplug: {cp.devices} devices with a modalias, {n} modules loaded "
             f"in {(time.monotonic() - t0) * 1000:.0f} ms")
    return n


def start(m, loader, log, workers: int = WORKERS, root=None) -> Coldplug:
    """Begin coldplug in the background so the root search can run meanwhile.

    The loader remembers it (`loader.background`): the root search reacts to
    its devices, knows whether more may come, and `finish` joins it. `root`
    (the command line's RootSpec) enables root first."""
    cp = Coldplug(m, loader, log)
    loader.background = cp
    try:
        cp.start(workers, root)
    except RuntimeError as e:   # cannot start a thread: do it all now, in order
        log.warn(f"coldplug in the background impossible ({e}); loading in order")
        loader.background = None
        cp.running, cp._done = False, None
        cp.run()
    return cp


def finish(loader, log, timeout: float = -1, stop: bool = False) -> int:
    """Wait for a background coldplug (`start`) and log its summary once; returns modules loaded.

    stop: start no more loads (the root is found and needs nothing else);
    otherwise the jobs held back for root first are released and all run."""
    cp = getattr(loader, "background", None)
    if cp is None:
        return 0
    if stop:
        cp.stop()
    else:
        cp.release()
    if not cp.wait(timeout):
        log.warn(f"coldplug still loading modules after {timeout:g} s; going on")
        return cp.loaded
    loader.background = None
    log.info(f"coldplug: {cp.devices} devices with a modalias, {cp.loaded} modules loaded "
             f"in {cp.ms:.0f} ms (in the background)")
    left = [f"{', '.join(names)} for {reason}" for names, reason, _ in cp.left]
    if cp.unwalked and cp.stopping:
        left.append("the devices on " + ", ".join(cp.unwalked) + " (not walked: root first)")
    if left:
        if isinstance(getattr(loader, "left", None), list):
            loader.left.extend(left)
        log.info("coldplug: left to the booted system: " + "; ".join(left))
    return cp.loaded


def handle_event(ev: dict, loader, log) -> list[str]:
    """Module-level form of Coldplug.handle_event for callers without a Coldplug."""
    return Coldplug(loader.m, loader, log).handle_event(ev)
