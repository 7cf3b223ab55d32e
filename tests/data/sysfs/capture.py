"""Capture real sysfs trees from QEMU guests into tests/data/sysfs/<name>/.

    python tests/data/sysfs/capture.py [PROFILE ...]

For each profile: build a tiny initramfs (static busybox + a subset of the
Debian kernel's storage/USB/virtio modules + kmod's modules.dep/alias from a
depmod'd copy of the tree), boot it in QEMU (TCG), let busybox modprobe load
whatever the devices' modaliases ask for (several passes: loading a driver
creates new devices), then dump the discovery-relevant part of /sys on the
serial console between markers. `parse_console()` turns that dump into the
tree (the same layout `liveinit capture-sysfs` writes).

Each captured tree also gets `loaded.txt`: the modules the guest loaded
(from /proc/modules), which is the oracle the coldplug tests compare with.
Host-only helper; nothing here runs at boot."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from packer.config import DEFAULT_CACHE  # noqa: E402
from qemu.testkernel import fetch_kernel  # noqa: E402

WORK = DEFAULT_CACHE / "sysfs-capture"
BUSYBOX = Path("/bin/busybox")
# Module directories shipped in the guest (plus their modules.dep closure).
MODULE_DIRS = ("drivers/ata", "drivers/scsi", "drivers/cdrom", "drivers/block",
               "drivers/nvme", "drivers/usb/host", "drivers/usb/storage",
               "drivers/usb/core", "drivers/usb/common", "drivers/virtio")
MODULE_SKIP = ("drivers/scsi/fcoe", "drivers/scsi/qla", "drivers/scsi/lpfc",
               "drivers/scsi/mpt3sas", "drivers/scsi/megaraid", "drivers/scsi/bfa",
               "drivers/scsi/be2iscsi", "drivers/scsi/bnx2", "drivers/scsi/aacraid",
               "drivers/scsi/aic", "drivers/scsi/smartpqi", "drivers/scsi/hisi",
               "drivers/scsi/csiostor", "drivers/scsi/cxgbi", "drivers/scsi/mpi3mr",
               "drivers/scsi/qedi", "drivers/scsi/qedf", "drivers/scsi/pm8001",
               "drivers/scsi/elx", "drivers/scsi/isci", "drivers/scsi/libfc",
               "drivers/scsi/arcmsr", "drivers/scsi/esas2r", "drivers/scsi/snic",
               "drivers/scsi/fnic", "drivers/scsi/mvsas", "drivers/scsi/ibmvscsi",
               "drivers/block/drbd", "drivers/block/rnbd", "drivers/block/mtip32xx",
               "drivers/block/xen", "drivers/block/rbd", "drivers/block/null_blk")

# Files copied from every device directory (see qemu/cmd_capture.py).
FILES = ("modalias", "uevent", "vendor", "device", "subsystem_vendor",
         "subsystem_device", "class", "dev", "size", "removable", "ro",
         "partition", "start", "backing_file")

GUEST_SCRIPT = r"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo 0 > /proc/sys/kernel/printk
for pass in 1 2 3 4 5 6; do
  for f in $(find /sys/devices -name modalias); do
    a=$(cat $f 2>/dev/null); [ -n "$a" ] && modprobe -q "$a" 2>/dev/null
  done
  sleep 2
done
echo "@@BEGIN"
names="FILES"
pred=""
for n in $names; do pred="$pred -o -name $n"; done
pred=${pred# -o }
find /sys/devices -path /sys/devices/virtual -prune -o -type f \( $pred \) -print > /tmp/files
find /sys/devices/virtual/block -type f \( $pred \) >> /tmp/files
for f in $(cat /tmp/files); do
  echo "@@F $f"
  sed 's/^/@@|/' "$f" 2>/dev/null
done
for l in $(find /sys/devices -path /sys/devices/virtual -prune -o -name driver -type l -print) \
         /sys/class/block/* /sys/block/* /sys/bus/*/devices/* /sys/bus/*/drivers/*/module; do
  [ -L "$l" ] && echo "@@L $l $(readlink $l)"
done
for d in /sys/module/*; do echo "@@D $d"; done
sed 's/^/@@M /' /proc/modules
echo "@@END"
poweroff -f
""".replace("FILES", " ".join(FILES))

PROFILES: dict[str, list[str]] = {
    "q35-ahci": ["-M", "q35",
                 "-drive", "file={disk},if=none,id=d0,format=raw", "-device", "ide-hd,drive=d0,bus=ide.0",
                 "-drive", "file={iso},if=none,id=c0,media=cdrom,format=raw", "-device", "ide-cd,drive=c0,bus=ide.1"],
    "pc-ide": ["-M", "pc", "-drive", "file={iso},if=ide,media=cdrom,format=raw,index=2"],
    "virtio-blk": ["-M", "q35", "-drive", "file={disk},if=virtio,format=raw"],
    "nvme": ["-M", "q35", "-drive", "file={disk},if=none,id=n0,format=raw",
             "-device", "nvme,drive=n0,serial=liveinit0"],
    "usb-xhci": ["-M", "q35", "-device", "qemu-xhci,id=xhci",
                 "-drive", "file={disk},if=none,id=u0,format=raw",
                 "-device", "usb-storage,bus=xhci.0,drive=u0,removable=on"],
}


def _closure(moddir: Path) -> list[str]:
    """Relative .ko paths of the shipped modules and everything they need."""
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    want = [p for p in deps if any(p.startswith("kernel/" + d) for d in MODULE_DIRS)
            and not any(p.startswith("kernel/" + s) for s in MODULE_SKIP)]
    seen: set[str] = set()
    while want:
        p = want.pop()
        if p not in seen:
            seen.add(p)
            want.extend(deps.get(p, []))
    return sorted(seen)


def build_initramfs(base: Path, kver: str, out: Path) -> None:
    """A gzip newc archive made with GNU cpio from a staging directory."""
    moddir = base / "lib" / "modules" / kver
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "tmp", f"lib/modules/{kver}"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(BUSYBOX, root / "bin" / "busybox")
        for applet in ("sh", "mount", "find", "cat", "sed", "sleep", "modprobe",
                       "insmod", "readlink", "poweroff", "echo"):
            os.symlink("busybox", root / "bin" / applet)
        (root / "init").write_text(GUEST_SCRIPT)
        (root / "init").chmod(0o755)
        for name in ("modules.dep", "modules.alias", "modules.builtin", "modules.softdep"):
            if (moddir / name).exists():
                shutil.copy(moddir / name, root / "lib" / "modules" / kver / name)
        for rel in _closure(moddir):
            dst = root / "lib" / "modules" / kver / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(moddir / rel, dst)
        names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        arc = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                             input=names, capture_output=True, check=True).stdout
        out.write_bytes(gzip.compress(arc, 6))


def make_media(work: Path) -> tuple[Path, Path]:
    """A 64 MiB GPT disk with two partitions and a small ISO 9660 image."""
    disk, iso = work / "disk.img", work / "cd.iso"
    if not disk.exists():
        with open(disk, "wb") as f:
            f.truncate(64 << 20)
        subprocess.run(["sfdisk", "-q", str(disk)], check=True, text=True,
                       input="label: gpt\nsize=16M, type=L, name=ESP\ntype=L, name=root\n")
    if not iso.exists():
        src = work / "isosrc"
        (src / "live").mkdir(parents=True, exist_ok=True)
        (src / "live" / "liveinit.id").write_text("capture\n")
        subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-V", "CAPTURE", "-o", str(iso),
                        str(src)], check=True)
    return disk, iso


def run_guest(profile: str, kernel_image: Path, initrd: Path, disk: Path, iso: Path) -> str:
    args = [a.format(disk=disk, iso=iso) for a in PROFILES[profile]]
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nodefaults",
           "-display", "none", "-serial", "stdio", "-no-reboot", "-kernel", str(kernel_image),
           "-initrd", str(initrd), "-append", "console=ttyS0 quiet loglevel=1 panic=-1", *args]
    out = subprocess.run(cmd, capture_output=True, timeout=600).stdout
    return out.decode("utf-8", "replace")


def parse_console(text: str, dest: Path) -> None:
    """Write the tree a guest printed between @@BEGIN and @@END into dest."""
    lines = text.replace("\r", "").split("\n")
    try:
        start, end = lines.index("@@BEGIN"), lines.index("@@END")
    except ValueError:
        raise SystemExit("the guest did not finish its dump (no @@BEGIN/@@END on the console)")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files: dict[str, list[str]] = {}
    current: str | None = None
    modules: list[str] = []
    for line in lines[start + 1:end]:
        if line.startswith("@@F "):
            current = line[4:]
            files[current] = []
        elif line.startswith("@@|") and current is not None:
            files[current].append(line[3:])
        elif line.startswith("@@L "):
            _, path, target = line.split(" ", 2)
            p = dest / path.lstrip("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            if not p.is_symlink():
                os.symlink(target, p)
        elif line.startswith("@@D "):
            (dest / line[4:].lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif line.startswith("@@M "):
            modules.append(line[4:].split()[0])
    for path, content in files.items():
        p = dest / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("".join(c + "\n" for c in content))
    (dest / "loaded.txt").write_text("".join(m + "\n" for m in sorted(modules)))


def main(argv: list[str]) -> int:
    kernel = fetch_kernel()
    base = DEFAULT_CACHE / "depmod" / kernel.version
    if not (base / "lib" / "modules" / kernel.version / "modules.dep").exists():
        raise SystemExit("run the tests once (depmod_root fixture) to create " + str(base))
    WORK.mkdir(parents=True, exist_ok=True)
    initrd = WORK / "initrd.gz"
    if not initrd.exists():
        build_initramfs(base, kernel.version, initrd)
    disk, iso = make_media(WORK)
    for profile in argv or list(PROFILES):
        text = run_guest(profile, kernel.vmlinuz, initrd, disk, iso)
        (WORK / f"{profile}.console").write_text(text)
        parse_console(text, HERE / profile)
        print(profile, "captured")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
