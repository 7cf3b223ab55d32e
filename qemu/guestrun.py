"""Run a shell script inside a QEMU guest, to PREPARE disk images.

The host of the lab may lack device-mapper and md (a small VM kernel):
cryptsetup can write a LUKS header to a file but not open it, and neither
lvm nor mdadm --create work. The guest is the cached Debian test kernel with
a small uncompressed initramfs: static busybox, cryptsetup, lvm, mdadm and
mke2fs with their ELF closures (packer/elf.py), and the modules for virtio
disks, dm-crypt, LVM and md with a modules.dep for busybox's modprobe. The
script runs under `sh -e`, with the disks as /dev/vda, /dev/vdb... in the
order given; it ends with `GUESTRUN-RC=N` on the console and a power-off.

`prepare` caches the images it makes under the cache directory, keyed by the
recipe (script, sizes, input files, kernel), so tests share them across runs."""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from packer.busybox import BUSYBOX, applets
from packer.cachelock import locked
from packer.config import DEFAULT_CACHE
from packer.errors import CommandError
from packer.kernel import KernelTree

TOOLS = ("/usr/sbin/cryptsetup", "/usr/sbin/lvm", "/usr/sbin/mdadm", "/usr/sbin/mkfs.ext4",
         "/usr/sbin/mke2fs", "/usr/sbin/blkid", "/usr/sbin/sfdisk")
CONFIGS = ("/etc/mke2fs.conf",)
MODULES = ("virtio_pci", "virtio_blk", "virtio_rng", "dm_mod", "dm_crypt", "dm_snapshot", "dm_mirror",
           "xts", "ecb", "cbc", "aesni_intel", "sha256_ssse3", "af_alg", "algif_skcipher", "algif_hash",
           "md_mod", "raid1", "raid0", "ext4", "btrfs", "loop")
LVM_CONF = """\
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 use_devicesfile = 0 }
"""
RC_LINE = "GUESTRUN-RC="
BEGIN_LINE = "GUESTRUN-BEGIN"
INIT = f"""#!/busybox/sh
export PATH=/busybox:/usr/sbin:/usr/bin:/sbin:/bin DM_DISABLE_UDEV=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/lock/lvm /run/cryptsetup /run/mdadm /tmp
for m in $(cat /modules.list); do modprobe "$m" 2>/dev/null; done
echo {BEGIN_LINE}
sh -e /job.sh
rc=$?
sync
echo "{RC_LINE}$rc"
poweroff -f
"""
GUEST_CACHE = DEFAULT_CACHE / "guestrun"
DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class GuestResult:
    """rc: the script's exit status (None: it never finished); console: the serial log."""

    rc: int | None
    console: str
    seconds: float


def _add_host_path(ar: object, path: Path) -> None:
    from packer.elf import path_chain
    for p in path_chain(path):
        name = str(p).lstrip("/")
        if name in ar:  # type: ignore[operator]
            continue
        if p.is_symlink():
            ar.add_symlink(name, os.readlink(p))  # type: ignore[attr-defined]
        elif p.is_dir():
            ar.add_dir(name)  # type: ignore[attr-defined]
        else:
            ar.add_file(name, src=p)  # type: ignore[attr-defined]


def build_initramfs(kernel: KernelTree, dest: Path) -> Path:
    """The guest's base initramfs (uncompressed cpio) at `dest`."""
    from packer.cpio import ArchiveBuilder
    from packer.elf import resolve
    from packer.kmod import ModuleTree
    ar = ArchiveBuilder()
    for d in ("proc", "sys", "dev", "run", "tmp", "etc", "etc/lvm", "busybox"):
        ar.add_dir(d)
    ar.add_device("dev/console", "c", 5, 1)
    ar.add_device("dev/null", "c", 1, 3, 0o666)
    ar.add_file("busybox/busybox", src=BUSYBOX, mode=0o755)
    for rel in applets(BUSYBOX):
        name = "busybox/" + os.path.basename(rel)
        if name not in ar:
            ar.add_symlink(name, "busybox")
    tools = [Path(t) for t in TOOLS if Path(t).exists()]
    missing = [t for t in ("cryptsetup", "lvm", "mdadm", "mke2fs") if not any(p.name == t for p in tools)]
    if missing:
        raise CommandError(f"the guest needs {', '.join(missing)} from this host",
                           hint="apt-get install cryptsetup-bin lvm2 mdadm e2fsprogs")
    closure = resolve(tools)
    for p in [*tools, *closure.files, *(Path(c) for c in CONFIGS if Path(c).exists())]:
        _add_host_path(ar, p)
    ar.add_file("etc/lvm/lvm.conf", data=LVM_CONF.encode())
    tree = ModuleTree(kernel.moddir)
    mods = tree.closure(m for m in MODULES if m in tree.modules)
    # A merged-/usr host: the closure brought /lib -> usr/lib into the image.
    lib = os.readlink("/lib").strip("/") if "lib" in ar and Path("/lib").is_symlink() else "lib"
    base = f"{lib}/modules/{kernel.version}"
    for name in sorted(mods):
        ko = tree.path(name)
        ar.add_file(f"{base}/{ko.relative_to(kernel.moddir)}", src=ko)
    with tempfile.TemporaryDirectory() as tmp:
        tree.write_index(Path(tmp), mods)
        for p in sorted(Path(tmp).iterdir()):
            ar.add_file(f"{base}/{p.name}", data=p.read_bytes())
    ar.add_file("modules.list", data="".join(m + "\n" for m in MODULES if m in tree.modules).encode())
    ar.add_file("init", data=INIT.encode(), mode=0o755)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = dest.with_name(dest.name + ".tmp")
    with tmp_out.open("wb") as f:
        ar.write(f)
    os.replace(tmp_out, dest)
    return dest


def base_initramfs(kernel: KernelTree, cache: Path = GUEST_CACHE) -> Path:
    """The base initramfs, built once per kernel and this module's recipe."""
    key = hashlib.sha256(f"{kernel.version} {TOOLS} {MODULES} {INIT} {LVM_CONF}".encode()).hexdigest()[:16]
    path = cache / f"initrd-{key}.cpio"
    with locked(path):   # test workers run in parallel
        return path if path.exists() else build_initramfs(kernel, path)


def _job_archive(script: str, ndisks: int) -> bytes:
    from packer.cpio import ArchiveBuilder
    wait = "".join(f"i=0; while [ ! -b /dev/vd{chr(97 + n)} ] && [ $i -lt 100 ]; do usleep 100000; "
                   f"i=$((i+1)); done\n" for n in range(ndisks))
    ar = ArchiveBuilder()
    ar.add_file("job.sh", data=(wait + script).encode(), mode=0o755)
    buf = io.BytesIO()
    ar.write(buf)
    return buf.getvalue()


def run(script: str, disks: tuple[Path, ...] = (), readonly: tuple[Path, ...] = (),
        kernel: KernelTree | None = None, timeout: float = DEFAULT_TIMEOUT,
        memory: int = 1024) -> GuestResult:
    """Run `script` in the guest with `disks` (writable, /dev/vda...) then `readonly`
    disks attached as virtio block devices."""
    from qemu import lab
    if kernel is None:
        from qemu.testkernel import fetch_kernel
        kernel = fetch_kernel()
    base = base_initramfs(kernel)
    with tempfile.TemporaryDirectory(prefix="liveinit-guestrun-") as tmp:
        work = Path(tmp)
        initrd = work / "initrd.cpio"
        with initrd.open("wb") as f:
            f.write(base.read_bytes())
            f.write(_job_archive(script, len(disks) + len(readonly)))
        log = work / "console.log"
        cmd = [lab.QEMU, "-nodefaults", "-no-reboot", "-m", str(memory), "-smp", "1", *lab.accel(),
               "-machine", "pc", "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 loglevel=3 rdinit=/init",
               "-device", "virtio-rng-pci", "-display", "none", "-monitor", "none", "-serial", f"file:{log}"]
        for i, d in enumerate((*disks, *readonly)):
            ro = ",readonly=on" if i >= len(disks) else ""
            cmd += ["-drive", f"file={d},if=virtio,format=raw,cache=unsafe{ro}"]
        begun = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        finally:
            lab.kill_tree(proc.pid)
        text = log.read_text(errors="replace") if log.exists() else ""
    m = re.search(rf"{RC_LINE}(\d+)", text)
    return GuestResult(int(m.group(1)) if m else None, text, time.monotonic() - begun)


def _digest(paths: tuple[Path, ...]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with p.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """A digest of a directory tree's names, modes, link targets and contents (not
    its times): the cache key of an image made from it, the same on every run."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        h.update(f"{p.relative_to(root)}\0{st.st_mode:o}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def prepare(name: str, script: str, sizes: dict[str, int], inputs: tuple[Path, ...] = (),
            kernel: KernelTree | None = None, cache: Path = GUEST_CACHE,
            inputs_key: str | None = None) -> dict[str, Path]:
    """Disk images made by `script` in the guest, cached by the recipe.

    `sizes`: output image name -> size in MiB, attached writable in that order
    (/dev/vda...); `inputs`: files attached read-only after them, keyed by their
    bytes unless `inputs_key` stands for them (e.g. the `tree_digest` of the
    tree an input image was made from). Returns name -> path of the cached
    image (copy it before booting it writable)."""
    if kernel is None:
        from qemu.testkernel import fetch_kernel
        kernel = fetch_kernel()
    digest = inputs_key if inputs_key is not None else _digest(inputs)
    recipe = f"{kernel.version}\n{sorted(sizes.items())}\n{script}\n{digest}\n{INIT}"
    key = hashlib.sha256(recipe.encode()).hexdigest()[:16]
    d = cache / "images" / f"{name}-{key}"
    out = {n: d / f"{n}.img" for n in sizes}
    with locked(d):   # two test workers may ask for the same images
        if (d / ".done").exists() and all(p.exists() for p in out.values()):
            return out
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for n, mib in sizes.items():
            with out[n].open("wb") as f:
                f.truncate(mib << 20)
        res = run(script, tuple(out.values()), inputs, kernel)
        if res.rc != 0:
            raise CommandError(f"preparing {name} in the guest failed (rc {res.rc}):\n"
                               + res.console[-3000:],
                               hint="run qemu.guestrun.run by hand with the same script")
        (d / "recipe.txt").write_text(recipe)
        (d / ".done").write_text(f"{res.seconds:.1f} s\n")
    return out
