"""The fault matrix (issue 12), booted in QEMU: every fault ends in a readable
diagnosis (the device, the error, the parameter to change) and never in a
kernel panic. One demo ISO is built per module; the variants are small byte
edits of it (a corrupt squashfs superblock, a flipped data byte) or a second
initramfs with a shell password baked in. Boots are direct kernel boots with a
short rootdelay; the guest's serial line is a socket (typed passwords) and
QEMU's QMP socket ejects and re-inserts the CD.

Every test prints its diagnosis lines; docs/RELIABILITY.md's table was
written from a run of this file (`pytest -s -m qemu tests/test_faults.py`)."""
from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from liveinit.contract import DEMO_OK
from packer import image
from packer.config import PackConfig
from packer.initramfs import build as pack
from packer.kernel import KernelTree
from qemu import lab, profiles
from qemu.demoroot import build_demo_root

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

BOOT_TIMEOUT_S = 150
DELAY = "rootdelay=3"
PANIC = re.compile(r"Kernel panic|end Kernel panic")
PASSWORD = "correct horse"
# `openssl passwd -6 -salt liveinitfaults 'correct horse'`
PASSWORD_HASH = ("$6$liveinitfaults$u9m6p6k/OT6FBkO8r9PRhteVN1ylt3uLO.eocxTh1q"
                 "oilGn24dA9KkpjfJBoaDHtORDTqRyEt6fi93Tn5DC9k/")
NO_UUID = "0badc0de-0000-4000-8000-000000000000"


class Guest:
    """One QEMU run: the console log, the serial socket, the QMP socket."""

    def __init__(self, work: Path, profile: str, iso: Path | None, vmlinuz: Path, initrd: Path,
                 cmdline: str, extra: tuple[str, ...] = ()) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.log = work / "console.log"
        self.serial = work / "serial.sock"
        self.qmp_path = work / "qmp.sock"
        cmd = lab.command(profiles.profile(profile), iso, work, self.log, kernel=vmlinuz, initrd=initrd,
                          cmdline=" ".join((lab.LAB_CMDLINE, cmdline)), accel_args=lab.accel())
        i = cmd.index("-serial")
        cmd[i + 1] = "chardev:con0"
        cmd += ["-chardev", f"socket,id=con0,path={self.serial},server=on,wait=off,logfile={self.log}",
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off", *extra]
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=(work / "qemu.stderr").open("wb"), start_new_session=True)
        self.started = time.monotonic()
        self._qmp: socket.socket | None = None

    @property
    def text(self) -> str:
        return self.log.read_text(errors="replace").replace("\r\n", "\n") if self.log.exists() else ""

    def wait(self, pattern: str, timeout: float = BOOT_TIMEOUT_S) -> re.Match[str]:
        """The first match of `pattern` on the console; fails on timeout, panic or QEMU's exit."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.text
            m = rx.search(text)
            if m:
                return m
            if PANIC.search(text):
                pytest.fail(f"kernel panic waiting for {pattern!r}:\n{text[-3000:]}")
            if self.proc.poll() is not None:
                pytest.fail(f"QEMU exited ({self.proc.returncode}) waiting for {pattern!r}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"timeout waiting for {pattern!r}:\n{text[-3000:]}")
            time.sleep(0.1)

    def exited(self, timeout: float) -> int:
        self.proc.wait(timeout)
        return self.proc.returncode

    def qmp(self, execute: str, **arguments: object) -> dict:
        if self._qmp is None:
            self._qmp = socket.socket(socket.AF_UNIX)
            self._qmp.connect(str(self.qmp_path))
            self._qmp_read()
            self._qmp.sendall(json.dumps({"execute": "qmp_capabilities"}).encode() + b"\n")
            self._qmp_read()
        self._qmp.sendall(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
        return self._qmp_read()

    def _qmp_read(self) -> dict:
        assert self._qmp is not None
        buf = b""
        while True:
            buf += self._qmp.recv(65536)
            for line in buf.split(b"\n"):
                if line.strip():
                    msg = json.loads(line)
                    if "return" in msg or "QMP" in msg or "error" in msg:
                        return msg

    def hmp(self, command: str) -> str:
        return str(self.qmp("human-monitor-command", **{"command-line": command}).get("return", ""))

    def type(self, text: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.serial))
            s.sendall(text.encode())
            time.sleep(0.3)

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
        lab.kill_tree(self.proc.pid)

    def diagnosis(self) -> list[str]:
        """The runtime's FAILED/hint/check/lock lines (each once), for the report."""
        out: list[str] = []
        for line in self.text.splitlines():
            line = re.sub(r"^\[\s*[\d.]+\] ", "", line.strip())
            wanted = (r"liveinit: (FAILED|hint|check|no emergency shell|the live medium|searching|"
                      r"command line|(warning: )?(/dev/\S+: mounting|union: using))")
            if re.match(wanted, line) and line not in out:
                out.append(line)
        return out


@pytest.fixture(scope="module")
def media(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo ISO, its kernel and initramfs, and the byte-edited variants."""
    work = tmp_path_factory.mktemp("faults")
    root = build_demo_root(work / "root")
    res = image.build_image(root, work / "demo.iso", kernel, all_root=True)
    iso = res.iso
    out = {"iso": iso, "vmlinuz": image.extract(iso, image.KERNEL_PATH, work / "vmlinuz"),
           "initrd": image.extract(iso, image.INITRD_PATH, work / "initrd.img"), "work": work}
    data = iso.read_bytes()
    sq = next(o for o in range(0, len(data), 2048) if data[o:o + 4] == b"hsqs")
    size = int.from_bytes(data[sq + 40:sq + 48], "little")      # bytes_used
    corrupt = bytearray(data)
    corrupt[sq + 64:sq + 72] = (size + (1 << 30)).to_bytes(8, "little")   # inode_table_start past the end
    out["corrupt"] = work / "corrupt.iso"
    out["corrupt"].write_bytes(bytes(corrupt))
    flipped = bytearray(data)
    flipped[sq + size // 2] ^= 0x20                               # one bit of file data
    out["flipped"] = work / "flipped.iso"
    out["flipped"].write_bytes(bytes(flipped))
    out["locked_initrd"] = work / "locked.img"
    pack(PackConfig(output=out["locked_initrd"], kver=kernel.version, moddir=kernel.moddir,
                    identity=res.identity, shell_password_hash=PASSWORD_HASH))
    return out


def boot(media: dict[str, Path], name: str, cmdline: str, profile: str = "ide-cd", iso: str | None = "iso",
         initrd: str = "initrd", extra: tuple[str, ...] = ()) -> Guest:
    return Guest(media["work"] / name, profile, media[iso] if iso else None, media["vmlinuz"], media[initrd],
                 cmdline, extra)


EMPTY_CD = ("-drive", "if=none,id=live,media=cdrom,readonly=on", "-device", "ide-cd,drive=live,bus=ide.1")


def failed(g: Guest) -> str:
    """Wait for the failure and its hint; return the diagnosis text (printed for the report)."""
    g.wait(r"liveinit: hint: ")
    g.wait(r"liveinit: emergency shell|no emergency shell", 30)
    lines = g.diagnosis()
    print("\n" + "\n".join(lines))
    assert not PANIC.search(g.text)
    return "\n".join(lines)


@pytest.fixture
def guests():
    started: list[Guest] = []
    yield started
    for g in started:
        g.close()


def test_no_medium(media, guests):
    g = boot(media, "nomedium", DELAY, profile="virtio-blk", iso=None)
    guests.append(g)
    text = failed(g)
    assert "FAILED: no block device holds /live/filesystem.squashfs (searched for 3 s" in text
    assert "insert the live medium or raise rootdelay=" in text


def test_medium_removed_mid_boot_and_reinserted(media, guests):
    g = boot(media, "eject", "liveinit.check rootdelay=60")
    guests.append(g)
    g.wait(r"liveinit: check: verifying \d+ files")
    g.hmp("eject -f live")
    lost = g.wait(r"liveinit: the live medium went away while [^\n]*")
    g.wait(r"searching for the live medium again for up to 60 s")
    g.hmp(f"change live {media['iso']} raw read-only")
    g.wait(re.escape(DEMO_OK))
    print("\n" + lost[0] + "\n" + "\n".join(g.diagnosis()))
    assert "/dev/sr0" in lost[0]
    assert not PANIC.search(g.text)


def test_medium_late_after_failed_mounts(media, guests):
    """The drive is empty for the first seconds: reads fail (no medium), it is retried, then boots."""
    g = boot(media, "late", "rootdelay=60", iso=None, profile="ide-cd", extra=EMPTY_CD)
    guests.append(g)
    g.wait(r"liveinit: stage cmdline")
    time.sleep(3)
    g.hmp(f"change live {media['iso']} raw read-only")
    g.wait(re.escape(DEMO_OK))
    assert not PANIC.search(g.text)


def test_corrupt_squashfs_mount_fails(media, guests):
    g = boot(media, "corrupt", DELAY, iso="corrupt")
    guests.append(g)
    text = failed(g)
    assert "FAILED: cannot mount /run/liveinit/medium/live/filesystem.squashfs (squashfs)" in text
    assert "check the medium's checksum" in text


def test_flipped_byte_is_caught_by_the_check(media, guests):
    g = boot(media, "flipped", "liveinit.check " + DELAY, iso="flipped")
    guests.append(g)
    text = failed(g)
    assert "check: live/filesystem.squashfs: SHA-256 mismatch" in text
    assert re.search(r"FAILED: check: the medium /dev/sr0 is damaged: 1 of \d+ files differ from its "
                     r"SHA256SUMS: live/filesystem.squashfs\n", text + "\n")
    # The host's check says the same, from the same checker.
    host = subprocess.run([".venv/bin/python", "-m", "packer.cli", "verify", str(media["flipped"])],
                          capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert host.returncode == 1 and "check: live/filesystem.squashfs: SHA-256 mismatch" in host.stdout
    ok = subprocess.run([".venv/bin/python", "-m", "packer.cli", "verify", str(media["iso"])],
                        capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert ok.returncode == 0 and "the medium is intact" in ok.stdout


def test_missing_driver(media, guests):
    g = boot(media, "nodriver", "modprobe.blacklist=virtio_blk " + DELAY, profile="virtio-blk")
    guests.append(g)
    text = failed(g)
    assert "no block devices at all (is the storage driver in the image?)" in g.text
    assert "FAILED: no block device holds /live/filesystem.squashfs" in text
    assert "rd.driver.pre=MODULE" in text


def test_module_whose_init_fails(media, guests):
    g = boot(media, "badmodule", "virtio_blk.queue_depth=notanumber " + DELAY, profile="virtio-blk")
    guests.append(g)
    text = failed(g)
    assert re.search(r"modules failed: .*virtio_blk \(", g.text)
    assert "no block device holds" in text


def test_tmpfs_too_small_for_the_bind_copy(media, guests):
    # module_blacklist= (the kernel's own): overlay cannot load, as in an image packed without it
    g = boot(media, "enospc", "module_blacklist=overlay liveinit.overlay_size=4k " + DELAY)
    guests.append(g)
    text = failed(g)
    assert "the writable layer's tmpfs (liveinit.overlay_size=4k) is too small for the bind" in text
    assert "lacks overlayfs" not in text


def test_no_overlay_boots_through_the_chain_to_bind(media, guests):
    g = boot(media, "bind", "module_blacklist=overlay " + DELAY)
    guests.append(g)
    ok = g.wait(re.escape(DEMO_OK) + r"[^\n]*")
    assert "writable=yes" in ok[0] and "root=overlay" not in ok[0]
    used = g.wait(r"union: using bind \([^\n]*")
    print("\n" + used[0] + "\n" + ok[0])
    assert "overlay: not supported by this kernel" in used[0]
    assert not PANIC.search(g.text)


def test_garbage_root(media, guests):
    g = boot(media, "garbage", "root=nfs:garbage rootdelay=30")
    guests.append(g)
    text = failed(g)
    assert "FAILED: root=nfs:garbage names no device, so there is nothing to wait for" in text
    assert time.monotonic() - g.started < 90   # not the 30 s delay plus a search


def test_uuid_that_does_not_exist(media, guests):
    g = boot(media, "nouuid", f"root=UUID={NO_UUID} {DELAY}")
    guests.append(g)
    text = failed(g)
    assert f"FAILED: no device with UUID={NO_UUID} appeared within 3 s" in text
    assert "/dev/sr0" in g.text and "rootdelay=" in text


def test_missing_init(media, guests):
    g = boot(media, "noinit", "init=/sbin/nothere " + DELAY)
    guests.append(g)
    text = failed(g)
    assert "FAILED: init=/sbin/nothere is not in the new root" in text
    assert "remove it to start /sbin/init" in text


def test_shell_disabled(media, guests):
    g = boot(media, "noshell", f"root=UUID={NO_UUID} rootdelay=1 rd.shell=0 rd.emergency=poweroff")
    guests.append(g)
    failed(g)
    g.wait(r"no emergency shell \(the shell is disabled by rd.shell=0\): poweroff in 10 s")
    assert g.exited(60) == 0                   # powered off, not a panic
    assert "liveinit: emergency shell\n" not in g.text


def test_three_wrong_shell_passwords(media, guests):
    g = boot(media, "password", f"root=UUID={NO_UUID} rootdelay=1 rd.emergency=poweroff",
             initrd="locked_initrd")
    guests.append(g)
    for attempt in ("guess", "wrong", "Correct horse"):
        g.wait(r"emergency shell password: ")
        before = g.text.count("wrong password")
        g.type(attempt + "\n")
        deadline = time.monotonic() + 60
        while g.text.count("wrong password") == before and time.monotonic() < deadline:
            time.sleep(0.2)
    failed(g)
    g.wait(r"no emergency shell \(3 wrong passwords\): poweroff in 10 s")
    assert g.exited(60) == 0
    assert PASSWORD not in g.text              # the tries are not echoed


def test_megasas_gen2_cd(media, guests):
    """sr cannot read this CD's capacity; isofs fails with EIO; the loop device works."""
    g = boot(media, "megasas", DELAY, profile="megasas-cd")
    guests.append(g)
    g.wait(re.escape(DEMO_OK))
    lines = [x for x in g.text.splitlines() if re.search(r"sr0|isofs|loop\d|live medium", x)]
    print("\n" + "\n".join(lines))
    assert "live medium: /live/filesystem.squashfs on sr0 (identity match via /dev/loop0)" in g.text
    assert not PANIC.search(g.text)


# -- the pivot_root hand-over, for real -------------------------------------------------------
# Debian's kernel has virtio_blk and ext4 as modules, so it cannot mount root=/dev/vda by itself.
# STAGE1 does the kernel's part of an initrd boot, nothing more: load those drivers, mount
# root= and exec init= on it as PID 1 (busybox switch_root), with /proc, /sys and /dev unmounted
# again, as the kernel leaves them. liveinit then starts from a real block device as /.
STAGE1 = """#!/bin/busybox sh
bb=/bin/busybox
$bb mount -t proc proc /proc
for m in $($bb cat /modules.order); do $bb insmod /modules/$m.ko || echo "stage1: insmod $m failed"; done
for w in $($bb cat /proc/cmdline); do
  case $w in root=*) root=${w#root=} ;; init=*) init=${w#init=} ;; esac
done
$bb mount -t devtmpfs devtmpfs /dev
n=0
while [ ! -b "$root" ] && [ $n -lt 100 ]; do $bb sleep 0.1; n=$((n + 1)); done
$bb mount -t ext4 -o rw "$root" /root || { echo "stage1: cannot mount $root"; exec $bb sh; }
echo "stage1: $root mounted as /, exec $init"
$bb umount /dev /proc
exec $bb switch_root /root "$init"
"""
STAGE1_DRIVERS = ("virtio_pci", "virtio_blk", "ext4")
# root= and init= are the kernel's (STAGE1's); liveinit.root= and liveinit.init=, later words, are
# liveinit's own: the live medium to search for and the demo root's init.
PIVOT_CMDLINE = f"root=/dev/vda init=/init liveinit.root=live:auto liveinit.init=/sbin/init {DELAY}"
INITRD_DISK = ("-drive", "if=none,id=initrd,format=raw,file={disk}", "-device", "virtio-blk-pci,drive=initrd")


def stage1(kernel: KernelTree, depmod_root: Path, dest: Path) -> Path:
    """A cpio with busybox, STAGE1 as /init and the drivers to mount an ext4 virtio disk."""
    from packer.busybox import BUSYBOX
    from packer.cpio import ArchiveBuilder, image_bytes
    from packer.modindex import from_moddir
    moddir = depmod_root / "lib" / "modules" / kernel.version
    index = from_moddir(str(moddir))
    order = list(dict.fromkeys(n.replace("-", "_") for d in STAGE1_DRIVERS for n in index.load_order(d)))
    b = ArchiveBuilder()
    for d in ("bin", "dev", "proc", "root", "modules"):
        b.add_dir(d)
    b.add_device("dev/console", "c", 5, 1)
    b.add_file("bin/busybox", src=BUSYBOX, mode=0o755)
    b.add_file("init", data=STAGE1.encode(), mode=0o755)
    for name in order:
        rel = index.path(name)
        assert rel is not None and rel.endswith(".ko"), (name, rel)
        b.add_file(f"modules/{name}.ko", src=moddir / rel, mode=0o644)
    b.add_file("modules.order", data="\n".join(order).encode() + b"\n", mode=0o644)
    dest.write_bytes(image_bytes(b, "none"))
    return dest


@pytest.fixture(scope="module")
def initrd_disk(media: dict[str, Path], kernel: KernelTree, depmod_root: Path) -> dict[str, Path]:
    """The demo image's initramfs unpacked (`liveinit extract`) onto an ext4 disk, and STAGE1."""
    from packer.cmd_archive import extract, read_image
    work = media["work"] / "pivot"
    tree = work / "tree"
    tree.mkdir(parents=True)
    done = extract(read_image(media["initrd"]), tree, make_nodes=True)
    assert not done.skipped, done.skipped
    used = sum(p.lstat().st_size for p in tree.rglob("*"))
    disk = work / "initrd.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "liveinitrd", "-E", "root_owner=0:0", "-d", str(tree),
                    str(disk), f"{used * 2 // (1 << 20) + 32}M"], check=True)
    return {"disk": disk, "stage1": stage1(kernel, depmod_root, work / "stage1.cpio")}


def test_pivot_root_from_an_initrd_disk(media, initrd_disk, guests):
    """/init on an ext4 root=/dev/vda (the kernel's way for an old-style initrd): liveinit
    finds the live CD, pivots into the stacked root, unmounts the initrd and starts the demo."""
    extra = tuple(a.format(disk=initrd_disk["disk"]) for a in INITRD_DISK)
    g = Guest(media["work"] / "pivot" / "boot", "ide-cd", media["iso"], media["vmlinuz"],
              initrd_disk["stage1"], PIVOT_CMDLINE, extra)
    guests.append(g)
    g.wait(r"stage1: /dev/vda mounted as /, exec /init")
    ok = g.wait(re.escape(DEMO_OK) + r"[^\n]*")
    assert " init=1" in ok[0] and "writable=yes" in ok[0]
    g.wait(r"liveinit demo: shell on the console")
    g.type("printf 'REC%s\\n' ORD-BEGIN; cat /run/liveinit/boot.json; printf 'REC%s\\n' ORD-END;"
           " printf 'MOUNTS%s\\n' -BEGIN; cat /proc/mounts; printf 'MOUNTS%s\\n' -END\n")
    rec = g.wait(r"(?s)\nRECORD-BEGIN\n(.*?)\nRECORD-END\n", 60)
    mounts = g.wait(r"(?s)\nMOUNTS-BEGIN\n(.*?)\nMOUNTS-END\n", 60)
    record = json.loads(rec[1])
    print("\n" + ok[0] + "\ninit: " + json.dumps(record["init"]) + "\n" + mounts[1])
    assert record["init"] == {"path": "/sbin/init", "argv": ["/sbin/init"], "method": "pivot_root"}
    assert "/dev/vda" not in mounts[1]            # the initrd was unmounted after the pivot
    assert "/run/liveinit/initrd" not in mounts[1]
    assert not PANIC.search(g.text)
