"""The medium check (liveinit.check, rd.live.check, live-boot's
verify-checksums; `liveinit verify` on the host): every file the medium's
SHA256SUMS (contract.CHECKSUMS_FILE, written by `liveinit image`/`usb`)
lists is read and hashed, with progress, and the verdict names each file
that is missing, unreadable or different. SHA-256 comes from the
interpreter's own module (digest.py), not hashlib."""
from __future__ import annotations

import os
import time

from liveinit import sha256sums
from liveinit.contract import CHECK_BAD_LINE, CHECK_OK_LINE, CHECK_PROGRESS_LINE, CHECKSUMS_FILE
from liveinit.digest import sha256
from liveinit.emergency import BootFailure

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.rootfind import Found

CHUNK = 1 << 20
PROGRESS_EVERY = 2.0     # seconds between progress lines
MiB = 1 << 20


class Result:
    """What a check found: files, bytes, and (name, problem) for each bad file."""

    __slots__ = ("files", "size", "bad", "seconds")

    def __init__(self) -> None:
        self.files = 0
        self.size = 0
        self.bad: list[tuple[str, str]] = []
        self.seconds = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad

    def lines(self) -> list[str]:
        """The verdict, as the console shows it."""
        if self.ok:
            return [CHECK_OK_LINE.format(files=self.files, mib=self.size // MiB)]
        return [CHECK_BAD_LINE.format(path=name, problem=problem) for name, problem in self.bad]


def read_sums(root: str) -> dict[str, str]:
    """NAME -> digest from the SHA256SUMS under `root`; OSError/ValueError as they come."""
    with open(root + CHECKSUMS_FILE, encoding="utf-8") as f:
        return sha256sums.parse(f.read())


def check_tree(root: str, sums: dict[str, str], progress: Callable[[str], None] | None = None,
               on_error: Callable[[str, OSError], None] | None = None) -> Result:
    """Hash every file of `sums` under directory `root`. `on_error(name, error)`
    may raise to stop (the runtime: the medium went away)."""
    res = Result()
    sizes: dict[str, int] = {}
    for name in sums:
        try:
            sizes[name] = os.path.getsize(os.path.join(root, _clean(name)))
        except OSError:
            sizes[name] = 0
    total = sum(sizes.values()) or 1
    done = 0
    last = start = time.monotonic()
    for name in sorted(sums):
        path = os.path.join(root, _clean(name))
        h = sha256()
        try:
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    done += len(chunk)
                    now = time.monotonic()
                    if progress is not None and now - last >= PROGRESS_EVERY:
                        last = now
                        progress(CHECK_PROGRESS_LINE.format(percent=min(done * 100 // total, 100),
                                                            done_mib=done // MiB, total_mib=total // MiB))
        except FileNotFoundError:
            res.bad.append((name, "missing"))
            continue
        except OSError as e:
            if on_error is not None:
                on_error(name, e)
            res.bad.append((name, f"unreadable ({e.strerror or e})"))
            continue
        res.files += 1
        res.size += sizes[name]
        got = h.hexdigest()
        if got != sums[name]:
            res.bad.append((name, f"SHA-256 mismatch: {got}, expected {sums[name]}"))
    res.seconds = time.monotonic() - start
    return res


def _clean(name: str) -> str:
    name = name.lstrip("*")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def check_medium(m: Machine, found: Found, log: Log) -> None:
    """Verify the mounted medium; BootFailure naming what is wrong, MediumLost
    when the medium goes away meanwhile."""
    from liveinit import medium
    root = m.path(found.medium or "")
    try:
        sums = read_sums(root)
    except (OSError, ValueError) as e:
        lost = medium.lost(m, found, "its checksums were read", e) if isinstance(e, OSError) else None
        if lost is not None:
            raise lost from e
        raise BootFailure(f"check: cannot read {CHECKSUMS_FILE} on {found.device}: {e}",
                          "the medium was not made by `liveinit image`/`usb` (no checksums to check "
                          "against): boot without liveinit.check / rd.live.check") from e
    total = 0
    for name in sums:
        try:
            total += os.path.getsize(os.path.join(root, _clean(name)))
        except OSError:
            pass
    log.info(f"check: verifying {len(sums)} files ({total // MiB} MiB) on {found.device} "
             "against " + CHECKSUMS_FILE.lstrip("/"))

    def on_error(name: str, e: OSError) -> None:
        lost = medium.lost(m, found, f"{name} was being checked", e)
        if lost is not None:
            raise lost from e

    res = check_tree(root, sums, log.info, on_error)
    if res.ok:
        log.info(res.lines()[0] + f" in {res.seconds:.1f} s")
        return
    for line in res.lines():
        log.error(line)
    names = ", ".join(name for name, _ in res.bad)
    raise BootFailure(f"check: the medium {found.device} is damaged: {len(res.bad)} of {len(sums)} files "
                      f"differ from its SHA256SUMS: {names}",
                      "write the medium again (and check the download's checksum); boot without "
                      "liveinit.check / rd.live.check to use it anyway")
