"""find_root: each root= spec kind, the live search with identity preference,
findiso, the event-driven wait and the failure message. Devices are built
with SysfsBuilder; their content (what fsprobe would say) is a table, and
mounting a device fills the mount point with that medium's files."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from liveinit import blockdev, rootfind
from liveinit.cmdline import parse
from liveinit.discovery import Discovery, NullLoader
from liveinit.emergency import BootFailure
from liveinit.machine import Machine
from liveinit.modload import ModuleLoader
from packer.modindex import from_moddir
from qemu.fakes import FakeSyscalls, FakeUevents
from qemu.fakesysfs import KMOD_DIR, SysfsBuilder, quiet_log, write_moddir

IMAGE = "live/filesystem.squashfs"
MiB_SECTORS = 2048


class MediaSyscalls(FakeSyscalls):
    """Mounting /dev/X at a directory puts media[/dev/X]'s files there; umount removes them."""

    def __init__(self, root: str, media: dict, **kw) -> None:
        super().__init__(root=root, **kw)
        self.media = media

    def mount(self, source, target, fstype=None, flags=0, data=None):
        super().mount(source, target, fstype, flags, data)
        for rel, content in self.media.get(self.rel(source), {}).items():
            p = Path(target) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(content)

    def umount2(self, target, flags=0):
        super().umount2(target, flags)
        for e in os.scandir(target):
            shutil.rmtree(e.path) if e.is_dir() else os.unlink(e.path)


class World:
    """A fake machine: sysfs, device contents, media files, a small module index."""

    def __init__(self, tmp_path: Path, monkeypatch, cmdline: str) -> None:
        self.root = tmp_path
        self.b = SysfsBuilder(tmp_path)
        (tmp_path / "dev").mkdir()
        self.ids: dict[str, dict] = {}
        self.media: dict[str, dict] = {}
        moddir = write_moddir(tmp_path, {"ext4": [], "isofs": [], "vfat": [], "loop": [], "usb_storage": []},
                              [("fs-ext4", "ext4"), ("fs-iso9660", "isofs"), ("fs-vfat", "vfat"),
                               ("usb:v46F4p0001d*dc*dsc*dp*ic08isc06ip50in*", "usb_storage")])
        self.index = from_moddir(str(moddir))
        self.sysc = MediaSyscalls(str(tmp_path), self.media)
        self.m = Machine(str(tmp_path), self.sysc)
        self.log = quiet_log()
        self.cfg = parse(cmdline)
        self.identity = "me"
        self.loader = ModuleLoader(self.m, self.index, KMOD_DIR, self.cfg, self.log)
        monkeypatch.setattr(blockdev, "identify", lambda m, dev: dict(self.ids.get(dev.name, {})))

    def disk(self, name: str, major: int, minor: int, info: dict | None = None, removable=False,
             files: dict | None = None, parts: int = 0):
        d = self.b.disk(None, name, major, minor, 64 * MiB_SECTORS, removable=removable)
        if info:
            self.ids[name] = info
        if files is not None:
            self.media["/dev/" + name] = files
        return d

    def part(self, disk: Path, name: str, n: int, major: int, minor: int, info: dict,
             files: dict | None = None):
        self.b.partition(disk, name, n, major, minor, 16 * MiB_SECTORS)
        self.ids[name] = info
        if files is not None:
            self.media["/dev/" + name] = files

    def find(self, listener=None):
        discovery = Discovery(self.m, self.loader, listener if listener is not None else FakeUevents(),
                              self.log)
        return rootfind.find_root(self.m, self.cfg, self.identity, discovery, self.log)


def standard(w: World) -> None:
    sda = w.disk("sda", 8, 0, {"PTTYPE": "gpt"})
    w.part(sda, "sda1", 1, 8, 1, {"TYPE": "vfat", "UUID": "12AB-34CD", "LABEL": "EFI",
                                  "PARTUUID": "0FC63DAF-0000-4000-8000-000000000001", "PARTLABEL": "esp"})
    w.part(sda, "sda2", 2, 8, 2, {"TYPE": "ext4", "UUID": "c0ffee00-1111-2222-3333-444455556666",
                                  "LABEL": "rootfs", "PARTUUID": "0fc63daf-0000-4000-8000-000000000002",
                                  "PARTLABEL": "root"})


@pytest.mark.parametrize("spec,name", [
    ("root=UUID=c0ffee00-1111-2222-3333-444455556666", "sda2"),
    ("root=UUID=C0FFEE00-1111-2222-3333-444455556666", "sda2"),
    ("root=LABEL=rootfs", "sda2"),
    ("root=PARTUUID=0FC63DAF-0000-4000-8000-000000000002", "sda2"),
    ("root=PARTLABEL=esp", "sda1"),
    ("root=/dev/sda2", "sda2"),
    ("root=/dev/disk/by-label/EFI", "sda1"),
    ("root=8:2", "sda2"),
])
def test_root_spec_kinds(spec, name, tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, spec + " rootdelay=1")
    standard(w)
    found = w.find()
    assert found.device == "/dev/" + name
    assert found.medium is None and found.image is None
    assert found.fstype == w.ids[name]["TYPE"]
    assert found.how.startswith("root=")
    # The fs module is loaded for the next stage's mount; nothing was mounted here.
    assert w.sysc.of("finit_module")[-1][1] == {"ext4": "ext4", "vfat": "vfat"}[found.fstype]
    assert w.sysc.of("mount") == []


def test_root_live_label_mounts_the_medium(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "root=live:LABEL=LIVE rootdelay=1")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "other"})
    found = w.find()
    assert (found.device, found.fstype, found.medium) == ("/dev/sr0", "iso9660", rootfind.MEDIUM)
    assert found.image == rootfind.MEDIUM + "/" + IMAGE
    assert w.sysc.mount_calls() == [("mount", "/dev/sr0", rootfind.MEDIUM, "iso9660", 1, None)]
    assert w.loader.loaded == {"isofs": "fs-iso9660 for /dev/sr0"}
    assert w.sysc.of("mknod") == [("mknod", "/dev/sr0", "b", 11, 0)]


def test_live_search_prefers_the_identity_among_two_media(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "rootdelay=1")
    standard(w)
    w.media["/dev/sda2"] = {"etc/fstab": ""}                               # no image: tried, unmounted
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "OLD"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "someone-else\n"})    # optical, searched first
    sdb = w.disk("sdb", 8, 16, {"PTTYPE": "dos"}, removable=True)
    w.part(sdb, "sdb1", 1, 8, 17, {"TYPE": "vfat", "LABEL": "STICK"},
           files={IMAGE: "sq", "live/liveinit.id": "me\n"})
    found = w.find()
    assert found.device == "/dev/sdb1"
    assert "identity match" in found.how
    mounts = [c[1] for c in w.sysc.mount_calls()]
    assert mounts[0] == "/dev/sr0" and mounts[-1] == "/dev/sdb1"   # optical first, then removable
    assert "/dev/sda2" not in mounts                                   # never reached: a match came first
    assert list(w.sysc.mounts) == [rootfind.MEDIUM]
    assert w.sysc.mounts[rootfind.MEDIUM].source == "/dev/sdb1"
    assert "identity 'someone-else', not 'me'" in w.log.out.getvalue()


def test_live_search_takes_a_stranger_when_no_identity_matches(tmp_path, monkeypatch):
    monkeypatch.setattr(rootfind, "SETTLE", 0.05)
    w = World(tmp_path, monkeypatch, "rootdelay=5")
    standard(w)
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "OLD"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "someone-else"})
    t = time.monotonic()
    found = w.find()
    assert time.monotonic() - t < 2          # the settle time, not the whole rootdelay
    assert found.device == "/dev/sr0" and "none matched" in found.how
    assert "no medium carries identity 'me'; using /dev/sr0" in w.log.out.getvalue()
    assert w.sysc.mounts[rootfind.MEDIUM].source == "/dev/sr0"


def test_stranger_taken_once_quiet_without_waiting_settle(tmp_path, monkeypatch):
    """No coldplug running, no slow bus, no uevents: QUIET, not SETTLE, bounds the wait."""
    monkeypatch.setattr(rootfind, "SETTLE", 30.0)
    w = World(tmp_path, monkeypatch, "rootdelay=60")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "OLD"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "someone-else"})
    t = time.monotonic()
    found = w.find()
    assert time.monotonic() - t < rootfind.QUIET + 2
    assert found.device == "/dev/sr0" and "none matched" in found.how


def test_stranger_waits_settle_while_usb_storage_is_in(tmp_path, monkeypatch):
    """USB sticks show their disk seconds after the bus device: a better match may still come."""
    monkeypatch.setattr(rootfind, "SETTLE", 1.0)
    w = World(tmp_path, monkeypatch, "rootdelay=60")
    w.b.module("usb_storage")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "OLD"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "someone-else"})
    t = time.monotonic()
    found = w.find()
    assert time.monotonic() - t >= 1.0
    assert found.device == "/dev/sr0"


def test_findiso_loop_mounts_the_iso(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "findiso=/isos/live.iso rootdelay=1")
    standard(w)
    w.media["/dev/sda1"] = {"EFI/boot.efi": ""}
    w.media["/dev/sda2"] = {"isos/live.iso": "iso bytes"}
    w.media["/dev/loop0"] = {IMAGE: "sq"}
    found = w.find()
    assert found.device == "/dev/loop0" and found.fstype == "iso9660"
    assert found.image == rootfind.MEDIUM + "/" + IMAGE
    assert found.how == "findiso /isos/live.iso on sda2"
    assert w.sysc.of("loop_attach") == [("loop_attach", rootfind.ISO_MOUNT + "/isos/live.iso", True)]
    assert w.sysc.mounts[rootfind.ISO_MOUNT].source == "/dev/sda2"
    assert w.sysc.mounts[rootfind.MEDIUM].source == "/dev/loop0"
    assert {"loop", "isofs", "ext4"} <= set(w.loader.loaded)


def test_waits_for_a_late_usb_stick_event_driven(tmp_path, monkeypatch):
    """Poll 0 and 1 bring nothing; poll 2 delivers the USB interface (its driver loads and
    the disk appears), the block add event follows; no fixed sleeps."""
    w = World(tmp_path, monkeypatch, "root=live:LABEL=STICK rootdelay=10")
    standard(w)

    def on_load(name):
        if name == "usb_storage":
            sdb = w.disk("sdb", 8, 16, {"PTTYPE": "dos"}, removable=True)
            w.part(sdb, "sdb1", 1, 8, 17, {"TYPE": "vfat", "LABEL": "STICK"}, files={IMAGE: "sq"})

    real = w.sysc.finit_module

    def finit(fd, params="", flags=0):
        r = real(fd, params, flags)
        on_load(w.sysc.modules[-1])
        return r

    w.sysc.finit_module = finit
    usb = {"ACTION": "add", "DEVPATH": "/devices/pci0000:00/0000:00:00.0/usb1/1-1/1-1:1.0",
           "SUBSYSTEM": "usb", "MODALIAS": "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"}
    blk = {"ACTION": "add", "DEVPATH": "/devices/.../block/sdb/sdb1", "SUBSYSTEM": "block", "DEVNAME": "sdb1"}
    listener = FakeUevents([[], [], [usb], [blk]])
    t = time.monotonic()
    found = w.find(listener)
    assert time.monotonic() - t < 1
    assert found.device == "/dev/sdb1"
    assert w.loader.loaded["usb_storage"].startswith("uevent usb 1-1:1.0")
    assert len(listener.polls) == 3     # woke on the usb event; found after its load
    assert all(0 < p <= rootfind.POLL_MAX for p in listener.polls)
    # The costs: each poll is a wait, each superblock read probing, each insert a load.
    prof = w.m.costs.totals()
    assert prof["device waits"][0] >= len(listener.polls)
    assert prof["probing"][0] >= 2 and prof["module loads"][0] == len(w.sysc.modules)


def test_timeout_message_names_spec_devices_modules_and_parameters(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "root=LABEL=FOO rootdelay=0.2")
    standard(w)
    w.loader.load("loop", "cmdline")
    with pytest.raises(BootFailure) as e:
        w.find()
    msg, hint = e.value.message, e.value.hint
    assert msg.startswith("no device with LABEL=FOO appeared within 0.2 s")
    assert "/dev/sda2 16 MiB: TYPE=ext4 LABEL=rootfs UUID=c0ffee00-1111-2222-3333-444455556666" in msg
    assert "/dev/sda1 16 MiB: TYPE=vfat LABEL=EFI UUID=12AB-34CD" in msg
    assert "/dev/sda 64 MiB: no filesystem recognised" in msg
    assert "modules loaded: loop" in msg
    for param in ("root=", "rootdelay=", "rd.driver.pre="):
        assert param in hint


def test_live_search_failure_names_the_image(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "liveinit.image=/casper/fs.squashfs rootdelay=0.2")
    standard(w)
    with pytest.raises(BootFailure) as e:
        w.find()
    assert e.value.message.startswith("no block device holds /casper/fs.squashfs")
    assert "TYPE=ext4 LABEL=rootfs" in e.value.message
    assert "liveinit.image=" in e.value.hint and "rootdelay=" in e.value.hint
    assert w.sysc.mounts == {}   # every candidate unmounted again


def test_no_block_devices_at_all(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "root=/dev/vda1 rootdelay=0.1")
    with pytest.raises(BootFailure) as e:
        w.find()
    assert "no device with /dev/vda1 appeared within 0.1 s" in e.value.message
    assert "no block devices at all" in e.value.message


def test_works_with_boots_null_loader(tmp_path, monkeypatch):
    """boot.py falls back to a NullLoader when the module index is unreadable."""
    w = World(tmp_path, monkeypatch, "root=live:LABEL=LIVE rootdelay=1")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True, files={IMAGE: "sq"})
    w.loader = NullLoader()
    assert w.find().device == "/dev/sr0"


def test_device_unreadable_at_first_is_probed_again(tmp_path, monkeypatch):
    """A stick whose superblock cannot be read yet is not written off: the next rescan sees it."""
    w = World(tmp_path, monkeypatch, "rootdelay=5")
    sdb = w.disk("sdb", 8, 16, {"PTTYPE": "dos"}, removable=True)
    w.part(sdb, "sdb1", 1, 8, 17, {}, files={IMAGE: "sq", "live/liveinit.id": "me"})

    def ready(n):
        if n == 1:
            w.ids["sdb1"] = {"TYPE": "vfat", "LABEL": "STICK"}

    change = {"ACTION": "change", "DEVPATH": "/devices/x/block/sdb/sdb1"}
    listener = FakeUevents([[], [change]], on_poll=ready)
    found = w.find(listener)
    assert found.device == "/dev/sdb1" and len(listener.polls) == 2


# -- faults: retries, the loop fallback, the failure message (issue 12) -------

def test_a_failed_mount_is_tried_again_with_back_off(tmp_path, monkeypatch):
    """The medium comes up late and its first two mounts fail (EIO, then ENOMEDIUM):
    it is retried after 0.5 s, then 1 s, and taken on the third try."""
    import errno
    w = World(tmp_path, monkeypatch, "rootdelay=10")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "me"})
    w.sysc.fail["mount:iso9660"] = [errno.ENOMEDIUM, errno.ENOMEDIUM]
    t = time.monotonic()
    found = w.find()
    took = time.monotonic() - t
    assert found.device == "/dev/sr0" and found.medium == rootfind.MEDIUM
    assert [c[1] for c in w.sysc.mount_calls()] == ["/dev/sr0"] * 3
    assert 1.4 <= took < 4, took        # 0.5 s + 1 s of back-off, not the whole delay


def test_failed_mounts_are_named_with_their_error_when_the_delay_ends(tmp_path, monkeypatch):
    import errno
    w = World(tmp_path, monkeypatch, "rootdelay=1.2")
    standard(w)
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True, files={IMAGE: "sq"})
    w.sysc.fail["mount:iso9660"] = errno.ENOMEDIUM
    with pytest.raises(BootFailure) as e:
        w.find()
    msg = e.value.message
    assert "(searched for 1.2 s, 4 devices tried, 1 failed)" in msg   # sda, sda1, sda2, sr0
    line = msg.split("/dev/sr0 64 MiB: TYPE=iso9660 LABEL=LIVE\n    tried: mount as iso9660 failed: ")[1]
    assert line.split("\n")[0].endswith("No medium found (ENOMEDIUM)")
    assert len([c for c in w.sysc.mount_calls() if c[1] == "/dev/sr0"]) >= 2   # retried in 1.2 s


def test_eio_with_a_readable_superblock_mounts_through_a_loop_device(tmp_path, monkeypatch):
    """The megasas-gen2 CD: isofs on /dev/sr0 fails with EIO, a read-only loop over it works."""
    import errno
    w = World(tmp_path, monkeypatch, "rootdelay=2")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True,
           files={IMAGE: "sq", "live/liveinit.id": "me"})
    w.media["/dev/loop0"] = w.media["/dev/sr0"]
    w.sysc.fail["mount:" + rootfind.MEDIUM] = [errno.EIO]
    found = w.find()
    assert found.device == "/dev/sr0" and "(identity match via /dev/loop0)" in found.how
    assert w.sysc.of("loop_attach") == [("loop_attach", "/dev/sr0", True)]
    assert w.sysc.mounts[rootfind.MEDIUM].source == "/dev/loop0"
    assert "loop" in w.loader.loaded
    assert "mounted through the read-only loop device /dev/loop0" in w.log.out.getvalue()


def test_eio_through_the_loop_too_is_reported_with_both_errors(tmp_path, monkeypatch):
    import errno
    w = World(tmp_path, monkeypatch, "root=live:LABEL=LIVE rootdelay=0.3")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True, files={IMAGE: "sq"})
    w.sysc.fail["mount:iso9660"] = errno.EIO
    with pytest.raises(BootFailure) as e:
        w.find()
    msg = e.value.message.split("\n")[0]
    assert msg.startswith("the live medium LABEL=LIVE (/dev/sr0) could not be used within 0.3 s: "
                          "mount as iso9660 failed: ")
    assert msg.count("Input/output error (EIO)") == 2 and "; through /dev/loop0 too: " in msg
    assert ("loop_release", "/dev/loop0") in w.sysc.calls
    assert "rootfstype=" in e.value.hint and "rootdelay=" in e.value.hint


def test_root_live_spec_waits_out_its_delay_after_a_failed_mount(tmp_path, monkeypatch):
    """root=live:LABEL=...: one failed mount no longer ends the stage at once."""
    import errno
    w = World(tmp_path, monkeypatch, "root=live:LABEL=LIVE rootdelay=5")
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True, files={IMAGE: "sq"})
    w.sysc.fail["mount:iso9660"] = [errno.EIO, errno.EIO]   # direct and through the loop
    found = w.find()
    assert found.device == "/dev/sr0" and found.how == "root=live:LABEL=LIVE"
    assert len([c for c in w.sysc.mount_calls() if c[1] == "/dev/sr0"]) == 2


def test_root_live_spec_without_the_image_names_what_is_missing(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "root=live:LABEL=rootfs rootdelay=0.2")
    standard(w)
    with pytest.raises(BootFailure) as e:
        w.find()
    assert e.value.message.startswith("the live medium LABEL=rootfs (/dev/sda2) could not be used "
                                      f"within 0.2 s: mounted as ext4 but holds no /{IMAGE}")
    assert w.sysc.mounts == {}


def test_unreadable_superblock_is_named_in_the_failure(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "rootdelay=0.2")
    w.disk("sr0", 11, 0, removable=True)

    def unreadable(m, dev):
        raise OSError(123, "No medium found")

    monkeypatch.setattr(blockdev, "identify", unreadable)
    with pytest.raises(BootFailure) as e:
        w.find()
    assert "tried: cannot read its superblock: No medium found (ENOMEDIUM)" in e.value.message


def test_garbage_root_fails_at_once_without_searching(tmp_path, monkeypatch):
    w = World(tmp_path, monkeypatch, "root=nfs:1.2.3.4:/x rootdelay=30")
    standard(w)
    w.disk("sr0", 11, 0, {"TYPE": "iso9660", "LABEL": "LIVE"}, removable=True, files={IMAGE: "sq"})
    t = time.monotonic()
    with pytest.raises(BootFailure) as e:
        w.find()
    assert time.monotonic() - t < 2
    assert e.value.message.startswith("root=nfs:1.2.3.4:/x names no device, so there is nothing to wait for")
    assert "/dev/sr0 64 MiB: TYPE=iso9660 LABEL=LIVE" in e.value.message   # what could be named
    assert "root=UUID=" in e.value.hint and "remove root=" in e.value.hint
    assert w.sysc.mount_calls() == []    # the live CD was not booted instead
