"""A live stick that BIOS and UEFI both boot and that stays an ordinary FAT drive.

Layout (MBR, see `Layout`):

    sector 0     syslinux's mbr.bin + the partition table (written last)
    1 MiB ...    partition 1, FAT32 (type 0x0c, active), the medium:
                   /live/*                 the ISO's live files (squashfs, kernel, initrd, id)
                   /syslinux/*             syslinux: BIOS, the ISO's isolinux menu
                   /EFI/BOOT/BOOTX64.EFI   UEFI: shim, which starts the signed GRUB beside it
                                           (grubx64.efi; its early config in /EFI/debian/grub.cfg),
                                           or the unsigned GRUB (image.efi_loader); both read the
                                           ISO's GRUB menu (/boot/grub/grub.cfg)
                   /persistence.img        --persistence-file: an ext4 image
    after it     partition 2 (--persistence): ext4 labelled `persistence`; with
                 --persistence-encrypt a LUKS2 volume labelled `persistence` holding
                 the ext4 (see `luks_header`; docs/PERSISTENCE.md)

MBR rather than GPT: legacy BIOSes boot an MBR with an active partition
(some refuse a GPT protective MBR, which has none), UEFI reads MBR partitions
and boots \\EFI\\BOOT\\BOOTX64.EFI from a FAT one, and a type-0x0c partition is
the plain FAT drive every OS mounts (Windows hides a GPT or MBR ESP, type
0xEF). A hybrid MBR is the one layout the UEFI spec calls invalid.

Nothing is mounted: the FAT is an image file built with mkfs.vfat, syslinux
(its mtools installer) and mcopy, then written at its offset; the ext4 is made
in place by mkfs.ext4 -E offset=; the table by sfdisk on a scratch file."""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from liveinit import fatfile
from liveinit.contract import ID_FILE, LIVE_DIR, PERSISTENCE_FRESH, PERSISTENCE_IMAGE, PERSISTENCE_LABEL
from packer import image, tools
from packer.errors import CommandError
from packer.progress import human

SECTOR = 512
MIB = 1 << 20
ALIGN = MIB                      # partitions start on MiB boundaries (flash erase blocks)
FAT_MIN = 64 * MIB               # FAT32 wants >= 65525 clusters; mkfs.vfat refuses less
FAT_FREE = 64 * MIB              # room for the user's files when persistence takes the rest
FAT_MAX_FILE = (4 << 30) - 1     # FAT32's file size limit
FAT_OVERHEAD = 8 * MIB           # reserved sectors, two FATs, directories
CLUSTER_SLACK = 64 << 10         # each file rounded up to this (the largest cluster mkfs.vfat picks)
PERSISTENCE_MIN = 16 * MIB
FAT_TYPE, LINUX_TYPE = "c", "83"
MBR_CODE = 440                   # boot code bytes before the disk signature
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_DIR = "syslinux"        # on the FAT: ldlinux.sys, modules, syslinux.cfg
WIPE = MIB                       # zeroed at both ends before writing, and at the start on failure
CHUNK = 4 * MIB
FAT_LABEL_RE = re.compile(r"^[A-Z0-9_-]{1,11}$")
SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?$", re.IGNORECASE)
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}
LUKS_HEADER = 16 * MIB           # LUKS2 header and keyslots (luksFormat --offset): the data starts here
# argon2id's memory: cryptsetup's default is 1 GiB (capped at half the RAM of the host that
# formats), but the stick is opened on other machines, whose initramfs needs the rest of theirs.
PBKDF_MEMORY_KIB = 512 * 1024


def parse_size(text: str, what: str) -> int:
    """'512M', '2G', '1.5GiB', '1048576' -> bytes (1024-based)."""
    m = SIZE_RE.match(text.strip())
    if not m:
        raise CommandError(f"{what} {text!r} is not a size", hint="write e.g. 512M, 4G or 1.5GiB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper()))


def _up(n: int, to: int) -> int:
    return -(-n // to) * to


def _down(n: int, to: int) -> int:
    return n // to * to


# -- layout -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """One MBR partition, in bytes."""

    start: int
    size: int
    type: str
    bootable: bool = False

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a disk of `disk_size` bytes."""

    disk_size: int
    fat: Partition
    persistence: Partition | None

    @property
    def partitions(self) -> tuple[Partition, ...]:
        return (self.fat,) if self.persistence is None else (self.fat, self.persistence)

    def sfdisk_script(self, disk_id: int) -> str:
        lines = ["label: dos", f"label-id: 0x{disk_id:08x}", "unit: sectors", ""]
        for p in self.partitions:
            lines.append(f"start={p.start // SECTOR}, size={p.size // SECTOR}, type={p.type}"
                         + (", bootable" if p.bootable else ""))
        return "\n".join(lines) + "\n"


def fat_needed(file_sizes: list[int]) -> int:
    """The FAT32 partition size that holds these files (clusters, FATs, directories)."""
    data = sum(_up(max(s, 1), CLUSTER_SLACK) for s in file_sizes)
    return max(FAT_MIN, _up(data + data // 64 + FAT_OVERHEAD, ALIGN))


def plan(disk_size: int, needed: int, fat_size: int | None = None,
         persistence: int | str | None = None) -> Layout:
    """Place the FAT (and a persistence partition) on a disk of `disk_size` bytes.

    `needed`: what the live files take (fat_needed). Without `fat_size` the FAT
    takes the whole disk, or what persistence leaves; with `persistence="rest"`
    it gets `needed` + FAT_FREE and persistence the rest. Raises CommandError
    saying how much is needed when the disk is too small."""
    if fat_size is not None and fat_size < needed:
        raise CommandError(f"--fat-size {human(fat_size)} is smaller than the live files need "
                           f"({human(needed)})", hint=f"give at least {needed // MIB}M, or drop --fat-size")
    persist_min = {None: 0, "rest": PERSISTENCE_MIN}.get(persistence, persistence)   # type: ignore[arg-type]
    assert isinstance(persist_min, int)
    if isinstance(persistence, int) and persistence < PERSISTENCE_MIN:
        raise CommandError(f"--persistence {human(persistence)} is too small",
                           hint=f"give at least {PERSISTENCE_MIN // MIB}M, or 'rest'")
    fat_min = fat_size if fat_size is not None else needed
    required = ALIGN + _up(fat_min, ALIGN) + _up(persist_min, ALIGN)
    usable = _down(disk_size, ALIGN)
    if usable < required:
        parts = [f"{human(fat_min)} FAT for the live files"]
        if persist_min:
            parts.append(f"{human(persist_min)} persistence")
        raise CommandError(f"the target holds {human(disk_size)} ({disk_size} bytes); this stick needs at "
                           f"least {human(required)} ({required} bytes: 1 MiB partition table, "
                           + ", ".join(parts) + ")",
                           hint=f"use a bigger stick, or --size {_up(required, MIB) // MIB}M for an image")
    if fat_size is None:
        if persistence == "rest":
            fat_size = min(_up(needed + FAT_FREE, ALIGN), usable - ALIGN - PERSISTENCE_MIN)
        else:
            fat_size = usable - ALIGN - _up(persist_min, ALIGN)
    fat = Partition(ALIGN, _up(fat_size, ALIGN), FAT_TYPE, bootable=True)
    if persistence is None:
        return Layout(disk_size, fat, None)
    size = usable - fat.end if persistence == "rest" else _up(persist_min, ALIGN)
    return Layout(disk_size, fat, Partition(fat.end, size, LINUX_TYPE))


def check_label(label: str) -> str:
    """A FAT volume label: GRUB finds the stick by it; up to 11 of A-Z 0-9 _ -."""
    up = label.upper()
    if not FAT_LABEL_RE.match(up):
        raise CommandError(f"bad FAT label {label!r}",
                           hint="use up to 11 letters, digits, '_' or '-' (e.g. --label LIVESTICK)")
    return up


# -- the source: what goes under /live ---------------------------------------------------------

@dataclass(frozen=True)
class LiveFiles:
    """The live files of a medium, extracted from an ISO `liveinit image` made."""

    live: Path                # directory holding filesystem.squashfs, vmlinuz, initrd.img, liveinit.id...
    identity: str
    cmdline: str              # the base command line of the ISO's menu (console + --cmdline)
    label: str                # the ISO's volume label

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(sorted(p for p in self.live.iterdir() if p.is_file()))


def _iso_cmdline(isolinux_cfg: str) -> str:
    """The APPEND line of the ISO menu's first entry (the plain boot: no extra words)."""
    for line in isolinux_cfg.splitlines():
        if line.strip().startswith("APPEND "):
            return line.strip()[len("APPEND "):].strip()
    return ""


def live_files_from_iso(iso: Path, work: Path) -> LiveFiles:
    """Extract /live and the menu's command line from an ISO `liveinit image` made (xorriso, no mount)."""
    from packer.cmd_probe import identify
    keys = identify(str(iso))
    if keys.get("TYPE") != "iso9660":
        raise CommandError(f"{iso} is not an ISO 9660 image (found {keys.get('TYPE') or 'nothing'})",
                           hint="give a root directory or an ISO made by `liveinit image`")
    dest = work / "iso"
    dest.mkdir(parents=True, exist_ok=True)
    tools.run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", LIVE_DIR, str(dest / "live"),
               "-extract", "/isolinux/isolinux.cfg", str(dest / "isolinux.cfg")],
              f"extract the live files from {iso}")
    live = dest / "live"
    for p in [live, *live.iterdir()] if live.is_dir() else []:
        p.chmod(0o755 if p.is_dir() else 0o644)
    id_file = dest / ID_FILE.lstrip("/")
    for member in (image.SQUASHFS_PATH, image.KERNEL_PATH, image.INITRD_PATH, image.IDENTITY_PATH):
        if not (dest / member).is_file():
            raise CommandError(f"{iso} has no /{member}", hint="is it an ISO made by `liveinit image`?")
    cfg = dest / "isolinux.cfg"
    return LiveFiles(live, id_file.read_text().strip(),
                     _iso_cmdline(cfg.read_text()) if cfg.exists() else image.DEFAULT_CONSOLE,
                     keys.get("LABEL", image.DEFAULT_LABEL))


def initrd_lacks(initrd: Path, programs: tuple[str, ...], keymaps: tuple[str, ...]) -> list[str]:
    """What of `programs` (looked for where the runtime looks: liveinit.command.TOOL_DIRS)
    and `keymaps` (compiled, KEYMAP_DIR) the initramfs `initrd` does not carry."""
    from liveinit.command import TOOL_DIRS
    from liveinit.contract import KEYMAP_DIR, KEYMAP_SUFFIX
    from packer.cpio import flatten, normalize, read_archive
    names = {normalize(n) for n in flatten(read_archive(initrd.read_bytes()))}
    out = [p for p in programs if not any(f"{d}/{p}".lstrip("/") in names for d in TOOL_DIRS)]
    out += [f"the keymap {k}" for k in keymaps if f"{KEYMAP_DIR}/{k}{KEYMAP_SUFFIX}".lstrip("/") not in names]
    return out


# -- the FAT partition ---------------------------------------------------------------------------

def _mtools(argv: list[str], what: str) -> None:
    tools.run(argv, what, env={**os.environ, **MTOOLS_ENV})


def build_fat(work: Path, part: Partition, live: LiveFiles, label: str, cmdline: str,
              entries: tuple[image.MenuEntry, ...], efi_files: tuple[tuple[str, Path], ...],
              persistence_file: int | None = None, epoch: int = 0) -> Path:
    """The FAT32 file system of partition `part` as an image file, ready to write at its offset.

    `efi_files`: the UEFI loader, (path on the FAT, source) pairs (image.efi_loader's `files`)."""
    for f in live.files:
        if f.stat().st_size > FAT_MAX_FILE:
            raise CommandError(f"{f.name} is {human(f.stat().st_size)}: FAT32 holds files up to 4 GiB",
                               hint="use a stronger --compression (xz), or exclude more from the root")
    if persistence_file is not None and persistence_file > FAT_MAX_FILE:
        raise CommandError(f"--persistence-file {human(persistence_file)}: FAT32 holds files up to 4 GiB",
                           hint="use --persistence SIZE (a partition) for more")
    fat = work / "fat.img"
    fat.unlink(missing_ok=True)
    volid = hashlib.sha256(live.identity.encode()).hexdigest()[:8]
    # -h: the hidden sectors in the boot record are the partition's start (syslinux's
    # boot sector adds them to reach its own sectors through the BIOS).
    tools.run(["mkfs.vfat", "-C", "-F", "32", "-h", str(part.start // SECTOR), "-n", label, "-i", volid,
               str(fat), str(part.size // 1024)], "format the stick's FAT32 partition",
              env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    img = f"{fat}"
    _mtools(["mmd", "-i", img, f"::/{SYSLINUX_DIR}", "::/boot", "::/boot/grub", f"::{LIVE_DIR}",
             *(f"::/{d}" for d in image.parent_dirs(efi_files))], "make the stick's directories")
    tools.run(["syslinux", "--install", "--directory", f"/{SYSLINUX_DIR}", img],
              "install syslinux on the FAT partition")
    menus = work / "menus"
    menus.mkdir(exist_ok=True)
    (menus / "syslinux.cfg").write_text(image.isolinux_cfg(label, cmdline, entries))
    (menus / "grub.cfg").write_text(image.grub_cfg(label, cmdline, entries))
    modules = [image.SYSLINUX_MODULES / n for n in image.SYSLINUX_FILES if n != "ldlinux.c32"]
    _mtools(["mcopy", "-i", img, *map(str, modules), str(menus / "syslinux.cfg"), f"::/{SYSLINUX_DIR}/"],
            "copy the syslinux menu")
    for dest, src in efi_files:
        _mtools(["mcopy", "-i", img, str(src), f"::/{dest}"], f"copy the UEFI loader's {dest}")
    _mtools(["mcopy", "-i", img, str(menus / "grub.cfg"), f"::/{image.GRUB_CFG_PATH}"], "copy the GRUB menu")
    # The stick's own checksums (the ISO's list its isolinux/ and boot/ files): what is copied here.
    from packer.verify import SUMS_PATH, sums_text
    on_stick = {f"{LIVE_DIR}/{f.name}": f for f in live.files}
    on_stick |= {f"/{SYSLINUX_DIR}/syslinux.cfg": menus / "syslinux.cfg",
                 "/" + image.GRUB_CFG_PATH: menus / "grub.cfg", **{"/" + d: src for d, src in efi_files}}
    (live.live.parent / SUMS_PATH).write_text(sums_text(on_stick))
    _mtools(["mcopy", "-i", img, *map(str, live.files), f"::{LIVE_DIR}/"], "copy the live files")
    if persistence_file is not None:
        pimg = work / "persistence.img"
        pimg.unlink(missing_ok=True)
        tools.run(["mkfs.ext4", "-q", "-F", "-L", PERSISTENCE_LABEL, str(pimg),
                   f"{persistence_file // 1024}k"], "make the persistence image file")
        _mtools(["mcopy", "-i", img, str(pimg), f"::{PERSISTENCE_IMAGE}"], "copy the persistence image")
        pimg.unlink()
        # the live system writes it through the device, the FAT read-only: one run of clusters
        where = fatfile.extent(str(fat), PERSISTENCE_IMAGE)
        if isinstance(where, str):
            raise CommandError(f"the persistence image on the new FAT is unusable: {where}")
    return fat


def fat_used(fat: Path) -> int:
    """How much of the FAT image must be written: its metadata and every cluster up to
    the last one in use. Clusters after it are free; nothing reads them."""
    with fat.open("rb") as f:
        bs = f.read(SECTOR)
        (sector, reserved), fats, (fat_sectors,) = struct.unpack_from("<HxH", bs, 11), bs[16], \
            struct.unpack_from("<I", bs, 36)
        cluster = bs[13] * sector
        meta = (reserved + fats * fat_sectors) * SECTOR + cluster   # + the root directory's first cluster
        end, pos, size = 0, 0, os.fstat(f.fileno()).st_size
        while pos < size:
            try:
                data = os.lseek(f.fileno(), pos, os.SEEK_DATA)
            except OSError:      # ENXIO: no data after pos
                break
            pos = os.lseek(f.fileno(), data, os.SEEK_HOLE)
            end = pos
    return min(size, _up(max(meta, end), MIB))


def mbr_sector(layout: Layout, disk_id: int, work: Path) -> bytes:
    """Sector 0: syslinux's MBR boot code, the disk signature and sfdisk's partition table."""
    if not SYSLINUX_MBR.is_file():
        raise CommandError(f"{SYSLINUX_MBR} not found", hint="apt-get install syslinux-common")
    scratch = work / "table.img"
    scratch.unlink(missing_ok=True)
    with scratch.open("wb") as f:
        f.truncate(layout.disk_size)
    tools.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(scratch)],
              "write the partition table", input=layout.sfdisk_script(disk_id))
    with scratch.open("rb") as f:
        sector = f.read(SECTOR)
    scratch.unlink()
    code = SYSLINUX_MBR.read_bytes()[:MBR_CODE]
    return code + sector[len(code):]


# -- encrypted persistence ---------------------------------------------------------------------

@dataclass(frozen=True)
class Encryption:
    """How the persistence partition is encrypted. `passphrase` goes to cryptsetup on
    stdin only (the caller wipes it after the write). `format_inside`: this host opens
    the new volume (device-mapper, root) and makes the ext4 in it; else the header is
    marked PERSISTENCE_FRESH and the runtime makes it on the first open (liveinit/freshfs.py)."""

    passphrase: bytearray
    format_inside: bool
    iter_time_ms: int | None = None           # None: cryptsetup's default (2 s on this host)
    pbkdf_memory_kib: int = PBKDF_MEMORY_KIB


def host_device_mapper(proc: Path = Path("/proc")) -> bool:
    """Whether this host can open a LUKS volume: root, and device-mapper in its kernel
    (/proc/misc names it once dm_mod is loaded; a /dev/mapper/control node alone proves
    nothing: this project's lab host has one and no device-mapper)."""
    def registered() -> bool:
        try:
            return any(line.split()[-1:] == ["device-mapper"]
                       for line in (proc / "misc").read_text().splitlines())
        except OSError:
            return False
    if os.geteuid() != 0:
        return False
    if not registered():
        with contextlib.suppress(CommandError):
            tools.run(["modprobe", "-q", "dm_mod"], "load device-mapper")
    return registered()


def luks_header(work: Path, size: int, enc: Encryption) -> Path:
    """The LUKS2 header of a persistence partition of `size` bytes, made by cryptsetup
    luksFormat on a sparse scratch file (it writes only the first LUKS_HEADER bytes, which
    write_stick copies to the partition): label `persistence` (the runtime's default
    search), aes-xts-plain64 and argon2id; marked PERSISTENCE_FRESH unless this host
    formats the inside itself. The passphrase reaches cryptsetup on a pipe."""
    scratch = work / "luks-header.img"
    scratch.unlink(missing_ok=True)
    with scratch.open("xb") as f:
        f.truncate(size)
    argv = ["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--label", PERSISTENCE_LABEL,
            *([] if enc.format_inside else ["--subsystem", PERSISTENCE_FRESH]),
            "--offset", str(LUKS_HEADER // SECTOR), "--pbkdf", "argon2id",
            "--pbkdf-memory", str(enc.pbkdf_memory_kib),
            *(["--iter-time", str(enc.iter_time_ms)] if enc.iter_time_ms else []),
            "--key-file=-", str(scratch)]
    tools.run(argv, "make the LUKS2 header of the encrypted persistence partition", input=enc.passphrase)
    return scratch


def format_inside(target: Path, part: Partition, enc: Encryption, say: Callable[[str], None]) -> None:
    """Open the new LUKS volume in partition `part` of `target` (a loop device over its byte
    range, so the partition table need not be read), make the ext4 inside and check it."""
    loop = tools.run(["losetup", "--find", "--show", "--offset", str(part.start), "--sizelimit",
                      str(part.size), str(target)], "attach the persistence partition to a loop device",
                     text=True).stdout.strip()
    name = f"liveinit-usb-{os.getpid()}"
    try:
        tools.run(["cryptsetup", "open", "--type", "luks2", "--key-file=-", loop, name],
                  "open the new encrypted persistence partition", input=enc.passphrase)
        try:
            inside = f"/dev/mapper/{name}"
            say(f"persistence: ext4 '{PERSISTENCE_LABEL}' inside the LUKS2 volume")
            tools.run(["mkfs.ext4", "-q", "-L", PERSISTENCE_LABEL, inside],
                      "make the ext4 inside the LUKS2 volume")
            tools.run(["e2fsck", "-f", "-n", inside], "check the ext4 inside the LUKS2 volume")
        finally:
            tools.run(["cryptsetup", "close", name], "close the encrypted persistence partition")
    finally:
        tools.run(["losetup", "--detach", loop], "detach the persistence partition's loop device")


# -- the writer ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Region:
    """Bytes written at `offset` and their checksum, compared with a read-back."""

    what: str
    offset: int
    length: int
    sha256: str


def _drop_cache(fd: int) -> None:
    """Forget cached pages so the read-back comes from the device, not memory."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_from(fd: int, src: Path | bytes, offset: int, length: int) -> str:
    h = hashlib.sha256()
    if isinstance(src, bytes):
        chunk = src[:length]
        os.pwrite(fd, chunk, offset)
        h.update(chunk)
        return h.hexdigest()
    with src.open("rb") as f:
        done = 0
        while done < length:
            buf = f.read(min(CHUNK, length - done))
            if not buf:
                raise CommandError(f"{src} ended after {done} of {length} bytes")
            view = memoryview(buf)
            while view:
                n = os.pwrite(fd, view, offset + done)
                view = view[n:]
                done += n
            h.update(buf)
    return h.hexdigest()


def _read_sha(fd: int, offset: int, length: int) -> str:
    h = hashlib.sha256()
    done = 0
    while done < length:
        buf = os.pread(fd, min(CHUNK, length - done), offset + done)
        if not buf:
            break
        h.update(buf)
        done += len(buf)
    return h.hexdigest()


def _verify(fd: int, region: Region) -> None:
    _drop_cache(fd)
    got = _read_sha(fd, region.offset, region.length)
    if got != region.sha256:
        raise CommandError(f"read-back of the {region.what} ({human(region.length)} at byte "
                           f"{region.offset}) differs from what was written (sha256 {got[:16]} != "
                           f"{region.sha256[:16]})",
                           hint="the stick may be failing, or fake (smaller than it claims): try another")


def _open(target: Path, device: bool) -> int:
    # O_EXCL on a block device: the kernel refuses it while anything has the
    # device or a partition of it mounted or claimed (the second check).
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if device else 0)
    try:
        return os.open(target, flags)
    except OSError as e:
        raise CommandError(f"cannot open {target} for writing: {e.strerror}",
                           hint="is it mounted or used by another program?") from None


def _wipe(fd: int, size: int, both_ends: bool = True) -> None:
    zeros = bytes(WIPE)
    os.pwrite(fd, zeros[:min(WIPE, size)], 0)
    if both_ends and size > 2 * WIPE:     # an old backup GPT at the end must not outlive the new table
        os.pwrite(fd, zeros, _down(size, SECTOR) - WIPE)
    os.fsync(fd)


def target_size(target: Path) -> int:
    """Bytes in a block device or image file."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def write_stick(target: Path, layout: Layout, fat: Path, mbr: bytes,
                say: Callable[[str], None] = print, luks: Path | None = None,
                encryption: Encryption | None = None) -> tuple[Region, ...]:
    """Write the stick: wipe both ends, persistence, FAT, then the partition table last,
    each region read back and compared. On any failure the first MiB is zeroed again,
    so a half-written stick holds no partition table and looks like nothing.
    `luks`: the persistence partition's LUKS2 header (luks_header) instead of an ext4;
    `encryption` with format_inside: the ext4 is made inside it here (format_inside)."""
    device = stat.S_ISBLK(os.stat(target).st_mode)
    fd = _open(target, device)
    regions: list[Region] = []
    try:
        _wipe(fd, layout.disk_size)
        if layout.persistence is not None and luks is not None:
            p = layout.persistence
            say(f"persistence: LUKS2 '{PERSISTENCE_LABEL}', {human(p.size)} at {p.start // MIB} MiB")
            region = Region("LUKS2 header", p.start, LUKS_HEADER, _write_from(fd, luks, p.start, LUKS_HEADER))
            _verify(fd, region)
            regions.append(region)
        elif layout.persistence is not None:
            os.close(fd)       # mkfs.ext4 opens the device exclusively itself
            fd = -1
            p = layout.persistence
            say(f"persistence: ext4 '{PERSISTENCE_LABEL}', {human(p.size)} at {p.start // MIB} MiB")
            tools.run(["mkfs.ext4", "-q", "-F", "-L", PERSISTENCE_LABEL, "-E", f"offset={p.start}",
                       str(target), f"{p.size // 1024}k"], "make the persistence partition")
            fd = _open(target, device)
        used = fat_used(fat)
        say(f"FAT32: writing {human(used)} of {human(layout.fat.size)} at {layout.fat.start // MIB} MiB")
        region = Region("FAT partition", layout.fat.start, used,
                        _write_from(fd, fat, layout.fat.start, used))
        _verify(fd, region)
        regions.append(region)
        if layout.persistence is not None and luks is None:
            # mkfs.ext4 wrote it: a full read-only check of the file system on the target proves it.
            tools.run(["e2fsck", "-f", "-n", f"{target}?offset={layout.persistence.start}"],
                      "check the persistence partition just written")
        elif layout.persistence is not None and encryption is not None and encryption.format_inside:
            os.close(fd)       # the loop device and cryptsetup open it themselves
            fd = -1
            format_inside(target, layout.persistence, encryption, say)
            fd = _open(target, device)
        region = Region("partition table and boot code", 0, SECTOR, _write_from(fd, mbr, 0, SECTOR))
        _verify(fd, region)
        regions.append(region)
        if device:
            _reread_partitions(fd)
    except BaseException:
        try:
            if fd < 0:
                fd = _open(target, device)
            _wipe(fd, layout.disk_size, both_ends=False)
            say(f"{target}: the write failed; its first MiB was zeroed (no partition table: nothing boots "
                "from it or mistakes it for a stick)")
        except (OSError, CommandError):
            pass
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    return tuple(regions)


def _reread_partitions(fd: int) -> None:
    import fcntl
    blkrrpart = 0x125F
    with contextlib.suppress(OSError):   # else the kernel reads it when the stick is plugged in next
        fcntl.ioctl(fd, blkrrpart)


def disk_id_for(identity: str) -> int:
    """The MBR disk signature: from the medium identity, so a rebuild is byte-identical."""
    return int(hashlib.sha256(b"mbr\0" + identity.encode()).hexdigest()[:8], 16) or 1


def persistence_arg(layout: Layout, persistence_file: int | None, encrypted: bool = False) -> str:
    """The kernel parameters every menu entry gets for the chosen persistence ('' for none).
    Encrypted: persistence-encryption=luks too, so a plain partition someone put in its
    place (labelled `persistence`) is refused rather than written in clear."""
    if layout.persistence is not None:
        return f"liveinit.persistence=LABEL={PERSISTENCE_LABEL}" + (" persistence-encryption=luks"
                                                                   if encrypted else "")
    if persistence_file is not None:
        return f"liveinit.persistence={PERSISTENCE_IMAGE}"
    return ""


def scratch_dir(workdir: Path | None) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="liveinit-usb-", dir=workdir)
