"""SHA256SUMS files, in sha256sum's format: `HEX  NAME` (or `HEX *NAME`,
binary mode) per line. The packer writes them (`liveinit netboot`), the
runtime reads the one beside a downloaded image and picks the line for it."""
from __future__ import annotations

HEX = frozenset("0123456789abcdef")


def parse(text: str) -> dict[str, str]:
    """NAME -> lower-case hex digest; ValueError naming the first bad line."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition(" ")
        digest = digest.lower()
        if len(digest) != 64 or not set(digest) <= HEX or name[:1] not in (" ", "*") or not name[1:]:
            raise ValueError(f"line {number} is not `SHA256  NAME` (sha256sum's format): {line[:100]!r}")
        out[name[1:]] = digest
    return out


def render(digests: dict[str, str]) -> str:
    """The file's text for NAME -> hex digest, sorted by name (`sha256sum -c` reads it)."""
    for name in digests:
        if not name or "\n" in name or "\\" in name:
            raise ValueError(f"cannot write the name {name!r} in a SHA256SUMS file")
    return "".join(f"{digests[name]}  {name}\n" for name in sorted(digests))


def for_path(digests: dict[str, str], path: str) -> str | None:
    """The digest of the entry naming `path` (a URL's path): the longest entry
    name that ends it at a `/` boundary (`filesystem.squashfs`,
    `live/filesystem.squashfs`, `./live/...`), else None."""
    best: tuple[int, str] | None = None
    target = "/" + path.partition("?")[0].lstrip("/")
    for name, digest in digests.items():
        clean = name.lstrip("*")
        while clean.startswith("./"):
            clean = clean[2:]
        tail = "/" + clean.lstrip("/")
        if target.endswith(tail) and (best is None or len(tail) > best[0]):
            best = (len(tail), digest)
    return None if best is None else best[1]
