"""Stage `findroot` for a live image on an HTTP server: `root=live:http://HOST[:PORT]/PATH`
(dracut's spelling) or `fetch=URL` (live-boot's).

The network driver comes from the background coldplug like a storage driver
(root first holds nothing back for a URL); the link is brought up as `ip=`
says (DHCP by default, on the interface BOOTIF= names when PXE gave one);
the SHA256SUMS beside the image is read; the image is downloaded into a
tmpfs once its size is known to fit in the free memory, with a progress line
every few seconds and a resume (HTTP Range) after a dropped connection; its
SHA-256 must match. The image then sits in RAM like a `toram` copy, and
stack.py stacks it like a local image, with no medium to keep.

Every failure (no link, no DHCP answer, DNS, HTTP 404/5xx, a connection
that keeps dropping, a checksum mismatch, not enough memory) is a
BootFailure that names the URL, the interface and the parameter to change."""
from __future__ import annotations

import time

from liveinit import httpget, net
from liveinit.contract import RAM
from liveinit.emergency import BootFailure
from liveinit.netcfg import DHCP, IpConfig, Url, beside, is_ipv4, parse_url
from liveinit.rootfind import Found
from liveinit.stack import TORAM_RESERVE, meminfo
from liveinit.syscalls import MNT_DETACH, MS_NODEV, MS_NOSUID

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.cmdline import BootConfig
    from liveinit.dhcp import Transport
    from liveinit.discovery import Discovery
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.net import Netlink
    from liveinit.netcfg import Lease

SUMS_NAME = "SHA256SUMS"          # beside the image (contract.CHECKSUMS_FILE's name)
PROGRESS_SECONDS = 3.0            # a progress line at most this often
DEFAULT_NAME = "filesystem.squashfs"
PARAMS = "root=live:URL (or fetch=URL)"


class Unlisted(BootFailure):
    """The SHA256SUMS beside the image has no line for it."""


class _Progress:
    """httpget's progress callback: the memory check once the size is known,
    then `netboot: X of Y MiB, R MiB/s, ETA S s` every PROGRESS_SECONDS."""

    def __init__(self, m: Machine, url: Url, log: Log, clock: Callable[[], float] = time.monotonic) -> None:
        self.m = m
        self.url = url
        self.log = log
        self.clock = clock
        self.t0 = clock()
        self.last = self.t0
        self.checked = False
        self.size = -1
        self.refuse: BootFailure | None = None   # raised once the answer shows the image exists

    def __call__(self, done: int, total: int) -> None:
        if self.refuse is not None:
            raise self.refuse
        if total >= 0 and not self.checked:
            self.checked = True
            self.size = total
            check_memory(self.m, self.url, total, done)
            self.log.info(f"netboot: downloading {self.url} ({total / 1048576:.1f} MiB)"
                          + (f" from byte {done}" if done else ""))
            return
        now = self.clock()
        if now - self.last < PROGRESS_SECONDS and done != total:
            return
        self.last = now
        elapsed = max(now - self.t0, 1e-6)
        rate = done / elapsed
        line = f"netboot: {done / 1048576:.1f}"
        if total > 0:
            eta = (total - done) / rate if rate else 0.0
            line += f" of {total / 1048576:.1f} MiB ({done * 100 // total}%), {rate / 1048576:.1f} MiB/s, " \
                    f"ETA {eta:.0f} s"
        else:
            line += f" MiB, {rate / 1048576:.1f} MiB/s"
        self.log.info(line)


def check_memory(m: Machine, url: Url, size: int, have: int = 0) -> None:
    """Refuse an image that would not leave TORAM_RESERVE of memory free."""
    mem = meminfo(m)
    avail = mem.get("MemAvailable", mem.get("MemFree", 0)) + have
    need = size + TORAM_RESERVE
    if avail < need:
        raise BootFailure(
            f"netboot: the image {url} needs {need >> 20} MiB of memory ({size >> 20} MiB + "
            f"{TORAM_RESERVE >> 20} MiB reserve) but only {avail >> 20} MiB are available",
            "give the machine more memory, or publish a smaller image (fewer packages, "
            f"mksquashfs -comp xz) and point {PARAMS} at it")


def _with_context(f: BootFailure, url: Url, where: str) -> BootFailure:
    """The same failure, naming the image URL and the interface in use."""
    return BootFailure(f"{f.message}\nnetboot: image {url}, network {where}",
                       (f.hint + "; " if f.hint else "") + f"the image is {PARAMS}, the interface "
                       "ip=IFACE:dhcp or BOOTIF=, the address ip=CLIENT::GW:NETMASK::IFACE:none")


def _image_name(url: Url) -> str:
    name = url.path.partition("?")[0].rpartition("/")[2]
    return name if name and name not in (".", "..") else DEFAULT_NAME


def expected_sha256(url: Url, log: Log, resolve: Callable[[str], str] | None, retries: int = httpget.RETRIES,
                    backoff: float = httpget.BACKOFF, timeout: float = httpget.TIMEOUT) -> str:
    """The image's digest from the SHA256SUMS beside it; "" (with a warning)
    when the server has none, Unlisted when it has one without the image."""
    from liveinit import sha256sums
    sums_url = beside(url, SUMS_NAME)
    try:
        text = httpget.fetch(sums_url, log, resolve=resolve, retries=retries, backoff=backoff,
                             timeout=timeout)
    except httpget.NotFound:
        log.warn(f"netboot: no {sums_url}: the image will NOT be verified "
                 "(`liveinit netboot` writes one beside the image)")
        return ""
    try:
        digest = sha256sums.for_path(sha256sums.parse(text.decode("utf-8", "replace")), url.path)
    except ValueError as e:
        raise BootFailure(f"netboot: {sums_url} is not a SHA256SUMS file: {e}",
                          "publish the file `sha256sum` (or `liveinit netboot`) writes") from None
    if digest is None:
        raise Unlisted(f"netboot: {sums_url} has no line for {url.path}",
                          f"add the image's line (sha256sum {_image_name(url)}), or fix the image's "
                          f"name in {PARAMS}")
    return digest


def _resolver(lease: Lease) -> Callable[[str], str]:
    def resolve(host: str) -> str:
        from liveinit import dns
        return dns.resolve(host, lease.dns, lease.domain)
    return resolve


def find_net_root(m: Machine, cfg: BootConfig, discovery: Discovery, log: Log, *,
                  nl: Netlink | None = None, dhcp_transport: Transport | None = None,
                  link_timeout: float = net.LINK_TIMEOUT, carrier_timeout: float = net.CARRIER_TIMEOUT,
                  dhcp_timeout: float | None = None,
                  retries: int = httpget.RETRIES, backoff: float = httpget.BACKOFF,
                  timeout: float = httpget.TIMEOUT) -> Found:
    """Bring the network up, download the image at cfg.root.value into RAM
    and verify it; the Found's image is the file in RAM (no medium).
    The keywords are the tests' (a fake netlink and DHCP server, short waits)."""
    url = parse_url(cfg.root.value)   # checked by cmdline.parse already
    ipcfg = cfg.ip or IpConfig(DHCP)

    def wait(seconds: float) -> None:   # link waits wake on uevents (and load hotplugged drivers)
        discovery.events(seconds)

    try:
        lease = net.bring_up(m, ipcfg, log, cfg.bootif, nl=nl, dhcp_transport=dhcp_transport,
                             dhcp_timeout=dhcp_timeout, link_timeout=link_timeout,
                             carrier_timeout=carrier_timeout, sleep=wait)
    except BootFailure as f:
        raise _with_context(f, url, "not configured") from None
    where = f"{lease.interface} {lease.address}/{lease.prefix} ({lease.method})"
    resolve = None if is_ipv4(url.host) else _resolver(lease)
    mounted = False
    try:
        progress = _Progress(m, url, log)
        try:
            digest = expected_sha256(url, log, resolve, retries, backoff, timeout)
        except Unlisted as e:   # refused once the image's own answer arrives: a missing image says 404
            digest, progress.refuse = "", e
        mem = meminfo(m)
        room = mem.get("MemAvailable", mem.get("MemFree", 0)) - TORAM_RESERVE
        if room <= 0:
            check_memory(m, url, 0)
        m.makedirs(RAM)
        m.sys.mount("tmpfs", m.path(RAM), "tmpfs", MS_NOSUID | MS_NODEV, f"size={room},mode=0755")
        mounted = True
        dest = RAM + "/" + _image_name(url)
        try:
            got = httpget.download(m, url, dest, log, sha256=digest, resolve=resolve, progress=progress,
                                   retries=retries, backoff=backoff, timeout=timeout)
        except BootFailure as f:
            if "No space left" in f.message:   # no size in advance (chunked): the tmpfs filled up
                check_memory(m, url, max(progress.size, room + 1))
            raise
        if progress.refuse is not None:   # the answer had no size: refused after the download
            raise progress.refuse
    except BootFailure as f:
        if mounted:
            _release(m, log)
        raise _with_context(f, url, where) from None
    except BaseException:
        if mounted:
            _release(m, log)
        raise
    rate = got.size / max(got.seconds, 1e-6) / 1048576
    verified = "SHA-256 verified" if digest else "NOT verified (no SHA256SUMS)"
    log.info(f"netboot: {got.size / 1048576:.1f} MiB in {got.seconds:.1f} s ({rate:.1f} MiB/s"
             + (f", {got.resumes} resumes" if got.resumes else "") + f"), {verified}")
    info = {"TYPE": "http", "URL": got.url, "SHA256": got.sha256, "SIZE": str(got.size),
            "INTERFACE": lease.interface, "ADDRESS": lease.address}
    return Found(got.url, "http", info, f"download of {url} via {where}", None, dest)


def _release(m: Machine, log: Log) -> None:
    """Give the tmpfs (and the memory of a partial download) back before the shell."""
    try:
        m.sys.umount2(m.path(RAM), MNT_DETACH)
    except OSError as e:
        log.warn(f"netboot: cannot unmount {RAM}: {e}")
