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

At boot the loads run in parallel (`start`): module init is where the time
goes (ata_piix probing an empty CD-ROM sleeps for hundreds of milliseconds
under TCG) and finit_module releases the GIL, so virtio_blk need not wait for
it. A scheduler thread (`_drive`) walks the bus listings, hands each device
with something to load (a `Job`) to a small pool of worker threads, and walks
again as soon as any load ends (a load reveals new devices); it stops when a
walk finds nothing new and no load is running. Everything reaches it as a
message on one queue: `LoadEnded` from a worker, `Job` from a uevent,
`Release` and `Stop` from the boot (see `discovery`). Only `_thread` and
`_queue` are used (`threading` costs ~40 ms of imports under TCG).

Root first (`RootFirst`, decided by `discovery`): only the buses that lead
to the root's device are walked and only the drivers of its kind are
loaded; the other devices are held back (or not even read) while the root's
device may still appear, and released at once if it does not. `Stop` ends
the run early: nothing more starts, the loads under way finish, and what was
left is the booted system's business (its udev coldplugs every device
again). `LeaveOut` (also decided by `discovery`) names devices whose drivers
this boot does not need at all (network controllers when the root is not on
the network): their jobs are never started, only recorded (`spared`)."""
from __future__ import annotations

import _thread
import os
import time

from liveinit.costs import PROBING
from liveinit.kmodindex import parse_pci_modalias
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from _queue import SimpleQueue
    from collections.abc import Iterator

    from liveinit.discovery import Loader
    from liveinit.log import Log
    from liveinit.machine import Machine

SYSBUS = "/sys/bus"
# Walked first: storage hangs off these, and the first loads start sooner than
# after reading the modalias of every acpi, cpu and platform device.
EARLY_BUSES = ("pci", "virtio", "scsi", "usb")
MAX_PASSES = 16
WORKERS = 3         # loads at once; more only adds contention on a 1-2 CPU guest
HOLD_MAX = 5.0      # longest time other buses wait for the root's bus (root first)
CLASS_BLOCK = "/sys/class/block/"
PCI_FILES = ("vendor", "device", "subsystem_vendor", "subsystem_device", "class")


# -- the scheduler's messages -------------------------------------------------------
class Job(Plain):
    """Modules to load for one device: names (the index's match), reason (for the
    record: "pci 0000:00:1f.2 [8086:2922] class 010601"), alias (the device's modalias)."""

    __slots__ = ("names", "reason", "alias")
    names: tuple[str, ...]
    reason: str
    alias: str


class LoadEnded(Plain):
    """A worker finished a job: its driver may have revealed new devices."""

    __slots__ = ()


class Release(Plain):
    """Root first is over: let the held-back jobs and the other buses go."""

    __slots__ = ()


class Stop(Plain):
    """Start nothing more; the loads under way finish."""

    __slots__ = ()


def of_kind(job: Job, aliases: tuple[str, ...], classes: tuple[str, ...]) -> bool:
    """Whether a job's device is of a kind: its modalias starts with one of `aliases`,
    or it is a PCI device whose modalias carries one of the class markers `classes`
    ("bc01sc08": base class and subclass; "bc02": a base class)."""
    alias = job.alias
    return alias.startswith(aliases) or (alias.startswith("pci:") and any(c in alias for c in classes))


class RootFirst(Plain):
    """What root first needs to know of the root's device: device (its name under
    /sys/class/block, "vda"), aliases (modalias prefixes of its drivers), classes
    (PCI class markers of its controllers, "bc01sc08"), buses (walked while it goes first)."""

    __slots__ = ("device", "aliases", "classes", "buses")
    device: str
    aliases: tuple[str, ...]
    classes: tuple[str, ...]
    buses: tuple[str, ...]

    def wants(self, job: Job) -> bool:
        """Whether a job is for the root's kind of device."""
        return of_kind(job, self.aliases, self.classes)


class LeaveOut(Plain):
    """Devices whose drivers coldplug leaves to the booted system's udev: aliases
    (modalias prefixes), classes (PCI class markers), why (for the log and the record)."""

    __slots__ = ("aliases", "classes", "why")
    aliases: tuple[str, ...]
    classes: tuple[str, ...]
    why: str

    def wants(self, job: Job) -> bool:
        """Whether a job is for a device this boot leaves out."""
        return of_kind(job, self.aliases, self.classes)


LOAD_ENDED, RELEASE, STOP = LoadEnded(), Release(), Stop()


class Coldplug:
    """Remembers the devices already handled, across passes and uevents; `start`
    runs it in the background, `run` in the calling thread."""

    __slots__ = ("m", "loader", "log", "seen", "devices", "running", "loaded", "ended", "first",
                 "unwalked", "held", "left", "stopped", "leave", "spared", "_inbox", "_done", "_mu")

    def __init__(self, m: Machine, loader: Loader, log: Log) -> None:
        self.m = m
        self.loader = loader
        self.log = log
        self.seen: set[str] = set()     # "bus/name"
        self.devices = 0                # devices with a modalias looked at
        self.running = False            # the background run is under way
        self.loaded = 0                 # modules loaded by the background run
        self.ended: float | None = None   # monotonic time the background run ended
        self.first: RootFirst | None = None   # root first, until released
        self.unwalked: list[str] = []   # buses the last walk passed over (root first)
        self.held: list[Job] = []       # jobs held back while the root's bus goes first
        self.left: list[Job] = []       # jobs never started (stopped)
        self.stopped = False
        self.leave: LeaveOut | None = None   # devices left out altogether (set before a run)
        self.spared: list[Job] = []     # their jobs, never started
        self._inbox: SimpleQueue[Job | LoadEnded | Release | Stop] | None = None
        self._done: _thread.LockType | None = None   # held while the background run lasts
        self._mu = _thread.allocate_lock()   # `running` vs handle_event's hand-over

    # -- in the calling thread ------------------------------------------------------
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
                self._load(job)
        return new

    def handle_event(self, ev: dict[str, str]) -> list[str]:
        """A hotplug `add` with a MODALIAS: load its modules (USB storage, disks...).

        While the background run lasts it gets the job, to load in its order
        (root first); returns the modules loaded here and now."""
        if ev.get("ACTION") != "add":
            return []
        alias = ev.get("MODALIAS")
        if not alias or ev.get("DRIVER"):
            return []
        bus = ev.get("SUBSYSTEM", "")
        name = ev.get("DEVPATH", "").rsplit("/", 1)[-1]
        self.seen.add(bus + "/" + name)
        # The alias travels with the job: some devices have no modalias file.
        job = Job(tuple(self.loader.match(alias)), f"uevent {bus} {name} {alias}", alias)
        if self._left_out(job):
            return []
        with self._mu:
            if self.running and self._inbox is not None:
                self._inbox.put(job)
                return []
        return self.loader.load_matches(job.names, job.reason, job.alias)

    # -- in the background ----------------------------------------------------------
    def start(self, workers: int = WORKERS, first: RootFirst | None = None) -> None:
        """Load in the background with up to `workers` threads; `wait` joins.
        Raises RuntimeError when no thread can be started."""
        from _queue import SimpleQueue
        self.first = first
        self._inbox = SimpleQueue()
        done = _thread.allocate_lock()
        done.acquire()
        self._done = done
        self.running = True
        try:
            _thread.start_new_thread(self._drive, (workers,))
        except RuntimeError:
            self.running, self._done = False, None
            raise

    def stop(self) -> None:
        """Start nothing more (the root is found); loads under way still finish."""
        if self._inbox is not None:
            self._inbox.put(STOP)

    def release(self) -> None:
        """Let the jobs held back for the root's bus go (the boot needs everything)."""
        if self._inbox is not None:
            self._inbox.put(RELEASE)

    def wait(self, timeout: float = -1) -> bool:
        """Block until the background run ends (True), or `timeout` seconds pass (False)."""
        done = self._done
        if done is None:
            return True
        if not done.acquire(True, timeout):
            return False
        done.release()
        return True

    def _drive(self, workers: int) -> None:
        """The scheduler: walk, dispatch jobs to the workers, react to messages."""
        from _queue import Empty, SimpleQueue
        inbox = self._inbox
        assert inbox is not None and self._done is not None
        jobs: SimpleQueue[Job | Stop] = SimpleQueue()
        before = len(self.loader.loaded)
        threads = pending = 0

        def dispatch(job: Job) -> None:
            nonlocal threads, pending
            if threads < workers:
                try:
                    _thread.start_new_thread(self._work, (jobs, inbox))
                    threads += 1
                except RuntimeError:   # no more threads: the ones we have will do
                    if not threads:
                        self._load(job)
                        return
            jobs.put(job)
            pending += 1

        def take(job: Job | None) -> None:
            if job is None or all(self.loader.is_present(n) for n in job.names):
                return
            if self.first is None or self.first.wants(job):
                dispatch(job)
            else:
                self.held.append(job)

        def root_bus_done() -> bool:
            """Root first is pointless now: its loads ended and no root device showed up."""
            first = self.first
            return first is None or (
                not pending and not os.path.exists(self.m.path(CLASS_BLOCK + first.device)))

        try:
            events: list[Job] = []          # jobs from uevents
            while True:
                if self.stopped:
                    self.left, self.held = self.left + self.held + events, []
                else:
                    for job in events:
                        take(job)
                    for bus, name, path in self._unseen():
                        take(self._job(bus, name, path))
                    if (self.held or self.unwalked) and root_bus_done():
                        self.first = None
                        for job in self.held:
                            dispatch(job)
                        self.held = []
                        if self.unwalked:
                            events = []
                            continue     # walk the other buses now
                events = []
                if not pending and ((not self.held and not self.unwalked) or self.stopped):
                    break
                try:
                    msg = inbox.get(True, HOLD_MAX)
                except Empty:   # held back for too long: nobody stopped or released us
                    self.first = None
                    continue
                if isinstance(msg, LoadEnded):
                    pending -= 1
                elif isinstance(msg, Job):
                    events.append(msg)
                elif isinstance(msg, Release):
                    self.first = None
                else:
                    self.stopped = True
        except BaseException as e:  # noqa: BLE001 - a bug here must not hang the boot
            self.log.warn(f"coldplug stopped early: {type(e).__name__}: {e}")
            while pending:
                if isinstance(inbox.get(), LoadEnded):
                    pending -= 1
        finally:
            for _ in range(threads):
                jobs.put(STOP)
            # Uevents handed over after our last look are still queued: load them
            # here (from now on handle_event loads for itself). Their devices may
            # have no modalias file (an SD card's is only in the uevent).
            with self._mu:
                self.running = False
            while True:
                try:
                    msg = inbox.get(False)
                except Empty:
                    break
                if isinstance(msg, Job):
                    if self.stopped:
                        self.left.append(msg)
                    else:
                        self._load(msg)
            self.loaded = len(self.loader.loaded) - before
            self.ended = time.monotonic()
            self._done.release()

    def _work(self, jobs: SimpleQueue[Job | Stop], inbox: SimpleQueue[Job | LoadEnded | Release | Stop]
              ) -> None:
        while True:
            job = jobs.get()
            if not isinstance(job, Job):
                return
            try:
                self._load(job)
            finally:
                inbox.put(LOAD_ENDED)

    def _load(self, job: Job) -> None:
        try:
            self.loader.load_matches(job.names, job.reason, job.alias)
        except BaseException as e:  # noqa: BLE001 - one device never stops the others
            self.log.warn(f"coldplug: loading {', '.join(job.names)} for {job.reason}: "
                          f"{type(e).__name__}: {e}")

    # -- devices --------------------------------------------------------------------
    def _unseen(self) -> Iterator[tuple[str, str, str]]:
        """(bus, name, sysfs path) of each bus device not seen before, marking it seen."""
        root = self.m.path(SYSBUS)
        try:
            buses = sorted((e.name not in EARLY_BUSES, e.name) for e in os.scandir(root))
        except OSError:
            return
        walk = self.first.buses if self.first is not None else ()
        self.unwalked = [bus for _, bus in buses if walk and bus not in walk]
        for _, bus in buses:
            if walk and bus not in walk:
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

    def _job(self, bus: str, name: str, path: str) -> Job | None:
        """The job for an unbound device with something to load, or None (also for
        a device left out, whose job is kept in `spared`)."""
        begun = self.m.costs.begin(PROBING)
        try:
            job = self._match(bus, name, path)
        finally:
            self.m.costs.end(PROBING, begun)
        return None if job is None or self._left_out(job) else job

    def _left_out(self, job: Job) -> bool:
        leave = self.leave
        if leave is None or not job.names or not leave.wants(job):
            return False
        self.spared.append(job)
        return True

    def _match(self, bus: str, name: str, path: str) -> Job | None:
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
        if bus == "pci":
            ids = parse_pci_modalias(alias) or _pci_files(path)
            if ids is not None:
                v, d, sv, sd, cls = ids
                # match_pci is the pcimap plus the pci aliases the map cannot represent.
                names = self.loader.match_pci(ids)
                reason = f"pci {name} [{v:04x}:{d:04x}] class {cls:06x}"
                return Job(tuple(names), reason, alias) if names else None
        names = self.loader.match(alias)
        return Job(tuple(names), f"{bus} {name} {alias}", alias) if names else None


def _pci_files(path: str) -> tuple[int, int, int, int, int] | None:
    """The PCI ids from a device's sysfs files, when its modalias is not the kernel's usual."""
    vals = []
    for f in PCI_FILES:
        try:
            with open(path + "/" + f, "rb") as fh:
                vals.append(int(fh.read().strip(), 16))
        except (OSError, ValueError):
            return None
    v, d, sv, sd, cls = vals
    return v, d, sv, sd, cls
