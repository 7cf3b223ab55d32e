"""Roots under block layers, end to end in QEMU on the Debian test kernel:
LUKS2 (the passphrase typed on the serial console), LVM on LUKS2, a degraded
md RAID1, a btrfs subvolume, and a German console keymap typing a passphrase
through the emulated PS/2 keyboard.

The encrypted, LVM and md images are made inside a guest (qemu/guestrun.py:
this host has no device-mapper or md) and cached by recipe under the cache
directory; each test boots a sparse copy. The root inside is the lab's demo
root, whose init prints LIVEINIT-DEMO-OK."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest

from liveinit.contract import DEMO_OK, PASSPHRASE_PROMPT
from packer import initramfs
from packer.config import PackConfig
from packer.kernel import KernelTree
from qemu import guestrun, lab

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PASSWORD = "correct horse"
GERMAN = "zyü"                    # typed on the US keys y, z, [ with the de-latin1 keymap
LUKS_UUID = "5e5e5e5e-1111-4222-8333-444444444444"
ROOT_UUID = "0c0c0c0c-aaaa-4bbb-8ccc-dddddddddddd"
BTRFS_UUID = "b7b7b7b7-1234-4567-89ab-cdefcdefcdef"
# Small argon2id costs: the guest formats, the TCG guest opens; real volumes keep the defaults.
FORMAT = "--type luks2 --pbkdf argon2id --pbkdf-memory 32768 --iter-time 200"
BOOT_TIMEOUT = 300.0
PROMPT = PASSPHRASE_PROMPT.split("{")[0]      # "Passphrase for "


@pytest.fixture(scope="module")
def initrd(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("layers") / "initrd.img"
    initramfs.build(PackConfig(output=out, moddir=kernel.moddir, kver=kernel.version,
                               layers=("luks", "lvm", "md"), keymap=("de-latin1",)))
    return out


@pytest.fixture(scope="module")
def keyed_initrd(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image whose crypttab opens the LUKS root with a key file baked at pack time."""
    work = tmp_path_factory.mktemp("keyed")
    key = work / "root.key"
    key.write_text(PASSWORD)          # a passphrase is a key file's content too (no newline)
    key.chmod(0o400)
    tab = work / "crypttab"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} {key} luks,initramfs\n")
    out = work / "initrd.img"
    initramfs.build(PackConfig(output=out, moddir=kernel.moddir, kver=kernel.version, crypttab=tab))
    assert out.stat().st_mode & 0o777 == 0o600
    return out


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo root as a 40 MiB ext4 image with a fixed UUID, and its tree's digest (the cache key)."""
    from qemu.demoroot import build_demo_root
    work = tmp_path_factory.mktemp("layers-root")
    root = build_demo_root(work / "root")
    img = work / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-E", "root_owner=0:0", "-d", str(root),
                    str(img), "40M"], check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return img, guestrun.tree_digest(root) + " ext4 40M " + ROOT_UUID


def _copy(src: Path, dest_dir: Path) -> Path:
    dest = dest_dir / src.name
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest


def _prepare(name: str, script: str, sizes: dict[str, int], kernel: KernelTree,
             rootfs: tuple[Path, str]) -> dict[str, Path]:
    """Images made in the guest from the demo root image (attached after them)."""
    return guestrun.prepare(name, script, sizes, (rootfs[0],), kernel, inputs_key=rootfs[1])


def _luks(passphrase: str, target: str) -> str:
    return (f"printf '%s' '{passphrase}' | cryptsetup luksFormat -q {FORMAT} --uuid {LUKS_UUID} "
            f"--key-file=- {target}\n"
            f"printf '%s' '{passphrase}' | cryptsetup open --key-file=- {target} c\n")


@pytest.fixture(scope="module")
def luks_disk(kernel: KernelTree, rootfs: tuple[Path, str]) -> Path:
    script = _luks(PASSWORD, "/dev/vda") + "dd if=/dev/vdb of=/dev/mapper/c bs=1M\ncryptsetup close c\n"
    return _prepare("luks2-ext4", script, {"disk": 64}, kernel, rootfs)["disk"]


@pytest.fixture(scope="module")
def german_disk(kernel: KernelTree, rootfs: tuple[Path, str]) -> Path:
    script = _luks(GERMAN, "/dev/vda") + "dd if=/dev/vdb of=/dev/mapper/c bs=1M\ncryptsetup close c\n"
    return _prepare("luks2-german", script, {"disk": 64}, kernel, rootfs)["disk"]


@pytest.fixture(scope="module")
def lvm_disk(kernel: KernelTree, rootfs: tuple[Path, str]) -> Path:
    script = (_luks(PASSWORD, "/dev/vda")
              + "lvm pvcreate -q /dev/mapper/c\nlvm vgcreate -q vg0 /dev/mapper/c\n"
                "lvm lvcreate -q -L 44M -n root vg0\nlvm lvcreate -q -L 8M -n swap vg0\n"
                "dd if=/dev/vdb of=/dev/mapper/vg0-root bs=1M\n"
                "lvm vgchange -an vg0\ncryptsetup close c\n")
    return _prepare("lvm-on-luks2", script, {"disk": 96}, kernel, rootfs)["disk"]


@pytest.fixture(scope="module")
def md_disks(kernel: KernelTree, rootfs: tuple[Path, str]) -> tuple[Path, Path]:
    script = ("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --name=root "
              "/dev/vda /dev/vdb\n"
              "dd if=/dev/vdc of=/dev/md0 bs=1M\nmdadm --stop /dev/md0\n")
    out = _prepare("md-raid1", script, {"a": 48, "b": 48}, kernel, rootfs)
    return out["a"], out["b"]


@pytest.fixture(scope="module")
def btrfs_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """btrfs with the demo root in subvolume @root and nothing bootable at the top."""
    from qemu.demoroot import build_demo_root
    work = tmp_path_factory.mktemp("btrfs")
    root = build_demo_root(work / "root")
    img = work / "btrfs.img"
    with img.open("wb") as f:
        f.truncate(160 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-U", BTRFS_UUID, str(img)], check=True)
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(mnt / "@root")], check=True)
        subprocess.run(["cp", "-a", f"{root}/.", str(mnt / "@root")], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return img


class Guest:
    """A boot with the serial console on a socket (the test types on it) and the
    QEMU monitor on another (sendkey: the emulated PS/2 keyboard)."""

    def __init__(self, kernel: KernelTree, initrd: Path, cmdline: str, disks: tuple[Path, ...], work: Path,
                 lab_cmdline: str = lab.LAB_CMDLINE) -> None:
        cmd = lab.command(lab.get_profile("virtio-blk"), None, work, work / "unused.log", kernel=kernel,
                          initrd=initrd, cmdline=f"{lab_cmdline} {lab.DEMO_POWEROFF} {cmdline}",
                          disks=disks, accel_args=lab.accel())
        self.launch(cmd, work)

    def launch(self, cmd: list[str], work: Path) -> None:
        """Start QEMU's `cmd` with its serial console and monitor on sockets in `work`; connect."""
        self.serial = work / "serial.sock"
        self.monitor = work / "monitor.sock"
        cmd[cmd.index("-serial") + 1] = f"unix:{self.serial},server=on,wait=on"
        cmd[cmd.index("-monitor") + 1] = f"unix:{self.monitor},server=on,wait=off"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.serial.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(self.serial))
        self.sock.settimeout(0.2)
        self.buf = b""
        self.mark = 0

    def text(self) -> str:
        return self.buf.decode(errors="replace")

    def expect(self, what: str, timeout: float = BOOT_TIMEOUT) -> float:
        """Wait for `what` after the last match; the time it appeared (monotonic)."""
        deadline = time.monotonic() + timeout
        needle = what.encode()
        while time.monotonic() < deadline:
            i = self.buf.find(needle, self.mark)
            if i >= 0:
                self.mark = i + len(needle)
                return time.monotonic()
            try:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.buf += data
            except TimeoutError:
                if self.proc.poll() is not None:
                    break
        raise AssertionError(f"{what!r} did not appear; console:\n{self.text()[-4000:]}")

    def line(self, prefix: str, timeout: float = BOOT_TIMEOUT) -> str:
        """The whole console line starting with `prefix` (waited for)."""
        self.expect(prefix, timeout)
        start = self.buf.rfind(prefix.encode(), 0, self.mark)
        self.expect("\n", timeout)
        return self.buf[start:self.mark].decode(errors="replace").strip()

    def type(self, text: str) -> None:
        time.sleep(0.5)   # the prompt is printed before echo is off: let it settle
        self.sock.sendall(text.encode())

    def sendkeys(self, keys: list[str]) -> None:
        time.sleep(0.5)
        mon = socket.socket(socket.AF_UNIX)
        mon.connect(str(self.monitor))
        for k in keys:
            mon.sendall(f"sendkey {k}\n".encode())
            time.sleep(0.3)
        mon.close()

    def close(self) -> None:
        self.sock.close()
        lab.kill_tree(self.proc.pid)


@pytest.fixture
def boot(kernel: KernelTree, initrd: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    guests: list[Guest] = []

    def start(cmdline: str, *disks: Path, lab_cmdline: str = lab.LAB_CMDLINE) -> Guest:
        copies = tuple(_copy(d, tmp_path) if d.parent != tmp_path else d for d in disks)
        g = Guest(kernel, initrd, cmdline, copies, tmp_path, lab_cmdline)
        guests.append(g)
        return g

    yield start
    for g in guests:
        g.close()


def test_luks2_root_opens_after_the_passphrase(boot, luks_disk: Path) -> None:  # type: ignore[no-untyped-def]
    g = boot("root=/dev/mapper/cryptroot rd.luks.name=" + LUKS_UUID + "=cryptroot rootdelay=60", luks_disk)
    g.expect(PROMPT + "/dev/vda (LUKS UUID=" + LUKS_UUID)
    g.type(PASSWORD + "\n")
    ok = g.line(DEMO_OK)
    text = g.text()
    assert "opened as /dev/mapper/cryptroot" in text
    assert "root=ext4" in ok
    assert PASSWORD not in text                        # no echo


def test_three_wrong_passphrases_end_in_the_shell_in_bounded_time(  # type: ignore[no-untyped-def]
        boot, luks_disk: Path) -> None:
    g = boot("root=UUID=" + ROOT_UUID + " rootdelay=60", luks_disk)
    first = g.expect(PROMPT + "/dev/vda")
    for _ in range(3):
        g.type("wrong\n")
        g.expect("wrong passphrase for /dev/vda")
    failed = g.expect("FAILED: ")
    g.expect("emergency shell")
    text = g.text()
    assert "3 wrong passphrases" in text
    assert "rd.luks" in text[text.index("FAILED: "):]         # the hint names the parameter
    assert failed - first < 120, f"{failed - first:.0f} s from the prompt to the failure"


def test_lvm_on_luks2_root(boot, lvm_disk: Path) -> None:  # type: ignore[no-untyped-def]
    g = boot("root=/dev/vg0/root rootdelay=60", lvm_disk)
    g.expect(PROMPT + "/dev/vda")
    g.type(PASSWORD + "\n")
    g.expect(DEMO_OK)
    text = g.text()
    assert "lvm: /dev/dm-0" in text and "now active" in text


def test_missing_lv_names_what_was_tried(boot, lvm_disk: Path) -> None:  # type: ignore[no-untyped-def]
    g = boot("root=/dev/vg0/nosuch rootdelay=10", lvm_disk)
    g.expect(PROMPT + "/dev/vda")
    g.type(PASSWORD + "\n")
    g.expect("FAILED: no device with /dev/vg0/nosuch appeared")
    g.expect("emergency shell")
    text = g.text()
    assert "now active" in text[text.index("FAILED"):]    # the VG's LVs are listed
    assert "rd.lvm.lv" in text[text.index("FAILED"):]


def test_degraded_raid1_starts_after_the_timeout(boot, md_disks: tuple[Path, Path]) -> None:  # type: ignore[no-untyped-def]
    g = boot("root=UUID=" + ROOT_UUID + " rootdelay=60", md_disks[0])
    ok = g.line(DEMO_OK)
    assert "started degraded" in g.text()
    assert "root=ext4" in ok


def test_btrfs_subvolume_root(boot, btrfs_disk: Path) -> None:  # type: ignore[no-untyped-def]
    g = boot(f"root=UUID={BTRFS_UUID} rootflags=subvol=@root rootdelay=60", btrfs_disk)
    assert "root=btrfs" in g.line(DEMO_OK)


def test_german_keymap_types_the_passphrase(boot, german_disk: Path) -> None:  # type: ignore[no-untyped-def]
    """The image's default keymap (de-latin1) is loaded before the prompt; the
    keys y, z, [ of the PS/2 keyboard type z, y, ü: the volume opens."""
    g = boot(f"root=UUID={ROOT_UUID} rootdelay=60", german_disk,
             lab_cmdline="console=tty0 console=ttyS0,115200 panic=-1")
    g.expect(PROMPT + "/dev/vda")
    g.sendkeys(["y", "z", "bracket_left", "ret"])
    g.expect(DEMO_OK)
    text = g.text()
    assert "keymap: de-latin1 loaded" in text
    assert "wrong passphrase" not in text


def test_luks2_root_opens_with_the_baked_key_file(kernel: KernelTree, keyed_initrd: Path, luks_disk: Path,
                                                  tmp_path: Path) -> None:
    """No rd.luks.* and nobody typing: the image's crypttab names the volume and its key."""
    g = Guest(kernel, keyed_initrd, f"root=UUID={ROOT_UUID} rootdelay=60", (_copy(luks_disk, tmp_path),),
              tmp_path)
    try:
        ok = g.line(DEMO_OK)
        text = g.text()
    finally:
        g.close()
    assert "opened as /dev/mapper/cryptroot with key file /etc/liveinit/keys/cryptroot.key" in text
    assert PROMPT not in text
    assert "root=ext4" in ok
