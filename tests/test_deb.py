"""The Debian package, end to end: debian/build-deb builds liveinit_VERSION_all.deb,
`apt-get install ./liveinit_*.deb` installs it into a debootstrap chroot,
and a kernel package installed there afterwards gets /boot/initrd.img-KVER
made by liveinit; removing the kernel removes it, removing liveinit gives
initramfs-tools its hooks back. Without --replace, liveinit's image goes
beside initramfs-tools' (/boot/liveinit.img-KVER).

The chroot starts from a tarball cached under /var/cache/liveinit/deb-e2e:
bookworm minbase with the .debs that liveinit and the kernel depend on
already downloaded (so the warm run installs them for real, offline). The
kernel is the cached test kernel's .deb (qemu.testkernel)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from packer.cachelock import locked
from packer.config import DEFAULT_CACHE
from packer.cpio import read_archive
from packer.hooks import DEBIAN_IMAGE, DISABLED_SUFFIX, OTHER_GENERATORS, SIDE_IMAGE
from qemu.testkernel import KernelTree

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parent.parent
SUITE = "bookworm"
MIRROR = os.environ.get("LIVEINIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
TARBALLS = DEFAULT_CACHE / "deb-e2e"
# The pack caches (compressed segments, compiled pycs, module info) are shared
# with the host's: content-addressed, and they keep a warm run short.
SHARED_CACHES = ("segments", "pyruntime", "kmod")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
       "HOME": "/root"}



@pytest.fixture(autouse=True)
def _root_and_debootstrap() -> None:
    """./run-tests runs as root and its setup installs debootstrap: without them this fails, not skips."""
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.fail("needs root and debootstrap (apt-get install debootstrap)")


def run(*argv: str, root: Path | None = None) -> str:
    """Run argv (in the chroot `root`), fail with its output."""
    cmd = ["chroot", str(root), *argv] if root else list(argv)
    proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc, /sys, /dev and the shared pack caches in the chroot; unmounted whatever happens."""
    done: list[Path] = []
    try:
        for kind, src, dest in (("proc", "proc", "proc"), ("sysfs", "sysfs", "sys"), ("bind", "/dev", "dev"),
                                *(("bind", str(DEFAULT_CACHE / c), f"var/cache/liveinit/{c}")
                                  for c in SHARED_CACHES)):
            target = root / dest
            target.mkdir(parents=True, exist_ok=True)
            if kind == "bind":
                Path(src).mkdir(parents=True, exist_ok=True)
                subprocess.run(["mount", "--bind", src, str(target)], check=True)
            else:
                subprocess.run(["mount", "-t", kind, src, str(target)], check=True)
            done.append(target)
        yield
    finally:
        for target in reversed(done):
            if subprocess.run(["umount", str(target)], check=False).returncode != 0:
                subprocess.run(["umount", "-l", str(target)], check=False)


def build_deb(outdir: Path) -> Path:
    out = run(str(REPO / "debian" / "build-deb"), str(outdir)).strip().splitlines()[-1]
    return Path(out)


def base_tarball(debs: list[Path]) -> Path:
    """bookworm minbase + the dependencies of `debs` downloaded; built once per dependency set."""
    fields = "".join(run("dpkg-deb", "-f", str(d), "Package", "Depends", "Recommends") for d in debs)
    key = hashlib.sha256(fields.encode()).hexdigest()[:16]
    tar = TARBALLS / f"{SUITE}-{key}.tar"
    with locked(tar):   # other test workers may build the same tarball
        if not tar.exists():
            _build_tarball(tar, debs)
    return tar


def _build_tarball(tar: Path, debs: list[Path]) -> None:
    TARBALLS.mkdir(parents=True, exist_ok=True)
    work = tar.with_suffix(".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        run("debootstrap", "--variant=minbase", SUITE, str(work), MIRROR)
        for d in debs:
            shutil.copy(d, work / "tmp" / d.name)
        with mounted(work):
            run("apt-get", "install", "-y", "-q", "--download-only", *(f"/tmp/{d.name}" for d in debs),
                root=work)
        for d in debs:
            (work / "tmp" / d.name).unlink()
        run("tar", "-C", str(work), "-cf", f"{tar}.partial", ".")
        os.replace(f"{tar}.partial", tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def image_names(path: Path) -> set[str]:
    return {e.name for seg in read_archive(path.read_bytes()) for e in seg.entries}


def test_deb_installs_and_packs_each_installed_kernel(kernel: KernelTree, tmp_path: Path) -> None:
    deb = build_deb(tmp_path / "dist")
    assert deb.name.startswith("liveinit_") and deb.name.endswith("_all.deb")
    kernel_deb = next((kernel.root.parent).glob(f"linux-image-{kernel.version}_*.deb"))
    root = tmp_path / "chroot"
    root.mkdir()
    run("tar", "-C", str(root), "-xf", str(base_tarball([deb, kernel_deb])))
    for d in (deb, kernel_deb):
        shutil.copy(d, root / "tmp" / d.name)
    kver = kernel.version
    initrd = root / "boot" / f"{DEBIAN_IMAGE}{kver}"
    itools = OTHER_GENERATORS[0]
    with mounted(root):
        out = run("apt-get", "install", "-y", "-q", f"/tmp/{deb.name}", root=root)
        assert "Setting up liveinit" in out
        assert "nothing to do" in run("liveinit", "install-hooks", root=root)   # the package shipped them
        # The user's choice: liveinit makes initrd.img (before initramfs-tools is even installed).
        run("liveinit", "install-hooks", "--replace", root=root)

        out = run("apt-get", "install", "-y", "-q", f"/tmp/{kernel_deb.name}", root=root)
        assert "Setting up initramfs-tools" in out                           # pulled in by the kernel
        assert f"liveinit: packing /boot/{DEBIAN_IMAGE}{kver} for kernel {kver}" in out
        names = image_names(initrd)
        # liveinit's: its /init, its runtime, the kernel's modules; none of mkinitramfs' scripts.
        assert {"init", "usr/lib/liveinit/liveinit/boot.pyc",
                f"usr/lib/modules/{kver}/kernel/drivers/ata/ahci.ko"} <= names
        assert not any(n.startswith(("scripts/", "conf/")) for n in names)
        listing = run("liveinit", "ls", f"/boot/{DEBIAN_IMAGE}{kver}", root=root)
        assert any(line.endswith(" init") for line in listing.splitlines())
        hook = root / str(itools.hooks[0]).lstrip("/")
        assert not hook.exists() and hook.with_name(hook.name + DISABLED_SUFFIX).exists()
        # initramfs-tools' trigger path leaves liveinit's image alone.
        before = initrd.read_bytes()
        assert "Not updating initramfs" in run("update-initramfs", "-u", root=root)
        assert initrd.read_bytes() == before

        run("apt-get", "remove", "-y", "-q", f"linux-image-{kver}", root=root)
        assert not initrd.exists()

        # The package's default: beside an active initramfs-tools, never over its image.
        run("liveinit", "install-hooks", "--restore", root=root)
        out = run("apt-get", "install", "-y", "-q", f"/tmp/{kernel_deb.name}", root=root)
        assert f"update-initramfs: Generating /boot/{DEBIAN_IMAGE}{kver}" in out
        side = root / "boot" / f"{SIDE_IMAGE}{kver}"
        assert "usr/lib/liveinit/liveinit/boot.pyc" in image_names(side)
        assert "conf/initramfs.conf" in image_names(initrd)
        run("apt-get", "remove", "-y", "-q", f"linux-image-{kver}", root=root)
        assert not initrd.exists() and not side.exists()

        run("apt-get", "remove", "-y", "-q", "liveinit", root=root)
        assert hook.exists() and not hook.with_name(hook.name + DISABLED_SUFFIX).exists()
        assert "update_initramfs=yes" in (root / "etc/initramfs-tools/update-initramfs.conf").read_text()
