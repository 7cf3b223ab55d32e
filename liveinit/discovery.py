"""Device discovery for one boot: the module loader, coldplug in the
background, the kernel's uevents and the root-first policy, in one object
(`Discovery`) that the boot hands to the root search and to persistence.

The stage `coldplug` starts it (`start`); the root search waits on its
events (`events`), asks whether more devices may come (`settled`), says when
a device root is there (`device_root_found`) and joins it (`finish`). The
background run's duration is the `coldplug` stage's: `finish` prints that
stage line once the run is over, and the time a caller spends waiting in
`finish` (`waited`) is not the caller's stage's.

Root first: when root= names a device whose name gives its bus away
(/dev/vdX is virtio, /dev/nvmeX NVMe, /dev/mmcblkX MMC/SD), coldplug walks
only the buses that lead to it and loads only the drivers of its kind until
the device is there (`root_first`). Once a device root is found nothing later
looks for devices (unless persistence= or findiso= ask), so coldplug stops:
the loads under way finish and the rest is left to the booted system's udev
("modules_left" in the boot record). A live medium, persistence or findiso
always wait for every driver.

Network controllers (PCI class 02, virtio-net) are left to the booted
system's udev from the start, unless the root is a URL (root=live:http://,
fetch=) or ip= asks for the network in the initramfs (`leave_out`): their
drivers (and their probing: e1000 adds ~0.4 s under TCG) do nothing for a
root on a disk. They are recorded in "modules_left" too.

The loader and the listener are used through two small interfaces, written
below as `Loader` and `Listener` (for mypy; at boot they are documentation):
`modload.ModuleLoader` and `NullLoader`, `uevent.UeventListener` and
`NullListener` implement them in full."""
from __future__ import annotations

import time

from liveinit.coldplug import WORKERS, Coldplug, LeaveOut, RootFirst
from liveinit.costs import WAITS

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Protocol

    from liveinit.cmdline import BootConfig, RootSpec
    from liveinit.log import Log
    from liveinit.machine import Machine

    class Loader(Protocol):
        """Loads kernel modules by name, alias or device, remembering what and why."""

        loaded: dict[str, str]   # module -> why it was loaded
        failed: dict[str, str]   # module -> error text
        unfit: dict[str, str]    # CPU-gated module this CPU cannot run -> what asked for it

        def load(self, name: str, reason: str) -> bool: ...   # a name (or alias); True if in the kernel
        def load_alias(self, alias: str, reason: str) -> list[str]: ...   # e.g. "fs-ext4", a modalias
        def match(self, alias: str) -> list[str]: ...   # the index's modules for an alias
        def match_pci(self, ids: tuple[int, int, int, int, int]) -> list[str]: ...
        def load_matches(self, names: tuple[str, ...] | list[str], reason: str,
                         alias: str = "") -> list[str]: ...   # minus blacklisted and unfit ones
        def is_present(self, mod: str) -> bool: ...   # built in, loaded, or in the kernel already

    class Listener(Protocol):
        """Kernel uevents (uevent.UeventListener)."""

        def fileno(self) -> int: ...
        def poll(self, timeout: float) -> list[dict[str, str]]: ...
        def close(self) -> None: ...

COLDPLUG_JOIN = 60.0    # longest wait for background module loads once the root is found
QUIET = 0.1             # no uevent for this long (and coldplug over): no more devices coming
# Drivers whose disks show up well after their own load returned (USB's settle
# delay, MMC card detection, NVMe's asynchronous namespace scan).
SLOW_BUS = ("usb_storage", "uas", "mmc_block", "nvme")
# Device name prefix of root= -> modalias prefixes and PCI class markers of its
# drivers, and the buses its device hangs off.
ROOT_BUSES = {
    "vd": (("virtio:", "pci:v00001AF4"), (), ("pci", "virtio")),
    "nvme": (("nvme:",), ("bc01sc08",), ("pci", "nvme")),
    "mmcblk": (("mmc:", "sdio:"), ("bc08sc05",), ("pci", "mmc", "sdio")),
}


# Network controllers: PCI base class 02 (Ethernet and the rest), virtio device id 1 (net).
NET_ALIASES = ("virtio:d00000001v",)
NET_CLASSES = ("bc02",)
NET_LEFT = "network controllers: the root is not on the network (no root=live:URL, fetch= or ip=)"


def leave_out(cfg: BootConfig | None) -> LeaveOut | None:
    """The devices this boot leaves to the booted system: network controllers,
    unless the root is a URL or ip= is given. None: every driver loads."""
    if cfg is None or cfg.root.kind == "url" or cfg.ip is not None:
        return None
    return LeaveOut(NET_ALIASES, NET_CLASSES, NET_LEFT)


def root_first(root: RootSpec | None) -> RootFirst | None:
    """Root first for a root= that names its device by a telling name (/dev/vda), else None."""
    if root is None or root.kind != "path" or root.live or not root.value.startswith("/dev/"):
        return None
    name = root.value[5:]
    if "/" in name:
        return None
    for prefix, (aliases, classes, buses) in ROOT_BUSES.items():
        if name.startswith(prefix):
            return RootFirst(name, aliases, classes, buses)
    return None


class NullLoader:
    """The Loader when the module index cannot be read: only built-in drivers."""

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.unfit: dict[str, str] = {}

    def load(self, name: str, reason: str) -> bool:
        return False

    def load_alias(self, alias: str, reason: str) -> list[str]:
        return []

    def match(self, alias: str) -> list[str]:
        return []

    def match_pci(self, ids: tuple[int, int, int, int, int]) -> list[str]:
        return []

    def load_matches(self, names: tuple[str, ...] | list[str], reason: str, alias: str = "") -> list[str]:
        return []

    def is_present(self, mod: str) -> bool:
        return False


class NullListener:
    """The Listener when netlink is unavailable: polls by sleeping."""

    def fileno(self) -> int:
        return -1

    def poll(self, timeout: float) -> list[dict[str, str]]:
        time.sleep(min(max(timeout, 0.0), 0.25))
        return []

    def close(self) -> None:
        pass


class Discovery:
    """The devices of this boot and their drivers: loader, coldplug, uevents."""

    __slots__ = ("m", "loader", "listener", "log", "walk", "coldplug", "since", "ended", "ms", "waited",
                 "left", "last_event")

    def __init__(self, m: Machine, loader: Loader, listener: Listener, log: Log, walk: bool = True) -> None:
        """walk=False: the loader has nothing to load (no module index), so coldplug does not run."""
        self.m = m
        self.loader = loader
        self.listener = listener
        self.log = log
        self.walk = walk
        self.coldplug = Coldplug(m, loader, log)
        self.since: float | None = None   # the coldplug stage's start (`start`)
        self.ended: float | None = None   # its end, when nothing ran in the background
        self.ms: float | None = None      # the coldplug stage's duration, once over
        self.waited = 0.0                 # seconds callers spent in `finish`
        self.left: list[str] = []         # coldplug work left to the booted system
        self.last_event = time.monotonic()

    def start(self, cfg: BootConfig | None, since: float, workers: int = WORKERS) -> None:
        """Coldplug in the background (root first and what is left out as `cfg`
        says; None: everything, at once), unless already started.
        since: when the coldplug stage began, for its stage line."""
        if self.since is not None:
            return
        if not self.walk:
            self.ended = time.monotonic()
        else:
            self.coldplug.leave = leave_out(cfg)
            try:
                self.coldplug.start(workers, root_first(cfg.root if cfg is not None else None))
            except RuntimeError as e:   # cannot start a thread: do it all now, in order
                self.log.warn(f"coldplug in the background impossible ({e}); loading in order")
                self.coldplug.run()
                self.ended = time.monotonic()
        self.since = since

    @property
    def running(self) -> bool:
        """The background coldplug may still load drivers (and so reveal devices)."""
        return self.coldplug.running

    def events(self, timeout: float) -> list[dict[str, str]]:
        """Uevents within `timeout` seconds; an `add` with a MODALIAS loads its driver
        (handed to the background run while it lasts)."""
        costs = self.m.costs
        begun = costs.begin(WAITS)
        evs = self.listener.poll(timeout)
        costs.end(WAITS, begun)
        if evs:
            self.last_event = time.monotonic()
        for ev in evs:
            if ev.get("ACTION") == "add" and ev.get("MODALIAS"):
                self.coldplug.handle_event(ev)
        return evs

    def settled(self) -> bool:
        """No more devices are expected: coldplug is over, no slow bus is about,
        and uevents have been quiet for QUIET seconds."""
        if self.running or any(self.loader.is_present(n) for n in SLOW_BUS):
            return False
        return time.monotonic() - self.last_event >= QUIET

    def device_root_found(self, cfg: BootConfig) -> None:
        """Root first's end: the root device is there. Unless persistence= or
        findiso= will look for devices later, start no more loads."""
        if not cfg.persistence and not cfg.findiso:
            self.coldplug.stop()

    def finish(self, timeout: float = -1) -> bool:
        """Join the background coldplug (everything held back goes, unless it was
        stopped); the first time, log its summary and the coldplug stage line.
        False when it is still loading after `timeout` seconds."""
        cp = self.coldplug
        if cp.running:
            cp.release()
            costs = self.m.costs
            begun = costs.begin(WAITS)
            done = cp.wait(timeout)
            costs.end(WAITS, begun)
            self.waited += costs.begin(WAITS) - begun
            if not done:
                self.log.warn(f"coldplug still loading modules after {timeout:g} s; going on")
                return False
        if self.ms is None and self.since is not None:
            self._report()
        return True

    def _report(self) -> None:
        cp = self.coldplug
        assert self.since is not None
        end = cp.ended or self.ended or time.monotonic()
        self.ms = (end - self.since) * 1000
        if cp.ended is not None:
            self.log.info(f"coldplug: {cp.devices} devices with a modalias, {cp.loaded} modules loaded "
                          f"in {self.ms:.0f} ms (in the background)")
        left = [f"{', '.join(job.names)} for {job.reason}" for job in cp.left]
        if cp.unwalked and cp.stopped:
            left.append("the devices on " + ", ".join(cp.unwalked) + " (not walked: root first)")
        # A virtio-net's PCI function is a network controller too, but virtio_pci
        # may have loaded for a disk: only what is still not in the kernel was left.
        spared = [job for job in cp.spared if not all(self.loader.is_present(n) for n in job.names)]
        if spared and cp.leave is not None:
            left.append(", ".join(f"{', '.join(job.names)} for {job.reason}" for job in spared)
                        + f" ({cp.leave.why})")
        if left:
            self.left = left
            self.log.info("coldplug: left to the booted system: " + "; ".join(left))
        self.log.stage("coldplug", self.ms)

    def close(self) -> None:
        """Stop listening to uevents (at hand-over)."""
        self.listener.close()
