"""The boot's HTTP client (liveinit.httpget) against a misbehaving server on 127.0.0.1."""
from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
from httpfake import FakeHttp
from hypothesis import given
from hypothesis import strategies as st

from liveinit import httpget
from liveinit.emergency import BootFailure
from liveinit.httpget import download, fetch, parse_content_range, parse_head
from liveinit.machine import Machine
from qemu.fakesysfs import quiet_log

IMAGE = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(IMAGE).hexdigest()


@pytest.fixture
def server():
    with FakeHttp({"/live/filesystem.squashfs": IMAGE, "/live/SHA256SUMS":
                   f"{SHA}  live/filesystem.squashfs\n".encode()}) as srv:
        yield srv


@pytest.fixture
def m(tmp_path: Path) -> Machine:
    return Machine(str(tmp_path), sys=False)


def _get(m: Machine, url: str, **kw):  # type: ignore[no-untyped-def]
    sleeps: list[float] = []
    got = download(m, url, "/ram/image", quiet_log(), sleep=sleeps.append, **kw)
    return got, sleeps


def test_downloads_and_hashes_while_streaming(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    seen: list[tuple[int, int]] = []
    got, sleeps = _get(m, server.url("/live/filesystem.squashfs"), sha256=SHA,
                       progress=lambda d, t: seen.append((d, t)))
    assert (tmp_path / "ram" / "image").read_bytes() == IMAGE
    assert (got.size, got.sha256, got.resumes, got.redirects) == (len(IMAGE), SHA, 0, 0)
    assert got.path == "/ram/image" and sleeps == []
    # once when the headers tell the size (the caller checks it fits), then every PROGRESS_EVERY bytes
    assert seen[0] == (0, len(IMAGE)) and seen[-1] == (len(IMAGE), len(IMAGE))
    assert len(seen) == 2 + len(IMAGE) // httpget.PROGRESS_EVERY


def test_resumes_with_range_after_drops(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.drops[path] = [1_000_000, 500_000]
    got, sleeps = _get(m, server.url(path), sha256=SHA)
    assert (tmp_path / "ram" / "image").read_bytes() == IMAGE and got.sha256 == SHA
    assert got.resumes == 2
    # The second request starts where the first stopped: the bytes before it are never fetched twice.
    ranges = [r for p, r in server.requests if p == path]
    assert ranges[0] == "" and ranges[1] == "bytes=1000000-" and ranges[2] == "bytes=1500000-"
    assert sleeps == [httpget.BACKOFF, httpget.BACKOFF * 2]


def test_resumes_after_a_reset_connection(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.reset = True                      # RST: what the client had not read yet is lost
    server.drops[path] = [2_000_000]
    got, sleeps = _get(m, server.url(path), sha256=SHA)
    assert (tmp_path / "ram" / "image").read_bytes() == IMAGE and got.resumes == 1 and len(sleeps) == 1
    first, second = [r for p, r in server.requests if p == path]
    assert first == "" and 0 < int(second.removeprefix("bytes=").rstrip("-")) <= 2_000_000


def test_server_that_ignores_range_is_read_again(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.drops[path] = [700_000]
    server.no_range.add(path)
    got, _ = _get(m, server.url(path), sha256=SHA)
    assert (tmp_path / "ram" / "image").read_bytes() == IMAGE and got.size == len(IMAGE)


def test_chunked_body_and_its_resume(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.chunked.add(path)
    server.drops[path] = [250_500]
    got, _ = _get(m, server.url(path), sha256=SHA)
    assert (tmp_path / "ram" / "image").read_bytes() == IMAGE and got.resumes == 1


def test_retries_5xx_with_backoff_then_succeeds(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.status[path] = [500, 503, 502]
    got, sleeps = _get(m, server.url(path), sha256=SHA)
    assert got.sha256 == SHA and sleeps == [0.5, 1.0, 2.0]


def test_gives_up_on_5xx_naming_the_url(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.status[path] = [500] * 10
    with pytest.raises(BootFailure) as e:
        _get(m, server.url(path), retries=3)
    assert "HTTP 500" in e.value.message and server.url(path) in e.value.message
    assert "4 attempts" in e.value.message and e.value.hint


def test_404_is_not_retried(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    with pytest.raises(BootFailure) as e:
        _get(m, server.url("/live/missing.squashfs"))
    assert "HTTP 404" in e.value.message and server.url("/live/missing.squashfs") in e.value.message
    assert "root=live:" in e.value.hint
    assert isinstance(e.value, httpget.NotFound)   # a missing SHA256SUMS is told apart from other failures
    assert len(server.requests) == 1


def test_redirects_are_followed_and_limited(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    server.redirects["/a"] = "/b"
    server.redirects["/b"] = server.url("/live/filesystem.squashfs")
    got, _ = _get(m, server.url("/a"), sha256=SHA)
    assert got.redirects == 2 and got.url == server.url("/live/filesystem.squashfs") and got.resumes == 0
    server.redirects["/loop"] = "/loop"
    with pytest.raises(BootFailure, match="more than 5 redirects"):
        _get(m, server.url("/loop"))
    server.redirects["/tls"] = "https://127.0.0.1/x"
    with pytest.raises(BootFailure, match="https is not supported"):
        _get(m, server.url("/tls"))


def test_checksum_mismatch_names_both_sums(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    with pytest.raises(BootFailure) as e:
        _get(m, server.url("/live/filesystem.squashfs"), sha256="00" * 32)
    assert "checksum mismatch" in e.value.message and SHA in e.value.message and "00" * 32 in e.value.message


def test_connection_refused_and_timeouts_name_the_url(m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()                                      # nothing listens there now
    url = f"http://127.0.0.1:{port}/x"
    with pytest.raises(BootFailure) as e:
        _get(m, url, retries=2)
    assert "connection refused" in e.value.message and url in e.value.message
    with pytest.raises(BootFailure, match="no name server"):
        _get(m, "http://boot.example/x")


def test_a_stalled_server_times_out_and_resumes(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    path = "/live/filesystem.squashfs"
    server.stall[path] = 100_000
    with pytest.raises(BootFailure) as e:
        _get(m, server.url(path), timeout=0.3, retries=1)
    assert "no data for 0.3 s after 200000 bytes" in e.value.message
    assert [r for p, r in server.requests if p == path] == ["", "bytes=100000-"]


def test_names_are_resolved_through_the_given_resolver(server: FakeHttp, m: Machine, tmp_path: Path) -> None:
    (tmp_path / "ram").mkdir()
    asked: list[str] = []

    def resolve(host: str) -> str:
        asked.append(host)
        return "127.0.0.1"

    got = download(m, f"http://boot.example:{server.port}/live/filesystem.squashfs", "/ram/image",
                   quiet_log(), resolve=resolve, sha256=SHA)
    assert asked == ["boot.example"] and got.sha256 == SHA


def test_fetch_small_file_and_limit(server: FakeHttp) -> None:
    body = fetch(server.url("/live/SHA256SUMS"), quiet_log())
    assert body.decode().split()[0] == SHA
    with pytest.raises(BootFailure, match="larger than 1000 bytes"):
        fetch(server.url("/live/filesystem.squashfs"), quiet_log(), limit=1000)


def test_parse_head() -> None:
    r = parse_head(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 5-9/10\r\nX-A: 1\r\nx-a: 2")
    assert (r.status, r.reason, r.header("content-range"), r.header("x-a")) == \
        (206, "Partial Content", "bytes 5-9/10", "1, 2")
    for bad in (b"SSH-2.0-OpenSSH", b"HTTP/1.1 2000 X", b"HTTP/1.1 200 OK\r\nno colon",
                b"HTTP/1.1 200 OK\r\n :x"):
        with pytest.raises(ValueError):
            parse_head(bad)


@given(first=st.integers(0, 2**40), extra=st.integers(0, 2**20),
       total=st.one_of(st.none(), st.integers(0, 2**41)))
def test_content_range_round_trip(first: int, extra: int, total: int | None) -> None:
    text = f"bytes {first}-{first + extra}/{'*' if total is None else total}"
    assert parse_content_range(text) == (first, first + extra, -1 if total is None else total)
    assert parse_content_range(text.replace("bytes", "items")) is None
