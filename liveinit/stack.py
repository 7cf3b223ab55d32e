"""Stage `stack`: build the new root at /sysroot.

Live: the image (squashfs or erofs, optionally copied to RAM first) is
loop-mounted read-only at /run/liveinit/ro; a writable layer (tmpfs, or a
persistence partition or image file) at /run/liveinit/rw holds `upper/` and
`work/`; the union is overlayfs, else aufs, else unionfs, else the old
"wraith" way (a read-only bind of the image with writable tmpfs copies of
/etc, /var, /tmp, /root, /home bound over it). Device root: the root device mounted
as the command line asks, optionally under the same overlay."""
from __future__ import annotations

import errno
import os

from liveinit.contract import ISO_MOUNT, MEDIUM, PERSIST_HOST, RAM, RO, RW, SYSROOT, WRITABLE_LIST
from liveinit.emergency import BootFailure, MediumLost
from liveinit.plain import Plain
from liveinit.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_MOVE,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REC,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SYNCHRONOUS,
)

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from typing import Any

    from liveinit.cmdline import BootConfig
    from liveinit.discovery import Discovery, Loader
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.rootfind import Found

PERSIST_DIR = "liveinit-rw"        # on a persistence filesystem: upper/ and work/ below it
IMAGE_TYPES = ("squashfs", "erofs")
UNION_CHAIN = ("overlay", "aufs", "unionfs", "bind")
BIND_DIRS = ("etc", "var", "tmp", "root", "home")   # writable under the bind method
TORAM_RESERVE = 64 << 20     # memory left over after a copy to RAM
COPY_CHUNK = 1 << 20
FLAG_WORDS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
              "sync": MS_SYNCHRONOUS, "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME,
              "relatime": MS_RELATIME}


class Stacked(Plain):
    """root: where the new root is mounted (/sysroot); union: overlay | aufs |
    unionfs | bind | none | device; image_fstype: squashfs/erofs (live) or the
    root's fstype (device root); loop: loop device of the image; writable: "tmpfs",
    "persistence LABEL=x", "none", "device"; toram; tried: union methods that
    failed, with why."""

    __slots__ = ("root", "union", "image_fstype", "loop", "writable", "toram", "tried")
    root: str
    union: str
    image_fstype: str
    loop: str | None
    writable: str
    toram: bool
    tried: tuple[str, ...]


def mount_options(flags_text: str, readonly: bool) -> tuple[int, str | None]:
    """rootflags text -> (mount flags, data string)."""
    flags = MS_RDONLY if readonly else 0
    data = []
    for word in flags_text.split(","):
        if not word or word == "defaults":
            continue
        if word == "rw":
            flags &= ~MS_RDONLY
        elif word in FLAG_WORDS:
            flags |= FLAG_WORDS[word]
        else:
            data.append(word)
    return flags, ",".join(data) or None


def _probe(path: str) -> dict[str, str]:
    from liveinit import fsprobe
    return fsprobe.probe(path)


def _not_loaded(loader: Loader | None, mod: str) -> str:
    """Why the loader failed to load `mod` (the kernel refused it, say), for a hint; '' if it did not."""
    why = loader.failed.get(mod) if loader is not None else None
    return f"the {mod} module was not loaded: {why}" if why else ""


def _need(loader: Loader | None, alias: str, reason: str) -> None:
    """Ask the loader for a module on demand; a missing one shows up at mount time."""
    if loader is None:
        return
    try:
        if alias.startswith("fs-"):
            loader.load_alias(alias, reason)
        else:
            loader.load(alias, reason)
    except Exception:
        pass


def _mount_fs(m: Machine, loader: Loader | None, source: str, target: str, fstype: str, flags: int,
              data: str | None, reason: str) -> None:
    """mount(2), loading `fs-<fstype>` first on ENODEV (unknown filesystem) and retrying."""
    m.makedirs(target)
    try:
        m.sys.mount(source, m.path(target), fstype, flags, data)
        return
    except OSError as e:
        if e.errno != errno.ENODEV or loader is None:
            raise
    _need(loader, "fs-" + fstype, reason)
    m.sys.mount(source, m.path(target), fstype, flags, data)


def meminfo(m: Machine) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out: dict[str, int] = {}
    for line in (m.read("/proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def copy_to_ram(m: Machine, image: str, medium: str | None, log: Log) -> str:
    """Copy the image into a tmpfs and unmount the medium; returns the new image path."""
    real = m.path(image)
    size = os.path.getsize(real)
    mem = meminfo(m)
    avail = mem.get("MemAvailable", mem.get("MemFree", 0))
    need = size + TORAM_RESERVE
    if avail < need:
        raise BootFailure(
            f"toram: the image {image} needs {need >> 20} MiB of memory "
            f"({size >> 20} MiB + {TORAM_RESERVE >> 20} MiB reserve) but only "
            f"{avail >> 20} MiB are available",
            "boot without copying to RAM (remove toram / rd.live.ram=1 / liveinit.toram), "
            "or give the machine more memory")
    m.makedirs(RAM)
    m.sys.mount("tmpfs", m.path(RAM), "tmpfs", MS_NOSUID | MS_NODEV,
                f"size={size + COPY_CHUNK},mode=0755")
    dest = RAM + "/" + os.path.basename(image)
    log.info(f"toram: copying {image} ({size / (1 << 20):.1f} MiB) to RAM")
    done = 0
    step = 10
    with open(real, "rb") as src, open(m.path(dest), "wb") as dst:
        while True:
            chunk = src.read(COPY_CHUNK)
            if not chunk:
                break
            dst.write(chunk)
            done += len(chunk)
            if size and done * 100 >= step * size:
                pct = done * 100 // size
                log.info(f"toram: {pct}%")
                step = pct // 10 * 10 + 10
    if medium:
        try:
            m.sys.umount2(m.path(medium), 0)
            log.info(f"toram: {medium} unmounted, the medium can be removed")
        except OSError as e:
            log.warn(f"toram: cannot unmount {medium} ({e}); the medium stays in use")
        # findiso: the filesystem holding the ISO file is mounted too; the ISO's
        # loop device lets go of it once its last user (us, until exec) is gone.
        if _mounted(m, ISO_MOUNT):
            try:
                m.sys.umount2(m.path(ISO_MOUNT), MNT_DETACH)
                log.info(f"toram: {ISO_MOUNT} detached, the device holding the ISO can be removed")
            except OSError as e:
                log.warn(f"toram: cannot unmount {ISO_MOUNT} ({e})")
    return dest


def _mounted(m: Machine, path: str) -> bool:
    target = m.path(path)
    for line in (m.read("/proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) > 1 and f[1] in (path, target):
            return True
    return False


def _mount_source(m: Machine, path: str) -> tuple[str, str]:
    """(source, fstype) of the (last) mount at `path`; ("", "") when nothing is mounted there."""
    target = m.path(path)
    out = ("", "")
    for line in (m.read("/proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) > 2 and f[1] in (path, target):
            out = (f[0], f[2])
    return out


def _medium_file(m: Machine, image: str, filepath: str, log: Log) -> str:
    """A writable loop device for the persistence image `filepath` on the read-only
    medium: over the image's bytes on the medium's own device when they are one run of
    a FAT's clusters (the FAT stays read-only, never dirty: safe to unplug); else over
    the file, the medium remounted read-write (a FAT then needs a clean unmount)."""
    source, fstype = _mount_source(m, MEDIUM)
    why = f"the medium is {fstype or 'not mounted'}, not a FAT"
    if fstype == "vfat" and source.startswith("/dev/"):
        from liveinit import fatfile
        where = fatfile.extent(m.path(source), filepath)
        if not isinstance(where, str):
            offset, size = where
            loop = m.sys.loop_attach(m.path(source), readonly=False, autoclear=True, dev=m.path("/dev"),
                                     offset=offset, sizelimit=size)
            log.info(f"persistence: {filepath} is bytes {offset}-{offset + size - 1} of {source}: "
                     "written there, the FAT stays read-only")
            return loop
        why = where
    log.warn(f"persistence: {filepath}: {why}; the medium is remounted read-write")
    m.sys.mount(source or "none", m.path(MEDIUM), None, MS_REMOUNT, None)
    return m.sys.loop_attach(m.path(image), readonly=False, autoclear=True, dev=m.path("/dev"))


def _writable(m: Machine, cfg: BootConfig, discovery: Discovery, log: Log) -> tuple[str, str]:
    """Mount the writable layer at RW; returns (base dir holding upper/work, description)."""
    spec = cfg.persistence
    if spec:
        try:
            return _persistence(m, cfg, spec, discovery, log)
        except (OSError, BootFailure) as e:
            msg = e.message if isinstance(e, BootFailure) else str(e)
            log.warn(f"persistence {spec}: {msg}; changes will be lost at power-off (tmpfs)")
    m.makedirs(RW)
    m.sys.mount("tmpfs", m.path(RW), "tmpfs", MS_NOSUID | MS_NODEV,
                f"size={cfg.overlay_size},mode=0755")
    return RW, "tmpfs"


def _persistence(m: Machine, cfg: BootConfig, spec: str, discovery: Discovery, log: Log) -> tuple[str, str]:
    loader = discovery.loader
    dev, fstype = "", ""
    devspec, _, filepath = spec.partition(":")
    if devspec.startswith("/") and not devspec.startswith("/dev/") and not filepath:
        devspec, filepath = "", devspec   # a bare file path on the medium
    if devspec:
        from liveinit.rootfind import find_device
        found = find_device(m, devspec, discovery, log)
        if found is None:
            raise BootFailure(f"no device matches {devspec}")
        dev = found
        info = _probe(m.path(dev))
        if not info.get("TYPE"):
            from liveinit.layerprobe import probe
            info = probe(m.path(dev))
        dev, info, spec = _unlock(m, cfg, dev, info, spec, discovery, log)
        fstype = info.get("TYPE", "")
        if not fstype:
            raise BootFailure(f"{dev} holds no filesystem liveinit recognises")
    if not filepath:
        _mount_fs(m, loader, m.path(dev), RW, fstype, 0, None, f"persistence on {dev}")
        log.info(f"persistence: {dev} ({fstype}) holds the writable layer")
        return RW + "/" + PERSIST_DIR, f"persistence {spec}"
    if devspec:
        _mount_fs(m, loader, m.path(dev), PERSIST_HOST, fstype, 0, None, f"persistence on {dev}")
        host = PERSIST_HOST
    else:
        host = MEDIUM
    image = host + "/" + filepath.lstrip("/")
    if not m.exists(image):
        raise BootFailure(f"no file {filepath} on {devspec or 'the medium'}")
    ftype = _probe(m.path(image)).get("TYPE", "")
    if not ftype:
        raise BootFailure(f"{filepath} holds no filesystem (make one with mkfs.ext4)")
    _need(loader, "loop", f"persistence image {filepath}")
    if devspec:
        loop = m.sys.loop_attach(m.path(image), readonly=False, autoclear=True, dev=m.path("/dev"))
    else:
        loop = _medium_file(m, image, filepath, log)
    _mount_fs(m, loader, loop, RW, ftype, 0, None, f"persistence image {filepath}")
    log.info(f"persistence: {filepath} ({ftype}) holds the writable layer")
    return RW + "/" + PERSIST_DIR, f"persistence {spec}"


def _unlock(m: Machine, cfg: BootConfig, dev: str, info: dict[str, str], spec: str, discovery: Discovery,
            log: Log) -> tuple[str, dict[str, str], str]:
    """A LUKS persistence device opened (the passphrase asked on the console):
    (its /dev/mapper node, what that holds, the description); others as they are.
    live-boot's persistence-encryption= says which kinds are accepted."""
    kinds = cfg.persistence_encryption
    luks = info.get("TYPE") == "crypto_LUKS"
    if kinds and ("luks" if luks else "none") not in kinds:
        raise BootFailure(f"{dev} is {'LUKS-encrypted' if luks else 'not encrypted'} but "
                          f"persistence-encryption={','.join(kinds)}")
    if not luks:
        return dev, info, spec
    from liveinit.contract import MAPPER_PREFIX
    from liveinit.keymap import Keymaps
    from liveinit.layers import Layers
    from liveinit.passphrase import Prompt
    prompt = Prompt(m, log, Keymaps(m.root, cfg.keymap))
    layers = Layers(m, cfg, discovery.loader, log, prompt, for_root=False)
    mapper = layers.open_luks(dev, info, MAPPER_PREFIX + "persistence")
    if mapper is None:
        raise BootFailure(layers.refused or f"cannot open the LUKS volume {dev}")
    ms = layers.opened[-1]["ms"] if layers.opened else 0
    inside = _probe(m.path(mapper))
    from liveinit import freshfs
    if not inside.get("TYPE") and freshfs.is_fresh(info):    # `liveinit usb` left the ext4 to us
        why = freshfs.format_fresh(m, dev, info, mapper, log)
        if why:
            raise BootFailure(f"{dev}: the new encrypted persistence volume is not formatted: {why}")
        inside = _probe(m.path(mapper))
    return mapper, inside, f"{spec} (LUKS {dev} opened in {ms} ms)"


def _copy_tree(src: str, dst: str) -> None:
    """Copy a directory tree keeping symlinks, modes, owners, times and special files."""
    st = os.lstat(src)
    os.makedirs(dst, exist_ok=True)
    for entry in os.scandir(src):
        s, d = entry.path, os.path.join(dst, entry.name)
        est = entry.stat(follow_symlinks=False)
        if os.path.lexists(d):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(s), d)
        elif entry.is_dir(follow_symlinks=False):
            _copy_tree(s, d)
            continue
        elif entry.is_file(follow_symlinks=False):
            _copy_file(s, d, est)
            continue
        else:
            try:
                os.mknod(d, est.st_mode, est.st_rdev)
            except OSError:
                continue   # sockets, or no privilege: nothing to keep
        _attrs(d, est)
    _attrs(dst, st)


def _copy_file(src: str, dst: str, st: os.stat_result) -> None:
    """Copy a regular file's data and attributes."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while True:
            b = fi.read(COPY_CHUNK)
            if not b:
                break
            fo.write(b)
    _attrs(dst, st)


def _attrs(path: str, st: os.stat_result) -> None:
    try:
        os.lchown(path, st.st_uid, st.st_gid)
    except OSError:
        pass
    if not os.path.islink(path):
        os.chmod(path, st.st_mode & 0o7777)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _union(m: Machine, method: str, lower: str, base: str, loader: Loader | None) -> None:
    """Mount one union method at SYSROOT; raises OSError when the kernel cannot."""
    upper, work = base + "/upper", base + "/work"
    root = m.path(SYSROOT)
    if method == "overlay":
        m.makedirs(upper)
        m.makedirs(work)
        _need(loader, "overlay", "overlay for the writable layer")
        m.sys.mount("overlay", root, "overlay", 0,
                    f"lowerdir={m.path(lower)},upperdir={m.path(upper)},workdir={m.path(work)}")
    elif method == "aufs":
        m.makedirs(upper)
        _need(loader, "fs-aufs", "aufs for the writable layer")
        # aufs(5): "br:BRANCH[:BRANCH ...]", a branch "dir[=permission]", the first one on top.
        m.sys.mount("none", root, "aufs", 0, f"br:{m.path(upper)}=rw:{m.path(lower)}=ro")
    elif method == "unionfs":
        m.makedirs(upper)
        _need(loader, "fs-unionfs", "unionfs for the writable layer")
        m.sys.mount("unionfs", root, "unionfs", 0,
                    f"dirs={m.path(upper)}=rw:{m.path(lower)}=ro")
    elif method == "unionfs-fuse":
        m.makedirs(upper)
        _unionfs_fuse(m, lower, upper, loader)
    elif method == "bind":
        _bind_wraith(m, lower, base)
    elif method == "none":
        m.sys.mount(m.path(lower), root, None, MS_BIND | MS_REC)
        m.sys.mount("none", root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    else:
        raise OSError(errno.EINVAL, f"unknown union method {method}")


UNIONFS_FUSE = ("/usr/bin/unionfs-fuse", "/usr/bin/unionfs", "/bin/unionfs-fuse", "/sbin/unionfs-fuse")


def _unionfs_fuse(m: Machine, lower: str, upper: str, loader: Loader | None) -> None:
    """union=unionfs-fuse: the FUSE daemon from the image (copy-on-write over the
    image); it keeps running under the real init. OSError when it cannot."""
    binary = next((b for b in UNIONFS_FUSE if os.access(m.path(b), os.X_OK)), None)
    if binary is None:
        raise OSError(errno.ENOENT, "the image has no unionfs-fuse binary (" + ", ".join(UNIONFS_FUSE)
                      + ")")
    _need(loader, "fuse", "unionfs-fuse")
    if not m.exists("/dev/fuse"):
        m.sys.mknod(m.path("/dev/fuse"), "c", 10, 229, 0o666)
    argv = [m.path(binary), "-o", "cow,allow_other,suid,dev,nonempty",
            f"{m.path(upper)}=RW:{m.path(lower)}=RO", m.path(SYSROOT)]
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:   # reaped by PID 1's SIGCHLD handler: judge by the mount
            status = 0
            break
        except InterruptedError:
            continue
    if status != 0 or not _mounted(m, SYSROOT):
        raise OSError(errno.EIO, f"{binary} failed (exit status {status >> 8})")


def bind_paths(text: str | None) -> tuple[str, ...]:
    """The paths the bind method makes writable (relative to the root): the image's
    WRITABLE_LIST (`text`: one absolute path a line, '#' comments), a path below one
    already listed dropped; BIND_DIRS when the image has no list."""
    if text is None:
        return BIND_DIRS
    out: list[str] = []
    for line in sorted(x.strip().rstrip("/") for x in text.splitlines()):
        if line.startswith("/") and "/../" not in line + "/" \
                and not any(line.startswith("/" + p + "/") for p in out):
            out.append(line[1:])
    return tuple(out)


def _bind_wraith(m: Machine, lower: str, base: str) -> None:
    """Read-only bind of the image with writable copies of `bind_paths` (directories and
    files) bound over it."""
    root = m.path(SYSROOT)
    m.sys.mount(m.path(lower), root, None, MS_BIND | MS_REC)
    m.sys.mount("none", root, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    for d in bind_paths(m.read(lower + WRITABLE_LIST)):
        src = m.path(lower + "/" + d)
        if os.path.islink(src) or not (os.path.isdir(src) or os.path.isfile(src)):
            continue   # a bind mount follows symlinks; devices and sockets need no copy
        copy = base + "/bind/" + d
        if not m.exists(copy):   # persistent copies survive: do not overwrite them
            if os.path.isdir(src):
                _copy_tree(src, m.path(copy))
            else:
                m.makedirs(os.path.dirname(copy))
                _copy_file(src, m.path(copy), os.lstat(src))
        m.sys.mount(m.path(copy), m.path(SYSROOT + "/" + d), None, MS_BIND)


def _stack_union(m: Machine, cfg: BootConfig, lower: str, discovery: Discovery,
                 log: Log) -> tuple[str, str, list[str]]:
    """Writable layer + union at SYSROOT; returns (method, writable, failures).
    A union= on the command line is the only method tried."""
    loader = discovery.loader
    if cfg.union == "none":
        _union(m, "none", lower, "", loader)
        return "none", "none", []
    base, writable = _writable(m, cfg, discovery, log)
    chain = (cfg.union,) if cfg.union_given or cfg.union != "overlay" else UNION_CHAIN
    tried: list[str] = []
    for method in chain:
        try:
            _union(m, method, lower, base, loader)
            if tried:
                log.warn(f"union: using {method} ({'; '.join(tried)})")
            return method, writable, tried
        except OSError as e:
            if e.errno == errno.ENOSPC and writable == "tmpfs":
                raise BootFailure(
                    f"the writable layer's tmpfs (liveinit.overlay_size={cfg.overlay_size}) is too small "
                    f"for the {method} method's copies of /{', /'.join(BIND_DIRS)}: {e}"
                    + (f" (tried before: {'; '.join(tried)})" if tried else ""),
                    "raise the tmpfs size with liveinit.overlay_size= (e.g. 75%, 2g) or "
                    "rd.live.overlay.size=MiB, or pack the overlay module, which copies nothing") from e
            why = "not supported by this kernel" if e.errno == errno.ENODEV else str(e)
            tried.append(f"{method}: {why}")
            log.debug(f"union {method} failed: {e}")
    if cfg.union == "unionfs-fuse":
        hint = ("union=unionfs-fuse runs the image's unionfs-fuse binary with the fuse module: pack "
                "them (--binaries /usr/bin/unionfs-fuse), or remove union= to use overlayfs")
    elif len(chain) == 1:
        hint = (f"union={cfg.union} allows only that method: remove it to let liveinit use "
                "overlayfs (or the next method that works), or boot read-only with union=none")
    else:
        hint = ("the kernel lacks overlayfs (and aufs, unionfs) or its module is not in the "
                "initramfs; pack the `overlay` module, or boot read-only with union=none")
    raise BootFailure("cannot stack a writable layer over the image: " + "; ".join(tried), hint)


class _Undo:
    """The syscalls, remembering what this attempt mounted and attached so a
    failed attempt leaves nothing behind and the stage can be retried."""

    def __init__(self, sys: Any) -> None:
        self.sys = sys
        self.mounted: list[str] = []
        self.loops: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sys, name)

    def mount(self, source: str, target: str, fstype: str | None = None,
              flags: int = 0, data: str | None = None) -> None:
        self.sys.mount(source, target, fstype, flags, data)
        if not flags & (MS_REMOUNT | MS_MOVE):
            self.mounted.append(target)

    def loop_attach(self, path: str, readonly: bool = True, autoclear: bool = True,
                    dev: str = "/dev", offset: int = 0, sizelimit: int = 0) -> str:
        loop = self.sys.loop_attach(path, readonly, autoclear, dev, offset, sizelimit)
        self.loops.append(loop)
        return loop

    def undo(self, log: Log) -> None:
        for target in reversed(self.mounted):
            try:
                self.sys.umount2(target, MNT_DETACH)
            except OSError as e:
                log.warn(f"cannot unmount {target} after the failure: {e}")
        for loop in self.loops:
            self.sys.loop_release(loop)


def stack(m: Machine, cfg: BootConfig, found: Found, discovery: Discovery, log: Log) -> Stacked:
    """Mount the new root at /sysroot for `found` (live medium or device root);
    the discovery loads modules on demand and finds a persistence device.

    On failure everything this call mounted is unmounted again."""
    undo = _Undo(m.sys)
    try:
        return _stack(m.with_sys(undo), cfg, found, discovery, log)
    except BaseException as e:
        undo.undo(log)
        if not cfg.toram and not isinstance(e, MediumLost) and _medium_error(e):
            from liveinit import medium
            lost = medium.lost(m, found, "the root was being stacked", e)
            if lost is not None:
                raise lost from e
        raise


# What reading a medium that was ejected, unplugged or is failing gives.
MEDIUM_ERRNOS = (errno.EIO, errno.ENOMEDIUM, errno.ENXIO, errno.ENOENT, errno.ESTALE)


def _medium_error(e: BaseException) -> bool:
    """An error (or a failure caused by one) that a vanished medium would give."""
    cause = e.__cause__ if isinstance(e, BootFailure) else e
    return isinstance(cause, OSError) and cause.errno in MEDIUM_ERRNOS


def _stack(m: Machine, cfg: BootConfig, found: Found, discovery: Discovery, log: Log) -> Stacked:
    loader = discovery.loader
    m.makedirs(SYSROOT)
    if found.image is None:
        return _device_root(m, cfg, found, discovery, log)
    image = found.image
    if not m.exists(image):
        raise BootFailure(
            f"the live image {image} is not on {found.device}",
            f"found the medium {found.device} ({found.how}); set liveinit.image= "
            "(or live-media-path=, rd.live.dir=) to the image's path on the medium")
    info = _probe(m.path(image))
    fstype = info.get("TYPE")
    if not fstype:
        raise BootFailure(
            f"{image} on {found.device} is not a squashfs or erofs image (unrecognised content)",
            "the image is corrupt or truncated: check the medium (its checksum) or "
            "point liveinit.image= at the right file")
    if fstype not in IMAGE_TYPES:
        log.warn(f"{image} holds {fstype}, not squashfs/erofs; mounting it read-only anyway")
    toram = found.medium is None   # downloaded into RAM (netroot): no medium, nothing to copy
    if cfg.toram and not toram:
        image = copy_to_ram(m, image, found.medium, log)
        toram = True
    _need(loader, "loop", f"loop device for {image}")
    try:
        loop = m.sys.loop_attach(m.path(image), readonly=True, autoclear=True, dev=m.path("/dev"))
    except OSError as e:
        raise BootFailure(
            f"cannot attach {image} to a loop device: {e}",
            _not_loaded(loader, "loop")
            or "the loop driver is missing (pack the `loop` module) or /dev/loop-control is absent") from e
    try:
        _mount_fs(m, loader, loop, RO, fstype, MS_RDONLY, None, f"live image {image}")
    except OSError as e:
        raise BootFailure(
            f"cannot mount {image} ({fstype}) from {loop} at {RO}: {e}",
            _not_loaded(loader, fstype)
            or f"the {fstype} driver is missing from the initramfs (pack fs-{fstype}) "
               "or the image is corrupt (check the medium's checksum)") from e
    method, writable, tried = _stack_union(m, cfg, RO, discovery, log)
    if method == "none":
        log.info(f"root: {image} ({fstype}) read-only (union=none)")
    else:
        log.info(f"root: {image} ({fstype}) + {writable} via {method}")
    return Stacked(SYSROOT, method, fstype, loop, writable, toram, tuple(tried))


def _device_root(m: Machine, cfg: BootConfig, found: Found, discovery: Discovery, log: Log) -> Stacked:
    loader = discovery.loader
    fstype = cfg.rootfstype or found.fstype
    if not fstype:
        raise BootFailure(
            f"the root device {found.device} holds no filesystem liveinit recognises",
            "name its type with rootfstype= (e.g. rootfstype=ext4) or check root=")
    flags, data = mount_options(cfg.rootflags, cfg.readonly)
    overlay = cfg.union_given and cfg.union != "none"
    target = RO if overlay else SYSROOT
    if overlay:
        flags |= MS_RDONLY
    try:
        _mount_fs(m, loader, m.path(found.device), target, fstype, flags, data,
                  f"root {found.device}")
    except OSError as e:
        raise BootFailure(
            f"cannot mount the root {found.device} ({fstype}) at {target}: {e}",
            f"found it by {found.how}; check rootfstype= and rootflags= "
            f"(now {cfg.rootfstype or 'auto'} / {cfg.rootflags or 'none'}), "
            "or whether its filesystem module is packed") from e
    if not overlay:
        log.info(f"root: {found.device} ({fstype}) {'ro' if flags & MS_RDONLY else 'rw'}")
        return Stacked(SYSROOT, "device", fstype, None, "device", False, ())
    method, writable, tried = _stack_union(m, cfg, RO, discovery, log)
    log.info(f"root: {found.device} ({fstype}) + {writable} via {method}")
    return Stacked(SYSROOT, method, fstype, None, writable, False, tuple(tried))
