"""A stub resolver for the boot: one A query over UDP to the name servers
the lease (or `ip=`) gave, each tried in turn, a few rounds, then a clear
failure. No /etc/hosts, no search domains beyond the lease's domain for a
bare name, no TCP fallback (an A answer always fits in 512 bytes)."""
from __future__ import annotations

import _socket
import os
import struct
import time

from liveinit.emergency import BootFailure
from liveinit.netcfg import is_ipv4, parse_ipv4

DNS_PORT = 53
TIMEOUT = 2.0               # seconds per query
ROUNDS = 3                  # times every server is tried
TYPE_A, TYPE_CNAME, CLASS_IN = 1, 5, 1
FLAG_RD = 0x0100
RCODES = {1: "format error", 2: "server failure", 3: "no such name (NXDOMAIN)", 4: "not implemented",
          5: "refused"}
HEADER = struct.Struct("!HHHHHH")
NO_ADDRESS = "no IPv4 address (A record) for this name"


def encode_query(qid: int, name: str) -> bytes:
    """A recursive query for the A records of `name`."""
    labels = [part.encode("ascii") for part in name.rstrip(".").split(".")]
    if not labels or any(not 0 < len(lb) < 64 for lb in labels):
        raise ValueError(f"{name!r} is not a valid host name")
    q = b"".join(bytes((len(lb),)) + lb for lb in labels) + b"\0"
    return HEADER.pack(qid, FLAG_RD, 1, 0, 0, 0) + q + struct.pack("!HH", TYPE_A, CLASS_IN)


def _skip_name(data: bytes, at: int) -> int:
    while True:
        if at >= len(data):
            raise ValueError("DNS name runs past the end of the packet")
        n = data[at]
        if n & 0xC0 == 0xC0:
            return at + 2
        if n == 0:
            return at + 1
        at += 1 + n


def decode_answer(data: bytes, qid: int) -> tuple[int, list[str]]:
    """(rcode, IPv4 addresses of the A records) of a response to query `qid`;
    ValueError for anything that is not one."""
    if len(data) < HEADER.size:
        raise ValueError("DNS response too short")
    rid, flags, qd, an, _ns, _ar = HEADER.unpack_from(data)
    if rid != qid or not flags & 0x8000:
        raise ValueError("not the response to our query")
    at = HEADER.size
    for _ in range(qd):
        at = _skip_name(data, at) + 4
    addrs = []
    for _ in range(an):
        at = _skip_name(data, at)
        if at + 10 > len(data):
            raise ValueError("DNS record runs past the end of the packet")
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", data, at)
        at += 10
        if at + rdlen > len(data):
            raise ValueError("DNS record data runs past the end of the packet")
        if rtype == TYPE_A and rclass == CLASS_IN and rdlen == 4:
            addrs.append(".".join(str(b) for b in data[at:at + 4]))
        at += rdlen
    return flags & 0xF, addrs


def resolve(name: str, servers: tuple[str, ...], domain: str = "", timeout: float = TIMEOUT,
            rounds: int = ROUNDS, port: int = DNS_PORT) -> str:
    """The first IPv4 address of `name` (a dotted quad is returned as is)."""
    if is_ipv4(name):
        return parse_ipv4(name)
    if not servers:
        raise BootFailure(f"DNS: cannot look up {name!r}: no name server (DHCP gave none)",
                          "use the server's IP address in the URL, or give one: "
                          "ip=CLIENT::GW:NETMASK::IFACE:none:DNS0")
    names = [name] if "." in name or not domain else [f"{name}.{domain}", name]
    why: dict[str, str] = {}
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        for _ in range(rounds):
            settled = True      # every server answered that the name has no address
            for server in servers:
                for qname in names:
                    ok, text = _ask(sock, server, port, qname, timeout)
                    if ok:
                        return text
                why[server] = text
                settled = settled and (text == RCODES[3] or text == NO_ADDRESS)
            if settled:
                break
        detail = "; ".join(f"{s}: {w}" for s, w in why.items())
        raise BootFailure(f"DNS: cannot resolve {name!r} ({detail})",
                          "check the host name in the URL, or use the server's IP address instead")
    finally:
        sock.close()


def _ask(sock: _socket.socket, server: str, port: int, qname: str, timeout: float) -> tuple[bool, str]:
    """(True, address) or (False, why)."""
    qid = int.from_bytes(os.urandom(2), "big")
    try:
        query = encode_query(qid, qname)
    except (ValueError, UnicodeError):
        return False, f"{qname!r} is not a valid host name"
    deadline = time.monotonic() + timeout
    try:
        sock.sendto(query, (server, port))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data, peer = sock.recvfrom(1500)
            if peer[0] != server:
                continue
            try:
                rcode, addrs = decode_answer(data, qid)
            except ValueError:
                continue
            if rcode:
                return False, RCODES.get(rcode, f"error code {rcode}")
            if addrs:
                return True, addrs[0]
            return False, NO_ADDRESS
    except TimeoutError:
        pass
    except OSError as e:
        return False, str(e.strerror or e)
    return False, f"no answer in {timeout:g} s"
