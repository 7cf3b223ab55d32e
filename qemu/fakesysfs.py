"""Fake sysfs trees for the discovery tests and the benchmark (bench/scale.py).

`SysfsBuilder(root)` writes a tree under root/sys with the same shape the
kernel (and `liveinit capture-sysfs`) produces: device directories under
/sys/devices with modalias/uevent/ids, relative symlinks in /sys/bus/*/devices,
/sys/class/block and /sys/block, driver links to /sys/bus/*/drivers/NAME whose
`module` link names the module. `populate(builder, n)` adds n devices of a
realistic mix, for scale tests.

`StagedTree(capture, dest)` replays a captured tree (tests/data/sysfs/NAME)
as the kernel would reveal it: it starts with only the devices no module had
to create, and `materialize(loaded)` adds the devices (and driver links) that
the loaded modules bring: a device appears once the module bound to its
nearest ancestor with a driver is loaded (ahci -> ata ports -> scsi devices;
sd_mod -> the disk's block dir).

The rest are small set-up helpers for the discovery tests: `GrowingSyscalls`
(FakeSyscalls that calls back after a module load so a test can add the
devices the driver creates), `write_moddir` (a tiny module directory),
`machine`, `quiet_log`."""
from __future__ import annotations

import io
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from liveinit.log import Log
from liveinit.machine import Machine
from qemu.fakes import FakeSyscalls

# GrowingSyscalls' callback: (the module just loaded or None, every module loaded so far).
OnLoad = Callable[[str | None, set[str]], None]


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        os.symlink(os.path.relpath(target, link.parent), link)


class SysfsBuilder:
    """Writes devices into root/sys; every method returns the device directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        for d in ("devices", "bus", "class/block", "block", "module"):
            (self.sys / d).mkdir(parents=True, exist_ok=True)
        self._pci_count = 0
        self._scsi_hosts = 0

    # -- generic ------------------------------------------------------------

    def device(self, parent: Path | None, name: str, bus: str | None, modalias: str | None = None,
               files: dict[str, str] | None = None, driver: str | None = None,
               module: str | None = None) -> Path:
        """A device directory; `driver` binds it (module: the driver's module, None = built in)."""
        d = (parent if parent is not None else self.sys / "devices") / name
        d.mkdir(parents=True, exist_ok=True)
        uevent = []
        if modalias is not None:
            (d / "modalias").write_text(modalias + "\n")
            uevent.append(f"MODALIAS={modalias}")
        for k, v in (files or {}).items():
            (d / k).write_text(v + "\n")
        if driver:
            uevent.insert(0, f"DRIVER={driver}")
        (d / "uevent").write_text("".join(u + "\n" for u in uevent))
        if bus is not None:
            _link(self.sys / "bus" / bus / "devices" / name, d)
        if driver:
            self.bind(d, bus or "platform", driver, module)
        return d

    def bind(self, dev: Path, bus: str, driver: str, module: str | None = None) -> None:
        drv = self.sys / "bus" / bus / "drivers" / driver
        drv.mkdir(parents=True, exist_ok=True)
        if module:
            self.module(module)
            _link(drv / "module", self.sys / "module" / module)
        _link(dev / "driver", drv)

    def module(self, name: str) -> Path:
        """/sys/module/NAME: the module is in the kernel."""
        p = self.sys / "module" / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    # -- buses --------------------------------------------------------------

    def pci(self, vendor: int, device: int, class_: int, subvendor: int = 0x1AF4,
            subdevice: int = 0x1100, slot: str | None = None, driver: str | None = None,
            module: str | None = None) -> Path:
        if slot is None:
            n = self._pci_count
            slot = f"0000:{n // 256:02x}:{(n % 256) // 8:02x}.{n % 8}"
        self._pci_count += 1
        alias = (f"pci:v{vendor:08X}d{device:08X}sv{subvendor:08X}sd{subdevice:08X}"
                 f"bc{class_ >> 16:02X}sc{(class_ >> 8) & 0xFF:02X}i{class_ & 0xFF:02X}")
        files = {"vendor": f"0x{vendor:04x}", "device": f"0x{device:04x}",
                 "subsystem_vendor": f"0x{subvendor:04x}", "subsystem_device": f"0x{subdevice:04x}",
                 "class": f"0x{class_:06x}"}
        bridge = self.sys / "devices" / "pci0000:00"
        bridge.mkdir(parents=True, exist_ok=True)
        return self.device(bridge, slot, "pci", alias, files, driver, module)

    def usb_interface(self, parent: Path, name: str, vendor: int, product: int, iclass: int,
                      isubclass: int, iproto: int, bcd: int = 0x0100, dclass: int = 0,
                      driver: str | None = None, module: str | None = None) -> Path:
        alias = (f"usb:v{vendor:04X}p{product:04X}d{bcd:04X}dc{dclass:02X}dsc00dp00"
                 f"ic{iclass:02X}isc{isubclass:02X}ip{iproto:02X}in00")
        return self.device(parent, name, "usb", alias, None, driver, module)

    def virtio(self, parent: Path, index: int, device_id: int, driver: str | None = None,
               module: str | None = None) -> Path:
        return self.device(parent, f"virtio{index}", "virtio",
                           f"virtio:d{device_id:08X}v00001AF4", None, driver, module)

    def scsi(self, parent: Path, hctl: str, type_: int, driver: str | None = None,
             module: str | None = None) -> Path:
        host = parent / f"host{hctl.split(':')[0]}"
        target = host / ("target" + hctl.rsplit(":", 1)[0])
        target.mkdir(parents=True, exist_ok=True)
        return self.device(target, hctl, "scsi", f"scsi:t-0x{type_:02x}",
                           {"type": str(type_)}, driver, module)

    # -- block --------------------------------------------------------------

    def disk(self, parent: Path | None, name: str, major: int, minor: int, sectors: int,
             removable: bool = False, ro: bool = False) -> Path:
        base = (parent if parent is not None else self.sys / "devices" / "virtual") / "block"
        d = base / name
        d.mkdir(parents=True, exist_ok=True)
        for k, v in (("dev", f"{major}:{minor}"), ("size", str(sectors)),
                     ("removable", "1" if removable else "0"), ("ro", "1" if ro else "0"),
                     ("uevent", f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=disk")):
            (d / k).write_text(v + "\n")
        _link(self.sys / "class" / "block" / name, d)
        _link(self.sys / "block" / name, d)
        return d

    def partition(self, disk: Path, name: str, partno: int, major: int, minor: int,
                  sectors: int, start: int = 2048, ro: bool = False) -> Path:
        d = disk / name
        d.mkdir(parents=True, exist_ok=True)
        for k, v in (("dev", f"{major}:{minor}"), ("size", str(sectors)), ("partition", str(partno)),
                     ("start", str(start)), ("ro", "1" if ro else "0"),
                     ("uevent", f"MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=partition\n"
                                f"PARTN={partno}")):
            (d / k).write_text(v + "\n")
        _link(self.sys / "class" / "block" / name, d)
        return d

    def loop(self, n: int, backing: str | None = None, sectors: int = 0) -> Path:
        d = self.disk(None, f"loop{n}", 7, n, sectors)
        if backing:
            (d / "loop").mkdir(exist_ok=True)
            (d / "loop" / "backing_file").write_text(backing + "\n")
        return d

    # -- typical machines -----------------------------------------------------

    def ahci_disk(self, cd: bool = True) -> Path:
        """An ICH9 AHCI controller (unbound): what q35 shows before any module is loaded."""
        return self.pci(0x8086, 0x2922, 0x010601, slot="0000:00:1f.2")


def _letters(n: int) -> str:
    s = ""
    n += 1
    while n:
        n, r = divmod(n - 1, 26)
        s = chr(97 + r) + s
    return s


def populate(b: SysfsBuilder, n: int) -> None:
    """Add `n` devices of a realistic mix: PCI functions (storage, USB, NICs, bridges),
    USB interfaces, virtio devices, scsi disks with block devices and partitions,
    platform/acpi devices; about a fifth are already bound to a driver."""
    pci_kinds = ((0x8086, 0x2922, 0x010601), (0x1AF4, 0x1001, 0x010000), (0x1B36, 0x000D, 0x0C0330),
                 (0x8086, 0x10D3, 0x020000), (0x1B36, 0x0010, 0x010802), (0x8086, 0x29C0, 0x060000),
                 (0x10DE, 0x1C82, 0x030000), (0x8086, 0x7010, 0x010180))
    usb_kinds = ((0x46F4, 0x0001, 8, 6, 0x50), (0x046D, 0xC31C, 3, 1, 1), (0x0BDA, 0x8153, 0xFF, 0xFF, 0),
                 (0x8087, 0x0A2B, 0xE0, 1, 1))
    made = 0
    disks = 0
    hub = None
    while made < n:
        k = made % 10
        if k < 3:
            v, d, c = pci_kinds[(made // 10 + k) % len(pci_kinds)]
            dev = b.pci(v, d, c, driver="pcieport" if c == 0x060400 else None)
            if c == 0x0C0330 and hub is None:
                hub = dev
        elif k < 5:
            parent = hub or b.pci(0x1B36, 0x000D, 0x0C0330)
            hub = parent
            v, p, ic, isc, ip = usb_kinds[made % len(usb_kinds)]
            b.usb_interface(parent, f"1-{made}:1.0", v, p, ic, isc, ip)
        elif k == 5:
            parent = b.pci(0x1AF4, 0x1042, 0x010000, driver="virtio-pci", module="virtio_pci")
            b.virtio(parent, made, 2)
            made += 1
        elif k == 6:
            b.device(None, f"platform-dev{made}", "platform", f"platform:dev{made % 7}",
                     driver="serial8250" if made % 3 == 0 else None)
        elif k == 7:
            b.device(None, f"PNP0C0F:{made:02x}", "acpi", "acpi:PNP0C0F:")
        else:
            host = b.pci(0x8086, 0x2922, 0x010601, driver="ahci", module="ahci")
            sd = b.scsi(host / "ata1", f"{disks}:0:0:0", 0, driver="sd", module="sd_mod")
            name = "sd" + _letters(disks)
            disk = b.disk(sd, name, 8, (disks * 16) % 256, 2 << 20, removable=disks % 4 == 0)
            b.partition(disk, name + "1", 1, 8, (disks * 16 + 1) % 256, 1 << 20)
            disks += 1
            made += 1
        made += 1


class StagedTree:
    """A captured tree revealed step by step, as module loads would reveal it."""

    def __init__(self, capture: Path | str, dest: Path | str) -> None:
        self.src = Path(capture) / "sys"
        self.dest = Path(dest)
        (self.dest / "sys").mkdir(parents=True, exist_ok=True)
        self.dirs: list[tuple[str, str | None, str | None]] = []  # (rel dir, revealer, bound module)
        self.done: set[str] = set()
        self.loaded: set[str] = set()
        listed = Path(capture) / "loaded.txt"
        # Modules the guest loaded: their /sys/module dirs appear only once "loaded" here.
        self.guest_modules = set(listed.read_text().split()) if listed.exists() else set()
        self._scan()
        self.materialize(set())

    def _bound_module(self, d: Path) -> tuple[bool, str | None]:
        drv = d / "driver"
        if not drv.is_symlink():
            return False, None
        mod = (d / "driver" / "module")
        if mod.is_symlink():
            return True, os.path.basename(os.readlink(mod))
        return True, None  # a built-in driver

    def _scan(self) -> None:
        bound: dict[str, str | None] = {}
        devroot = self.src / "devices"
        for dirpath, dirnames, _ in os.walk(devroot):
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.src)
            has, mod = self._bound_module(Path(dirpath))
            # The nearest ancestor with a loadable driver reveals this directory.
            revealer = None
            parent = os.path.dirname(rel)
            while parent and parent != "devices":
                if parent in bound:
                    revealer = bound[parent]
                    break
                parent = os.path.dirname(parent)
            if has:
                bound[rel] = mod
            self.dirs.append((rel, revealer, mod if has else None))

    def materialize(self, loaded: set[str]) -> None:
        """Add every directory and link the loaded modules have revealed so far."""
        self.loaded = set(loaded)
        for rel, revealer, mod in self.dirs:
            parent = os.path.dirname(rel)
            if rel not in self.done:
                if revealer is not None and revealer not in loaded:
                    continue
                if parent != "devices" and parent not in self.done and parent != "":
                    continue
                src, dst = self.src / rel, self.dest / "sys" / rel
                dst.mkdir(parents=True, exist_ok=True)
                for e in os.scandir(src):
                    if e.is_file(follow_symlinks=False):
                        shutil.copyfile(e.path, dst / e.name)
                self.done.add(rel)
            drv = self.src / rel / "driver"
            out = self.dest / "sys" / rel / "driver"
            if drv.is_symlink() and not out.is_symlink() and (mod is None or mod in loaded):
                os.symlink(os.readlink(drv), out)
        self._links()

    def _links(self) -> None:
        """bus/class/block links and driver->module links whose targets now exist."""
        for top in ("bus", "class", "block", "module"):
            base = self.src / top
            if not base.exists():
                continue
            for dirpath, dirnames, filenames in os.walk(base):
                for name in dirnames + filenames:
                    s = Path(dirpath) / name
                    rel = s.relative_to(self.src)
                    d = self.dest / "sys" / rel
                    if s.is_symlink():
                        if d.is_symlink():
                            continue
                        target = os.path.normpath(os.path.join(os.path.dirname(str(rel)), os.readlink(s)))
                        if target.startswith("devices/") and target not in self.done:
                            continue
                        d.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(os.readlink(s), d)
                    elif ((top in ("bus", "class") and s.is_dir())
                          or (top == "module" and dirpath == str(base)
                              and (name not in self.guest_modules or name in self.loaded))):
                        d.mkdir(parents=True, exist_ok=True)
                if top == "module":
                    dirnames[:] = []


# -- test set-up helpers ---------------------------------------------------

KMOD_DIR = "/lib/modules/test"


class GrowingSyscalls(FakeSyscalls):
    """FakeSyscalls whose finit_module/init_module call `on_load(name, modules)` afterwards,
    so a test can add the devices a driver would create."""

    def __init__(self, root: str, on_load: OnLoad | None = None, **kw: Any) -> None:
        super().__init__(root=root, **kw)
        self.on_load = on_load
        # Coldplug loads from several threads; the kernel makes each load atomic
        # for the others, so the fake does too (the tree it grows is not thread-safe).
        self.lock = threading.Lock()

    def finit_module(self, fd: int, params: str = "", flags: int = 0) -> bool:
        with self.lock:
            fresh = super().finit_module(fd, params, flags)
            if self.on_load is not None:
                self.on_load(self.modules[-1] if fresh else None, set(self.modules))
        return fresh


def quiet_log() -> Log:
    return Log(quiet=False, out=io.StringIO())


def log_text(log: Log) -> str:
    """What a `quiet_log()` wrote."""
    out = getattr(log, "out", None)
    return out.getvalue() if isinstance(out, io.StringIO) else ""


def write_moddir(root: Path, deps: dict[str, list[str]], aliases: Sequence[tuple[str, str]] = (),
                 builtin: Sequence[str] = (), softdeps: str = "", suffix: str = ".ko",
                 modprobe_d: str = "") -> Path:
    """A module directory under root/lib/modules/test: empty .ko files, modules.dep/alias/builtin."""
    moddir = root / KMOD_DIR.lstrip("/")
    moddir.mkdir(parents=True, exist_ok=True)
    lines = []
    rel = {m: f"kernel/{m}{suffix}" for m in deps}
    def load_order(m: str, out: list[str]) -> None:
        for d in deps[m]:
            if d not in out:
                load_order(d, out)
                out.append(d)

    for m in deps:
        # modules.dep lists the whole closure, last-needed first (as depmod writes it).
        closure: list[str] = []
        load_order(m, closure)
        lines.append(f"{rel[m]}: {' '.join(rel[d] for d in reversed(closure))}".rstrip())
        p = moddir / rel[m]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    (moddir / "modules.dep").write_text("\n".join(lines) + "\n")
    (moddir / "modules.alias").write_text("".join(f"alias {a} {m}\n" for a, m in aliases))
    (moddir / "modules.builtin").write_text("".join(f"kernel/{b}.ko\n" for b in builtin))
    (moddir / "modules.softdep").write_text(softdeps)
    if modprobe_d:
        (root / "etc" / "modprobe.d").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "modprobe.d" / "test.conf").write_text(modprobe_d)
    return moddir


def machine(root: Path, on_load: OnLoad | None = None, **kw: Any) -> tuple[Machine, GrowingSyscalls]:
    sysc = GrowingSyscalls(str(root), on_load, **kw)
    return Machine(str(root), sysc), sysc


def link_kernel_modules(root: Path, moddir: Path, kver: str) -> str:
    """root/lib/modules/KVER -> the real module tree (finit_module reads the name from the fd)."""
    d = root / "lib" / "modules"
    d.mkdir(parents=True, exist_ok=True)
    if not (d / kver).exists():
        os.symlink(moddir, d / kver)
    return f"/lib/modules/{kver}"
