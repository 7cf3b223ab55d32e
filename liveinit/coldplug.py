"""Coldplug: load the modules for the devices the kernel found before us.

Devices are enumerated through the flat /sys/bus/*/devices listings (every
device that carries a modalias sits on a bus: pci, usb, virtio, scsi, acpi,
platform, hid, mmc, serio, cpu, ...), so one pass is a handful of listdirs
and one small read per new device, and a device seen once is never read
again. PCI devices are matched against the pcimap and the alias index (the
union: the packer keeps pci aliases the pcimap cannot represent). Devices
that already have a driver are skipped. Loading a driver creates new devices
(ahci -> scsi disks -> sd_mod), so passes repeat until one loads nothing;
later arrivals come in as uevents (`handle_event`)."""
from __future__ import annotations

import os

SYSBUS = "/sys/bus"
MAX_PASSES = 16


class Coldplug:
    """Remembers the devices already handled, across passes and uevents."""

    __slots__ = ("m", "loader", "log", "seen", "devices")

    def __init__(self, m, loader, log) -> None:
        self.m = m
        self.loader = loader
        self.log = log
        self.seen: set[str] = set()     # "bus/name"
        self.devices = 0                # devices with a modalias looked at

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
        """One pass over the devices not seen yet; returns how many were new."""
        root = self.m.path(SYSBUS)
        new = 0
        try:
            buses = sorted(e.name for e in os.scandir(root))
        except OSError:
            return 0
        for bus in buses:
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
                new += 1
                self._device(bus, name, devdir + "/" + name)
        return new

    def _device(self, bus: str, name: str, path: str) -> None:
        try:
            with open(path + "/modalias", "rb") as f:
                alias = f.read().decode("ascii", "replace").strip()
        except OSError:
            return
        if not alias:
            return
        self.devices += 1
        if os.path.islink(path + "/driver"):
            return
        loader = self.loader
        if bus == "pci":
            ids = pci_ids(alias)
            if ids is None:
                ids = self._pci_files(path)
            if ids is not None:
                v, d, sv, sd, cls = ids
                reason = f"pci {name} [{v:04x}:{d:04x}] class {cls:06x}"
                # match_pci is the pcimap plus the pci aliases the map cannot represent.
                loader.load_matches(loader.match_pci(ids), reason, alias)
                return
        names = loader.match(alias)
        if names:
            loader.load_matches(names, f"{bus} {name} {alias}", alias)

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
        return self.loader.load_alias(alias, f"uevent {bus} {name} {alias}")


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


def coldplug(m, loader, log) -> int:
    """Load modules for every present device until nothing new appears; returns modules loaded."""
    cp = Coldplug(m, loader, log)
    n = cp.run()
    log.info(f"coldplug: {cp.devices} devices with a modalias, {n} modules loaded")
    return n


def handle_event(ev: dict, loader, log) -> list[str]:
    """Module-level form of Coldplug.handle_event for callers without a Coldplug."""
    return Coldplug(loader.m, loader, log).handle_event(ev)
