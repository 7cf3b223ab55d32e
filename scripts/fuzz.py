#!/usr/bin/env python3
"""Feed generated and mutated inputs to every parser liveinit reads untrusted
data with, and report crashes, hangs and the slowest input of each.

A crash is an exception outside the parser's documented errors (cmdline.parse
and uevent.parse never raise; read_archive raises ArchiveError; probe raises
ProbeError; ModuleIndex.loads raises ValueError; the text readers skip bad
lines), a hang an input that runs past --input-timeout. Each target runs in a
child process (a segfault is a crash too). Input N of a target is a function of
(--seed, target, N) only, so `--only T --replay N` runs it again. Reproducers
and the slowest inputs are written under --out.

Inputs are mutations of real, valid seeds (bit flips, byte insert/delete,
truncation, splicing, boundary integers, dictionary tokens; for superblocks
mostly inside the byte ranges the prober reads on the seed) and generated
ones (random bytes, token soups, random valid archives that must read back
exactly). Not collected by pytest; tests/test_fuzz_smoke.py runs it small.

    scripts/fuzz.py                      # 100000 inputs per target
    scripts/fuzz.py --count 2000 --only cpio --only cmdline.parse
    scripts/fuzz.py --list
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fsimages import make_images  # noqa: E402

from liveinit import cmdline, fsprobe, kmodindex, uevent  # noqa: E402
from packer import compress, cpio, modindex  # noqa: E402

DEFAULT_COUNT = 100_000
DEFAULT_OUT = Path(tempfile.gettempdir()) / "liveinit-fuzz"
MODDIR_GLOB = "/var/cache/liveinit/depmod/*/lib/modules/*"
GENERATED_SHARE = 0.2           # the rest are mutations of seeds
HOT_SHARE = 0.85                # mutations of images that land where the prober reads
MAX_REPRODUCERS = 3             # per distinct crash (type and place)
PROGRESS_EVERY = 2048           # a child reports its counts this often (kept if it dies later)
MEMORY_LIMIT = 3 << 30          # address space of a child running a target
WATCHDOG_FACTOR = 3             # an input this many --input-timeout long without return is killed
PROBE_HEAD = (1 << 20) + (1 << 18)   # past btrfs' 1 MiB minimum and udf's anchor at 512 KiB

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x1FF, 0x200, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000, 0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF)


class Hang(BaseException):
    """Raised by SIGALRM inside a parser that ran too long (a BaseException, so
    a parser's `except Exception` cannot swallow it)."""


# -- targets -------------------------------------------------------------------

@dataclass
class Target:
    """One parser: its seeds, how to call it, what it may raise."""

    name: str
    call: Callable[[bytes], object]
    seeds: list[bytes]
    allowed: tuple[type[BaseException], ...] = ()
    # exceptions the caller catches and turns into "not recognised": counted, not crashes
    tolerated: tuple[type[BaseException], ...] = ()
    tokens: tuple[bytes, ...] = ()
    generate: Callable[[random.Random], bytes] | None = None
    hot: list[list[tuple[int, int]]] = field(default_factory=list)   # per seed: (start, end) read


class MemDev(fsprobe._Dev):
    """fsprobe's device over a byte string (no file descriptor), recording reads."""

    __slots__ = ("buf", "reads")

    def __init__(self, buf: bytes, ssz: int = fsprobe.SECTOR) -> None:
        self.buf = buf
        self.reads: list[tuple[int, int]] | None = None
        super().__init__(-1, 0, len(buf), ssz, False, False)

    def _pread(self, off: int, n: int) -> bytes:
        return self.buf[off:off + n]

    def read(self, off: int, n: int) -> bytes | None:
        if self.reads is not None and off >= 0 and n > 0:
            self.reads.append((off, off + n))
        return super().read(off, n)


def _hot_ranges(call: Callable[[MemDev], object], buf: bytes) -> list[tuple[int, int]]:
    dev = MemDev(buf)
    dev.reads = []
    with contextlib.suppress(Exception):
        call(dev)
    ranges = sorted({(max(0, a), min(b, len(buf))) for a, b in dev.reads if a < len(buf)})
    return ranges or [(0, min(len(buf), 4096))]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


# cmdline

CMDLINE_SEEDS = [
    "BOOT_IMAGE=/vmlinuz root=UUID=0badcafe-1234-4321-8765-0123456789ab ro quiet splash",
    "boot=live components quiet splash findiso=/isos/debian-live.iso persistence persistence-label=keep",
    "root=live:CDLABEL=Fedora-WS-Live rd.live.image rd.live.dir=/LiveOS rd.live.squashimg=sq.img "
    "rd.live.overlay.size=512 rd.break=pre-mount,cleanup rd.driver.pre=ahci rd.driver.blacklist=nouveau",
    'liveinit.image=/live/fs.squashfs liveinit.union=aufs liveinit.toram=yes liveinit.persistence=LABEL=p '
    'liveinit.overlay_size=2g liveinit.modules=virtio_blk,sr_mod liveinit.break=stack liveinit.debug',
    'root=/dev/sda1 rootfstype=ext4 rootflags=data=ordered,noatime rootdelay=10 init=/sbin/init -- single',
    'root=PARTUUID=abcd-01 rw rootwait usbcore.autosuspend=-1 i915.modeset=0 "foo=bar baz" nomodeset',
    'root=802 break=premount iso-scan/filename=/x.iso live-media-path=/casper union=overlayfs toram',
    'liveinit.root=LABEL="my disk" liveinit.rootdelay=5 liveinit.quiet modprobe.blacklist=a-b,c '
    'module_blacklist=d rd.live.ram=1 overlay-size=50% liveinit.demo=x liveinit.persistance=oops',
]
CMDLINE_TOKENS = tuple(t.encode("utf-8", "surrogatepass") for t in (
    ' ', '\t', '\n', '"', '=', '==', ',', ':', '.', '/', '--', '-', 'live:', 'UUID=', 'LABEL=', 'CDLABEL=',
    'PARTUUID=', 'PARTLABEL=', '/dev/', 'root=', 'rootdelay=', 'rootwait', 'init=', 'ro', 'rw', 'auto',
    '%', 'k', 'm', 'g', 'inf', 'nan', '1e999', '-1', '0x', 'ffffffff', '8:1', 'yes', 'no', 'off', '\0',
    '\xff', 'é', '\ud800', 'liveinit.', 'rd.', 'rd.break', 'break', 'rd.live.', 'persistence',
    *cmdline.LIVEINIT_PLAIN, *cmdline.LIVEINIT_OWN, *cmdline.BREAK_ALIASES, *cmdline.STAGES,
    *cmdline.UNIONS, *cmdline.UNION_ALIASES, *cmdline.NOT_MODULES))


def _parse_cmdline(data: bytes) -> object:
    text = _text(data)
    defaults, _, line = text.rpartition("\x1e")   # a record separator splits defaults from the line
    cfg = cmdline.parse(line, defaults)
    assert isinstance(cfg, cmdline.BootConfig) and all(isinstance(e, str) for e in cfg.errors)
    assert isinstance(cfg.root, cmdline.RootSpec) and cfg.rootdelay >= 0
    return cfg


def _split_cmdline(data: bytes) -> object:
    text = _text(data)
    words = cmdline.split(text)
    # Words without double quotes survive quote() then split() unchanged.
    plain = [w for w in words if '"' not in w]
    assert cmdline.split(" ".join(cmdline.quote(w) for w in plain)) == plain
    return words


def _gen_tokens(tokens: tuple[bytes, ...]) -> Callable[[random.Random], bytes]:
    def gen(rng: random.Random) -> bytes:
        return b"".join(rng.choice(tokens) if rng.random() < 0.8 else bytes([rng.randrange(256)])
                        for _ in range(rng.randrange(1, 60)))
    return gen


# uevent

UEVENT_SEEDS = [
    b"add@/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0ACTION=add\0"
    b"DEVPATH=/devices/pci0000:00/0000:00:04.0/virtio1/block/vda\0SUBSYSTEM=block\0MAJOR=254\0"
    b"MINOR=0\0DEVNAME=vda\0DEVTYPE=disk\0DISKSEQ=9\0SEQNUM=1187\0",
    b"change@/devices/platform/host0/target0:0:0/0:0:0:0/block/sr0\0ACTION=change\0DISK_MEDIA_CHANGE=1\0"
    b"DEVPATH=/devices/platform/host0/target0:0:0/0:0:0:0/block/sr0\0SUBSYSTEM=block\0SEQNUM=2\0",
    b"add@/module/ahci\0ACTION=add\0DEVPATH=/module/ahci\0SUBSYSTEM=module\0SEQNUM=3\0",
    b"bind@/devices/pci0000:00/0000:00:1f.2\0ACTION=bind\0DRIVER=ahci\0"
    b"MODALIAS=pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01\0SEQNUM=4\0",
    b"libudev\0\xfe\xed\xca\xfe\x28\0\0\0\x28\0\0\0\x50\0\0\0",
]
UEVENT_TOKENS = (b"\0", b"@", b"=", b"ACTION", b"DEVPATH", b"add", b"remove", b"/devices/", b"SUBSYSTEM=",
                 b"MODALIAS=", b"MAJOR=", b"\xff", b"\xc3", b"libudev")


def _parse_uevent(data: bytes) -> object:
    ev = uevent.parse(data)
    assert ev is None or (isinstance(ev, dict) and "ACTION" in ev and "DEVPATH" in ev)
    return ev


# cpio

Want = dict[str, tuple[int, bytes, str | None]]   # name -> (file type bits, data, symlink target)


def _random_archive(rng: random.Random) -> tuple[cpio.ArchiveBuilder, Want]:
    b = cpio.ArchiveBuilder()
    want: Want = {}
    for i in range(rng.randrange(0, 8)):
        name = "/".join(rng.choice(("a", "bin", "é x", "lib", f"n{i}")) for _ in range(rng.randrange(1, 3)))
        name = f"{name}{i}"
        if rng.random() < 0.7:
            data = rng.randbytes(rng.choice((0, 1, 3, 4, 100, 5000)))
            b.add_file(name, data=data, mode=rng.choice((0o644, 0o755, 0o4755)))
            want[name] = (0o100000, data, None)
        else:
            target = rng.choice(("busybox", "/usr/lib/x", "../a b"))
            b.add_symlink(name, target)
            want[name] = (0o120000, target.encode(), target)
    return b, want


def _gen_archive(rng: random.Random) -> bytes:
    b, _want = _random_archive(rng)
    buf = io.BytesIO()
    b.write(buf, mtime=rng.randrange(1 << 31))
    data = buf.getvalue()
    method = rng.choice(("none", "none", "gzip", "xz"))
    return data if method == "none" else compress.compress(data, method)


def _read_cpio(data: bytes) -> object:
    segs = cpio.read_archive(data)
    for seg in segs:
        for e in seg.entries:
            assert isinstance(e.name, str) and len(e.data) == e.size, e
    cpio.flatten(segs)
    return segs


def _cpio_seeds() -> list[bytes]:
    rng = random.Random(1)
    seeds = []
    for method in compress.Compression:
        b, _ = _random_archive(rng)
        b.add_file("init", data=b"#!/bin/sh\nexec /bin/sh\n", mode=0o755)
        b.add_device("dev/console", "c", 5, 1, mode=0o600)
        buf = io.BytesIO()
        b.write(buf)
        early = cpio.ArchiveBuilder()
        early.add_file("kernel/x86/microcode/GenuineIntel.bin", data=b"ucode")
        ebuf = io.BytesIO()
        early.write(ebuf)
        main = buf.getvalue() if method == "none" else compress.compress(buf.getvalue(), method)
        seeds.append(main)
        seeds.append(ebuf.getvalue() + main)
    return seeds


CPIO_TOKENS = (b"070701", b"070702", b"TRAILER!!!\0", b"00000000", b"FFFFFFFF", b"0000000B", b"\x1f\x8b",
               b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"\x02\x21\x4c\x18", b"\0\0\0\0")


# the module index and the kmod text readers

PCIMAP_SEED = (
    "# pci module         vendor     device     subvendor  subdevice  class      class_mask driver_data\n"
    "ahci                 0x00008086 0x00002922 0xffffffff 0xffffffff 0x00000000 0x00000000 0x0\n"
    "ahci                 0xffffffff 0xffffffff 0xffffffff 0xffffffff 0x00010601 0x00ffffff 0x0\n"
    "virtio_pci           0x00001af4 0xffffffff 0xffffffff 0xffffffff 0x00000000 0x00000000 0x0\n")
CONFIG_SEED = (
    "# modprobe.d\nalias my-fs ext4\nalias pci:v00001AF4d* virtio_pci\nblacklist nouveau\n"
    "options snd-hda-intel model=auto \\\n  power_save=1\nsoftdep ext4 pre: crc32c post: fscrypto\n"
    "install foo /bin/true\nremove bar /bin/false\nalias\noptions lonely\n")
KMOD_TOKENS = (b"alias ", b"softdep ", b"pre:", b"post:", b"options ", b"blacklist ", b"install ", b":",
               b" ", b"\n", b"\\\n", b"#", b"*", b"?", b"[", b"]", b"[!", b"[^", b"[:alpha:]", b"[:x", b"\\",
               b"-", b"_", b".ko", b".ko.xz", b"/", b"pci:v", b"d*", b"sv*", b"bc", b"0x", b"ffffffff", b"\0")


def _moddir() -> Path | None:
    import glob
    found = sorted(glob.glob(MODDIR_GLOB))
    return Path(found[-1]) if found else None


def _chunks(text: str, lines: int, count: int) -> list[bytes]:
    rows = text.splitlines(keepends=True)
    step = max(1, len(rows) // count)
    return [("".join(rows[i:i + lines])).encode() for i in range(0, len(rows), step)][:count]


def _kmod_texts() -> dict[str, list[bytes]]:
    """Slices of a real depmod-made module directory (when the kernel is cached), else small samples."""
    moddir = _moddir()
    out: dict[str, list[bytes]] = {
        "dep": [b"kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz\n"
                b"kernel/lib/crc16.ko.xz:\n"],
        "alias": [b"alias pci:v00008086d00002922sv*sd*bc*sc*i* ahci\nalias fs-ext4 ext4\n"
                  b"alias usb:v1234p*d01[0-2]*dc*dsc*dp*ic*isc*ip*in* c\n"],
        "softdep": [b"softdep ext4 pre: crypto-crc32c\nsoftdep cifs gcm\n"],
        "builtin": [b"kernel/fs/binfmt_script.ko\nkernel/crypto/sha256_generic.ko\n"],
        "modinfo": [b"ext4.softdep=pre: crc32c\0ahci.alias=pci:v*d*sv*sd*bc01sc06i01*\0crc32c.file=x\0"],
    }
    if moddir is not None:
        for key, fname in (("dep", "modules.dep"), ("alias", "modules.alias"), ("softdep", "modules.softdep"),
                           ("builtin", "modules.builtin")):
            p = moddir / fname
            if p.exists():
                out[key] += _chunks(p.read_text(), 40, 12)
        info = moddir / "modules.builtin.modinfo"
        if info.exists():
            raw = info.read_bytes()
            out["modinfo"] += [raw[i:i + 3000] for i in range(0, min(len(raw), 36000), 3000)]
    return out


def _index_seed() -> bytes:
    """A compiled index of 80 real modules (all modules when the kernel is not cached: a small sample)."""
    moddir = _moddir()
    if moddir is not None:
        modules = modindex.read_depmod_modules(moddir)
        keep = [m for m in modules if m.aliases][:60] + [m for m in modules if m.softdeps][:20]
        builtins = modindex.read_builtins(moddir)
    else:
        keep = [modindex.Module("ahci", "kernel/ahci.ko", ("libahci",), ("pci:v*d*sv*sd*bc01sc06i01*",)),
                modindex.Module("libahci", "kernel/libahci.ko"),
                modindex.Module("ext4", "kernel/ext4.ko", (), ("fs-ext4",), ("pre: crc32c",))]
        builtins = modindex.Builtins(("kernel/crypto/crc32c_generic.ko",),
                                     (modindex.Alias("crypto-crc32c", "crc32c_generic"),))
    config = [modindex.ConfigFile("x.conf", CONFIG_SEED)]
    return modindex.dumps(modindex.build_index("6.1.0-fuzz", keep, builtins, config))


QUERIES = ("pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01", "fs-ext4", "crypto-crc32c",
           "usb:v1234pABCDd0115dc00dsc00dp00ic08isc06ip50in00",
           "cpu:type:x86,ven0000fam0006mod003F:feature:,0094",
           "ext4", "ahci", "nope")


def _queries(ix: kmodindex.ModuleIndex) -> list[object]:
    out: list[object] = [ix.match_pci(0x8086, 0x2922, 0x1AF4, 0x1100, 0x010601)]
    for q in QUERIES + tuple(ix.names()[:3]):
        out += [ix.lookup(q), ix.load_order(q), ix.cpu_fits(q, QUERIES[4]), ix.options(q), ix.deps(q)]
    return out


def _load_index(data: bytes) -> object:
    return _queries(kmodindex.ModuleIndex.loads(data))


def _reader(fn: Callable[[str], object]) -> Callable[[bytes], object]:
    return lambda data: fn(_text(data))


def _aliases_then_match(data: bytes) -> object:
    """modules.alias lines compiled into an index and matched (the pattern compiler and matcher)."""
    by_module: dict[str, list[str]] = {}
    for a in modindex.parse_alias(_text(data)):
        by_module.setdefault(a.module, []).append(a.pattern)
        modindex.pci_entry(a.pattern)
    mods = [modindex.Module(m, f"{m}.ko", (), tuple(p)) for m, p in by_module.items()]
    return _queries(modindex.build_index("k", mods))


def _config_then_build(data: bytes) -> object:
    """modprobe.d (or modules.softdep) text applied to a small index, then queried."""
    text = _text(data)
    for d in modindex.parse_config(text):
        if d.command is modindex.Command.SOFTDEP:
            modindex.parse_softdep_value(d.value)
    mods = [modindex.Module("ext4", "ext4.ko", ("crc16",), ("fs-ext4",)),
            modindex.Module("crc16", "crc16.ko"),
            modindex.Module("ahci", "ahci.ko", (), ("pci:v*d*sv*sd*bc01sc06i01*",))]
    return _queries(modindex.build_index("k", mods, config=[modindex.ConfigFile("a.conf", text)]))


def _kmod_targets() -> list[Target]:
    texts = _kmod_texts()
    return [
        Target("kmodindex.loads", _load_index, [_index_seed()], allowed=(ValueError,),
               tokens=(b"\xfa", b"\xda", b"{", b"0", b"(", b")", b"i", b"N", b"T", b"F", b"\0\0\0\0")),
        Target("modules.dep", _reader(modindex.parse_dep), texts["dep"], tokens=KMOD_TOKENS,
               generate=_gen_tokens(KMOD_TOKENS)),
        Target("modules.alias", _aliases_then_match, texts["alias"], tokens=KMOD_TOKENS,
               generate=_gen_tokens(KMOD_TOKENS)),
        Target("modules.softdep", _config_then_build, texts["softdep"], tokens=KMOD_TOKENS,
               generate=_gen_tokens(KMOD_TOKENS)),
        Target("modules.builtin", _reader(modindex.parse_builtin), texts["builtin"], tokens=KMOD_TOKENS),
        Target("modules.builtin.modinfo", modindex.parse_builtin_modinfo, texts["modinfo"],
               tokens=KMOD_TOKENS),
        Target("modules.pcimap", _reader(modindex.parse_pcimap), [PCIMAP_SEED.encode()], tokens=KMOD_TOKENS),
        Target("modprobe.d", _config_then_build, [CONFIG_SEED.encode()], tokens=KMOD_TOKENS,
               generate=_gen_tokens(KMOD_TOKENS)),
    ]


# superblocks and partition tables

_FS_SEEDS = {   # prober -> the images that are its seeds
    "vfat": ("vfat12", "vfat16", "vfat32", "vfat16-relabel", "vfat32-relabel"),
    "swap": ("swap", "swap-nolabel"),
    "xfs": ("xfs",),
    "ext4dev": ("ext4", "ext2"),
    "ext4": ("ext4", "ext4-4k-nocsum", "ext4-odd-label"),
    "ext3": ("ext3",),
    "ext2": ("ext2", "ext2-nolabel"),
    "jbd": ("jbd",),
    "udf": ("udf", "udf-2048"),
    "iso9660": ("iso", "iso-joliet", "iso-rockridge", "iso-joliet-rr", "iso-hybrid"),
    "squashfs": ("squashfs",),
    "squashfs3": ("squashfs",),
    "btrfs": ("btrfs",),
    "exfat": ("exfat", "exfat-nolabel"),
    "ntfs": ("ntfs",),
    "f2fs": ("f2fs", "f2fs-csum"),
    "erofs": ("erofs",),
}
SB_ERRORS = (struct.error, IndexError, ValueError, ZeroDivisionError, OverflowError)  # _superblocks catches
PT_ERRORS = (struct.error, IndexError, ValueError, OverflowError)  # read_partition_table catches
PT_SCRIPTS = {   # small whole disks (the GPT backup header included)
    "gpt-small": "label: gpt\nsize=256KiB, type=L, name=root\n"
                 "size=128KiB, type=U, name=\"EFI sys\"\ntype=S\n",
    "dos-small": "label: dos\nlabel-id: 0x12345678\nstart=64, size=200, type=83, bootable\ntype=5\n"
                 "size=100, type=83\nsize=100, type=82\nsize=100, type=7\n",
}


def _heads(images: dict[str, Path]) -> dict[str, bytes]:
    out = {}
    for name, path in images.items():
        with open(path, "rb") as f:
            out[name] = f.read(PROBE_HEAD)
    for name, script in PT_SCRIPTS.items():
        with tempfile.NamedTemporaryFile() as f:
            os.truncate(f.name, 2 << 20)
            subprocess.run(["sfdisk", "-q", f.name], input=script, text=True, check=True, capture_output=True)
            out[name] = Path(f.name).read_bytes()
    return out


def _prober_target(fstype: str, heads: dict[str, bytes]) -> Target:
    prober = next(p for t, _u, p, _tol in fsprobe._FILESYSTEMS if t == fstype)

    def call(data: bytes) -> object:
        d = prober(MemDev(data))
        assert d is None or (isinstance(d, dict) and all(isinstance(v, str) for v in d.values())), d
        return d
    seeds = [heads[n] for n in _FS_SEEDS[fstype]]
    return Target(f"fsprobe.{fstype}", call, seeds, tolerated=SB_ERRORS,
                  hot=[_hot_ranges(prober, s) for s in seeds], generate=_gen_sectors)


def _partition_tables(data: bytes) -> object:
    for ssz in (512, 4096):
        t = fsprobe._partition_table(MemDev(data, ssz))
        assert t is None or t is True or isinstance(t, fsprobe.PartitionTable)
    return t


def _gen_sectors(rng: random.Random) -> bytes:
    """A few sectors of noise with signatures where formats look for them."""
    buf = bytearray(rng.randbytes(rng.choice((512, 2048, 8192, 70000, 1 << 20))))
    for off, sig in rng.sample(_SIGNATURES, rng.randrange(0, 4)):
        if off + len(sig) <= len(buf):
            buf[off:off + len(sig)] = sig
    return bytes(buf)


_SIGNATURES = [(510, b"\x55\xaa"), (512, b"EFI PART"), (1080, b"\x53\xef"), (0, b"XFSB"), (0x8001, b"CD001"),
               (0x10040, b"_BHRfS_M"), (0, b"hsqs"), (3, b"EXFAT   "), (1024, b"\x10\x20\xf5\xf2"),
               (1024, b"\xe2\xe1\xf5\xe0"), (4086, b"SWAPSPACE2"), (0x52, b"FAT32   "), (0x36, b"FAT16   "),
               (0x8001, b"BEA01"), (0x8801, b"NSR02"), (450, b"\xee"), (450, b"\x05")]


def _probe_file(data: bytes) -> object:
    """probe() and read_partition_table() through a real file descriptor (a memfd)."""
    fd = os.memfd_create("fuzz", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        path = f"/proc/self/fd/{fd}"
        keys = fsprobe.probe(path)
        assert all(isinstance(v, str) for v in keys.values())
        fsprobe.read_partition_table(path)
        fsprobe.probe_partition(path, 1)
        return keys
    finally:
        os.close(fd)


def build_targets(workdir: Path) -> list[Target]:
    """Every target with its seeds (images are made with the real tools under `workdir`)."""
    targets = [
        Target("cmdline.parse", _parse_cmdline, [s.encode() for s in CMDLINE_SEEDS],
               tokens=CMDLINE_TOKENS, generate=_gen_tokens(CMDLINE_TOKENS)),
        Target("cmdline.split", _split_cmdline, [s.encode() for s in CMDLINE_SEEDS],
               tokens=CMDLINE_TOKENS, generate=_gen_tokens(CMDLINE_TOKENS)),
        Target("uevent.parse", _parse_uevent, UEVENT_SEEDS, tokens=UEVENT_TOKENS,
               generate=_gen_tokens(UEVENT_TOKENS)),
        Target("cpio.read_archive", _read_cpio, _cpio_seeds(), allowed=(cpio.ArchiveError,),
               tokens=CPIO_TOKENS, generate=_gen_archive),
    ]
    images = make_images(workdir, foreign=True)
    heads = _heads(images)
    targets += [_prober_target(t, heads) for t in fsprobe.FILESYSTEM_TYPES]
    pt_seeds = [heads[n] for n in ("dos-disk", "gpt-disk", "iso-hybrid", "iso-hybrid-gpt", *PT_SCRIPTS)]
    targets.append(Target("fsprobe.partition_table", _partition_tables, pt_seeds, tolerated=PT_ERRORS,
                          hot=[_hot_ranges(fsprobe._partition_table, s) for s in pt_seeds],
                          generate=_gen_sectors))
    all_heads = [h for n, h in sorted(heads.items()) if n not in ("empty", "zeros")]
    targets.append(Target("fsprobe.probe", _probe_file, all_heads, allowed=(fsprobe.ProbeError,),
                          hot=[_hot_ranges(lambda d: fsprobe._probe_dev(d, True), s) for s in all_heads],
                          generate=_gen_sectors))
    targets += _kmod_targets()
    return targets



# -- mutation --------------------------------------------------------------------

def _position(rng: random.Random, n: int, hot: list[tuple[int, int]]) -> int:
    if hot and rng.random() < HOT_SHARE:
        a, b = rng.choice(hot)
        return min(rng.randrange(a, max(a + 1, b)), max(n - 1, 0))
    return rng.randrange(max(n, 1))


def mutate(rng: random.Random, data: bytes, t: Target, hot: list[tuple[int, int]]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4, 8))):
        n = len(buf)
        op = rng.randrange(10)
        pos = _position(rng, n, hot)
        if op <= 2 and n:                                  # bit flip
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 3 and n:                                # interesting byte
            buf[pos] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x29, 0x55, 0xAA))
        elif op == 4 and n:                                # boundary integer, either byte order
            width = rng.choice((1, 2, 4, 8))
            val = rng.choice(INTERESTING) + rng.choice((-1, 0, 0, 1))
            raw = (val & ((1 << 8 * width) - 1)).to_bytes(width, rng.choice(("little", "big")))
            buf[pos:pos + width] = raw
        elif op == 5:                                      # insert bytes or a token
            token = t.tokens and rng.random() < 0.7
            piece = rng.choice(t.tokens) if token else rng.randbytes(rng.randrange(1, 9))
            buf[pos:pos] = piece
        elif op == 6 and n:                                # delete a run
            del buf[pos:pos + rng.choice((1, 1, 2, 4, 16, 512))]
        elif op == 7 and n:                                # truncate
            cut = pos if rng.random() < 0.5 else rng.randrange(n + 1)
            del buf[cut:]
        elif op == 8 and n:                                # splice another seed in
            other = rng.choice(t.seeds)
            if other:
                a = rng.randrange(len(other))
                piece = other[a:a + rng.choice((4, 16, 64, 512))]
                buf[pos:pos + len(piece)] = piece
        elif op == 9 and n:                                # duplicate a run
            piece = bytes(buf[pos:pos + rng.choice((2, 8, 32, 110))])
            buf[pos:pos] = piece
    return bytes(buf)


def make_input(seed: int, t: Target, i: int) -> bytes:
    """Input `i` of target `t`: a function of (seed, target, i) only."""
    rng = random.Random(f"{seed}:{t.name}:{i}")
    if i < len(t.seeds):
        return t.seeds[i]                                   # every seed as is, first
    if rng.random() < GENERATED_SHARE:
        return t.generate(rng) if t.generate else rng.randbytes(rng.choice((0, 1, 8, 64, 512, 4096)))
    k = rng.randrange(len(t.seeds))
    return mutate(rng, t.seeds[k], t, t.hot[k] if t.hot else [])


# -- running -----------------------------------------------------------------------

@dataclass
class Result:
    name: str
    count: int = 0
    seconds: float = 0.0
    tolerated: int = 0
    accepted: int = 0        # inputs the parser accepted (returned something non-empty)
    crashes: dict[str, list[int]] = field(default_factory=dict)      # signature -> input numbers
    tracebacks: dict[str, str] = field(default_factory=dict)
    slowest: tuple[float, int, int] = (0.0, -1, 0)     # CPU seconds, input, size

    def add_crash(self, signature: str, i: int, tb: str) -> None:
        self.crashes.setdefault(signature, []).append(i)
        self.tracebacks.setdefault(signature, tb)

    def merge(self, other: Result) -> None:
        """Add a later stretch of inputs (run by another child) to this result."""
        self.count = max(self.count, other.count)
        self.accepted += other.accepted
        self.tolerated += other.tolerated
        for sig, inputs in other.crashes.items():
            for i in inputs:
                self.add_crash(sig, i, other.tracebacks.get(sig, ""))
        self.slowest = max(self.slowest, other.slowest)


def _on_alarm(signum: int, frame: object) -> None:
    raise Hang


def _signature(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = next((f for f in reversed(tb) if "/scripts/fuzz.py" not in f.filename), tb[-1] if tb else None)
    place = f"{Path(where.filename).name}:{where.lineno}" if where else "?"
    return f"{type(e).__name__} at {place}"


def run_target(t: Target, seed: int, first: int, count: int, budget: float, input_timeout: float,
               current: Any = None, progress: Callable[[Result], None] | None = None) -> Result:
    """Inputs first..count-1 of `t`, in this process (stops when `budget` seconds are used)."""
    res = Result(t.name, count=first)
    signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    for i in range(first, count):
        if i % 256 == 0:
            if time.monotonic() - start > budget:
                break
            if progress is not None and i % PROGRESS_EVERY == 0:
                res.seconds = time.monotonic() - start
                progress(res)
        data = make_input(seed, t, i)
        if current is not None:
            current.value = i
        t0 = time.process_time()   # CPU time: other processes on the machine do not count
        try:
            signal.setitimer(signal.ITIMER_REAL, input_timeout)
            try:
                if t.call(data):
                    res.accepted += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except Hang:
            res.add_crash(f"hang over {input_timeout:g} s", i, "")
        except t.allowed:
            pass
        except t.tolerated:
            res.tolerated += 1
        except BaseException as e:   # noqa: B036 -- everything else is what we are looking for
            if isinstance(e, KeyboardInterrupt):
                raise
            res.add_crash(_signature(e), i, traceback.format_exc())
        took = time.process_time() - t0
        if took > res.slowest[0]:
            res.slowest = (took, i, len(data))
        res.count = i + 1
    res.seconds = time.monotonic() - start
    return res


def _child(t: Target, seed: int, first: int, count: int, budget: float, input_timeout: float,
           current: Any, conn: Any) -> None:
    # A parser that allocates without bound gets a MemoryError, not the shared machine's memory.
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    res = run_target(t, seed, first, count, budget, input_timeout, current,
                     lambda r: conn.send(("progress", r)))
    conn.send(("done", res))


def run_isolated(t: Target, seed: int, count: int, budget: float, input_timeout: float) -> Result:
    """run_target in a forked child, watched: a parser stuck in C code (where
    SIGALRM cannot reach it), a segfault or an exhausted memory is recorded
    against its input, and a new child goes on with the next input."""
    ctx = multiprocessing.get_context("fork")
    total = Result(t.name)
    first = 0
    deadline = time.monotonic() + budget
    while first < count and time.monotonic() < deadline:
        current = ctx.Value("q", first - 1, lock=False)
        parent, child = ctx.Pipe(duplex=False)
        left = deadline - time.monotonic()
        p = ctx.Process(target=_child, args=(t, seed, first, count, left, input_timeout, current, child))
        p.start()
        child.close()
        last: Result | None = None
        done = False
        seen, since = current.value, time.monotonic()
        while not done:
            try:
                if parent.poll(0.2):
                    kind, last = parent.recv()
                    done = kind == "done"
                    continue
            except EOFError:
                break
            if current.value != seen:
                seen, since = current.value, time.monotonic()
            elif time.monotonic() - since > WATCHDOG_FACTOR * input_timeout:
                p.kill()
                p.join()
                break
            if not p.is_alive() and not parent.poll(0):
                break
        p.join()
        if last is not None:
            total.merge(last)
        if done:
            break
        stuck = current.value
        why = ("killed: no return (stuck in C code)" if p.exitcode == -signal.SIGKILL
               else f"process died ({p.exitcode})")
        total.add_crash(why, stuck, "")
        total.count = stuck + 1
        first = stuck + 1
    total.seconds = budget - max(0.0, deadline - time.monotonic())
    return total


def save(t: Target, res: Result, seed: int, out: Path) -> None:
    """Reproducers of each crash and the slowest input, under out/<target>/."""
    d = out / t.name
    d.mkdir(parents=True, exist_ok=True)
    for k, (sig, inputs) in enumerate(sorted(res.crashes.items())):
        for i in inputs[:MAX_REPRODUCERS]:
            data = make_input(seed, t, i)
            (d / f"crash{k}-{i}.bin").write_bytes(data)
            (d / f"crash{k}-{i}.txt").write_text(
                f"{sig}\nreplay: scripts/fuzz.py --seed {seed} --only {t.name} --replay {i}\n\n"
                f"{res.tracebacks.get(sig, '')}")
    if res.slowest[1] >= 0:
        (d / "slowest.bin").write_bytes(make_input(seed, t, res.slowest[1]))


def replay(t: Target, seed: int, i: int) -> int:
    data = make_input(seed, t, i)
    print(f"{t.name} input {i}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")
    t0 = time.perf_counter()
    try:
        t.call(data)
    except t.allowed + t.tolerated as e:
        print(f"{type(e).__name__} (allowed): {e}")
    print(f"{(time.perf_counter() - t0) * 1000:.2f} ms")
    return 0


def markdown(summary: dict[str, Any]) -> str:
    """The table of docs/RELIABILITY.md, from a run's summary.json."""
    rows = ["| target | inputs | crashes | accepted | slowest input (CPU) |", "|---|---:|---:|---:|---|"]
    for t in summary["targets"]:
        crashes = sum(t["crashes"].values())
        rows.append(f"| `{t['target']}` | {t['inputs']:,} | {crashes} | {t['accepted']:,} | "
                    f"{t['slowest_cpu_ms']:.2f} ms (input {t['slowest_input']}, "
                    f"{t['slowest_bytes']:,} bytes) |")
    return "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=DEFAULT_COUNT,
                    help="inputs per target (default %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (default %(default)s)")
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="run only this target (repeatable; a prefix such as 'fsprobe.' works)")
    ap.add_argument("--time-budget", type=float, default=6 * 3600, metavar="SECONDS",
                    help="wall time for the whole run, shared among the targets (default %(default)s)")
    ap.add_argument("--input-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="an input running longer is a hang (default %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT,
                    help="reproducers and summary (default %(default)s)")
    ap.add_argument("--replay", type=int, metavar="N", help="run input N of the --only target, in process")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--markdown", type=Path, metavar="SUMMARY", help="print a run's summary.json as a table")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())), end="")
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as work:
        t0 = time.monotonic()
        targets = build_targets(Path(work))
        if args.only:
            targets = [t for t in targets if any(t.name == o or t.name.startswith(o) for o in args.only)]
            if not targets:
                print(f"no target matches {args.only}; see --list", file=sys.stderr)
                return 2
        if args.list:
            for t in targets:
                print(f"{t.name:26} {len(t.seeds)} seeds")
            return 0
        if args.replay is not None:
            return replay(targets[0], args.seed, args.replay)
        print(f"seeds ready in {time.monotonic() - t0:.1f} s; {len(targets)} targets, "
              f"{args.count} inputs each, seed {args.seed}", flush=True)
        deadline = time.monotonic() + args.time_budget
        results = []
        for k, t in enumerate(targets):
            budget = max(0.0, (deadline - time.monotonic()) / (len(targets) - k))
            res = run_isolated(t, args.seed, args.count, budget, args.input_timeout)
            save(t, res, args.seed, args.out)
            results.append(res)
            crashes = sum(len(v) for v in res.crashes.values())
            print(f"{t.name:26} {res.count:7d} inputs {res.seconds:7.1f} s  crashes {crashes:4d} "
                  f"({len(res.crashes)} distinct)  accepted {res.accepted:6d}  tolerated {res.tolerated:5d}  "
                  f"slowest {res.slowest[0] * 1000:8.2f} ms CPU "
                  f"(input {res.slowest[1]}, {res.slowest[2]} bytes)",
                  flush=True)
            for sig, inputs in res.crashes.items():
                print(f"    {sig}: {len(inputs)} inputs, first {inputs[:MAX_REPRODUCERS]}", flush=True)
    summary = [{"target": r.name, "inputs": r.count, "seconds": round(r.seconds, 1),
                "crashes": {s: len(v) for s, v in r.crashes.items()}, "accepted": r.accepted,
                "tolerated": r.tolerated,
                "slowest_cpu_ms": round(r.slowest[0] * 1000, 3), "slowest_input": r.slowest[1],
                "slowest_bytes": r.slowest[2]} for r in results]
    (args.out / "summary.json").write_text(json.dumps({"seed": args.seed, "count": args.count,
                                                        "targets": summary}, indent=1))
    total = sum(sum(len(v) for v in r.crashes.values()) for r in results)
    short = [r.name for r in results if r.count < args.count]
    print(f"{sum(r.count for r in results)} inputs, {total} crashing; "
          f"reproducers and summary.json in {args.out}"
          + (f"; budget ran out before --count for {', '.join(short)}" if short else ""))
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
