"""What a compressed kernel module costs at boot, measured inside the TCG guest.

The Debian kernel has no CONFIG_MODULE_DECOMPRESS, so a module stored
compressed in the image is decompressed by PID 1 (liveinit.modfile) before
init_module. This packs the universal image plus a typical boot's modules
as .ko, .ko.gz and .ko.xz files (the packer's own per-module compression,
packer.compress.compress_module), boots it with `rdinit=` a busybox script,
and times in fresh interpreters: the codec's import, and reading plus
decompressing the whole set through liveinit.modfile.read_module. The first
run of a codec in a boot is the one a boot pays (TCG has not translated the
codec's code yet); the second shows the warm cost. zstd is not measured: the
Python 3.11 standard library has no decoder.

Run: `python -m bench.modcost` (root not needed; QEMU TCG)."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from packer.compress import Compression, compress_module, module_suffix

# A boot's modules: the disk case, a SATA disk, the CD and the live stack.
TYPICAL = ("virtio_blk", "ext4", "jbd2", "mbcache", "crc16", "ahci", "libahci", "libata", "sr_mod", "cdrom",
           "isofs", "squashfs", "loop", "overlay")
CODECS = {"raw": Compression.NONE, "gz": Compression.GZIP, "xz": Compression.XZ}
ROUNDS = 2
PY = "env PYTHONHASHSEED=0 /usr/bin/python3.11 -S -s"
GUEST_SCRIPT = """import sys, os, time
t0 = time.perf_counter()
codec, where = sys.argv[1], sys.argv[2]
if codec == "xz":
    import lzma
elif codec == "gz":
    import zlib
t1 = time.perf_counter()
sys.path.insert(0, "/usr/lib/liveinit")
from liveinit.modfile import read_module
t2 = time.perf_counter()
n = 0
for name in sorted(os.listdir(where)):
    n += len(read_module(where + "/" + name))
t3 = time.perf_counter()
print("MODCOST %s import=%.1f read=%.1f bytes=%d files=%d" % (
    codec, (t1 - t0) * 1000, (t3 - t2) * 1000, n, len(os.listdir(where))), flush=True)
"""
RESULT = re.compile(r"MODCOST (\w+) import=([\d.]+) read=([\d.]+) bytes=(\d+) files=(\d+)")


def guest_runner() -> str:
    lines = ["#!/bin/sh", "mount -t devtmpfs dev /dev 2>/dev/null", f"{PY} -c pass", f"{PY} -c pass"]
    for _ in range(ROUNDS):
        for codec in CODECS:
            lines.append(f"{PY} /modcost.py {codec} /modcost/{codec}")
    lines += ["echo MODCOST-DONE", "poweroff -f"]
    return "\n".join(lines) + "\n"


def pack(work: Path) -> tuple[Path, dict[str, tuple[int, int]]]:
    """The image, and per codec (file bytes, ELF bytes) of the set."""
    from packer.kmod import ModuleTree
    from qemu.testkernel import fetch_kernel
    tree = ModuleTree(fetch_kernel().moddir)
    files: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    for codec, method in CODECS.items():
        d = work / codec
        d.mkdir()
        stored = elf = 0
        for name in TYPICAL:
            raw = tree.path(name).read_bytes()
            data = compress_module(raw, method)
            p = d / (name + ".ko" + module_suffix(method))
            p.write_bytes(data)
            files.append(f"{p}:/modcost/{codec}/{p.name}")
            stored += len(data)
            elf += len(raw)
        sizes[codec] = (stored, elf)
    (work / "modcost.py").write_text(GUEST_SCRIPT)
    run = work / "modcost.sh"
    run.write_text(guest_runner())
    run.chmod(0o755)
    img = work / "modcost.img"
    args = [str(Path(sys.executable).with_name("liveinit")), "-q", "pack", "-o", str(img), "--busybox",
            "--files", f"{work / 'modcost.py'}:/modcost.py", "--files", f"{run}:/modcost.sh"]
    for f in files:
        args += ["--files", f]
    subprocess.run(args, check=True)
    return img, sizes


def measure(vmlinuz: Path, work: Path, timeout: float = 300) -> list[dict[str, float | str]]:
    """One row per codec and round: import ms, read+decompress ms, sizes."""
    img, sizes = pack(work)
    cmd = ["qemu-system-x86_64", "-m", "1024", "-nographic", "-no-reboot", "-accel", "tcg",
           "-kernel", str(vmlinuz), "-initrd", str(img),
           "-append", "console=ttyS0 panic=-1 rdinit=/modcost.sh"]
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    log = r.stdout.decode(errors="replace")
    (work / "modcost.log").write_text(log)
    rows: list[dict[str, float | str]] = []
    seen: dict[str, int] = {}
    for m in RESULT.finditer(log):
        codec = m.group(1)
        seen[codec] = seen.get(codec, 0) + 1
        rows.append({"codec": codec, "round": seen[codec], "import_ms": float(m.group(2)),
                     "read_ms": float(m.group(3)), "stored": sizes[codec][0], "elf": sizes[codec][1]})
    if len(rows) != ROUNDS * len(CODECS):
        raise RuntimeError(f"modcost: the guest did not finish; see {work / 'modcost.log'}")
    return rows


if __name__ == "__main__":
    from qemu.testkernel import fetch_kernel
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{len(TYPICAL)} modules: {', '.join(TYPICAL)}")
        print("codec round import_ms read+decompress_ms stored_bytes elf_bytes")
        for row in measure(fetch_kernel().vmlinuz, Path(tmp)):
            print(f"{row['codec']:5} {row['round']} {row['import_ms']:8.1f} {row['read_ms']:8.1f} "
                  f"{row['stored']:9} {row['elf']:9}")
