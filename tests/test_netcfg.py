"""ip=, BOOTIF= and URL parsing (liveinit.netcfg)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveinit.netcfg import (
    DHCP,
    OFF,
    STATIC,
    IpConfig,
    Url,
    beside,
    broadcast_of,
    join_url,
    netmask_to_prefix,
    parse_bootif,
    parse_ip,
    parse_ipv4,
    parse_url,
    prefix_to_netmask,
    same_subnet,
)

octet = st.integers(0, 255)
ipv4 = st.tuples(octet, octet, octet, octet).map(lambda t: ".".join(map(str, t)))
ifname = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=15).filter(
    lambda s: s[0].isalpha())
hostname = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)


@pytest.mark.parametrize("word, method", [
    ("dhcp", DHCP), ("on", DHCP), ("any", DHCP), ("DHCP", DHCP), ("single-dhcp", DHCP),
    ("off", OFF), ("none", OFF),
])
def test_bare_words(word: str, method: str) -> None:
    assert parse_ip(word) == IpConfig(method)


def test_kernel_static_form_with_dns() -> None:
    cfg = parse_ip("10.0.2.15:10.0.2.100:10.0.2.2:255.255.255.0:kiosk1:eth0:off:10.0.2.3:1.1.1.1")
    assert cfg == IpConfig(STATIC, device="eth0", client="10.0.2.15", server="10.0.2.100", gateway="10.0.2.2",
                           netmask="255.255.255.0", hostname="kiosk1", dns=("10.0.2.3", "1.1.1.1"))


def test_kernel_form_short_and_empty_fields() -> None:
    # The kernel fills the missing fields: a client address alone is a static address.
    assert parse_ip("192.168.1.5") == IpConfig(STATIC, client="192.168.1.5")
    assert parse_ip("192.168.1.5::192.168.1.1") == IpConfig(STATIC, client="192.168.1.5",
                                                             gateway="192.168.1.1")
    assert parse_ip("::::::dhcp") == IpConfig(DHCP)
    assert parse_ip(":::::eth1:dhcp") == IpConfig(DHCP, device="eth1")
    # An address with autoconf dhcp asks the server for that address.
    assert parse_ip("10.0.0.9:::::eth0:dhcp").client == "10.0.0.9"
    assert parse_ip("10.0.0.9:::::eth0:dhcp").method == DHCP


def test_dracut_forms() -> None:
    assert parse_ip("eth0:dhcp") == IpConfig(DHCP, device="eth0")
    assert parse_ip("enp1s0:on:1400") == IpConfig(DHCP, device="enp1s0", mtu=1400)
    assert parse_ip("eth0:off") == IpConfig(OFF, device="eth0")
    # dracut's static form puts MTU (not a DNS server) after autoconf.
    assert parse_ip("10.0.0.2::10.0.0.1:255.0.0.0:h:eth0:none:9000").mtu == 9000


@pytest.mark.parametrize("value, words", [
    ("dhcp6", "IPv6"), ("eth0:auto6", "IPv6"), ("[fe80::1]::::::none", "IPv6"),
    ("bogus", "unknown"), ("eth0:maybe", "unknown autoconf"),
    ("300.1.1.1::::::none", "not an IPv4 address"), ("10.0.0.2:::255.0.255.0::eth0:none", "holes"),
    ("eth0:dhcp:1400:52:54:00:12:34:56", "MAC"),
    ("1.2.3.4:::::eth0:none:1.1.1.1:2.2.2.2:3.3.3.3:4.4.4.4", "too many"), ("eth0:dhcp:99999", "MTU"),
    ("eth0:dhcp::52-54-00-12-34-56", "MAC"), (":dhcp", "not an IPv4 address"),
    ("eth0:", "after the interface name"),
])
def test_bad_ip_values_say_what_is_wrong(value: str, words: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_ip(value)
    assert words in str(e.value)
    assert f"ip={value}" in str(e.value)


@given(client=ipv4, gw=ipv4, prefix=st.integers(0, 32), host=hostname, dev=ifname,
       dns=st.lists(ipv4, max_size=2))
def test_kernel_form_round_trip(client: str, gw: str, prefix: int, host: str, dev: str,
                                dns: list[str]) -> None:
    mask = prefix_to_netmask(prefix)
    text = ":".join([client, "", gw, mask, host, dev, "none", *dns])
    cfg = parse_ip(text)
    assert (cfg.method, cfg.client, cfg.gateway, cfg.netmask, cfg.hostname, cfg.device, cfg.dns) == \
        (STATIC, client, gw, mask, host, dev, tuple(dns))
    assert netmask_to_prefix(cfg.netmask) == prefix


@given(st.text(max_size=60))
def test_parse_ip_never_fails_other_than_valueerror(text: str) -> None:
    try:
        cfg = parse_ip(text)
    except ValueError as e:
        assert str(e)
    else:
        assert cfg.method in (DHCP, STATIC, OFF)


def test_ipv4_helpers() -> None:
    assert parse_ipv4("010.000.002.015") == "10.0.2.15"
    assert broadcast_of("10.0.2.15", 24) == "10.0.2.255"
    assert broadcast_of("10.0.2.15", 32) == "10.0.2.15"
    assert same_subnet("10.0.2.15", "10.0.2.2", 24) and not same_subnet("10.0.2.15", "10.0.3.2", 24)
    for bad in ("1.2.3", "1.2.3.4.5", "a.b.c.d", "1.2.3.256", "", "١.٢.٣.٤"):
        with pytest.raises(ValueError):
            parse_ipv4(bad)


def test_bootif() -> None:
    assert parse_bootif("01-52-54-00-12-34-56") == "52:54:00:12:34:56"
    assert parse_bootif("01-AA-BB-CC-DD-EE-FF") == "aa:bb:cc:dd:ee:ff"
    assert parse_bootif("52:54:00:12:34:56") == "52:54:00:12:34:56"
    for bad in ("02-52-54-00-12-34-56", "01-52-54-00-12-34", "zz-52-54-00-12-34-56", ""):
        with pytest.raises(ValueError, match="BOOTIF"):
            parse_bootif(bad)


@given(st.binary(min_size=6, max_size=6))
def test_bootif_round_trip(mac: bytes) -> None:
    assert parse_bootif("01-" + "-".join(f"{b:02x}" for b in mac)) == ":".join(f"{b:02x}" for b in mac)


def test_urls() -> None:
    assert parse_url("http://10.0.2.100/live/filesystem.squashfs") == \
        Url("http", "10.0.2.100", 80, "/live/filesystem.squashfs")
    u = parse_url("HTTP://Boot.Example.org:8080/a/b.squashfs?v=2#frag")
    assert u == Url("http", "boot.example.org", 8080, "/a/b.squashfs?v=2")
    assert str(u) == "http://boot.example.org:8080/a/b.squashfs?v=2" and u.hostport == "boot.example.org:8080"
    assert parse_url("http://h").path == "/" and parse_url("http://h?x").path == "/?x"


@pytest.mark.parametrize("text, words", [
    ("https://h/x", "https is not supported"), ("ftp://h/x", "unsupported scheme"), ("h/x", "not a URL"),
    ("http:///x", "no host"), ("http://u:p@h/x", "passwords"), ("http://[::1]/x", "IPv6"),
    ("http://h:0/x", "port"), ("http://h:99999/x", "port"), ("http://h:x/x", "port"),
    ("http://h/a b", "%20"), ("http://h_%/x", "host name"),
])
def test_bad_urls(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_url(text)


@given(host=st.one_of(ipv4, hostname.filter(lambda h: h[0] != "-")), port=st.integers(1, 65535),
       path=st.lists(st.text("abcXYZ019-._~%", min_size=1, max_size=8), max_size=4))
def test_url_round_trip(host: str, port: int, path: list[str]) -> None:
    text = f"http://{host}:{port}/" + "/".join(path)
    u = parse_url(text)
    assert (u.host, u.port, u.path) == (host, port, "/" + "/".join(path))
    assert parse_url(str(u)) == u


def test_redirect_targets() -> None:
    base = parse_url("http://srv:8000/live/img.squashfs?x=1")
    assert join_url(base, "other.squashfs") == parse_url("http://srv:8000/live/other.squashfs")
    assert join_url(base, "/abs/y") == parse_url("http://srv:8000/abs/y")
    assert join_url(base, "//cdn.example/y") == parse_url("http://cdn.example/y")
    assert join_url(base, "http://mirror/z") == parse_url("http://mirror/z")
    assert join_url(base, "?v=3") == parse_url("http://srv:8000/live/img.squashfs?v=3")
    assert beside(base, "SHA256SUMS") == parse_url("http://srv:8000/live/SHA256SUMS")
    with pytest.raises(ValueError, match="https"):
        join_url(base, "https://secure/y")
