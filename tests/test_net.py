"""Link bring-up (liveinit.net): interface discovery on fake sysfs trees, the
rtnetlink messages, bring_up's flow with a recording netlink and a fake DHCP
server, and the messages against the real kernel in a throw-away network
namespace (unshare -rn)."""
from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from test_dhcp import FakeServer, _reply

from liveinit import dhcp, net
from liveinit.emergency import BootFailure
from liveinit.machine import Machine
from liveinit.netcfg import IpConfig, Lease, parse_ip
from qemu.fakesysfs import log_text, quiet_log

REPO = Path(__file__).resolve().parent.parent


def nic(root: Path, name: str, index: int, mac: str, driver: str | None = "virtio_net", type_: int = 1,
        carrier: str | None = "1", operstate: str = "up", wireless: bool = False) -> None:
    """/sys/class/net/NAME as the kernel shows it (device link only for real hardware)."""
    d = root / "sys" / "class" / "net" / name
    d.mkdir(parents=True)
    for k, v in (("type", str(type_)), ("ifindex", str(index)), ("address", mac), ("operstate", operstate)):
        (d / k).write_text(v + "\n")
    if carrier is not None:
        (d / "carrier").write_text(carrier + "\n")
    if driver is not None:
        dev = root / "sys" / "devices" / "pci0000:00" / f"0000:00:0{index}.0"
        (dev / "driver").mkdir(parents=True)
        (root / "sys" / "module" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(root / "sys" / "module" / driver, dev / "driver" / "module")
        os.symlink(dev, d / "device")
    if wireless:
        (d / "wireless").mkdir()


class FakeNetlink:
    """Records requests; `fail[kind] = errno` refuses that message type."""

    def __init__(self, fail: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int, bytes, str]] = []
        self.fail = fail or {}

    def request(self, kind: int, flags: int, payload: bytes, what: str) -> None:
        self.calls.append((kind, flags, payload, what))
        if kind in self.fail:
            raise OSError(self.fail[kind], f"{what}: {os.strerror(self.fail[kind])}")

    def close(self) -> None:
        pass

    def whats(self) -> list[str]:
        return [c[3] for c in self.calls]


def _m(root: Path) -> Machine:
    return Machine(str(root), sys=False)


def test_links_skips_loopback_virtual_and_wireless(tmp_path: Path) -> None:
    nic(tmp_path, "lo", 1, "00:00:00:00:00:00", driver=None, type_=772)
    nic(tmp_path, "eth1", 3, "52:54:00:00:00:02", driver="e1000")
    nic(tmp_path, "eth0", 2, "52:54:00:00:00:01")
    nic(tmp_path, "wlan0", 4, "52:54:00:00:00:03", driver="iwlwifi", wireless=True)
    nic(tmp_path, "br0", 5, "52:54:00:00:00:04", driver=None)
    assert net.links(_m(tmp_path)) == [net.Link("eth0", 2, "52:54:00:00:00:01", "virtio_net"),
                                       net.Link("eth1", 3, "52:54:00:00:00:02", "e1000")]


def test_pick_by_name_bootif_or_all(tmp_path: Path) -> None:
    a, b = net.Link("eth0", 2, "52:54:00:00:00:01", ""), net.Link("eth1", 3, "52:54:00:00:00:02", "")
    assert net.pick([a, b], IpConfig("dhcp"), "") == [a, b]
    assert net.pick([a, b], IpConfig("dhcp", device="eth1"), "52:54:00:00:00:01") == [b]
    assert net.pick([a, b], IpConfig("dhcp"), "52:54:00:00:00:02") == [b]
    assert net.pick([a, b], IpConfig("dhcp", device="eth9"), "") == []


def test_carrier(tmp_path: Path) -> None:
    nic(tmp_path, "eth0", 2, "m", carrier="1", operstate="up")
    nic(tmp_path, "eth1", 3, "m", carrier="0", operstate="down")
    nic(tmp_path, "eth2", 4, "m", carrier=None, operstate="down")       # down: reading carrier fails
    nic(tmp_path, "eth3", 5, "m", carrier="1", operstate="unknown")     # drivers without operstate
    m = _m(tmp_path)
    assert [net.has_carrier(m, n) for n in ("eth0", "eth1", "eth2", "eth3")] == [True, False, False, True]


def test_message_bytes() -> None:
    up = net.nlmsg(net.RTM_NEWLINK, net.NLM_F_REQUEST | net.NLM_F_ACK, 7, net.link_up_msg(2, 1400))
    assert struct.unpack_from("=IHHII", up) == (len(up), 16, 5, 7, 0)
    assert struct.unpack_from("=BxHiII", up, 16) == (0, 0, 2, 1, 1)
    assert up[32:] == struct.pack("=HHI", 8, net.IFLA_MTU, 1400)
    addr = net.addr_msg(2, "10.0.2.15", 24, "10.0.2.255")
    assert addr[:8] == bytes((2, 24, 0, 0)) + struct.pack("=i", 2)
    assert addr[8:] == b"".join(struct.pack("=HH", 8, k) + bytes(v) for k, v in (
        (net.IFA_LOCAL, (10, 0, 2, 15)), (net.IFA_ADDRESS, (10, 0, 2, 15)),
        (net.IFA_BROADCAST, (10, 0, 2, 255))))
    route = net.default_route_msg(3, "10.0.2.2", onlink=True)
    assert route[:12] == bytes((2, 0, 0, 0, 254, 3, 0, 1)) + struct.pack("=I", net.RTNH_F_ONLINK)
    assert route[12:] == struct.pack("=HH", 8, net.RTA_GATEWAY) + bytes((10, 0, 2, 2)) + \
        struct.pack("=HHi", 8, net.RTA_OIF, 3)
    assert net.rtattr(1, b"abcde") == struct.pack("=HH", 9, 1) + b"abcde\0\0\0"


def test_parse_ack() -> None:
    other = net.nlmsg(3, 0, 5, b"")                                 # NLMSG_DONE of another request
    ok = net.nlmsg(net.NLMSG_ERROR, 0, 6, struct.pack("=i", 0) + bytes(16))
    bad = net.nlmsg(net.NLMSG_ERROR, 0, 7, struct.pack("=i", -errno.EEXIST) + bytes(16))
    assert net.parse_ack(other + ok, 6) == 0
    assert net.parse_ack(other + bad, 7) == errno.EEXIST
    assert net.parse_ack(other, 6) is None and net.parse_ack(b"\0" * 3, 1) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def _dhcp_ok(req: dhcp.Message, n: int) -> list[bytes]:
    return [_reply(dhcp.OFFER if req.type == dhcp.DISCOVER else dhcp.ACK, req)]


def test_bring_up_with_dhcp(tmp_path: Path) -> None:
    nic(tmp_path, "eth0", 2, "52:54:00:12:34:56", carrier="0", operstate="down")
    nic(tmp_path, "eth1", 3, "52:54:00:12:34:57", driver="e1000")
    nl, clock, log = FakeNetlink(), Clock(), quiet_log()
    lease = net.bring_up(_m(tmp_path), parse_ip("dhcp"), log, nl=nl, dhcp_transport=FakeServer(_dhcp_ok),
                         clock=clock, sleep=clock.sleep)
    # Both set up (carriers come up in parallel), the one with a link configured.
    assert nl.whats() == ["set eth0 up", "set eth1 up", "add 10.0.2.15/24 to eth1",
                          "add default route via 10.0.2.2 dev eth1"]
    assert nl.calls[2][2][4:8] == struct.pack("=i", 3)
    assert (lease.interface, lease.mac, lease.address, lease.router, lease.dns) == \
        ("eth1", "52:54:00:12:34:57", "10.0.2.15", "10.0.2.2", ("10.0.2.3", "1.1.1.1"))
    assert "network: eth1 10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3,1.1.1.1 (dhcp from 10.0.2.2)" \
        in log_text(log)


def test_bring_up_static_with_onlink_gateway(tmp_path: Path) -> None:
    nic(tmp_path, "eth0", 2, "52:54:00:12:34:56")
    nl, clock = FakeNetlink(), Clock()
    lease = net.bring_up(_m(tmp_path), parse_ip("192.168.7.9::10.0.0.1:255.255.255.0:box:eth0:none:9.9.9.9"),
                         quiet_log(), nl=nl, clock=clock, sleep=clock.sleep)
    assert lease == Lease("eth0", "52:54:00:12:34:56", "192.168.7.9", 24, "192.168.7.255", "10.0.0.1",
                          ("9.9.9.9",), "box", method="static", ms=lease.ms)
    assert nl.calls[-1][2][8:12] == struct.pack("=I", net.RTNH_F_ONLINK)   # gateway outside the subnet


def test_waits_for_the_interface_and_its_carrier(tmp_path: Path) -> None:
    clock = Clock()
    m = _m(tmp_path)

    def sleep(s: float) -> None:
        clock.sleep(s)
        if clock.now >= 0.5 and not m.exists("/sys/class/net/eth0"):
            nic(tmp_path, "eth0", 2, "52:54:00:12:34:56", carrier="0", operstate="down")   # driver loaded
        if clock.now >= 1.5:
            (tmp_path / "sys/class/net/eth0/carrier").write_text("1\n")
            (tmp_path / "sys/class/net/eth0/operstate").write_text("up\n")

    lease = net.bring_up(m, IpConfig("dhcp", device="eth0"), quiet_log(), nl=FakeNetlink(),
                         dhcp_transport=FakeServer(_dhcp_ok), clock=clock, sleep=sleep)
    assert lease.interface == "eth0" and 1.5 <= clock.now < 1.6


@pytest.mark.parametrize("setup, cfg, bootif, words", [
    ("none", "dhcp", "", "waited 30 s for a wired Ethernet interface; interfaces seen: none"),
    ("eth0", "eth7:dhcp", "", "waited 30 s for interface eth7 (from ip=); interfaces seen: eth0 (52:54:"),
    ("eth0", "dhcp", "aa:bb:cc:dd:ee:ff", "the interface with MAC aa:bb:cc:dd:ee:ff (BOOTIF=)"),
    ("nocarrier", "dhcp", "", "no link on eth0 (52:54:00:12:34:56, virtio_net) after 10 s"),
    ("eth0", "off", "", "ip=off"),
])
def test_failures_name_what_to_change(tmp_path: Path, setup: str, cfg: str, bootif: str, words: str) -> None:
    if setup != "none":
        nic(tmp_path, "eth0", 2, "52:54:00:12:34:56", carrier="0" if setup == "nocarrier" else "1")
    clock = Clock()
    with pytest.raises(BootFailure) as e:
        net.bring_up(_m(tmp_path), parse_ip(cfg), quiet_log(), bootif, nl=FakeNetlink(),
                     dhcp_transport=FakeServer(_dhcp_ok), clock=clock, sleep=clock.sleep)
    assert words in e.value.message and e.value.hint


def test_dhcp_silence_and_kernel_refusal(tmp_path: Path) -> None:
    nic(tmp_path, "eth0", 2, "52:54:00:12:34:56")
    srv = FakeServer(lambda req, n: [])
    with pytest.raises(BootFailure, match="DHCP: no answer on eth0 .* in 5 s"):
        net.bring_up(_m(tmp_path), parse_ip("dhcp"), quiet_log(), nl=FakeNetlink(), dhcp_transport=srv,
                     dhcp_timeout=5, clock=srv.clock, sleep=lambda s: None)
    nl = FakeNetlink(fail={net.RTM_NEWADDR: errno.EINVAL})
    with pytest.raises(BootFailure, match="add 10.0.2.15/24 to eth0: Invalid argument"):
        net.bring_up(_m(tmp_path), parse_ip("dhcp"), quiet_log(), nl=nl, dhcp_transport=FakeServer(_dhcp_ok))


NETNS_SCRIPT = """
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from liveinit import net
from liveinit.netcfg import Lease
nl = net.Rtnl()
net.set_up(nl, net.Link("lo", 1, "00:00:00:00:00:00", ""))
lease = Lease("lo", "", "10.9.8.7", 24, "10.9.8.255", "192.168.1.1")
net.configure(nl, lease, 1)
net.configure(nl, lease, 1)          # again: NLM_F_REPLACE makes it idempotent
try:
    nl.request(net.RTM_NEWADDR, 0, net.addr_msg(999, "1.2.3.4", 8, ""), "add 1.2.3.4/8 to ifindex 999")
    err = ""
except OSError as e:
    err = str(e)
out = lambda *a: subprocess.run(["ip", "-j", *a], capture_output=True, text=True, check=True).stdout
print(json.dumps({"addr": json.loads(out("addr", "show", "lo")), "route": json.loads(out("route")),
                  "err": err}))
"""


def test_rtnetlink_against_the_real_kernel() -> None:
    """In a new user+network namespace (unprivileged): set lo up, add an address and an
    on-link default route, read them back with iproute2, and see ENODEV named."""
    out = subprocess.run(["unshare", "-rn", sys.executable, "-c", NETNS_SCRIPT, str(REPO)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    lo = got["addr"][0]
    assert "UP" in lo["flags"]
    assert {"family": "inet", "local": "10.9.8.7", "prefixlen": 24, "broadcast": "10.9.8.255"}.items() <= \
        next(a for a in lo["addr_info"] if a.get("local") == "10.9.8.7").items()
    assert got["route"][0]["dst"] == "default" and got["route"][0]["gateway"] == "192.168.1.1"
    assert "onlink" in got["route"][0]["flags"]
    assert got["err"] == "[Errno 19] add 1.2.3.4/8 to ifindex 999: No such device"
