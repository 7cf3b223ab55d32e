"""The DHCP client (liveinit.dhcp): the packet codec, the exchange against
fake servers (in-process with a fake clock, and over real UDP on 127.0.0.1)."""
from __future__ import annotations

import socket
import struct
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveinit import dhcp
from liveinit.dhcp import (
    ACK,
    BOOTREPLY,
    BOOTREQUEST,
    DISCOVER,
    NAK,
    OFFER,
    REQUEST,
    Client,
    Message,
    UdpTransport,
    client_message,
    decode,
    encode,
    lease_of,
)
from liveinit.emergency import BootFailure
from liveinit.netcfg import Lease
from qemu.fakesysfs import log_text, quiet_log

MAC = "52:54:00:12:34:56"
octet = st.integers(0, 255)
ipv4 = st.tuples(octet, octet, octet, octet).map(lambda t: ".".join(map(str, t)))
mac = st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b))
options = st.dictionaries(st.integers(1, 254), st.binary(max_size=600), max_size=8).map(
    lambda d: tuple(d.items()))


@given(op=st.sampled_from((BOOTREQUEST, BOOTREPLY)), xid=st.integers(0, 2**32 - 1),
       secs=st.integers(0, 0xFFFF), flags=st.integers(0, 0xFFFF),
       addrs=st.lists(ipv4, min_size=4, max_size=4), chaddr=mac, opts=options)
def test_codec_round_trip(op: int, xid: int, secs: int, flags: int, addrs: list[str], chaddr: str,
                          opts: tuple[tuple[int, bytes], ...]) -> None:
    msg = Message(op, xid, secs, flags, *addrs, chaddr, opts)
    data = encode(msg)
    assert len(data) >= dhcp.MIN_PACKET
    assert decode(data) == msg


@given(st.binary(max_size=400))
def test_decode_refuses_garbage_with_valueerror(data: bytes) -> None:
    try:
        decode(data)
    except ValueError as e:
        assert str(e)


def test_wire_format_of_a_discover() -> None:
    data = encode(client_message(DISCOVER, 0x01020304, MAC, secs=3, hostname="kiosk"))
    assert data[:4] == b"\x01\x01\x06\x00" and data[4:8] == b"\x01\x02\x03\x04"
    assert struct.unpack("!HH", data[8:12]) == (3, dhcp.FLAG_BROADCAST)
    assert data[28:34] == bytes.fromhex("525400123456") and data[236:240] == dhcp.MAGIC
    assert data[240:243] == b"\x35\x01\x01"                            # option 53: DISCOVER first
    assert b"\x3d\x07\x01" + bytes.fromhex("525400123456") in data     # client id 01+MAC
    assert b"\x0c\x05kiosk" in data and b"\x3c\x08liveinit" in data


def test_overloaded_file_field_is_read() -> None:
    msg = Message(BOOTREPLY, 7, chaddr=MAC, options=((dhcp.OPT_MSG_TYPE, bytes((ACK,))),
                                                     (dhcp.OPT_OVERLOAD, b"\x01")))
    data = bytearray(encode(msg))
    data[108:108 + 6] = b"\x0c\x04host"         # the file field carries option 12
    data[114] = 255
    assert decode(bytes(data)).option(dhcp.OPT_HOSTNAME) == b"host"


def _reply(kind: int, req: Message, yiaddr: str = "10.0.2.15", extra: tuple = ()) -> bytes:
    opts = ((dhcp.OPT_MSG_TYPE, bytes((kind,))), (dhcp.OPT_SERVER_ID, bytes((10, 0, 2, 2))),
            (dhcp.OPT_SUBNET, bytes((255, 255, 255, 0))), (dhcp.OPT_ROUTER, bytes((10, 0, 2, 2))),
            (dhcp.OPT_DNS, bytes((10, 0, 2, 3, 1, 1, 1, 1))), (dhcp.OPT_LEASE_TIME, struct.pack("!I", 86400)),
            (dhcp.OPT_DOMAIN, b"lab\0"), *extra)
    return encode(Message(BOOTREPLY, req.xid, 0, 0x8000, "0.0.0.0", yiaddr, "10.0.2.2", "0.0.0.0",
                          req.chaddr, opts))


class FakeServer:
    """An in-process transport: `script(request) -> list of reply bytes` per
    request; time passes only while the client waits (`clock`)."""

    def __init__(self, script) -> None:  # type: ignore[no-untyped-def]
        self.script = script
        self.now = 100.0
        self.queue: list[bytes] = []
        self.sent: list[Message] = []
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def send(self, data: bytes) -> None:
        msg = decode(data)
        self.sent.append(msg)
        self.queue += self.script(msg, len(self.sent))

    def recv(self, timeout: float) -> bytes | None:
        if self.queue:
            self.now += 0.001
            return self.queue.pop(0)
        self.waits.append(round(timeout, 3))
        self.now += timeout
        return None

    def close(self) -> None:
        pass


def _client(srv: FakeServer, **kw) -> Client:  # type: ignore[no-untyped-def]
    return Client(srv, "eth0", MAC, quiet_log(), clock=srv.clock, jitter=lambda: 1.0, **kw)


def test_full_exchange() -> None:
    def script(req: Message, n: int) -> list[bytes]:
        if req.type == DISCOVER:
            return [b"junk", _reply(OFFER, req.replace(xid=req.xid + 1)), _reply(OFFER, req)]
        assert req.option(dhcp.OPT_REQUESTED_IP) == bytes((10, 0, 2, 15))
        assert req.option(dhcp.OPT_SERVER_ID) == bytes((10, 0, 2, 2))
        return [_reply(ACK, req)]

    srv = FakeServer(script)
    lease = _client(srv, hostname="kiosk").run()
    assert lease == Lease("eth0", MAC, "10.0.2.15", 24, "10.0.2.255", "10.0.2.2", ("10.0.2.3", "1.1.1.1"),
                          "", "lab", "10.0.2.2", 86400, "dhcp", lease.ms)
    assert [m.type for m in srv.sent] == [DISCOVER, REQUEST]
    assert srv.sent[0].xid == srv.sent[1].xid and srv.sent[0].flags == dhcp.FLAG_BROADCAST


def test_retransmits_with_exponential_backoff_then_fails_clearly() -> None:
    srv = FakeServer(lambda req, n: [])
    c = _client(srv)
    with pytest.raises(BootFailure) as e:
        c.run(timeout=20)
    assert srv.waits == [1.0, 2.0, 4.0, 8.0, 5.0]               # doubling, capped by the deadline
    assert [m.secs for m in srv.sent] == [0, 1, 3, 7, 15]       # seconds since the start
    assert "no answer on eth0 (52:54:00:12:34:56) in 20 s (5 DISCOVERs sent)" in e.value.message
    assert "ip=" in e.value.hint


def test_backoff_is_capped() -> None:
    srv = FakeServer(lambda req, n: [])
    with pytest.raises(BootFailure):
        _client(srv).run(timeout=60)
    assert max(srv.waits) == dhcp.MAX_WAIT and srv.waits[:5] == [1.0, 2.0, 4.0, 8.0, 8.0]


def test_lost_request_is_resent_and_nak_starts_over() -> None:
    def script(req: Message, n: int) -> list[bytes]:
        if req.type == DISCOVER:
            return [_reply(OFFER, req, f"10.0.2.{14 + n}")]
        if n == 2:
            return []                              # the first REQUEST is lost
        if n == 3:
            return [_reply(NAK, req, "0.0.0.0", ((dhcp.OPT_MESSAGE, b"address taken"),))]
        return [_reply(ACK, req, "10.0.2.18")]

    srv = FakeServer(script)
    c = _client(srv, requested="10.0.2.99")
    lease = c.run()
    assert [m.type for m in srv.sent] == [DISCOVER, REQUEST, REQUEST, DISCOVER, REQUEST]
    assert srv.sent[0].option(dhcp.OPT_REQUESTED_IP) == bytes((10, 0, 2, 99))   # ip=CLIENT:...:dhcp
    assert srv.sent[3].option(dhcp.OPT_REQUESTED_IP) is None                    # not after the NAK
    assert lease.address == "10.0.2.18"
    assert "refused 10.0.2.15 (NAK: address taken)" in log_text(c.log)


def test_offer_without_ack_says_so() -> None:
    srv = FakeServer(lambda req, n: [_reply(OFFER, req)] if req.type == DISCOVER else [])
    with pytest.raises(BootFailure, match="offered 10.0.2.15 but the server never acknowledged"):
        _client(srv).run(timeout=10)


def test_lease_defaults_when_options_are_missing() -> None:
    ack = Message(BOOTREPLY, 1, yiaddr="172.16.5.9", siaddr="172.16.0.1", chaddr=MAC,
                  options=((dhcp.OPT_MSG_TYPE, bytes((ACK,))),))
    lease = lease_of(ack, "eth1")
    assert (lease.prefix, lease.broadcast, lease.router, lease.dns, lease.server, lease.lease_time) == \
        (16, "172.16.255.255", "", (), "172.16.0.1", 0)


def test_real_udp_sockets_on_loopback() -> None:
    """The real transport (sendto/recv with timeouts) against a server thread on 127.0.0.1."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    seen: list[int] = []

    def serve() -> None:
        for _ in range(3):
            data, peer = srv.recvfrom(2048)
            req = decode(data)
            seen.append(req.type)
            if req.type == DISCOVER and seen.count(DISCOVER) == 1:
                continue                           # drop the first DISCOVER: the client must resend
            srv.sendto(_reply(OFFER if req.type == DISCOVER else ACK, req), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    transport = UdpTransport(None, bind=("127.0.0.1", 0), server=("127.0.0.1", port))
    try:
        c = Client(transport, "lo", MAC, quiet_log(), jitter=lambda: 0.2)
        lease = c.run(timeout=10)
    finally:
        transport.close()
        t.join(5)
        srv.close()
    assert seen == [DISCOVER, DISCOVER, REQUEST]
    assert lease.address == "10.0.2.15" and lease.router == "10.0.2.2"
