"""Load a console keymap compiled at pack time (packer/keymap.py) into the kernel.

The file is `loadkeys -b`'s binary format (busybox loadkmap reads the same):
the magic "bkeymap", 256 flag bytes (one per keymap: plain, shift, altgr,
ctrl, ...), then for every flagged keymap 128 little-endian u16 key actions.
Each action goes to the kernel with the KDSKBENT ioctl on a virtual terminal;
the table is global, so one VT is enough. No loadkeys at boot: measured, the
ioctls cost less than starting loadkeys (see the report in packer/keymap.py).

The keymap is only needed to type a passphrase, so `ensure` loads it before
the first prompt, not on every boot."""
from __future__ import annotations

import os
import struct

from liveinit.contract import KEYMAP_DIR, KEYMAP_SUFFIX

MAGIC = b"bkeymap"
NR_KEYMAPS = 256
NR_KEYS = 128
KDSKBENT = 0x4B47
ENTRY = struct.Struct("=BBH")       # struct kbentry: kb_table, kb_index, kb_value
VTS = ("/dev/tty0", "/dev/tty1", "/dev/console")


class KeymapError(Exception):
    """The keymap file is not a binary keymap."""


def parse(data: bytes) -> list[tuple[int, int, int]]:
    """(table, key, action) for every entry of a binary keymap; raises KeymapError."""
    if data[:len(MAGIC)] != MAGIC or len(data) < len(MAGIC) + NR_KEYMAPS:
        raise KeymapError("not a binary keymap (no 'bkeymap' magic)")
    flags = data[len(MAGIC):len(MAGIC) + NR_KEYMAPS]
    tables = [i for i in range(NR_KEYMAPS) if flags[i]]
    at = len(MAGIC) + NR_KEYMAPS
    if len(data) != at + len(tables) * NR_KEYS * 2:
        raise KeymapError(f"{len(tables)} keymaps flagged but {len(data) - at} bytes of actions "
                          f"(expected {len(tables) * NR_KEYS * 2})")
    out: list[tuple[int, int, int]] = []
    for t in tables:
        values = struct.unpack_from(f"<{NR_KEYS}H", data, at)
        at += NR_KEYS * 2
        out.extend((t, k, v) for k, v in enumerate(values))
    return out


def path_for(name: str) -> str:
    return f"{KEYMAP_DIR}/{name}{KEYMAP_SUFFIX}"


def baked(root: str = "/") -> list[str]:
    """Names of the keymaps in the image."""
    try:
        names = os.listdir(root.rstrip("/") + KEYMAP_DIR)
    except OSError:
        return []
    return sorted(n[:-len(KEYMAP_SUFFIX)] for n in names if n.endswith(KEYMAP_SUFFIX))


def choose(wanted: str | None, available: list[str]) -> tuple[str | None, str]:
    """(keymap to load or None for the kernel's us, why). `wanted` is the command
    line's (vconsole.keymap=, keyboard-layouts=; the image bakes its default there)."""
    if not wanted:
        return None, "the kernel default (us)"
    if wanted in available:
        return wanted, wanted
    short = wanted.split("-", 1)[0]   # "de-latin1" asked, "de" packed (and the reverse)
    for name in available:
        if name.split("-", 1)[0] == short:
            return name, f"{name} (asked: {wanted})"
    return None, (f"{wanted} is not in the image (it has: {', '.join(available) or 'none'}); "
                  "the kernel default (us) stays: pack it with `liveinit pack --keymap NAME`")


def load(path: str, vt: str | None = None) -> int:
    """Load the binary keymap at `path` into the kernel; returns the entries set.
    Raises KeymapError or OSError (no VT, no permission)."""
    import fcntl
    with open(path, "rb") as f:
        entries = parse(f.read())
    fd = -1
    err: OSError | None = None
    for cand in (vt,) if vt else VTS:
        try:
            fd = os.open(cand, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            fcntl.ioctl(fd, KDSKBENT, ENTRY.pack(*entries[0]))   # is it a VT?
            break
        except OSError as e:
            err = e
            if fd >= 0:
                os.close(fd)
            fd = -1
    if fd < 0:
        raise err or OSError("no virtual terminal")
    try:
        for entry in entries:
            fcntl.ioctl(fd, KDSKBENT, ENTRY.pack(*entry))
    finally:
        os.close(fd)
    return len(entries)


class Keymaps:
    """The boot's keymap, chosen on the command line, loaded at most once."""

    def __init__(self, root: str, wanted: str | None) -> None:
        self.root = root
        self.wanted = wanted
        self.loaded: str | None = None    # the name, once loaded
        self.done = False
        self.note = ""

    def ensure(self) -> str:
        """Load the chosen keymap (the first call only); a line saying what is in effect."""
        if self.done:
            return self.note
        self.done = True
        name, why = choose(self.wanted, baked(self.root))
        if name is None:
            self.note = f"keymap: {why}"
            return self.note
        import time
        begun = time.monotonic()
        try:
            n = load(self.root.rstrip("/") + path_for(name))
        except (OSError, KeymapError) as e:
            self.note = f"keymap: cannot load {name}: {e}; the kernel default (us) stays"
            return self.note
        self.loaded = name
        self.note = f"keymap: {why} loaded ({n} keys in {(time.monotonic() - begun) * 1000:.0f} ms)"
        return self.note
