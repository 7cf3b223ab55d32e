"""The stub resolver (liveinit.dns) against a fake name server on 127.0.0.1."""
from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from liveinit import dns
from liveinit.emergency import BootFailure


def _answer(query: bytes, rcode: int = 0, cname: bool = False, addr: bytes = b"\x0a\x00\x02\x64") -> bytes:
    qid = query[:2]
    question = query[12:]
    records = b""
    if cname:   # boot.lab CNAME srv (pointer to the question name at 12), then the A record
        records += b"\xc0\x0c" + struct.pack("!HHIH", dns.TYPE_CNAME, 1, 60, 5) + b"\x03srv\x00"
    if not rcode and addr:
        records += b"\xc0\x0c" + struct.pack("!HHIH", dns.TYPE_A, 1, 60, 4) + addr
    count = (1 if cname else 0) + (1 if not rcode and addr else 0)
    return qid + struct.pack("!HHHHH", 0x8180 | rcode, 1, count, 0, 0) + question + records


class FakeDns:
    """Answers per name: "ok", "cname", "nx", "empty", "silent"."""

    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.asked: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            labels, at = [], 12
            while data[at]:
                labels.append(data[at + 1:at + 1 + data[at]].decode())
                at += 1 + data[at]
            name = ".".join(labels)
            self.asked.append(name)
            how = self.behaviour.get(name, "nx")
            if how == "silent":
                continue
            self.sock.sendto(b"junk", peer)                  # garbage first: must be skipped
            self.sock.sendto(_answer(data, rcode=3 if how == "nx" else 0, cname=how == "cname",
                                     addr=b"" if how == "empty" else b"\x0a\x00\x02\x64"), peer)


@pytest.fixture
def server() -> Iterator[FakeDns]:
    srv = FakeDns({"boot.lab": "ok", "alias.lab": "cname", "noaddr.lab": "empty", "slow.lab": "silent",
                   "kiosk.example.org": "ok"})
    yield srv
    srv.stop.set()
    srv.thread.join(2)
    srv.sock.close()


def test_resolves_a_and_cname(server: FakeDns) -> None:
    assert dns.resolve("boot.lab", ("127.0.0.1",), port=server.port) == "10.0.2.100"
    assert dns.resolve("alias.lab", ("127.0.0.1",), port=server.port) == "10.0.2.100"


def test_literal_addresses_need_no_server() -> None:
    assert dns.resolve("010.0.2.100", ()) == "10.0.2.100"


def test_bare_name_gets_the_lease_domain(server: FakeDns) -> None:
    assert dns.resolve("kiosk", ("127.0.0.1",), domain="example.org", port=server.port) == "10.0.2.100"
    assert server.asked == ["kiosk.example.org"]


def test_nxdomain_is_not_asked_again(server: FakeDns) -> None:
    with pytest.raises(BootFailure) as e:
        dns.resolve("missing.lab", ("127.0.0.1",), port=server.port)
    assert "cannot resolve 'missing.lab' (127.0.0.1: no such name (NXDOMAIN))" in e.value.message
    assert server.asked == ["missing.lab"] and "IP address" in e.value.hint
    with pytest.raises(BootFailure, match="no IPv4 address"):
        dns.resolve("noaddr.lab", ("127.0.0.1",), port=server.port)


def test_silent_server_times_out_every_round(server: FakeDns) -> None:
    with pytest.raises(BootFailure, match=r"127.0.0.1: no answer in 0.2 s"):
        dns.resolve("slow.lab", ("127.0.0.1",), timeout=0.2, rounds=2, port=server.port)
    assert server.asked == ["slow.lab", "slow.lab"]


def test_no_server_says_what_to_do() -> None:
    with pytest.raises(BootFailure) as e:
        dns.resolve("boot.lab", ())
    assert "no name server" in e.value.message and "ip=" in e.value.hint


def test_codec() -> None:
    q = dns.encode_query(0x1234, "boot.lab.")
    assert q == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x04boot\x03lab\x00\x00\x01\x00\x01"
    assert dns.decode_answer(_answer(q, cname=True), 0x1234) == (0, ["10.0.2.100"])
    assert dns.decode_answer(_answer(q, rcode=3), 0x1234) == (3, [])
    for bad in (b"", _answer(q)[:-2], _answer(dns.encode_query(1, "boot.lab")), q):
        with pytest.raises(ValueError):
            dns.decode_answer(bad, 0x1234)
    with pytest.raises(ValueError):
        dns.encode_query(1, "a..b")
