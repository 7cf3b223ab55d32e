"""liveinit as the initramfs of an installed Debian system, end to end in QEMU:
the debootstrap bookworm root (systemd, tests/test_debian_e2e.py's cached
tree) on LUKS2, on LVM on LUKS2, on a degraded md RAID1 (one disk missing) and
on a btrfs subvolume, each booted to systemd's login prompt on ttyS0, the
passphrase typed on the serial console.

The initramfs is one `liveinit pack --with luks,lvm,md --crypttab` image with
the test kernel: the root's crypttab names the LUKS volume `cryptroot`
(option `initramfs`), so the command line needs no rd.luks.* at all, as on an
installed machine. The root gets an /etc/fstab and /etc/crypttab matching
the devices the initramfs opened (systemd's cryptsetup generator then finds
cryptroot already active), a hostname, and the kernel modules the initramfs
packed (with depmod run) for systemd-udev. The encrypted, LVM and md disks
are made inside a guest (qemu/guestrun.py) and cached by recipe; the btrfs
one on the host (a loop mount)."""
from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from packer import initramfs
from packer.config import PackConfig
from packer.kernel import KernelTree
from packer.kmod import ModuleTree
from qemu import guestrun
from tests.test_debian_e2e import debian_root
from tests.test_layers_boot import FORMAT, LUKS_UUID, PASSWORD, PROMPT, Guest, _copy

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

HOSTNAME = "liveinit-installed"
LOGIN = f"{HOSTNAME} login:"
ROOT_UUID = "1d1d1d1d-aaaa-4bbb-8ccc-eeeeeeeeeeee"
BTRFS_UUID = "2e2e2e2e-1234-4567-89ab-cdefcdefcdef"
CRYPTTAB = f"cryptroot UUID={LUKS_UUID} none luks,discard,initramfs\n"
BOOT_TIMEOUT = 420.0
# Left out of the root: documentation, translations and apt's caches (half the tree, no use to a boot).
EXCLUDE = ("./usr/share/doc", "./usr/share/man", "./usr/share/locale", "./usr/share/info",
           "./var/cache/apt", "./var/lib/apt/lists")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@pytest.fixture(scope="module")
def packed(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> initramfs.PackResult:
    """The installed system's initramfs: the layers' tools and the root's crypttab baked."""
    work = tmp_path_factory.mktemp("installed")
    tab = work / "crypttab"
    tab.write_text(CRYPTTAB)
    return initramfs.build(PackConfig(output=work / "initrd.img", moddir=kernel.moddir, kver=kernel.version,
                                      layers=("luks", "lvm", "md"), crypttab=tab))


@pytest.fixture(scope="module")
def stage(kernel: KernelTree, packed: initramfs.PackResult,
          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Debian root, trimmed, with a hostname and the packed modules of the test kernel."""
    root = debian_root()
    out = tmp_path_factory.mktemp("installed-root") / "root"
    out.mkdir()
    tar = subprocess.Popen(["tar", "-C", str(root), *(f"--exclude={e}" for e in EXCLUDE), "-cf", "-", "."],
                           stdout=subprocess.PIPE)
    subprocess.run(["tar", "-C", str(out), "-xpf", "-"], stdin=tar.stdout, check=True)
    assert tar.wait() == 0
    (out / "etc" / "hostname").write_text(HOSTNAME + "\n")
    tree = ModuleTree(kernel.moddir)
    dest = out / "usr" / "lib" / "modules" / kernel.version
    for name in packed.modules:
        ko = tree.path(name)
        (dest / ko.relative_to(kernel.moddir)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ko, dest / ko.relative_to(kernel.moddir))
    for f in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kernel.moddir / f).exists():
            shutil.copy2(kernel.moddir / f, dest / f)
    subprocess.run(["depmod", "-b", str(out), kernel.version], check=True, env=ENV)
    # The minbase root has udev's libkmod but not the kmod tool, which kmod-static-nodes.service
    # runs when modules.devname lists nodes: without the list the unit is skipped, as without modules.
    (dest / "modules.devname").unlink()
    return out


def _configure(stage: Path, fstab: str, crypttab: str | None) -> str:
    """Write the variant's fstab and crypttab into the stage; its cache key."""
    (stage / "etc" / "fstab").write_text(fstab)
    tab = stage / "etc" / "crypttab"
    tab.unlink(missing_ok=True)
    if crypttab is not None:
        tab.write_text(crypttab)
    return guestrun.tree_digest(stage)


def _ext4(stage: Path, fstab: str, crypttab: str | None, work: Path) -> tuple[Path, str, int]:
    """The root as an ext4 image (fixed UUID, sized to the tree), its cache key and size in MiB."""
    key = _configure(stage, fstab, crypttab)
    mib = _root_mib(stage)
    img = work / "root.ext4"
    img.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-U", ROOT_UUID, "-d", str(stage), str(img), f"{mib}M"],
                   check=True, env=ENV)
    return img, f"{key} ext4 {mib}M {ROOT_UUID}", mib


ROOT_FSTAB = f"UUID={ROOT_UUID} / ext4 defaults 0 0\n"   # pass 0: no fsck of a dm root udev has no link for


def _prepare(name: str, script: str, sizes: dict[str, int], stage: Path, crypttab: str | None,
             kernel: KernelTree, tmp: Path) -> dict[str, Path]:
    img, key, _mib = _ext4(stage, ROOT_FSTAB, crypttab, tmp)
    return guestrun.prepare(name, script, sizes, (img,), kernel, inputs_key=key)


def _luks(target: str) -> str:
    return (f"printf '%s' '{PASSWORD}' | cryptsetup luksFormat -q {FORMAT} --uuid {LUKS_UUID} "
            f"--key-file=- {target}\n"
            f"printf '%s' '{PASSWORD}' | cryptsetup open --key-file=- {target} c\n")


def _root_mib(stage: Path) -> int:
    used = int(subprocess.run(["du", "-sm", str(stage)], capture_output=True, text=True,
                              check=True).stdout.split()[0])
    return used + used // 4 + 32


@pytest.fixture(scope="module")
def luks_disk(stage: Path, kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    mib = _root_mib(stage)
    script = _luks("/dev/vda") + "dd if=/dev/vdb of=/dev/mapper/c bs=1M\ncryptsetup close c\n"
    return _prepare("debian-luks2", script, {"disk": mib + 32}, stage, CRYPTTAB, kernel,
                    tmp_path_factory.mktemp("luks"))["disk"]


@pytest.fixture(scope="module")
def lvm_disk(stage: Path, kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    mib = _root_mib(stage)
    script = (_luks("/dev/vda")
              + f"lvm pvcreate -q /dev/mapper/c\nlvm vgcreate -q vg0 /dev/mapper/c\n"
                f"lvm lvcreate -q -L {mib + 4}M -n root vg0\nlvm lvcreate -q -L 8M -n swap vg0\n"
                "dd if=/dev/vdb of=/dev/mapper/vg0-root bs=1M\n"
                "lvm vgchange -an vg0\ncryptsetup close c\n")
    return _prepare("debian-lvm-on-luks2", script, {"disk": mib + 64}, stage, CRYPTTAB, kernel,
                    tmp_path_factory.mktemp("lvm"))["disk"]


@pytest.fixture(scope="module")
def md_disk(stage: Path, kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first disk of a RAID1 of two (the second is never attached)."""
    mib = _root_mib(stage)
    script = ("mdadm --create /dev/md0 --run --level=1 --raid-devices=2 --metadata=1.2 --name=root "
              "/dev/vda /dev/vdb\n"
              "dd if=/dev/vdc of=/dev/md0 bs=1M\nmdadm --stop /dev/md0\n")
    return _prepare("debian-md-raid1", script, {"a": mib + 16, "b": mib + 16}, stage, None, kernel,
                    tmp_path_factory.mktemp("md"))["a"]


@pytest.fixture(scope="module")
def btrfs_disk(stage: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """btrfs with the root in subvolume @root and nothing bootable at the top (made on the host)."""
    _configure(stage, f"UUID={BTRFS_UUID} / btrfs subvol=@root 0 0\n", None)
    work = tmp_path_factory.mktemp("btrfs")
    img = work / "btrfs.img"
    with img.open("wb") as f:
        f.truncate((_root_mib(stage) * 2 + 128) << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-U", BTRFS_UUID, str(img)], check=True, env=ENV)
    mnt = work / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        subprocess.run(["btrfs", "-q", "subvolume", "create", str(mnt / "@root")], check=True, env=ENV)
        subprocess.run(["cp", "-a", f"{stage}/.", str(mnt / "@root")], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return img


@pytest.fixture
def boot(kernel: KernelTree, packed: initramfs.PackResult, tmp_path: Path) -> Iterator[Callable[..., Guest]]:
    guests: list[Guest] = []

    def start(cmdline: str, *disks: Path) -> Guest:
        copies = tuple(_copy(d, tmp_path) for d in disks)
        g = Guest(kernel, packed.output, cmdline, copies, tmp_path)
        guests.append(g)
        return g

    yield start
    for g in guests:
        g.close()


def _reaches_login(g: Guest, begun: float, typed: bool) -> float:
    """Wait for the login prompt; check what systemd and liveinit said on the way; seconds taken."""
    g.expect(LOGIN, BOOT_TIMEOUT)
    took = time.monotonic() - begun
    text = g.text()
    assert "Welcome to" in text and "Debian GNU/Linux 12" in text
    assert "Reached target" in text and "Multi-User System" in text
    assert "FAILED" not in text, text[text.index("FAILED") - 400:text.index("FAILED") + 400]
    assert "Timed out waiting for device" not in text
    assert "liveinit: starting /sbin/init" in text
    if typed:
        assert PASSWORD not in text                                  # no echo
    print(f"{took:.0f} s to the login prompt")
    return took


def test_debian_on_luks2_reaches_login(boot: Callable[..., Guest], luks_disk: Path) -> None:
    begun = time.monotonic()
    g = boot(f"root=UUID={ROOT_UUID} rootdelay=60", luks_disk)
    g.expect(PROMPT + "/dev/vda (LUKS UUID=" + LUKS_UUID, BOOT_TIMEOUT)
    g.type(PASSWORD + "\n")
    g.expect("opened as /dev/mapper/cryptroot")          # the name from the baked crypttab
    _reaches_login(g, begun, typed=True)
    assert "Cryptography Setup for cryptroot" in g.text()    # systemd found it active: no second prompt


def test_debian_on_lvm_on_luks2_reaches_login(boot: Callable[..., Guest], lvm_disk: Path) -> None:
    begun = time.monotonic()
    g = boot("root=/dev/mapper/vg0-root rootdelay=60", lvm_disk)
    g.expect(PROMPT + "/dev/vda", BOOT_TIMEOUT)
    g.type(PASSWORD + "\n")
    g.expect("now active")
    _reaches_login(g, begun, typed=True)
    assert "Cryptography Setup for cryptroot" in g.text()


def test_debian_on_degraded_raid1_reaches_login(boot: Callable[..., Guest], md_disk: Path) -> None:
    begun = time.monotonic()
    g = boot(f"root=UUID={ROOT_UUID} rootdelay=60", md_disk)
    g.expect("started degraded", BOOT_TIMEOUT)
    _reaches_login(g, begun, typed=False)


def test_debian_on_btrfs_subvolume_reaches_login(boot: Callable[..., Guest], btrfs_disk: Path) -> None:
    begun = time.monotonic()
    g = boot(f"root=UUID={BTRFS_UUID} rootflags=subvol=@root rootdelay=60", btrfs_disk)
    _reaches_login(g, begun, typed=False)
