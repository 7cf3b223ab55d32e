"""Stage `findroot`: wait for the root device, or search for the live medium.

Waiting is event-driven: every kernel uevent wakes us (a block `add` means a
rescan; an `add` with a MODALIAS loads its driver, so USB storage found late
still works), and the only sleep is `listener.poll` up to the deadline
(`rootdelay=`). Without root= (or with `live:auto`) every block device is a
candidate, optical and removable first; the medium whose live/liveinit.id
equals the identity baked into /init wins, so several live sticks in one
machine do not confuse the boot.

When coldplug runs in the background (`coldplug.start`), the search starts
at once and takes the root the moment its device appears; `find_root` joins
coldplug before it returns. A plain root (root=DEVICE, no persistence) needs
nothing more once its device is there: coldplug is stopped then, the loads
under way finish and the rest is left to the booted system's udev. A live
medium may still need devices (persistence), so there coldplug runs to its end. A
medium with another identity is taken once nothing more can appear: coldplug
has ended and uevents have been quiet for QUIET seconds; with USB, MMC
storage or NVMe about (slow to show their disks) it waits SETTLE seconds instead."""
from __future__ import annotations

import os
import time

from liveinit import blockdev
from liveinit.plain import Plain
from liveinit.profile import PROBING, WAITS
from liveinit.syscalls import MS_RDONLY

MEDIUM = "/run/liveinit/medium"
ISO_MOUNT = "/run/liveinit/iso"
ID_FILE = "/live/liveinit.id"
POLL_MAX = 1.0      # rescan at least this often even without events
SETTLE = 2.0        # wait this long for a better (identity) match before taking a stranger...
QUIET = 0.1         # ...or only until coldplug is done and uevents stop this long (no slow bus)
# Drivers whose disks show up well after their own load returned (USB's settle
# delay, MMC card detection, NVMe's asynchronous namespace scan).
SLOW_BUS = ("usb_storage", "uas", "mmc_block", "nvme")
COLDPLUG_JOIN = 60.0    # longest wait for background module loads once the root is found
PERSIST_WAIT = 5.0      # how long a persistence device named on the command line may take to appear
# Content that is never a mountable medium.
NOT_FS = frozenset(("swap", "LVM2_member", "crypto_LUKS", "linux_raid_member", "zfs_member",
                    "bcache", "ddf_raid_member", "isw_raid_member", "BitLocker"))
BY_LINKS = {"/dev/disk/by-uuid/": "uuid", "/dev/disk/by-label/": "label",
            "/dev/disk/by-partuuid/": "partuuid", "/dev/disk/by-partlabel/": "partlabel"}
KEYS = {"uuid": "UUID", "label": "LABEL", "partuuid": "PARTUUID", "partlabel": "PARTLABEL"}


class Found(Plain):
    """The root device or live medium: device (/dev node), fstype, identity (fsprobe
    keys), how (found by what), medium (mount point, live) and image (file on it, live)."""

    __slots__ = ("device", "fstype", "identity", "how", "medium", "image")
    device: str
    fstype: str
    identity: dict
    how: str
    medium: str | None
    image: str | None


class _Search:
    """The state shared by the waits: devices seen, their identities, what was tried."""

    def __init__(self, m, cfg, settings, loader, listener, log) -> None:
        self.m = m
        self.cfg = cfg
        self.settings = settings or {}
        self.loader = loader
        self.listener = listener
        self.log = log
        self.ids: dict[tuple, dict] = {}     # (name, major, minor, size) -> fsprobe keys
        self.devices: dict[str, blockdev.BlockDevice] = {}
        self.tried: set[tuple] = set()
        self.coldplug = getattr(loader, "background", None)   # coldplug.start's, if running
        self.last_event = time.monotonic()
        self.poll_max = POLL_MAX

    # -- devices ------------------------------------------------------------

    def scan(self) -> list[blockdev.BlockDevice]:
        devs = blockdev.scan(self.m)
        for d in devs:
            self.devices[d.name] = d
        return devs

    def identify(self, dev) -> dict:
        key = (dev.name, dev.major, dev.minor, dev.size)
        info = self.ids.get(key)
        if info is None:
            begun = self.m.profile.begin(PROBING)
            try:
                info = blockdev.identify(self.m, dev)
            except Exception as e:  # a broken superblock must not kill PID 1
                self.log.debug(f"cannot probe /dev/{dev.name}: {e}")
                info = {}
            self.m.profile.end(PROBING, begun)
            if info:
                # Unrecognised content is probed again on the next rescan: a device
                # that just appeared may not be readable yet.
                self.ids[key] = info
        return info

    # -- waiting ------------------------------------------------------------

    def wait(self, attempt, deadline: float):
        """Call attempt() now and after every batch of uevents until it returns non-None."""
        while True:
            r = attempt()
            if r is not None:
                return r
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.events(min(left, self.poll_max))

    def events(self, timeout: float) -> list:
        begun = self.m.profile.begin(WAITS)
        if self.listener is None:
            time.sleep(min(timeout, 0.25))
            self.m.profile.end(WAITS, begun)
            return []
        evs = self.listener.poll(timeout)
        self.m.profile.end(WAITS, begun)
        if evs:
            self.last_event = time.monotonic()
        for ev in evs:
            if ev.get("ACTION") == "add" and ev.get("MODALIAS"):
                if self.coldplug is None:
                    from liveinit.coldplug import Coldplug
                    self.coldplug = Coldplug(self.m, self.loader, self.log)
                self.coldplug.handle_event(ev)
        return evs

    # -- mounting -----------------------------------------------------------

    def mount(self, dev, fstype: str, target: str) -> bool:
        """Mount /dev/NAME read-only at target, loading the fs module first."""
        # Memoised and a no-op when present; works with boot's NullLoader too.
        self.loader.load_alias("fs-" + fstype, f"fs-{fstype} for /dev/{dev.name}")
        self.m.makedirs(target)
        try:
            self.m.sys.mount(self.m.path(blockdev.node(self.m, dev)), self.m.path(target),
                             fstype, MS_RDONLY, None)
        except OSError as e:
            self.log.debug(f"cannot mount /dev/{dev.name} ({fstype}) at {target}: {e}")
            return False
        return True

    def umount(self, target: str) -> None:
        try:
            self.m.sys.umount2(self.m.path(target), 0)
        except OSError as e:
            self.log.warn(f"cannot unmount {target}: {e}")

    # -- the failure message ------------------------------------------------

    def settled(self) -> bool:
        """No more devices are expected: coldplug is over and uevents are quiet (no slow bus)."""
        cp = self.coldplug
        if cp is not None and getattr(cp, "running", False):
            return False
        if any(self.loader.is_present(n) for n in SLOW_BUS if hasattr(self.loader, "is_present")):
            return False
        return time.monotonic() - self.last_event >= QUIET

    def finish_coldplug(self, stop: bool = False) -> None:
        """Join a background coldplug (its modules belong to this boot's record);
        stop: start no more loads first (the root needs nothing else)."""
        if getattr(self.loader, "background", None) is None:
            return
        from liveinit import coldplug
        begun = self.m.profile.begin(WAITS)
        coldplug.finish(self.loader, self.log, COLDPLUG_JOIN, stop)
        self.m.profile.end(WAITS, begun)

    def plain_root_needs_nothing_more(self) -> bool:
        """A plain root's device is there: no later stage searches for devices."""
        return not self.cfg.persistence and not self.cfg.findiso

    def failure(self, what: str, hint: str):
        from liveinit.emergency import BootFailure
        self.finish_coldplug()
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
        else:
            lines.append("no block devices at all (is the storage driver in the image?)")
        loaded = ", ".join(sorted(self.loader.loaded)) or "none"
        lines.append(f"modules loaded: {loaded}")
        if self.loader.failed:
            lines.append("modules failed: " + ", ".join(f"{k} ({v})" for k, v in sorted(self.loader.failed.items())))
        return BootFailure("\n".join(lines), hint)


def _match_spec(search: _Search, spec):
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


def _devno_hex(value: str):
    """root=0801 (hex major/minor, the old kernel form) -> (8, 1)."""
    try:
        n = int(value, 16)
    except ValueError:
        return None
    return (n >> 8, n & 0xFF)


def _spec_text(spec) -> str:
    if spec.kind == "path":
        return spec.value
    if spec.kind == "devno":
        return spec.value
    return f"{KEYS.get(spec.kind, spec.kind.upper())}={spec.value}"


def _image_on(search: _Search, mountpoint: str) -> str:
    """Where the live image is (or would be) on the filesystem at `mountpoint`."""
    return mountpoint + "/" + search.cfg.live_image.lstrip("/")


def _has_image(search: _Search, mountpoint: str) -> bool:
    return os.path.isfile(search.m.path(_image_on(search, mountpoint)))


def _require_image(search: _Search, what: str, hint: str) -> str:
    """The image path on the mounted medium; else unmount it and fail naming `what`."""
    if not _has_image(search, MEDIUM):
        search.umount(MEDIUM)
        raise search.failure(f"{what} holds no {search.cfg.live_image}", hint)
    return _image_on(search, MEDIUM)


def _identity(search: _Search, mountpoint: str) -> str | None:
    text = search.m.read(mountpoint + ID_FILE)
    return text.strip() if text is not None else None


def find_root(m, cfg, settings, loader, listener, log) -> Found:
    """Find the root device or the live medium; raises emergency.BootFailure.

    A background coldplug (`coldplug.start`) is joined before this returns."""
    search = _Search(m, cfg, settings, loader, listener, log)
    found = _find(search)
    search.finish_coldplug(stop=found.medium is None and search.plain_root_needs_nothing_more())
    return found


def _find(search: _Search) -> Found:
    m, cfg, loader, log = search.m, search.cfg, search.loader, search.log
    deadline = time.monotonic() + cfg.rootdelay
    if cfg.findiso:
        return _findiso(search, deadline)
    spec = cfg.root
    if spec.kind == "auto":
        return _search_live(search, deadline)
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
    if not spec.live:
        if search.coldplug is not None and search.plain_root_needs_nothing_more():
            search.coldplug.stop()   # nothing new starts while the fs module loads
        if fstype:
            loader.load_alias("fs-" + fstype, f"fs-{fstype} for root {text}")
        log.info(f"root {text} is {nodepath} ({fstype or 'unknown type'})")
        return Found(nodepath, fstype, info, f"root={text}", None, None)
    if not fstype or not search.mount(dev, fstype, MEDIUM):
        raise search.failure(f"the live medium {text} ({nodepath}) could not be mounted "
                             f"(type {fstype or 'unknown'})",
                             "check root=live:... names the device holding the live image, or give rootfstype=")
    image = _require_image(search, f"{nodepath} ({text})",
                           "set liveinit.image= to the image's path on the medium, or fix root=live:...")
    log.info(f"live medium {text} is {nodepath}")
    return Found(nodepath, fstype, info, f"root=live:{text}", MEDIUM, image)


def _candidates(search: _Search) -> list:
    """Devices not tried yet, optical first, then removable, then the rest."""
    out = []
    for d in search.scan():
        key = (d.name, d.major, d.minor, d.size)
        if key not in search.tried:
            out.append(d)
    out.sort(key=lambda d: (0 if d.optical else 1 if d.removable else 2, d.name))
    return out


def _search_live(search: _Search, deadline: float) -> Found:
    cfg, log = search.cfg, search.log
    want = str(search.settings.get("identity") or "")
    fallback: list = []          # (dev, info, identity) of media with the image but another id
    fallback_since = [0.0]

    def attempt():
        for d in _candidates(search):
            info = search.identify(d)
            fstype = info.get("TYPE")
            if not info:
                continue  # not readable yet, or empty: look again on the next rescan
            search.tried.add((d.name, d.major, d.minor, d.size))
            if not fstype or fstype in NOT_FS:
                continue
            if not search.mount(d, fstype, MEDIUM):
                continue
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
        if fallback and (search.settled() or time.monotonic() - fallback_since[0] >= SETTLE):
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
    raise search.failure(
        f"no block device holds {cfg.live_image} (searched for {cfg.rootdelay:g} s, "
        f"{len(search.tried)} devices tried)",
        "insert the live medium or raise rootdelay=; name it with root=live:LABEL=...; "
        "set liveinit.image= if the image lives elsewhere; add a missing storage driver "
        "with rd.driver.pre=MODULE")


def _live_found(search: _Search, d, info: dict, fstype: str, why: str) -> Found:
    path = "/dev/" + d.name
    search.log.info(f"live medium: {search.cfg.live_image} on {d.name} ({why})")
    return Found(path, fstype, info, f"search: {search.cfg.live_image} on {d.name} ({why})",
                 MEDIUM, _image_on(search, MEDIUM))


def _findiso(search: _Search, deadline: float) -> Found:
    """Find the filesystem holding cfg.findiso, loop-mount the ISO as the medium."""
    cfg, m, log = search.cfg, search.m, search.log
    iso_rel = cfg.findiso.lstrip("/")
    spec = cfg.root

    def attempt():
        if spec.kind != "auto":
            d = _match_spec(search, spec)
            cands = [d] if d is not None and (d.name, d.major, d.minor, d.size) not in search.tried else []
        else:
            cands = _candidates(search)
        for d in cands:
            info = search.identify(d)
            if not info:
                continue
            search.tried.add((d.name, d.major, d.minor, d.size))
            fstype = info.get("TYPE")
            if not fstype or fstype in NOT_FS or not search.mount(d, fstype, ISO_MOUNT):
                continue
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
                             "the loop module may be missing from the image")
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


def find_device(m, text: str, loader, listener, log, timeout: float = PERSIST_WAIT) -> str | None:
    """The /dev node of the device a spec names (LABEL=, UUID=, PARTUUID=,
    PARTLABEL=, /dev/NAME, MAJ:MIN), waiting up to `timeout` s for it to
    appear (a persistence stick may come up after the medium). The same
    matcher as root=; None when no device matches in time."""
    from liveinit.cmdline import parse_root
    spec = parse_root(text)
    if spec is None or spec.kind == "auto":
        return None
    search = _Search(m, None, None, loader, listener, log)
    dev = search.wait(lambda: _match_spec(search, spec), time.monotonic() + timeout)
    return None if dev is None else blockdev.node(m, dev)
