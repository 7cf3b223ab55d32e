"""The network root (liveinit.netroot) on a fake machine: a fake NIC in a fake
sysfs, a recording netlink, a static ip= or a fake DHCP server, and a real
HTTP server on 127.0.0.1 (tests/httpfake.py) that drops, 404s and serves
damaged images. Every failure names the URL, the interface and the parameter."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from httpfake import FakeHttp
from test_dhcp import FakeServer, _reply
from test_net import FakeNetlink, nic

from liveinit import dhcp, netroot
from liveinit.cmdline import BootConfig, parse
from liveinit.contract import RAM
from liveinit.discovery import NullLoader
from liveinit.emergency import BootFailure
from liveinit.machine import Machine
from liveinit.rootfind import Found, find_root
from liveinit.stack import TORAM_RESERVE
from qemu.fakes import FakeSyscalls
from qemu.fakesysfs import log_text, quiet_log

IMAGE = os.urandom(5 * 1024 * 1024 + 77)
SHA = hashlib.sha256(IMAGE).hexdigest()
IMAGE_PATH = "/live/filesystem.squashfs"
STATIC = "ip=127.0.0.1:::255.0.0.0::eth0:none"


class FakeDiscovery:
    """What the root search uses of discovery.Discovery: events (waits), finish, the loader."""

    def __init__(self) -> None:
        self.loader = NullLoader()
        self.waits = 0
        self.finished = False

    def events(self, timeout: float) -> list[dict[str, str]]:
        self.waits += 1
        return []

    def finish(self, timeout: float = -1) -> bool:
        self.finished = True
        return True

    def settled(self) -> bool:
        return True


def _machine(root: Path, mem_kib: int = 4 << 20, carrier: str = "1") -> Machine:
    nic(root, "eth0", 2, "52:54:00:12:34:56", driver="e1000", carrier=carrier)
    (root / "proc").mkdir()
    (root / "proc" / "meminfo").write_text(f"MemTotal: {mem_kib} kB\nMemAvailable: {mem_kib} kB\n")
    return Machine(str(root), FakeSyscalls(root=str(root)))


def _cfg(url: str, extra: str = STATIC) -> BootConfig:
    cfg = parse(f"root=live:{url} {extra}")
    assert not cfg.errors and cfg.root.kind == "url"
    return cfg


def _find(m: Machine, cfg: BootConfig, **kw: object) -> tuple[Found, str]:
    log = quiet_log()
    disc = FakeDiscovery()
    found = netroot.find_net_root(m, cfg, disc, log, nl=FakeNetlink(),  # type: ignore[arg-type]
                                  backoff=0.01, carrier_timeout=0.3, link_timeout=0.3, **kw)  # type: ignore[arg-type]
    return found, log_text(log)


def _fail(m: Machine, cfg: BootConfig, **kw: object) -> BootFailure:
    with pytest.raises(BootFailure) as e:
        _find(m, cfg, **kw)
    return e.value


@pytest.fixture
def server():
    sums = f"{SHA}  live/filesystem.squashfs\n".encode()
    with FakeHttp({IMAGE_PATH: IMAGE, "/live/SHA256SUMS": sums}) as s:
        yield s


def test_downloads_verifies_and_finds_the_image_in_ram(server: FakeHttp, tmp_path: Path) -> None:
    m = _machine(tmp_path)
    found, text = _find(m, _cfg(server.url(IMAGE_PATH)))
    assert found.image == RAM + "/filesystem.squashfs" and found.medium is None
    assert (tmp_path / found.image.lstrip("/")).read_bytes() == IMAGE
    assert found.identity["SHA256"] == SHA and found.identity["INTERFACE"] == "eth0"
    tmpfs = [c for c in m.sys.of("mount") if c[3] == "tmpfs"]   # type: ignore[attr-defined]
    assert len(tmpfs) == 1 and tmpfs[0][2] == RAM
    assert tmpfs[0][5].startswith(f"size={(4 << 30) - TORAM_RESERVE},")
    assert [p for p, _ in server.requests] == ["/live/SHA256SUMS", IMAGE_PATH]
    assert "netboot: downloading " + server.url(IMAGE_PATH) + " (5.0 MiB)" in text
    assert "5.0 of 5.0 MiB (100%)" in text and "ETA 0 s" in text
    assert "SHA-256 verified" in text


def test_resumes_after_a_dropped_connection(server: FakeHttp, tmp_path: Path) -> None:
    server.drops[IMAGE_PATH] = [1 << 20, 3 << 20]
    found, text = _find(_machine(tmp_path), _cfg(server.url(IMAGE_PATH)))
    assert (tmp_path / found.image.lstrip("/")).read_bytes() == IMAGE   # type: ignore[union-attr]
    ranges = [r for p, r in server.requests if p == IMAGE_PATH]
    assert ranges == ["", f"bytes={1 << 20}-", f"bytes={(1 << 20) + (3 << 20)}-"]
    assert f"retrying in 0.0 s from byte {1 << 20}" in text and "2 resumes" in text


def test_a_damaged_image_is_refused(server: FakeHttp, tmp_path: Path) -> None:
    server.files[IMAGE_PATH] = IMAGE[:-1] + bytes([IMAGE[-1] ^ 1])
    m = _machine(tmp_path)
    f = _fail(m, _cfg(server.url(IMAGE_PATH)))
    assert "checksum mismatch" in f.message and f"expected {SHA}" in f.message
    assert server.url(IMAGE_PATH) in f.message and "eth0 127.0.0.1/8" in f.message
    assert "root=live:URL" in f.hint
    assert ("umount2", RAM, 2) in m.sys.calls   # type: ignore[attr-defined]  # the memory is given back


def test_a_missing_image_says_404(server: FakeHttp, tmp_path: Path) -> None:
    url = server.url("/live/other.squashfs")
    server.files["/live/SHA256SUMS"] = f"{SHA}  other.squashfs\n".encode()
    f = _fail(_machine(tmp_path), _cfg(url))
    assert "HTTP 404" in f.message and url in f.message and "eth0" in f.message
    assert "root=live:" in f.hint
    assert [p for p, _ in server.requests] == ["/live/SHA256SUMS", "/live/other.squashfs"]


def test_server_errors_are_retried_then_named(server: FakeHttp, tmp_path: Path) -> None:
    server.status[IMAGE_PATH] = [500] * 3
    f = _fail(_machine(tmp_path), _cfg(server.url(IMAGE_PATH)), retries=2)
    assert "HTTP 500" in f.message and "gave up after 3 attempts" in f.message and "eth0" in f.message


def test_without_sha256sums_it_boots_unverified_and_says_so(server: FakeHttp, tmp_path: Path) -> None:
    del server.files["/live/SHA256SUMS"]
    found, text = _find(_machine(tmp_path), _cfg(server.url(IMAGE_PATH)))
    assert found.identity["SHA256"] == SHA
    assert "the image will NOT be verified" in text and "NOT verified (no SHA256SUMS)" in text


def test_sha256sums_without_the_image_is_refused(server: FakeHttp, tmp_path: Path) -> None:
    server.files["/live/SHA256SUMS"] = f"{SHA}  live/other.squashfs\n".encode()
    f = _fail(_machine(tmp_path), _cfg(server.url(IMAGE_PATH)))
    assert "has no line for /live/filesystem.squashfs" in f.message
    # refused as soon as the image's answer shows it exists (a missing one says 404 instead)
    assert [p for p, _ in server.requests] == ["/live/SHA256SUMS", IMAGE_PATH]
    assert not (tmp_path / RAM.lstrip("/") / "filesystem.squashfs").stat().st_size


def test_an_unlisted_image_without_a_size_is_refused_too(server: FakeHttp,
                                                         tmp_path: Path) -> None:
    server.files["/live/SHA256SUMS"] = f"{SHA}  live/other.squashfs\n".encode()
    server.chunked.add(IMAGE_PATH)
    f = _fail(_machine(tmp_path), _cfg(server.url(IMAGE_PATH)))
    assert "has no line for /live/filesystem.squashfs" in f.message


def test_a_missing_image_listed_nowhere_says_404(server: FakeHttp, tmp_path: Path) -> None:
    url = server.url("/live/missing.squashfs")
    f = _fail(_machine(tmp_path), _cfg(url))
    assert "HTTP 404" in f.message and url in f.message


def test_not_enough_memory_stops_before_the_download(server: FakeHttp, tmp_path: Path) -> None:
    m = _machine(tmp_path, mem_kib=(TORAM_RESERVE >> 10) + 2048)   # 2 MiB over the reserve: 5 MiB won't fit
    f = _fail(m, _cfg(server.url(IMAGE_PATH)))
    assert "needs 69 MiB of memory (5 MiB + 64 MiB reserve) but only 66 MiB are available" in f.message
    assert server.url(IMAGE_PATH) in f.message and "eth0" in f.message and "more memory" in f.hint
    assert not (tmp_path / RAM.lstrip("/") / "filesystem.squashfs").stat().st_size   # stopped at the headers


def test_no_link_names_the_interface_url_and_parameters(server: FakeHttp, tmp_path: Path) -> None:
    f = _fail(_machine(tmp_path, carrier="0"), _cfg(server.url(IMAGE_PATH), "ip=dhcp"))
    assert "no link on eth0 (52:54:00:12:34:56, e1000)" in f.message and server.url(IMAGE_PATH) in f.message
    assert "ip=IFACE:dhcp" in f.hint and "BOOTIF=" in f.hint and "root=live:URL" in f.hint
    assert server.requests == []


class Silent:
    """A DHCP transport nobody answers."""

    def send(self, data: bytes) -> None:
        pass

    def recv(self, timeout: float) -> bytes | None:
        time.sleep(min(timeout, 0.05))
        return None

    def close(self) -> None:
        pass


def test_no_dhcp_answer(server: FakeHttp, tmp_path: Path) -> None:
    f = _fail(_machine(tmp_path), _cfg(server.url(IMAGE_PATH), "ip=dhcp"), dhcp_transport=Silent(),
              dhcp_timeout=0.3)
    assert "DHCP: no answer on eth0" in f.message and server.url(IMAGE_PATH) in f.message
    assert "ip=" in f.hint and server.requests == []


def test_a_host_name_without_a_name_server(tmp_path: Path) -> None:
    # Only the lease's name servers are asked (dns.py, tested against a fake one): here there are none.
    url = "http://images.example/live/filesystem.squashfs"
    f = _fail(_machine(tmp_path), _cfg(url))
    assert "DNS: cannot look up 'images.example': no name server" in f.message
    assert url in f.message and "eth0 127.0.0.1/8 (static)" in f.message
    assert "ip=CLIENT::GW:NETMASK::IFACE:none:DNS0" in f.hint


def test_dhcp_lease_then_download(server: FakeHttp, tmp_path: Path) -> None:
    def answer(req: dhcp.Message, n: int) -> list[bytes]:
        return [_reply(dhcp.OFFER if req.type == dhcp.DISCOVER else dhcp.ACK, req, yiaddr="127.0.0.9")]

    found, text = _find(_machine(tmp_path), _cfg(server.url(IMAGE_PATH), "ip=eth0:dhcp"),
                        dhcp_transport=FakeServer(answer))
    assert found.identity["ADDRESS"] == "127.0.0.9" and "SHA-256 verified" in text


def test_bootif_picks_the_interface_pxe_booted_from(server: FakeHttp, tmp_path: Path) -> None:
    m = _machine(tmp_path)
    nic(tmp_path, "eth1", 3, "52:54:00:ab:cd:ef", driver="virtio_net")
    cfg = _cfg(server.url(IMAGE_PATH), "ip=127.0.0.1:::255.0.0.0:::none BOOTIF=01-52-54-00-ab-cd-ef")
    found, _ = _find(m, cfg)
    assert found.identity["INTERFACE"] == "eth1"


def test_find_root_dispatches_a_url(server: FakeHttp, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    m = _machine(tmp_path)
    calls = []

    def fake(m: Machine, cfg: BootConfig, discovery: object, log: object) -> Found:
        calls.append(cfg.root.value)
        return Found(cfg.root.value, "http", {}, "test", None, RAM + "/x")

    monkeypatch.setattr(netroot, "find_net_root", fake)
    disc = FakeDiscovery()
    found = find_root(m, _cfg(server.url(IMAGE_PATH)), "id", disc, quiet_log())  # type: ignore[arg-type]
    assert calls == [server.url(IMAGE_PATH)] and found.medium is None and disc.finished


def test_fetch_is_live_boots_spelling() -> None:
    cfg = parse("fetch=http://10.0.2.100/live/filesystem.squashfs")
    assert (cfg.root.kind, cfg.root.value, cfg.root.live) == ("url", "http://10.0.2.100/live/filesystem.squashfs",
                                                              True)
