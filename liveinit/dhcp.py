"""A DHCPv4 client for the boot: DISCOVER, OFFER, REQUEST, ACK (RFC 2131),
with retransmission on an exponential back-off (jittered: a room of machines
powered on at once must not answer in lock-step) and an overall timeout.

`encode`/`decode` are pure functions over `Message`; `request_lease` runs the
exchange over any transport with `send(bytes)` and `recv(timeout) -> bytes |
None`. `UdpTransport` is the real one: a UDP socket on 0.0.0.0:68 bound to
the interface (SO_BINDTODEVICE) that broadcasts to 255.255.255.255:67. Once
the link is up the kernel sends from 0.0.0.0 and delivers broadcast replies
to it without an address on the interface, so no raw socket is needed; the
client sets the BROADCAST flag so that servers broadcast their replies
(an address the interface does not have yet would be dropped)."""
from __future__ import annotations

import _socket
import os
import struct
import time

from liveinit.emergency import BootFailure
from liveinit.netcfg import Lease, broadcast_of, classful_prefix, netmask_to_prefix
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable
    from typing import Protocol

    from liveinit.log import Log

    class Transport(Protocol):
        def send(self, data: bytes) -> None: ...
        def recv(self, timeout: float) -> bytes | None: ...
        def close(self) -> None: ...

CLIENT_PORT, SERVER_PORT = 68, 67
BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHER = 1
MAGIC = b"\x63\x82\x53\x63"
FLAG_BROADCAST = 0x8000
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")   # 240 bytes, up to the magic cookie
MIN_PACKET = 300            # BOOTP minimum; some relays drop shorter packets
MAX_MESSAGE = 1500

# Message types (option 53)
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
TYPE_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE", ACK: "ACK",
              NAK: "NAK", RELEASE: "RELEASE", INFORM: "INFORM"}
# Options
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_BROADCAST = 1, 3, 6, 12, 15, 28
OPT_REQUESTED_IP, OPT_LEASE_TIME, OPT_OVERLOAD, OPT_MSG_TYPE, OPT_SERVER_ID = 50, 51, 52, 53, 54
OPT_PARAMS, OPT_MESSAGE, OPT_MAX_SIZE, OPT_VENDOR_CLASS, OPT_CLIENT_ID = 55, 56, 57, 60, 61
WANTED = bytes((OPT_SUBNET, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_DOMAIN, OPT_BROADCAST, OPT_LEASE_TIME))
VENDOR_CLASS = b"liveinit"

DEFAULT_TIMEOUT = 30.0      # seconds for the whole exchange
FIRST_WAIT = 1.0            # first retransmission timeout, doubled up to MAX_WAIT
MAX_WAIT = 8.0
ZERO = b"\0\0\0\0"




class Message(Plain):
    """A DHCP packet. Addresses are dotted quads, chaddr "aa:bb:cc:dd:ee:ff";
    options: (code, value) pairs in order, one per code (long values are
    split over several instances on the wire and joined back, RFC 3396)."""

    __slots__ = ("op", "xid", "secs", "flags", "ciaddr", "yiaddr", "siaddr", "giaddr", "chaddr", "options")
    op: int
    xid: int
    secs: int
    flags: int
    ciaddr: str
    yiaddr: str
    siaddr: str
    giaddr: str
    chaddr: str
    options: tuple[tuple[int, bytes], ...]
    _defaults = {"secs": 0, "flags": 0, "ciaddr": "0.0.0.0", "yiaddr": "0.0.0.0", "siaddr": "0.0.0.0",
                 "giaddr": "0.0.0.0", "options": ()}

    def option(self, code: int) -> bytes | None:
        for c, v in self.options:
            if c == code:
                return v
        return None

    @property
    def type(self) -> int:
        v = self.option(OPT_MSG_TYPE)
        return v[0] if v else 0


def _ip(b: bytes) -> str:
    return f"{b[0]}.{b[1]}.{b[2]}.{b[3]}"


def _ipb(s: str) -> bytes:
    return bytes(int(p) for p in s.split("."))


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def encode(msg: Message) -> bytes:
    """The wire form of `msg`, padded to the BOOTP minimum of 300 bytes."""
    hw = mac_bytes(msg.chaddr)
    out = [HEADER.pack(msg.op, HTYPE_ETHER, len(hw), 0, msg.xid, msg.secs, msg.flags, _ipb(msg.ciaddr),
                       _ipb(msg.yiaddr), _ipb(msg.siaddr), _ipb(msg.giaddr), hw, b"", b"", MAGIC)]
    for code, value in msg.options:
        if not 0 < code < 255:
            raise ValueError(f"DHCP option code {code} is reserved")
        for at in range(0, max(len(value), 1), 255):   # RFC 3396: long options split
            part = value[at:at + 255]
            out.append(bytes((code, len(part))) + part)
    out.append(bytes((OPT_END,)))
    data = b"".join(out)
    return data + bytes(max(0, MIN_PACKET - len(data)))


def _walk(buf: bytes, found: dict[int, bytes], where: str) -> None:
    i = 0
    while i < len(buf):
        code = buf[i]
        if code == OPT_END:
            return
        if code == OPT_PAD:
            i += 1
            continue
        if i + 1 >= len(buf) or i + 2 + buf[i + 1] > len(buf):
            raise ValueError(f"DHCP option {code} runs past the end of the {where}")
        n = buf[i + 1]
        found[code] = found.get(code, b"") + buf[i + 2:i + 2 + n]
        i += 2 + n


def decode(data: bytes) -> Message:
    """Parse a DHCP packet; ValueError when it is not one."""
    if len(data) < HEADER.size:
        raise ValueError(f"DHCP packet too short ({len(data)} bytes)")
    (op, htype, hlen, _hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, bootfile,
     magic) = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a DHCP packet (no magic cookie)")
    if htype != HTYPE_ETHER or hlen != 6:
        raise ValueError(f"DHCP packet for hardware type {htype}/{hlen}, not Ethernet")
    found: dict[int, bytes] = {}
    _walk(data[HEADER.size:], found, "options")
    overload = found.get(OPT_OVERLOAD, b"\0")[0]
    if overload & 1:
        _walk(bootfile, found, "file field")
    if overload & 2:
        _walk(sname, found, "sname field")
    return Message(op, xid, secs, flags, _ip(ciaddr), _ip(yiaddr), _ip(siaddr), _ip(giaddr),
                   ":".join(f"{b:02x}" for b in chaddr[:6]), tuple(found.items()))


def client_message(kind: int, xid: int, mac: str, secs: int = 0, requested: str = "", server: str = "",
                   hostname: str = "") -> Message:
    """A DISCOVER or REQUEST from `mac` (client id 01+MAC, broadcast replies)."""
    hw = mac_bytes(mac)
    opts: list[tuple[int, bytes]] = [(OPT_MSG_TYPE, bytes((kind,))),
                                     (OPT_CLIENT_ID, bytes((HTYPE_ETHER,)) + hw)]
    if requested:
        opts.append((OPT_REQUESTED_IP, _ipb(requested)))
    if server:
        opts.append((OPT_SERVER_ID, _ipb(server)))
    if hostname:
        opts.append((OPT_HOSTNAME, hostname.encode()))
    opts += [(OPT_PARAMS, WANTED), (OPT_MAX_SIZE, struct.pack("!H", MAX_MESSAGE)),
             (OPT_VENDOR_CLASS, VENDOR_CLASS)]
    return Message(BOOTREQUEST, xid, min(secs, 0xFFFF), FLAG_BROADCAST, chaddr=mac, options=tuple(opts))


def lease_of(ack: Message, interface: str, ms: float = 0.0) -> Lease:
    """The Lease an ACK grants."""
    addr = ack.yiaddr
    mask = ack.option(OPT_SUBNET)
    try:
        prefix = netmask_to_prefix(_ip(mask)) if mask and len(mask) == 4 else classful_prefix(addr)
    except ValueError:
        prefix = classful_prefix(addr)
    routers = ack.option(OPT_ROUTER) or b""
    dns = ack.option(OPT_DNS) or b""
    bcast = ack.option(OPT_BROADCAST)
    lease_time = ack.option(OPT_LEASE_TIME)
    server = ack.option(OPT_SERVER_ID)
    return Lease(interface, ack.chaddr, addr, prefix,
                 broadcast=_ip(bcast) if bcast and len(bcast) == 4 else broadcast_of(addr, prefix),
                 router=_ip(routers[:4]) if len(routers) >= 4 else "",
                 dns=tuple(_ip(dns[i:i + 4]) for i in range(0, len(dns) - 3, 4)),
                 hostname=_text(ack.option(OPT_HOSTNAME)), domain=_text(ack.option(OPT_DOMAIN)),
                 server=_ip(server) if server and len(server) == 4 else ack.siaddr,
                 lease_time=struct.unpack("!I", lease_time)[0] if lease_time and len(lease_time) == 4 else 0,
                 method="dhcp", ms=ms)


def _text(v: bytes | None) -> str:
    return v.rstrip(b"\0").decode("ascii", "replace") if v else ""


class UdpTransport:
    """UDP on port 68 bound to `interface`, broadcasting to the servers' port 67.

    `bind` and `server` are for tests (a fake server on 127.0.0.1); `interface`
    None skips SO_BINDTODEVICE."""

    def __init__(self, interface: str | None, bind: tuple[str, int] = ("0.0.0.0", CLIENT_PORT),
                 server: tuple[str, int] = ("255.255.255.255", SERVER_PORT)) -> None:
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            s.setsockopt(_socket.SOL_SOCKET, _socket.SO_BROADCAST, 1)
            if interface:
                s.setsockopt(_socket.SOL_SOCKET, _socket.SO_BINDTODEVICE, interface.encode())
            s.bind(bind)
        except BaseException:
            s.close()
            raise
        self.sock = s
        self.server = server

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.server)

    def recv(self, timeout: float) -> bytes | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            return self.sock.recv(4096)
        except TimeoutError:
            return None

    def close(self) -> None:
        self.sock.close()


def _jitter() -> float:
    """A factor in [0.75, 1.25): RFC 2131's randomised retransmission."""
    return 0.75 + os.urandom(1)[0] / 512


class Client:
    """One DHCP exchange on one interface. `clock` and `jitter` are for tests."""

    def __init__(self, transport: Transport, interface: str, mac: str, log: Log, hostname: str = "",
                 requested: str = "", clock: Callable[[], float] = time.monotonic,
                 jitter: Callable[[], float] = _jitter) -> None:
        self.t = transport
        self.interface = interface
        self.mac = mac
        self.log = log
        self.hostname = hostname
        self.requested = requested
        self.clock = clock
        self.jitter = jitter
        self.sent: dict[int, int] = {}       # message type -> count
        self.offers: list[Message] = []
        self.start = 0.0

    def _exchange(self, kind: int, xid: int, accept: tuple[int, ...], deadline: float, requested: str = "",
                  server: str = "") -> Message | None:
        wait = FIRST_WAIT
        while self.clock() < deadline:
            msg = client_message(kind, xid, self.mac, int(self.clock() - self.start), requested, server,
                                 self.hostname)
            self.t.send(encode(msg))
            self.sent[kind] = self.sent.get(kind, 0) + 1
            until = min(self.clock() + wait * self.jitter(), deadline)
            while (left := until - self.clock()) > 0:
                data = self.t.recv(left)
                if data is None:
                    break
                try:
                    reply = decode(data)
                except ValueError:
                    continue
                if (reply.op == BOOTREPLY and reply.xid == xid and reply.chaddr == self.mac
                        and reply.type in accept):
                    return reply
            wait = min(wait * 2, MAX_WAIT)
        return None

    def run(self, timeout: float = DEFAULT_TIMEOUT) -> Lease:
        """DISCOVER until an OFFER, REQUEST it until ACK (a NAK starts over); the Lease."""
        self.start = self.clock()
        deadline = self.start + timeout
        while self.clock() < deadline:
            xid = int.from_bytes(os.urandom(4), "big")
            offer = self._exchange(DISCOVER, xid, (OFFER,), deadline, requested=self.requested)
            if offer is None:
                break
            self.offers.append(offer)
            server = _ip(offer.option(OPT_SERVER_ID) or _ipb(offer.siaddr))
            ack = self._exchange(REQUEST, xid, (ACK, NAK), deadline, offer.yiaddr, server)
            if ack is None:
                break
            if ack.type == ACK and ack.yiaddr != "0.0.0.0":
                return lease_of(ack, self.interface, (self.clock() - self.start) * 1000)
            why = _text(ack.option(OPT_MESSAGE)) or "no reason given"
            self.log.warn(f"dhcp: {self.interface}: server {server} refused {offer.yiaddr} (NAK: {why}); "
                          "starting over")
            self.requested = ""
        raise self.failure(timeout)

    def failure(self, timeout: float) -> BootFailure:
        where = f"{self.interface} ({self.mac})"
        hint = ("check that a DHCP server (dnsmasq, the router) serves this network and the cable is in, "
                "or give a static address: ip=CLIENT::GATEWAY:NETMASK::IFACE:none")
        if not self.offers:
            return BootFailure(f"DHCP: no answer on {where} in {timeout:.0f} s "
                               f"({self.sent.get(DISCOVER, 0)} DISCOVERs sent)", hint)
        last = self.offers[-1]
        return BootFailure(f"DHCP: {where} was offered {last.yiaddr} but the server never acknowledged "
                           f"the REQUEST in {timeout:.0f} s ({self.sent.get(REQUEST, 0)} sent)", hint)


def request_lease(interface: str, mac: str, log: Log, hostname: str = "", requested: str = "",
                  timeout: float = DEFAULT_TIMEOUT, transport: Transport | None = None,
                  clock: Callable[[], float] = time.monotonic) -> Lease:
    """A lease for `interface` (its link up, no address yet) from whichever server answers."""
    t = transport if transport is not None else UdpTransport(interface)
    try:
        return Client(t, interface, mac, log, hostname, requested, clock).run(timeout)
    finally:
        if transport is None:
            t.close()
