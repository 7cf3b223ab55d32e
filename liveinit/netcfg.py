"""What the command line says about the network, and the records the network
code hands back: `ip=` (the kernel's and dracut's forms), `BOOTIF=` (the
MAC the PXE firmware booted from), `http://` URLs, and the `Lease` a link
got (from DHCP or `ip=` itself).

Pure parsers, shared by the runtime and the packer. Bad input raises
ValueError with a message that names the parameter and says what to write
instead; IPv6 and HTTPS are refused by name (not supported at boot)."""
from __future__ import annotations

from liveinit.plain import Plain

DHCP, STATIC, OFF = "dhcp", "static", "off"
# autoconf words of the kernel's ip= (Documentation/admin-guide/nfs/nfsroot.rst)
# and dracut's (dracut.cmdline(7)): DHCP for all but off/none.
AUTOCONF = {"dhcp": DHCP, "on": DHCP, "any": DHCP, "both": DHCP, "bootp": DHCP, "rarp": DHCP,
            "single-dhcp": DHCP, "either6": DHCP, "off": OFF, "none": OFF, "": OFF}
IPV6_AUTOCONF = ("dhcp6", "auto6", "link6", "ibft")
HTTP_PORT = 80
MAX_PREFIX = 32


class IpConfig(Plain):
    """How to configure the network. method: "dhcp" | "static" | "off";
    device: interface name, "" for the first with a link; client, gateway,
    netmask, server: dotted quads or ""; dns: name servers given on the
    command line; mtu: 0 = the driver's."""

    __slots__ = ("method", "device", "client", "server", "gateway", "netmask", "hostname", "dns", "mtu")
    method: str
    device: str
    client: str
    server: str
    gateway: str
    netmask: str
    hostname: str
    dns: tuple[str, ...]
    mtu: int
    _defaults = {"device": "", "client": "", "server": "", "gateway": "", "netmask": "", "hostname": "",
                 "dns": (), "mtu": 0}


class Url(Plain):
    """An http:// URL: host (name or dotted quad), port, path (with any query)."""

    __slots__ = ("scheme", "host", "port", "path")
    scheme: str
    host: str
    port: int
    path: str

    def __str__(self) -> str:
        port = "" if self.port == HTTP_PORT else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}{self.path}"

    @property
    def hostport(self) -> str:
        """The Host: header's value."""
        return self.host if self.port == HTTP_PORT else f"{self.host}:{self.port}"


class Lease(Plain):
    """A configured link: interface, mac, address/prefix, broadcast, router
    ("" for none), dns servers, hostname and domain the server gave, server
    (DHCP server id, "" for static), lease_time (s, 0 = static/infinite),
    method ("dhcp" | "static"), ms (time from link up to configured)."""

    __slots__ = ("interface", "mac", "address", "prefix", "broadcast", "router", "dns", "hostname",
                 "domain", "server", "lease_time", "method", "ms")
    interface: str
    mac: str
    address: str
    prefix: int
    broadcast: str
    router: str
    dns: tuple[str, ...]
    hostname: str
    domain: str
    server: str
    lease_time: int
    method: str
    ms: float
    _defaults = {"broadcast": "", "router": "", "dns": (), "hostname": "", "domain": "", "server": "",
                 "lease_time": 0, "method": DHCP, "ms": 0.0}

    @property
    def netmask(self) -> str:
        return prefix_to_netmask(self.prefix)


# -- IPv4 helpers -------------------------------------------------------------

def parse_ipv4(text: str, what: str = "address") -> str:
    """A canonical dotted quad, or ValueError naming `what`."""
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and len(p) <= 3 and int(p) <= 255
                                  for p in parts):
        raise ValueError(f"{what} {text!r} is not an IPv4 address (write it as four numbers, e.g. 10.0.2.15)")
    return ".".join(str(int(p)) for p in parts)


def is_ipv4(text: str) -> bool:
    try:
        parse_ipv4(text)
    except ValueError:
        return False
    return True


def ipv4_int(addr: str) -> int:
    a, b, c, d = (int(p) for p in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_ipv4(n: int) -> str:
    return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def netmask_to_prefix(mask: str) -> int:
    """255.255.255.0 -> 24; a mask whose ones are not contiguous is refused."""
    n = ipv4_int(parse_ipv4(mask, "netmask"))
    prefix = 32 - (~n & 0xFFFFFFFF).bit_length()
    if prefix_to_int(prefix) != n:
        raise ValueError(f"netmask {mask!r} has holes (its one bits must be contiguous, e.g. 255.255.255.0)")
    return prefix


def prefix_to_int(prefix: int) -> int:
    return (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF


def prefix_to_netmask(prefix: int) -> str:
    return int_ipv4(prefix_to_int(prefix))


def broadcast_of(addr: str, prefix: int) -> str:
    return int_ipv4(ipv4_int(addr) | (~prefix_to_int(prefix) & 0xFFFFFFFF))


def same_subnet(a: str, b: str, prefix: int) -> bool:
    mask = prefix_to_int(prefix)
    return ipv4_int(a) & mask == ipv4_int(b) & mask


def classful_prefix(addr: str) -> int:
    """The kernel's default netmask for an address with none (class A/B/C)."""
    first = ipv4_int(addr) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


# -- ip= ------------------------------------------------------------------------

def parse_ip(value: str) -> IpConfig:
    """One `ip=` value (without "ip=").

    Forms: dhcp | on | any | off | none (and dracut's single-dhcp);
    IFACE:dhcp|on|any|off[:MTU[:MAC]] (dracut);
    CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF[:DNS0[:DNS1[:NTP]]] (the kernel),
    where dracut puts [:MTU[:MAC]] after AUTOCONF instead (told apart by their shape)."""
    v = value.strip()
    low = v.lower()
    if low in IPV6_AUTOCONF or v.startswith("["):
        raise ValueError(f"ip={value}: IPv6 is not supported at boot; use ip=dhcp or a static IPv4 ip=")
    if ":" not in v and not is_ipv4(v):
        if low not in AUTOCONF or low == "":
            raise ValueError(f"ip={value}: unknown; write ip=dhcp, ip=off, ip=IFACE:dhcp or "
                             "ip=CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:none")
        return IpConfig(AUTOCONF[low])
    fields = v.split(":")
    if not all(c.isdigit() or c == "." for c in fields[0]):   # the kernel form starts with the client address
        return _iface_form(value, fields)
    return _kernel_form(value, fields)


def _autoconf(value: str, word: str) -> str:
    low = word.lower()
    if low in IPV6_AUTOCONF:
        raise ValueError(f"ip={value}: autoconf {word!r} (IPv6/iBFT) is not supported at boot; "
                         "use dhcp or none")
    if low not in AUTOCONF:
        raise ValueError(f"ip={value}: unknown autoconf {word!r}; use dhcp, on, any, off or none")
    return AUTOCONF[low]


def _mtu(value: str, text: str) -> int:
    if not text:
        return 0
    if not text.isdigit() or not 68 <= int(text) <= 65535:
        raise ValueError(f"ip={value}: MTU {text!r} is not a number between 68 and 65535")
    return int(text)


def _iface_form(value: str, fields: list[str]) -> IpConfig:
    device, word = fields[0], fields[1]
    if not device:
        raise ValueError(f"ip={value}: the interface name before ':' is empty")
    if not word:
        raise ValueError(f"ip={value}: say dhcp or off after the interface name (ip={device}:dhcp)")
    mtu = _mtu(value, fields[2]) if len(fields) > 2 else 0
    if any(fields[3:]):
        raise ValueError(f"ip={value}: setting the MAC address is not supported at boot; leave it out")
    return IpConfig(_autoconf(value, word), device=device, mtu=mtu)


def _kernel_form(value: str, fields: list[str]) -> IpConfig:
    if len(fields) > 10:
        raise ValueError(f"ip={value}: too many ':' fields (at most "
                         "CLIENT:SERVER:GW:NETMASK:HOSTNAME:DEVICE:AUTOCONF:DNS0:DNS1:NTP)")
    fields = fields + [""] * (7 - len(fields))
    client, server, gateway, netmask, hostname, device, word = fields[:7]
    names = ("client address", "server address", "gateway", "netmask")
    given = (client, server, gateway, netmask)
    client, server, gateway, netmask = (parse_ipv4(x, f"ip={value}: {n}") if x else ""
                                        for x, n in zip(given, names, strict=True))
    if netmask:
        try:
            netmask_to_prefix(netmask)
        except ValueError as e:
            raise ValueError(f"ip={value}: {e}") from None
    method = _autoconf(value, word) if word else (STATIC if client else DHCP)
    if method == OFF and client:
        method = STATIC
    dns: list[str] = []
    mtu = 0
    rest = fields[7:]
    if rest and rest[0] and not is_ipv4(rest[0]):
        mtu = _mtu(value, rest[0])        # dracut: ...:AUTOCONF:MTU[:MAC]
        if len(rest) > 1 and rest[1]:
            raise ValueError(f"ip={value}: setting the MAC address is not supported at boot; leave it out")
    else:
        dns = [parse_ipv4(x, f"ip={value}: DNS server") for x in rest[:2] if x]
    return IpConfig(method, device=device, client=client, server=server, gateway=gateway,
                    netmask=netmask, hostname=hostname, dns=tuple(dns), mtu=mtu)


def parse_bootif(value: str) -> str:
    """BOOTIF=01-aa-bb-cc-dd-ee-ff (pxelinux, iPXE: ARP type 01 = Ethernet,
    then the MAC) -> "aa:bb:cc:dd:ee:ff". A bare aa:bb:cc:dd:ee:ff is taken too."""
    text = value.strip().lower()
    if ":" in text:
        parts = text.split(":")
    else:
        parts = text.split("-")
        parts = parts[1:] if len(parts) == 7 and parts[0] == "01" else []
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise ValueError(f"BOOTIF={value}: not a MAC address; PXE writes it as 01-aa-bb-cc-dd-ee-ff")
    return ":".join(parts)


# -- URLs ---------------------------------------------------------------------

def parse_url(text: str) -> Url:
    """http://HOST[:PORT]/PATH -> Url. No user info, no IPv6 literal, no https."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ValueError(f"{text!r} is not a URL; write http://HOST[:PORT]/PATH")
    if scheme == "https":
        raise ValueError(f"{text}: https is not supported at boot; serve the image over http:// "
                         "and check it with its SHA256SUMS")
    if scheme != "http":
        raise ValueError(f"{text}: unsupported scheme {scheme!r}; write http://HOST[:PORT]/PATH")
    rest = rest.partition("#")[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if not path.startswith("/"):
        path = "/" + path
    if "@" in authority:
        raise ValueError(f"{text}: user names and passwords in URLs are not supported")
    if authority.startswith("["):
        raise ValueError(f"{text}: IPv6 addresses are not supported at boot; use an IPv4 address or a name")
    host, colon, port_text = authority.partition(":")
    if not host:
        raise ValueError(f"{text}: no host name; write http://HOST[:PORT]/PATH")
    if not all(c.isascii() and (c.isalnum() or c in "-._") for c in host):
        raise ValueError(f"{text}: {host!r} is not a host name or IPv4 address")
    port = HTTP_PORT
    if colon:
        if not port_text.isdigit() or not port_text.isascii() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{text}: port {port_text!r} is not a number between 1 and 65535")
        port = int(port_text)
    if any(c in " \t\r\n" for c in path):
        raise ValueError(f"{text}: spaces in the path must be written %20")
    return Url("http", host.lower(), port, path)


def join_url(base: Url, location: str) -> Url:
    """Where a redirect's Location points, relative to `base` (RFC 3986 reference resolution,
    without dot-segment removal)."""
    loc = location.strip()
    scheme, colon, _ = loc.partition(":")
    if colon and scheme[:1].isalpha() and all(c.isascii() and (c.isalnum() or c in "+-.") for c in scheme):
        return parse_url(loc)
    if loc.startswith("//"):
        return parse_url(base.scheme + ":" + loc)
    if loc.startswith("/"):
        return parse_url(f"{base.scheme}://{base.hostport}{loc}")
    if loc.startswith("?"):
        return base.replace(path=base.path.partition("?")[0] + loc)
    directory = base.path.partition("?")[0].rpartition("/")[0]
    return parse_url(f"{base.scheme}://{base.hostport}{directory}/{loc}")


def beside(url: Url, name: str) -> Url:
    """The URL of file `name` in the same directory as `url` (SHA256SUMS next to the image)."""
    return join_url(url, name)
