"""Stage `findroot`: wait for the root device, or search for the live medium.

Waiting is event-driven: every kernel uevent wakes us (a block `add` means a
rescan; an `add` with a MODALIAS loads its driver, so USB storage found late
still works), and the only sleep is the discovery's `events` up to the
deadline (`rootdelay=`). Without root= (or with `live:auto`) every block
device is a candidate, optical and removable first; the medium whose
live/liveinit.id equals the identity baked into /init wins, so several live
sticks in one machine do not confuse the boot.

Coldplug runs in the background meanwhile (`discovery.Discovery`): the
search starts at once and takes the root the moment its device appears, and
`find_root` joins coldplug before it returns. A device root (root=DEVICE, not
live) tells the discovery so at once (`device_root_found`: root first's end).
A medium with another identity is taken once nothing more can appear (the
discovery has `settled`); with USB, MMC storage or NVMe about (slow to show
their disks) it waits SETTLE seconds instead."""
from __future__ import annotations

import os
import time

from liveinit import blockdev
from liveinit.contract import ID_FILE, ISO_MOUNT, MEDIUM
from liveinit.costs import PROBING
from liveinit.discovery import COLDPLUG_JOIN, QUIET
from liveinit.plain import Plain
from liveinit.syscalls import MS_RDONLY

# Modules the kernel requests while mounting (request_module(): no modprobe helper
# answers it in the initramfs): vfat's default codepage and iocharsets.
MOUNT_NEEDS = {"vfat": ("nls_cp437", "nls_ascii", "nls_iso8859_1")}
NTFS_3G = "ntfs-3g"         # NTFS through FUSE when the kernel has no ntfs3
FUSE_DEV = (10, 229)        # /dev/fuse's major and minor

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable
    from typing import TypeVar

    from liveinit.cmdline import BootConfig, RootSpec
    from liveinit.discovery import Discovery
    from liveinit.emergency import BootFailure
    from liveinit.layers import Layers
    from liveinit.log import Log
    from liveinit.machine import Machine

    T = TypeVar("T")

POLL_MAX = 1.0      # rescan at least this often even without events
RETRY_FIRST = 0.5   # a device whose probe or mount failed is tried again after this long...
RETRY_MAX = 4.0     # ...doubling up to this, until the root delay ends
EIO, EINVAL = 5, 22
SETTLE = 2.0        # wait this long for a better (identity) match before taking a stranger...
PERSIST_WAIT = 5.0      # how long a persistence device named on the command line may take to appear
# Content that is never a mountable medium.
NOT_FS = frozenset(("swap", "LVM2_member", "crypto_LUKS", "linux_raid_member", "zfs_member",
                    "bcache", "ddf_raid_member", "isw_raid_member", "BitLocker"))
BY_LINKS = {"/dev/disk/by-uuid/": "uuid", "/dev/disk/by-label/": "label",
            "/dev/disk/by-partuuid/": "partuuid", "/dev/disk/by-partlabel/": "partlabel"}
KEYS = {"uuid": "UUID", "label": "LABEL", "partuuid": "PARTUUID", "partlabel": "PARTLABEL"}


class Found(Plain):
    """The root device or live medium: device (/dev node), fstype, identity (fsprobe
    keys), how (found by what), medium (mount point, live), image (file on it, live) and
    layers (what liveinit/layers.py opened on the way: the boot record's "layers")."""

    __slots__ = ("device", "fstype", "identity", "how", "medium", "image", "layers")
    device: str
    fstype: str
    identity: dict
    how: str
    medium: str | None
    image: str | None
    layers: tuple[dict, ...]
    _defaults = {"layers": ()}


class _Search:
    """The state shared by the waits: devices seen, their identities, what was tried."""

    def __init__(self, m: Machine, cfg: BootConfig | None, identity: str, discovery: Discovery,
                 log: Log) -> None:
        self.m = m
        self.cfg = cfg
        self.identity = identity
        self.discovery = discovery
        self.loader = discovery.loader
        self.log = log
        self.ids: dict[tuple[str, int, int, int], dict[str, str]] = {}   # (name, major, minor, size) -> keys
        self.devices: dict[str, blockdev.BlockDevice] = {}
        self.tried: set[tuple[str, int, int, int]] = set()   # read fine and not ours: done with
        self.errors: dict[str, str] = {}     # device name -> why its last attempt failed
        self.retry: dict[str, tuple[float, float]] = {}   # device name -> (next try, back-off)
        self.loops: dict[str, str] = {}      # device name -> the loop device it is mounted through
        self.poll_max = POLL_MAX
        self.layers: Layers | None = None   # LUKS/LVM/md under the root (find_root sets it)

    @property
    def config(self) -> BootConfig:
        """The command line (the root search has one; `find_device` does not need it)."""
        assert self.cfg is not None
        return self.cfg

    # -- devices ------------------------------------------------------------

    def scan(self) -> list[blockdev.BlockDevice]:
        devs = blockdev.scan(self.m)
        for d in devs:
            self.devices[d.name] = d
        if self.layers is not None and self.layers.visit(devs, self.identify):
            return self.scan()   # a layer was opened: its device is there now
        return devs

    def identify(self, dev: blockdev.BlockDevice) -> dict[str, str]:
        key = (dev.name, dev.major, dev.minor, dev.size)
        info = self.ids.get(key)
        if info is None:
            begun = self.m.costs.begin(PROBING)
            try:
                info = blockdev.identify(self.m, dev)
                if "TYPE" not in info:   # LUKS, LVM, md: fsprobe does not know them
                    from liveinit.layerprobe import probe
                    info.update(probe(self.m.path(blockdev.node(self.m, dev))))
            except Exception as e:  # a broken superblock must not kill PID 1
                self.log.debug(f"cannot probe /dev/{dev.name}: {e}")
                why = _strerror(e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}"
                self.errors[dev.name] = f"cannot read its superblock: {why}"
                info = {}
            self.m.costs.end(PROBING, begun)
            if info:
                # Unrecognised content is probed again on the next rescan: a device
                # that just appeared may not be readable yet.
                self.ids[key] = info
        return info

    # -- waiting ------------------------------------------------------------

    def wait(self, attempt: Callable[[], T | None], deadline: float) -> T | None:
        """Call attempt() now and after every batch of uevents until it returns non-None.

        At the deadline a coldplug still loading drivers is joined and attempt() runs
        once more: a slow machine (TCG, a busy host) must not fail on a device whose
        driver was still loading when a short rootdelay= ran out."""
        while True:
            r = attempt()
            if r is not None:
                return r
            layers = self.layers
            if layers is not None and layers.refused:
                return None   # a volume stayed locked: nothing more will appear
            # Time spent at a passphrase prompt is the user's, not the devices'.
            left = deadline + (layers.asked if layers is not None else 0.0) - time.monotonic()
            if left <= 0:
                if not self.discovery.running:
                    return None
                self.log.info("the root delay is over but drivers are still loading: waiting for them")
                self.discovery.finish(COLDPLUG_JOIN)
                self.discovery.events(QUIET)   # the block devices their loads announce
                self.retry.clear()
                return attempt()
            self.discovery.events(min(left, self.poll_max))

    # -- mounting -----------------------------------------------------------

    def mount(self, dev: blockdev.BlockDevice, fstype: str, target: str) -> bool:
        """Mount /dev/NAME read-only at target, loading the fs module first. A
        failure is remembered (`failed`) for the retry and the failure message.

        A device whose direct mount fails with EIO (or a CD with EINVAL) although
        its superblock was read (a CD behind an HBA whose capacity sr cannot read:
        the block size is wrong and isofs' reads fail) is mounted through a
        read-only loop device over it, which reads in plain 512-byte sectors."""
        if fstype == "ntfs":
            return self.mount_ntfs(dev, target)
        # Memoised and a no-op when present; works with the NullLoader too.
        self.loader.load_alias("fs-" + fstype, f"fs-{fstype} for /dev/{dev.name}")
        for mod in MOUNT_NEEDS.get(fstype, ()):
            self.loader.load(mod, f"{mod} for {fstype} on /dev/{dev.name}")
        self.m.makedirs(target)
        node = self.m.path(blockdev.node(self.m, dev))
        try:
            self.m.sys.mount(node, self.m.path(target), fstype, MS_RDONLY, None)
        except OSError as e:
            # EINVAL from a CD whose superblock we just read: isofs could not (megasas-gen2).
            if e.errno != EIO and not (e.errno == EINVAL and dev.optical):
                return self.failed(dev, f"mount as {fstype} failed: {_strerror(e)}")
            direct = _strerror(e)
        else:
            self.errors.pop(dev.name, None)
            return True
        self.loader.load("loop", f"loop over /dev/{dev.name} (direct mount: {direct})")
        try:
            loop = self.m.sys.loop_attach(node, True, True, self.m.path("/dev"))
        except OSError as e:
            return self.failed(dev, f"mount as {fstype} failed: {direct}; a loop device over it "
                               f"could not be set up either: {_strerror(e)}")
        try:
            self.m.sys.mount(loop, self.m.path(target), fstype, MS_RDONLY, None)
        except OSError as e:
            self.m.sys.loop_release(loop)
            return self.failed(dev, f"mount as {fstype} failed: {direct}; through {self._rel(loop)} "
                               f"too: {_strerror(e)}")
        self.loops[dev.name] = self._rel(loop)
        self.errors.pop(dev.name, None)
        self.log.warn(f"/dev/{dev.name}: mounting it failed ({direct}) though its superblock reads "
                      f"fine; mounted through the read-only loop device {self._rel(loop)} instead")
        return True

    def mount_ntfs(self, dev: blockdev.BlockDevice, target: str) -> bool:
        """NTFS (a Windows disk holding findiso's ISO) read-only: the kernel's ntfs3
        (Linux 5.15+; blkid's type is "ntfs"), else the image's ntfs-3g through FUSE
        (`liveinit pack --binaries /usr/bin/ntfs-3g --modules fuse`): Debian 12's
        kernel has no NTFS driver. The daemon keeps running under the real init."""
        self.loader.load_alias("fs-ntfs3", f"fs-ntfs3 for /dev/{dev.name}")
        self.m.makedirs(target)
        node = self.m.path(blockdev.node(self.m, dev))
        try:
            self.m.sys.mount(node, self.m.path(target), "ntfs3", MS_RDONLY, None)
            self.errors.pop(dev.name, None)
            return True
        except OSError as e:
            kernel = _strerror(e)
        from liveinit import command
        tool = command.find(self.m.root, NTFS_3G)
        if tool is None:
            return self.failed(dev, f"mount as ntfs3 failed: {kernel}; and the image has no {NTFS_3G} "
                               f"(pack it: --binaries /usr/bin/{NTFS_3G} --modules fuse)")
        self.loader.load("fuse", f"fuse for {NTFS_3G} on /dev/{dev.name}")
        if not self.m.exists("/dev/fuse"):
            self.m.sys.mknod(self.m.path("/dev/fuse"), "c", FUSE_DEV[0], FUSE_DEV[1], 0o666)
        r = command.run([self.m.path(tool), "-o", "ro", node, self.m.path(target)])
        mounts = self.m.read("/proc/mounts") or ""
        if not any(line.split()[1:2] == [self.m.path(target)] for line in mounts.splitlines()):
            return self.failed(dev, f"mount as ntfs3 failed: {kernel}; {NTFS_3G} failed too "
                               f"(exit status {r.rc}): {r.out or 'no message'}")
        self.errors.pop(dev.name, None)
        self.log.info(f"/dev/{dev.name}: NTFS mounted by {NTFS_3G} (the kernel: {kernel})")
        return True

    def _rel(self, path: str) -> str:
        root = self.m.root
        return path[len(root):] if root != "/" and path.startswith(root + "/") else path

    def failed(self, dev: blockdev.BlockDevice, why: str) -> bool:
        """Remember why `dev` failed and when to try it again (doubling back-off); False."""
        self.errors[dev.name] = why
        _, backoff = self.retry.get(dev.name, (0.0, RETRY_FIRST / 2))
        backoff = min(backoff * 2, RETRY_MAX)
        self.retry[dev.name] = (time.monotonic() + backoff, backoff)
        self.log.debug(f"/dev/{dev.name}: {why}; trying it again in {backoff:g} s")
        return False

    def due(self, dev: blockdev.BlockDevice) -> bool:
        """Whether `dev` may be tried now: never failed, or its back-off is over."""
        at = self.retry.get(dev.name)
        return at is None or time.monotonic() >= at[0]

    def via(self, dev: blockdev.BlockDevice) -> str:
        """" via /dev/loopN" when `dev` is mounted through a loop device, else ""."""
        loop = self.loops.get(dev.name)
        return f" via {loop}" if loop else ""

    def umount(self, target: str) -> None:
        try:
            self.m.sys.umount2(self.m.path(target), 0)
        except OSError as e:
            self.log.warn(f"cannot unmount {target}: {e}")

    # -- the failure message ------------------------------------------------

    def failure(self, what: str, hint: str) -> BootFailure:
        from liveinit.emergency import BootFailure
        self.discovery.finish(COLDPLUG_JOIN)   # every driver it could load is in the list below
        lines = [what]
        self.scan()
        if self.devices:
            lines.append("block devices seen:")
            for name in sorted(self.devices):
                d = self.devices[name]
                info = self.identify(d)
                desc = " ".join(f"{k}={info[k]}" for k in ("TYPE", "LABEL", "UUID", "PARTUUID")
                                if info.get(k)) or "no filesystem recognised"
                lines.append(f"  /dev/{name} {d.size // 1048576} MiB: {desc}")
                if name in self.errors:
                    lines.append(f"    tried: {self.errors[name]}")
        else:
            lines.append("no block devices at all (is the storage driver in the image?)")
        for name in sorted(set(self.errors) - set(self.devices)):
            lines.append(f"  /dev/{name} (gone): tried: {self.errors[name]}")
        if self.layers is not None:
            lines += self.layers.report()
            if self.layers.tried or self.cfg and (self.cfg.luks_uuids or self.cfg.md_uuids):
                from liveinit.layers import HINT
                hint = hint + "; " + HINT
        loaded = ", ".join(sorted(self.loader.loaded)) or "none"
        lines.append(f"modules loaded: {loaded}")
        if self.loader.failed:
            failed = sorted(self.loader.failed.items())
            lines.append("modules failed: " + ", ".join(f"{k} ({v})" for k, v in failed))
        return BootFailure("\n".join(lines), hint)


def _match_spec(search: _Search, spec: RootSpec) -> blockdev.BlockDevice | None:
    """The first device matching a RootSpec (path, uuid, label, partuuid, partlabel, devno)."""
    kind, value = spec.kind, spec.value
    if kind == "path":
        for prefix, k in BY_LINKS.items():
            if value.startswith(prefix):
                kind, value = k, value[len(prefix):]
                break
    devs = search.scan()
    for d in devs:
        if kind == "path":
            if value in ("/dev/" + d.name, d.name):
                return d
            if d.name.startswith(("dm-", "md")) and value.startswith("/dev/"):
                from liveinit.layers import aliases
                if value in aliases(search.m, d.name):
                    return d
        elif kind == "devno":
            if value == f"{d.major}:{d.minor}" or _devno_hex(value) == (d.major, d.minor):
                return d
        elif kind in KEYS:
            got = search.identify(d).get(KEYS[kind])
            if got is None:
                continue
            if kind in ("uuid", "partuuid") and got.lower() == value.lower():
                return d
            if got == value:
                return d
    return None


def _strerror(e: OSError) -> str:
    """`Input/output error (EIO)`: the words and the errno's name, for the messages."""
    import errno
    name = errno.errorcode.get(e.errno or 0, "")
    text = e.strerror or str(e)
    return f"{text} ({name})" if name else text


def _devno_hex(value: str) -> tuple[int, int] | None:
    """root=0801 (hex major/minor, the old kernel form) -> (8, 1)."""
    try:
        n = int(value, 16)
    except ValueError:
        return None
    return (n >> 8, n & 0xFF)


def _spec_text(spec: RootSpec) -> str:
    if spec.kind == "path":
        return spec.value
    if spec.kind == "devno":
        return spec.value
    return f"{KEYS.get(spec.kind, spec.kind.upper())}={spec.value}"


def _image_on(search: _Search, mountpoint: str) -> str:
    """Where the live image is (or would be) on the filesystem at `mountpoint`."""
    return mountpoint + "/" + search.config.live_image.lstrip("/")


def _has_image(search: _Search, mountpoint: str) -> bool:
    return os.path.isfile(search.m.path(_image_on(search, mountpoint)))


def _require_image(search: _Search, what: str, hint: str) -> str:
    """The image path on the mounted medium; else unmount it and fail naming `what`."""
    if not _has_image(search, MEDIUM):
        search.umount(MEDIUM)
        raise search.failure(f"{what} holds no {search.config.live_image}", hint)
    return _image_on(search, MEDIUM)


def _identity(search: _Search, mountpoint: str) -> str | None:
    text = search.m.read(mountpoint + ID_FILE)
    return text.strip() if text is not None else None


def find_root(m: Machine, cfg: BootConfig, identity: str, discovery: Discovery, log: Log) -> Found:
    """Find the root device or the live medium whose live/liveinit.id is
    `identity` (preferred); raises emergency.BootFailure.

    The discovery's background coldplug is joined before this returns."""
    search = _Search(m, cfg, identity, discovery, log)
    search.layers = _layers(m, cfg, discovery, log)
    found = _find(search)
    discovery.finish(COLDPLUG_JOIN)
    if search.layers is not None and search.layers.opened:
        found = found.replace(layers=tuple(search.layers.opened))
    return found


def _layers(m: Machine, cfg: BootConfig, discovery: Discovery, log: Log) -> Layers | None:
    """The layer opener for this root search: a device root may sit on LUKS, LVM or md;
    a live search opens only what the command line names (rd.luks.uuid=, rd.md.uuid=...)."""
    named = cfg.luks_uuids or cfg.lvm_vgs or cfg.lvm_lvs or cfg.md_uuids
    if cfg.root.live and not named:
        return None
    from liveinit.keymap import Keymaps
    from liveinit.layers import Layers
    from liveinit.passphrase import Prompt
    prompt = Prompt(m, log, Keymaps(m.root, cfg.keymap))
    return Layers(m, cfg, discovery.loader, log, prompt, for_root=not cfg.root.live)


def _find(search: _Search) -> Found:
    m, cfg, loader, log = search.m, search.config, search.loader, search.log
    if cfg.root.kind == "url":   # root=live:http://..., fetch=: the image comes over the network
        from liveinit.netroot import find_net_root
        return find_net_root(m, cfg, search.discovery, log)
    deadline = time.monotonic() + cfg.rootdelay
    if cfg.findiso:
        return _findiso(search, deadline)
    spec = cfg.root
    if spec.kind == "invalid":   # never a search: it might boot some other medium
        raise search.failure(
            f"root={spec.value} names no device, so there is nothing to wait for",
            "write root=/dev/NAME, root=UUID=..., LABEL=, PARTUUID=, PARTLABEL=, MAJ:MIN or "
            "root=live:LABEL=... (the devices above show their labels and UUIDs), or remove root= "
            "to search for the live medium")
    if spec.kind == "auto":
        return _search_live(search, deadline)
    if spec.live:
        return _find_live_spec(search, spec, deadline)
    dev = search.wait(lambda: _match_spec(search, spec), deadline)
    text = _spec_text(spec)
    if dev is None:
        raise search.failure(
            f"no device with {text} appeared within {cfg.rootdelay:g} s",
            "check root= against the devices listed above; if the device is slow (USB) raise "
            "rootdelay=; if its driver is missing add it with rd.driver.pre=MODULE")
    info = search.identify(dev)
    fstype = cfg.rootfstype or info.get("TYPE", "")
    nodepath = blockdev.node(m, dev)
    search.discovery.device_root_found(cfg)   # before the fs module loads: root first ends
    if fstype:
        loader.load_alias("fs-" + fstype, f"fs-{fstype} for root {text}")
    log.info(f"root {text} is {nodepath} ({fstype or 'unknown type'})")
    return Found(nodepath, fstype, info, f"root={text}", None, None)


def _find_live_spec(search: _Search, spec: RootSpec, deadline: float) -> Found:
    """root=live:SPEC: the named device, mounted and holding the image, waited for
    like any root= (a failed mount is tried again until the delay ends)."""
    cfg, m = search.config, search.m
    text = _spec_text(spec)

    def attempt() -> Found | None:
        dev = _match_spec(search, spec)
        if dev is None or not search.due(dev):
            return None
        info = search.identify(dev)
        fstype = cfg.rootfstype or info.get("TYPE", "")
        if not fstype:
            search.failed(dev, search.errors.get(dev.name, "no filesystem recognised"))
            return None
        if not search.mount(dev, fstype, MEDIUM):
            return None
        if not _has_image(search, MEDIUM):
            search.umount(MEDIUM)
            search.failed(dev, f"mounted as {fstype} but holds no {cfg.live_image}")
            return None
        nodepath = blockdev.node(m, dev)
        search.log.info(f"live medium {text} is {nodepath}{search.via(dev)}")
        return Found(nodepath, fstype, info, f"root=live:{text}{search.via(dev)}", MEDIUM,
                     _image_on(search, MEDIUM))

    found = search.wait(attempt, deadline)
    if found is not None:
        return found
    dev = _match_spec(search, spec)
    if dev is None:
        raise search.failure(
            f"no device with {text} appeared within {cfg.rootdelay:g} s",
            "check root=live:... against the devices listed above; if the device is slow (USB) raise "
            "rootdelay=; if its driver is missing add it with rd.driver.pre=MODULE")
    raise search.failure(
        f"the live medium {text} (/dev/{dev.name}) could not be used within {cfg.rootdelay:g} s: "
        f"{search.errors.get(dev.name, 'unknown error')}",
        "check root=live:... names the device holding the live image (liveinit.image= its path), "
        "give rootfstype= if its type is not recognised, or raise rootdelay= for a slow medium")


def _candidates(search: _Search) -> list[blockdev.BlockDevice]:
    """Devices not done with (read fine, not ours) and not backing off after a
    failure, optical first, then removable, then the rest."""
    out = []
    for d in search.scan():
        key = (d.name, d.major, d.minor, d.size)
        if key not in search.tried and search.due(d):
            out.append(d)
    out.sort(key=lambda d: (0 if d.optical else 1 if d.removable else 2, d.name))
    return out


def _search_live(search: _Search, deadline: float) -> Found:
    cfg, log = search.config, search.log
    want = search.identity
    # (dev, info, fstype, identity) of media with the image but another identity
    fallback: list[tuple[blockdev.BlockDevice, dict[str, str], str, str | None]] = []
    fallback_since = [0.0]

    def attempt() -> Found | str | None:
        for d in _candidates(search):
            info = search.identify(d)
            fstype = info.get("TYPE")
            if not info:
                continue  # not readable yet, or empty: look again on the next rescan
            if not fstype or fstype in NOT_FS:
                search.tried.add((d.name, d.major, d.minor, d.size))
                continue
            if not search.mount(d, fstype, MEDIUM):
                continue   # tried again after its back-off
            search.tried.add((d.name, d.major, d.minor, d.size))
            if not _has_image(search, MEDIUM):
                search.umount(MEDIUM)
                continue
            ident = _identity(search, MEDIUM)
            if not want or ident == want:
                why = "identity match" if want else "first medium with the image"
                return _live_found(search, d, info, fstype, why)
            log.info(f"/dev/{d.name} has {cfg.live_image} but identity {ident!r}, not {want!r}")
            search.umount(MEDIUM)
            if not fallback:
                fallback_since[0] = time.monotonic()
                search.poll_max = QUIET / 2   # look at settled() often from now on
            fallback.append((d, info, fstype, ident))
        if fallback and (search.discovery.settled() or time.monotonic() - fallback_since[0] >= SETTLE):
            return "fallback"
        return None

    # With a stranger in hand, attempt() waits at most SETTLE more seconds for the real one.
    r = search.wait(attempt, deadline)
    if isinstance(r, Found):
        return r
    if fallback:
        d, info, fstype, ident = fallback[0]
        log.info(f"no medium carries identity {want!r}; using /dev/{d.name} (identity {ident!r})")
        if search.mount(d, fstype, MEDIUM) and _has_image(search, MEDIUM):
            return _live_found(search, d, info, fstype, f"identity {ident!r}, none matched")
    tried = len({k[0] for k in search.tried} | set(search.errors))
    failed = f", {len(search.errors)} failed" if search.errors else ""
    raise search.failure(
        f"no block device holds {cfg.live_image} (searched for {cfg.rootdelay:g} s, "
        f"{tried} devices tried{failed})",
        "insert the live medium or raise rootdelay=; name it with root=live:LABEL=...; "
        "set liveinit.image= if the image lives elsewhere; add a missing storage driver "
        "with rd.driver.pre=MODULE")


def _live_found(search: _Search, d: blockdev.BlockDevice, info: dict[str, str], fstype: str,
                why: str) -> Found:
    path = "/dev/" + d.name
    why += search.via(d)
    search.log.info(f"live medium: {search.config.live_image} on {d.name} ({why})")
    return Found(path, fstype, info, f"search: {search.config.live_image} on {d.name} ({why})",
                 MEDIUM, _image_on(search, MEDIUM))


def _findiso(search: _Search, deadline: float) -> Found:
    """Find the filesystem holding cfg.findiso, loop-mount the ISO as the medium."""
    cfg, m, log = search.config, search.m, search.log
    iso = cfg.findiso or ""
    iso_rel = iso.lstrip("/")
    spec = cfg.root

    def attempt() -> tuple[blockdev.BlockDevice, dict[str, str], str] | None:
        if spec.kind != "auto":
            d = _match_spec(search, spec)
            cands = [d] if (d is not None and (d.name, d.major, d.minor, d.size) not in search.tried
                            and search.due(d)) else []
        else:
            cands = _candidates(search)
        for d in cands:
            info = search.identify(d)
            if not info:
                continue
            fstype = info.get("TYPE")
            if not fstype or fstype in NOT_FS:
                search.tried.add((d.name, d.major, d.minor, d.size))
                continue
            if not search.mount(d, fstype, ISO_MOUNT):
                continue
            search.tried.add((d.name, d.major, d.minor, d.size))
            if os.path.isfile(m.path(ISO_MOUNT + "/" + iso_rel)):
                return d, info, fstype
            search.umount(ISO_MOUNT)
        return None

    r = search.wait(attempt, deadline)
    if r is None:
        raise search.failure(
            f"no filesystem holds the ISO {cfg.findiso} (searched for {cfg.rootdelay:g} s)",
            "check findiso= (the path of the ISO inside its filesystem); raise rootdelay= for slow devices")
    d, info, fstype = r
    search.loader.load("loop", f"findiso {cfg.findiso}")
    try:
        loopdev = m.sys.loop_attach(m.path(ISO_MOUNT + "/" + iso_rel), True, True, m.path("/dev"))
    except OSError as e:
        raise search.failure(f"cannot attach {cfg.findiso} on /dev/{d.name} to a loop device: {e}",
                             "the loop module may be missing from the image") from e
    loopdev = loopdev[len(m.root):] if m.root != "/" and loopdev.startswith(m.root + "/") else loopdev
    search.loader.load_alias("fs-iso9660", f"fs-iso9660 for {cfg.findiso}")
    m.makedirs(MEDIUM)
    for fs in ("iso9660", "udf"):
        try:
            m.sys.mount(m.path(loopdev), m.path(MEDIUM), fs, MS_RDONLY, None)
            break
        except OSError as e:
            err = e
    else:
        raise search.failure(f"cannot mount {cfg.findiso} ({loopdev}): {err}",
                             "is the file an ISO 9660 image? is isofs in the image?")
    image = _require_image(search, f"the ISO {cfg.findiso} on /dev/{d.name}",
                           "set liveinit.image= to the image's path inside the ISO")
    log.info(f"findiso: {cfg.findiso} on /dev/{d.name} ({fstype}) via {loopdev}")
    return Found(loopdev, "iso9660", info, f"findiso {cfg.findiso} on {d.name}", MEDIUM, image)


def find_device(m: Machine, text: str, discovery: Discovery, log: Log,
                timeout: float = PERSIST_WAIT) -> str | None:
    """The /dev node of the device a spec names (LABEL=, UUID=, PARTUUID=,
    PARTLABEL=, /dev/NAME, MAJ:MIN), waiting up to `timeout` s for it to
    appear (a persistence stick may come up after the medium). The same
    matcher as root=; None when no device matches in time."""
    from liveinit.cmdline import parse_root
    spec = parse_root(text)
    if spec is None or spec.kind == "auto":
        return None
    search = _Search(m, None, "", discovery, log)
    dev = search.wait(lambda: _match_spec(search, spec), time.monotonic() + timeout)
    return None if dev is None else blockdev.node(m, dev)
