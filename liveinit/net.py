"""Link bring-up: find the Ethernet interfaces, set them up, wait for a
carrier, get a lease (DHCP or `ip=`), and put the address and the default
route on the interface.

Interfaces are read from /sys/class/net through the Machine seam. The
kernel is configured over rtnetlink (RTM_NEWLINK/NEWADDR/NEWROUTE): a
netlink socket and `struct` are all it takes, both already loaded by the
runtime, where the SIOCSIF* ioctls would need fcntl or ctypes (Python's
socket has no ioctl on Linux). The messages are built by pure functions;
`Rtnl` sends them and turns a netlink error into an OSError naming the
request. Tests pass a recording fake with the same `request` method."""
from __future__ import annotations

import _socket
import struct
import time

from liveinit.emergency import BootFailure
from liveinit.netcfg import (
    DHCP,
    OFF,
    IpConfig,
    Lease,
    broadcast_of,
    classful_prefix,
    netmask_to_prefix,
    same_subnet,
)
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable
    from typing import Protocol

    from liveinit.dhcp import Transport
    from liveinit.log import Log
    from liveinit.machine import Machine

    class Netlink(Protocol):
        def request(self, kind: int, flags: int, payload: bytes, what: str) -> None: ...
        def close(self) -> None: ...

SYS_NET = "/sys/class/net"
ARPHRD_ETHER = 1
CARRIER_TIMEOUT = 10.0      # seconds for a cable to come up (e1000 autonegotiates ~2 s)
LINK_TIMEOUT = 30.0         # seconds for a network interface to appear (its driver loading)
POLL = 0.02

# rtnetlink (linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h, linux/if.h)
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 20, 24
IFF_UP = 0x1
IFLA_MTU = 4
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_GATEWAY, RTA_OIF = 5, 4
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RTNH_F_ONLINK = 4
AF_UNSPEC, AF_INET = 0, 2
NLMSGHDR = struct.Struct("=IHHII")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBi")
RTMSG = struct.Struct("=BBBBBBBBI")
RTATTR = struct.Struct("=HH")




class Link(Plain):
    """A network interface: name, ifindex, mac ("aa:bb:..."), driver (module or "")."""

    __slots__ = ("name", "index", "mac", "driver")
    name: str
    index: int
    mac: str
    driver: str


# -- rtnetlink messages (pure) ---------------------------------------------------

def _pad(n: int) -> int:
    return (n + 3) & ~3


def rtattr(kind: int, value: bytes) -> bytes:
    data = RTATTR.pack(RTATTR.size + len(value), kind) + value
    return data + bytes(_pad(len(data)) - len(data))


def nlmsg(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), kind, flags, seq, 0) + payload


def _ipb(addr: str) -> bytes:
    return bytes(int(p) for p in addr.split("."))


def link_up_msg(index: int, mtu: int = 0) -> bytes:
    """RTM_NEWLINK payload: set IFF_UP (and the MTU when given)."""
    body = IFINFOMSG.pack(AF_UNSPEC, 0, index, IFF_UP, IFF_UP)
    return body + (rtattr(IFLA_MTU, struct.pack("=I", mtu)) if mtu else b"")


def addr_msg(index: int, address: str, prefix: int, broadcast: str) -> bytes:
    """RTM_NEWADDR payload: ADDRESS/PREFIX with its broadcast on interface `index`."""
    return (IFADDRMSG.pack(AF_INET, prefix, 0, RT_SCOPE_UNIVERSE, index)
            + rtattr(IFA_LOCAL, _ipb(address)) + rtattr(IFA_ADDRESS, _ipb(address))
            + (rtattr(IFA_BROADCAST, _ipb(broadcast)) if broadcast else b""))


def default_route_msg(index: int, gateway: str, onlink: bool = False) -> bytes:
    """RTM_NEWROUTE payload: 0.0.0.0/0 via `gateway` out of interface `index`."""
    return (RTMSG.pack(AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST,
                       RTNH_F_ONLINK if onlink else 0)
            + rtattr(RTA_GATEWAY, _ipb(gateway)) + rtattr(RTA_OIF, struct.pack("=i", index)))


def parse_ack(data: bytes, seq: int) -> int | None:
    """The errno (0 = success) of the NLMSG_ERROR answering `seq` in `data`, None if absent."""
    at = 0
    while at + NLMSGHDR.size <= len(data):
        length, kind, _flags, got, _pid = NLMSGHDR.unpack_from(data, at)
        if length < NLMSGHDR.size:
            break
        if kind == NLMSG_ERROR and got == seq and length >= NLMSGHDR.size + 4:
            return -struct.unpack_from("=i", data, at + NLMSGHDR.size)[0]
        at += _pad(length)
    return None


class Rtnl:
    """A NETLINK_ROUTE socket: one request at a time, each acknowledged."""

    def __init__(self) -> None:
        self.sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.settimeout(5.0)
        self.seq = 0

    def request(self, kind: int, flags: int, payload: bytes, what: str) -> None:
        """Send one message and wait for its ack; OSError(errno, what) on a refusal."""
        self.seq += 1
        self.sock.send(nlmsg(kind, flags | NLM_F_REQUEST | NLM_F_ACK, self.seq, payload))
        while True:
            err = parse_ack(self.sock.recv(65536), self.seq)
            if err is None:
                continue
            if err:
                import os
                raise OSError(err, f"{what}: {os.strerror(err)}")
            return

    def close(self) -> None:
        self.sock.close()


def set_up(nl: Netlink, link: Link, mtu: int = 0) -> None:
    nl.request(RTM_NEWLINK, 0, link_up_msg(link.index, mtu), f"set {link.name} up")


def configure(nl: Netlink, lease: Lease, index: int) -> None:
    """Put the lease's address on its interface and its router as the default route."""
    nl.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE,
               addr_msg(index, lease.address, lease.prefix, lease.broadcast),
               f"add {lease.address}/{lease.prefix} to {lease.interface}")
    if lease.router:
        onlink = not same_subnet(lease.address, lease.router, lease.prefix)
        nl.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, default_route_msg(index, lease.router, onlink),
                   f"add default route via {lease.router} dev {lease.interface}")


# -- interfaces (sysfs) ------------------------------------------------------------

def links(m: Machine) -> list[Link]:
    """The wired Ethernet interfaces, in ifindex order: no loopback, no
    wireless (it needs a supplicant), no virtual device (no `device` link)."""
    out = []
    for name in m.listdir(SYS_NET):
        base = f"{SYS_NET}/{name}"
        if m.read(base + "/type") != str(ARPHRD_ETHER) or not m.exists(base + "/device"):
            continue
        if m.exists(base + "/wireless") or m.exists(base + "/phy80211"):
            continue
        index = m.read(base + "/ifindex") or ""
        if not index.isdigit():
            continue
        driver = (m.readlink(base + "/device/driver/module") or "").rpartition("/")[2]
        out.append(Link(name, int(index), (m.read(base + "/address") or "").lower(), driver))
    return sorted(out, key=lambda lk: lk.index)


def has_carrier(m: Machine, name: str) -> bool:
    """The link is up and a cable (or the virtual switch) is there. Reading
    `carrier` of a down interface fails (EINVAL): no carrier."""
    base = f"{SYS_NET}/{name}"
    return m.read(base + "/carrier") == "1" and m.read(base + "/operstate") in ("up", "unknown")


def pick(found: list[Link], cfg: IpConfig, bootif: str = "") -> list[Link]:
    """The candidates, in order: the one `ip=` names, else the one PXE booted
    from (BOOTIF=), else all of them."""
    if cfg.device:
        return [lk for lk in found if lk.name == cfg.device]
    if bootif:
        return [lk for lk in found if lk.mac == bootif]
    return found


def _wanted(cfg: IpConfig, bootif: str) -> str:
    if cfg.device:
        return f"interface {cfg.device} (from ip=)"
    if bootif:
        return f"the interface with MAC {bootif} (BOOTIF=)"
    return "a wired Ethernet interface"


def _names(found: list[Link]) -> str:
    return ", ".join(f"{lk.name} ({lk.mac}{', ' + lk.driver if lk.driver else ''})" for lk in found) or "none"


def wait_links(m: Machine, cfg: IpConfig, bootif: str, timeout: float,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> list[Link]:
    """Wait for the wanted interface(s) to appear (their driver may still be loading)."""
    deadline = clock() + timeout
    while True:
        found = links(m)
        cands = pick(found, cfg, bootif)
        if cands:
            return cands
        if clock() >= deadline:
            raise BootFailure(
                f"network: waited {timeout:.0f} s for {_wanted(cfg, bootif)}; "
                f"interfaces seen: {_names(found)}",
                "check that the image has the network driver for this machine (the `net` module group), "
                "or name an interface that exists with ip=IFACE:dhcp")
        sleep(POLL)


def wait_carrier(m: Machine, cands: list[Link], timeout: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> Link | None:
    """The first of `cands` (in order) to get a carrier within `timeout`."""
    deadline = clock() + timeout
    while True:
        for lk in cands:
            if has_carrier(m, lk.name):
                return lk
        if clock() >= deadline:
            return None
        sleep(POLL)


def static_lease(cfg: IpConfig, link: Link) -> Lease:
    """The Lease `ip=CLIENT:...:none` describes."""
    prefix = netmask_to_prefix(cfg.netmask) if cfg.netmask else classful_prefix(cfg.client)
    return Lease(link.name, link.mac, cfg.client, prefix, broadcast_of(cfg.client, prefix), cfg.gateway,
                 cfg.dns, cfg.hostname, method="static")


def bring_up(m: Machine, cfg: IpConfig, log: Log, bootif: str = "", nl: Netlink | None = None,
             dhcp_transport: Transport | None = None, dhcp_timeout: float | None = None,
             link_timeout: float = LINK_TIMEOUT, carrier_timeout: float = CARRIER_TIMEOUT,
             clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> Lease:
    """Configure the network as `cfg` (ip=) says and return the Lease.

    Every candidate interface is set up at once (carriers come up in
    parallel); the first with a carrier is configured. Raises BootFailure
    naming the interfaces and the parameter to change."""
    if cfg.method == OFF:
        raise BootFailure("network: ip=off, but this boot needs the network",
                          "remove ip=off (or use ip=dhcp) to boot from the network")
    t0 = clock()
    own = nl is None
    rtnl: Netlink = Rtnl() if nl is None else nl
    try:
        cands = wait_links(m, cfg, bootif, link_timeout, clock, sleep)
        for lk in cands:
            try:
                set_up(rtnl, lk, cfg.mtu)
            except OSError as e:
                log.warn(f"network: cannot set {lk.name} up: {e}")
        link = wait_carrier(m, cands, carrier_timeout, clock, sleep)
        if link is None:
            raise BootFailure(f"network: no link on {_names(cands)} after {carrier_timeout:.0f} s",
                              "plug in the cable (or connect the VM's network), or choose another "
                              "interface with ip=IFACE:dhcp or BOOTIF=")
        log.info(f"network: {link.name} ({link.mac}, {link.driver or 'built-in'}) has a link "
                 f"after {(clock() - t0) * 1000:.0f} ms")
        if cfg.method == DHCP:
            from liveinit import dhcp
            lease = dhcp.request_lease(link.name, link.mac, log, cfg.hostname, cfg.client,
                                       dhcp_timeout or dhcp.DEFAULT_TIMEOUT, dhcp_transport, clock)
        else:
            lease = static_lease(cfg, link)
        if cfg.dns and lease.method == DHCP:
            lease = lease.replace(dns=cfg.dns + tuple(d for d in lease.dns if d not in cfg.dns))
        try:
            configure(rtnl, lease, link.index)
        except OSError as e:
            raise BootFailure(f"network: {e}", "check the address and gateway in ip= "
                              "(or the DHCP server's answer)") from None
        lease = lease.replace(ms=(clock() - t0) * 1000)
        log.info(f"network: {lease.interface} {lease.address}/{lease.prefix}"
                 + (f" via {lease.router}" if lease.router else "")
                 + (f" dns {','.join(lease.dns)}" if lease.dns else "")
                 + f" ({lease.method}{' from ' + lease.server if lease.server else ''}) in {lease.ms:.0f} ms")
        return lease
    finally:
        if own:
            rtnl.close()
