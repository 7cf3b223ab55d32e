"""HTTP/1.1 GET over a plain socket, for fetching the live image at boot.

`download` streams a URL into a file while computing its SHA-256, follows a
few redirects, and on a dropped connection, a timeout or a 5xx answer tries
again after a growing pause, resuming where it stopped with a Range request
(If-Range keeps the pieces from two versions of the file apart); a server
that ignores the Range is read again from the start. `fetch` reads a small
file (SHA256SUMS) into memory the same way. Failures raise BootFailure with
the URL, what went wrong and what to change.

Built on `_socket` alone: urllib and http.client import email, re, ssl and
more (tens of milliseconds natively, ten times that under TCG)."""
from __future__ import annotations

import _socket
import os
import time

from liveinit.digest import sha256 as new_sha256
from liveinit.emergency import BootFailure
from liveinit.netcfg import Url, is_ipv4, join_url, parse_url
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.log import Log
    from liveinit.machine import Machine

TIMEOUT = 15.0              # seconds without a byte before the connection counts as dropped
RETRIES = 6                 # attempts after the first
BACKOFF = 0.5               # first pause before a retry, doubled each time...
MAX_BACKOFF = 8.0           # ...up to this
MAX_REDIRECTS = 5
MAX_HEAD = 64 * 1024        # status line and headers
BUFFER = 256 * 1024
PROGRESS_EVERY = 4 << 20    # bytes between progress calls
FETCH_LIMIT = 1 << 20       # `fetch` reads at most this much
USER_AGENT = "liveinit"
REDIRECTS = (301, 302, 303, 307, 308)
HINT = "check the URL (root=live:... or fetch=) and that the HTTP server is running and reachable"


class Downloaded(Plain):
    """What `download` wrote: url (after redirects), path, size (bytes),
    sha256 (hex), seconds, resumes (connections after the first), redirects."""

    __slots__ = ("url", "path", "size", "sha256", "seconds", "resumes", "redirects")
    url: str
    path: str
    size: int
    sha256: str
    seconds: float
    resumes: int
    redirects: int


class Response(Plain):
    """A parsed status line and headers (names lower-cased)."""

    __slots__ = ("status", "reason", "headers")
    status: int
    reason: str
    headers: dict[str, str]

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)


class _Retry(Exception):
    """A failure worth another attempt (connection dropped, timeout, 5xx)."""


class _Fatal(Exception):
    """A failure no retry will fix (404, a bad redirect, not HTTP)."""


class _Missing(_Fatal):
    """404 or 410: the server has no such file."""


class NotFound(BootFailure):
    """The server answered 404 or 410 (callers may treat a missing file as optional)."""


def parse_head(data: bytes) -> Response:
    """Status line and headers (without the blank line); ValueError if not HTTP."""
    lines = data.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise ValueError(f"bad HTTP header line {line[:80]!r}")
        key = name.lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers)


def parse_content_range(value: str) -> tuple[int, int, int] | None:
    """"bytes FIRST-LAST/TOTAL" -> (first, last, total); total -1 for "*"."""
    unit, _, rest = value.strip().partition(" ")
    span, _, total = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not first.isdigit() or not last.isdigit():
        return None
    if total != "*" and not total.isdigit():
        return None
    return int(first), int(last), -1 if total == "*" else int(total)


def request_bytes(url: Url, offset: int = 0, validator: str = "") -> bytes:
    lines = [f"GET {url.path} HTTP/1.1", f"Host: {url.hostport}", f"User-Agent: {USER_AGENT}",
             "Accept: */*", "Accept-Encoding: identity", "Connection: close"]
    if offset:
        lines.append(f"Range: bytes={offset}-")
        if validator:
            lines.append(f"If-Range: {validator}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


class _Sink:
    """Where the body goes: a file (`path`) or memory (`limit` bytes at most)."""

    def __init__(self, path: str | None, limit: int = 0) -> None:
        self.path = path or "memory"
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644) if path else -1
        self.mem = bytearray()
        self.limit = limit
        self.size = 0
        self.hash = new_sha256()

    def write(self, data: memoryview) -> None:
        n = len(data)
        if self.fd < 0:
            if self.size + n > self.limit:
                raise _Fatal(f"the answer is larger than {self.limit} bytes")
            self.mem += data
        else:
            view = data
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                raise _Fatal(f"cannot write {self.path} after {self.size} bytes: {e.strerror}") from None
        self.hash.update(data)
        self.size += n

    def reset(self) -> None:
        self.size = 0
        self.hash = new_sha256()
        self.mem = bytearray()
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class _Get:
    """One URL's transfer into a sink, across connections and redirects."""

    def __init__(self, url: Url, sink: _Sink, log: Log, resolve: Callable[[str], str] | None,
                 timeout: float, progress: Callable[[int, int], None] | None) -> None:
        self.first = url
        self.url = url
        self.sink = sink
        self.log = log
        self.resolve = resolve
        self.timeout = timeout
        self.progress = progress
        self.total = -1              # the whole file's size when known
        self.validator = ""          # ETag or Last-Modified of the first answer, for If-Range
        self.redirects = 0
        self.connections = 0
        self.buf = bytearray(BUFFER)

    def _connect(self, url: Url) -> _socket.socket:
        if is_ipv4(url.host):
            ip = url.host
        elif self.resolve is None:
            raise _Fatal(f"cannot look up host {url.host!r}: no name server")
        else:
            ip = self.resolve(url.host)       # BootFailure on its own
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        self.connections += 1
        try:
            s.connect((ip, url.port))
        except ConnectionRefusedError:
            s.close()
            raise _Retry(f"connection refused by {ip}:{url.port}") from None
        except TimeoutError:
            s.close()
            raise _Retry(f"no answer from {ip}:{url.port} in {self.timeout:g} s (connect)") from None
        except OSError as e:
            s.close()
            raise _Retry(f"cannot connect to {ip}:{url.port}: {e.strerror or e}") from None
        return s

    def _head(self, s: _socket.socket) -> tuple[Response, bytes]:
        data = b""
        while True:
            end = data.find(b"\r\n\r\n")
            if end >= 0:
                try:
                    return parse_head(data[:end]), data[end + 4:]
                except ValueError as e:
                    raise _Fatal(str(e)) from None
            if len(data) > MAX_HEAD:
                raise _Fatal(f"the response headers are longer than {MAX_HEAD} bytes")
            chunk = s.recv(BUFFER)
            if not chunk:
                raise _Retry("the server closed the connection before answering")
            data += chunk

    def _open(self) -> tuple[_socket.socket, Response, bytes]:
        """Connect and send the GET (from the sink's size on), following redirects."""
        url = self.url
        while True:
            s = self._connect(url)
            try:
                s.sendall(request_bytes(url, self.sink.size, self.validator))
                resp, rest = self._head(s)
            except TimeoutError:
                s.close()
                raise _Retry(f"no answer in {self.timeout:g} s") from None
            except (_Retry, _Fatal, OSError) as e:
                s.close()
                if isinstance(e, OSError):
                    raise _Retry(f"connection lost: {e.strerror or e}") from None
                raise
            if resp.status not in REDIRECTS:
                self.url = url
                return s, resp, rest
            s.close()
            where = resp.header("location")
            if not where:
                raise _Fatal(f"HTTP {resp.status} redirect without a Location")
            self.redirects += 1
            if self.redirects > MAX_REDIRECTS:
                raise _Fatal(f"more than {MAX_REDIRECTS} redirects (last to {where})")
            try:
                url = join_url(url, where)
            except ValueError as e:
                raise _Fatal(f"redirected to {where}: {e}") from None

    def attempt(self) -> bool:
        """One connection's worth of transfer; True when the body is complete."""
        s, resp, rest = self._open()
        try:
            return self._body(s, resp, rest)
        finally:
            s.close()

    def _body(self, s: _socket.socket, resp: Response, rest: bytes) -> bool:
        sink = self.sink
        status = resp.status
        if status == 416 and sink.size and self.total == sink.size:
            return True                            # asked for the bytes after the end: nothing left
        if status in (404, 410):
            raise _Missing(f"HTTP {status} {resp.reason or 'Not Found'}: no such file on the server")
        if 500 <= status < 600:
            raise _Retry(f"HTTP {status} {resp.reason}: the server failed")
        if status == 200:
            if sink.size:
                self.log.warn(f"http: {self.url}: the server ignored the Range request; "
                              "reading the file again from the start")
                sink.reset()
            length = resp.header("content-length")
            if length.isdigit():
                self.total = int(length)
            self.validator = _validator(resp)
        elif status == 206:
            span = parse_content_range(resp.header("content-range"))
            if span is None or span[0] != sink.size:
                self.log.warn(f"http: {self.url}: the server sent another range "
                              f"({resp.header('content-range') or 'none'}); reading again from the start")
                sink.reset()
                return False
            if span[2] >= 0:
                self.total = span[2]
        else:
            raise _Fatal(f"HTTP {status} {resp.reason}")
        if self.progress is not None and self.total >= 0:
            self.progress(sink.size, self.total)   # the size is known: the caller may check it fits
        coding = resp.header("content-encoding", "identity").lower()
        if coding not in ("identity", ""):
            raise _Fatal(f"the server compressed the answer ({coding}) although identity was asked for")
        transfer = resp.header("transfer-encoding").lower()
        if transfer == "chunked":
            return self._chunked(s, rest)
        if transfer not in ("", "identity"):
            raise _Fatal(f"unsupported Transfer-Encoding {transfer!r}")
        length = resp.header("content-length")
        end = sink.size + int(length) if length.isdigit() else -1
        self._feed(memoryview(rest)[:end - sink.size] if end >= 0 else memoryview(rest))
        view = memoryview(self.buf)
        while end < 0 or sink.size < end:
            n = self._recv_into(s, view if end < 0 else view[:min(BUFFER, end - sink.size)])
            if not n:
                if end < 0:
                    return True                    # no length: the end of the connection is the end
                raise _Retry(f"connection closed after {sink.size} of {end} bytes")
            self._feed(view[:n])
        return True

    def _recv_into(self, s: _socket.socket, view: memoryview) -> int:
        try:
            return s.recv_into(view)
        except TimeoutError:
            raise _Retry(f"no data for {self.timeout:g} s after {self.sink.size} bytes") from None
        except OSError as e:
            raise _Retry(f"connection lost after {self.sink.size} bytes: {e.strerror or e}") from None

    def _feed(self, data: memoryview) -> None:
        before = self.sink.size
        self.sink.write(data)
        if self.progress is not None and (before // PROGRESS_EVERY != self.sink.size // PROGRESS_EVERY
                                          or self.sink.size == self.total):
            self.progress(self.sink.size, self.total)

    def _chunked(self, s: _socket.socket, rest: bytes) -> bool:
        """A chunked body. A resumed one is fine too: its chunks carry the range asked for."""
        pending = bytearray(rest)

        def need(n: int) -> None:
            while len(pending) < n:
                chunk = s.recv(BUFFER)
                if not chunk:
                    raise _Retry(f"connection closed in a chunked body after {self.sink.size} bytes")
                pending.extend(chunk)

        def line() -> bytes:
            while (at := pending.find(b"\r\n")) < 0:
                if len(pending) > MAX_HEAD:
                    raise _Fatal("bad chunked encoding (a chunk header without an end)")
                need(len(pending) + 1)
            text = bytes(pending[:at])
            del pending[:at + 2]
            return text

        try:
            while True:
                size_text = line().split(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _Fatal(f"bad chunk size {size_text[:20]!r}") from None
                if size == 0:
                    while line():                  # trailers, up to the blank line
                        pass
                    return True
                while size:
                    if not pending:
                        need(1)
                    take = min(size, len(pending))
                    self._feed(memoryview(pending)[:take])
                    del pending[:take]
                    size -= take
                need(2)
                del pending[:2]
        except TimeoutError:
            raise _Retry(f"no data for {self.timeout:g} s after {self.sink.size} bytes") from None
        except OSError as e:
            raise _Retry(f"connection lost after {self.sink.size} bytes: {e.strerror or e}") from None


def _validator(resp: Response) -> str:
    """A strong ETag, else Last-Modified: what If-Range may carry (RFC 9110 13.1.5)."""
    etag = resp.header("etag")
    if etag and not etag.startswith("W/"):
        return etag
    return resp.header("last-modified")


def _run(get: _Get, log: Log, retries: int, backoff: float, sleep: Callable[[float], None]) -> None:
    failures = 0
    while True:
        try:
            if get.attempt():
                return
            continue                               # the sink was reset: start again at once
        except _Missing as e:
            raise NotFound(f"HTTP: {get.url}: {e}", HINT) from None
        except _Fatal as e:
            raise BootFailure(f"HTTP: {get.url}: {e}", HINT) from None
        except _Retry as e:
            failures += 1
            if failures > retries:
                raise BootFailure(f"HTTP: {get.url}: {e} (gave up after {failures} attempts)", HINT) from None
            delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
            log.warn(f"http: {get.url}: {e}; retrying in {delay:.1f} s"
                     + (f" from byte {get.sink.size}" if get.sink.size else ""))
            sleep(delay)


def _url(url: str | Url) -> Url:
    if isinstance(url, Url):
        return url
    try:
        return parse_url(url)
    except ValueError as e:
        raise BootFailure(f"HTTP: {e}", HINT) from None


def download(m: Machine, url: str | Url, dest: str, log: Log, *, sha256: str = "",
             resolve: Callable[[str], str] | None = None,
             progress: Callable[[int, int], None] | None = None, retries: int = RETRIES,
             timeout: float = TIMEOUT, backoff: float = BACKOFF,
             sleep: Callable[[float], None] = time.sleep) -> Downloaded:
    """Fetch `url` into `dest` (a path on the machine); check `sha256` (hex) when given.

    `resolve(host) -> dotted quad` looks up host names (dns.resolve with the
    lease's servers); `progress(done, total)` is called every few MiB
    (total -1 when the server did not say), and once as soon as the answer's
    headers tell the size."""
    u = _url(url)
    t0 = time.monotonic()
    sink = _Sink(m.path(dest))
    get = _Get(u, sink, log, resolve, timeout, progress)
    try:
        _run(get, log, retries, backoff, sleep)
    finally:
        sink.close()
    digest = sink.hash.hexdigest()
    if sha256 and digest != sha256.lower():
        raise BootFailure(f"checksum mismatch: {get.url} downloaded to {dest} has SHA-256 {digest}, "
                          f"expected {sha256.lower()}",
                          "the image on the server is damaged or not the one the checksum is for: "
                          "copy it again, or publish its SHA256SUMS beside it")
    return Downloaded(str(get.url), dest, sink.size, digest, time.monotonic() - t0,
                      get.connections - 1 - get.redirects, get.redirects)


def fetch(url: str | Url, log: Log, *, resolve: Callable[[str], str] | None = None,
          limit: int = FETCH_LIMIT, retries: int = RETRIES, timeout: float = TIMEOUT,
          backoff: float = BACKOFF, sleep: Callable[[float], None] = time.sleep) -> bytes:
    """The body of a small file (at most `limit` bytes)."""
    sink = _Sink(None, limit)
    _run(_Get(_url(url), sink, log, resolve, timeout, None), log, retries, backoff, sleep)
    return bytes(sink.mem)
