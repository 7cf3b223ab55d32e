"""The root's /etc/crypttab baked into the image, with its key files.

Which entries: those with the `initramfs` option (as Debian's
cryptsetup-initramfs reads crypttab) and, with --host-only, those whose
volume is under the running root (its dm-crypt devices, followed down from
the root's block device). Read from --crypttab FILE, else (with --host-only)
from /etc/crypttab. The entries are written as contract.CRYPTTAB in the
image, parsed at boot by the same reader (liveinit/crypttab.py): SOURCE as
UUID= of the LUKS header when the host can tell it (blkid), KEYFILE as the
key's copy under contract.KEY_DIR (mode 0400). An image holding a key file
is written mode 0600: whoever reads it can open the volume."""
from __future__ import annotations

import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from liveinit import crypttab
from liveinit.contract import CRYPTTAB, KEY_DIR
from packer.errors import CommandError

HOST_CRYPTTAB = Path("/etc/crypttab")
# crypttab options naming a key source liveinit's runtime does not have.
KEY_SOURCES = ("keyscript", "tpm2-device", "fido2-device", "pkcs11-uri")


@dataclass(frozen=True)
class Baked:
    """What goes into the image: `entries` (as rewritten), `files` ((image path, bytes, mode)),
    `keys` (mapper names whose key file is baked), `notes` (what was left out, and why)."""

    entries: tuple[crypttab.Entry, ...] = ()
    files: tuple[tuple[str, bytes, int], ...] = ()
    keys: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def read(path: Path) -> list[crypttab.Entry]:
    """The entries of crypttab `path`; CommandError naming a bad line."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CommandError(f"cannot read the crypttab {path}: {e.strerror}",
                           hint="give an existing file to --crypttab") from None
    entries, errors = crypttab.parse(text)
    if errors:
        raise CommandError(f"{path}: " + "; ".join(errors),
                           hint="see crypttab(5): NAME SOURCE [KEYFILE [OPTIONS]]")
    return entries


def blkid_uuid(source: str) -> str | None:
    """The UUID blkid reads on the device `source` names (a path, LABEL=, PARTUUID=), or None."""
    blkid = shutil.which("blkid") or "/usr/sbin/blkid"
    argv = [blkid, "-o", "value", "-s", "UUID"] + (["-t", source] if "=" in source.split("/")[0]
                                                   else [source])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out[0] if len(out) == 1 else None


def source_uuid(source: str, resolve: object = blkid_uuid) -> str:
    """`source` as UUID=... when it names its LUKS header's UUID or the host can tell it, else as written."""
    e = crypttab.Entry("x", source)
    if e.uuid():
        return "UUID=" + e.uuid()
    found = resolve(source)  # type: ignore[operator]
    return f"UUID={found}" if found else source


def bake(entries: list[crypttab.Entry], root_names: set[str], resolve: object = blkid_uuid) -> Baked:
    """Choose and rewrite `entries`: those with `initramfs` or named in `root_names` (the
    mapper names under the running root); copy their key files."""
    chosen: list[crypttab.Entry] = []
    files: list[tuple[str, bytes, int]] = []
    keys: list[str] = []
    notes: list[str] = []
    for e in entries:
        if e.option("initramfs") is None and e.name not in root_names:
            notes.append(f"{e.name}: not baked (not under the root, no `initramfs` option)")
            continue
        kind = next((k for k in crypttab.NOT_LUKS if e.option(k) is not None), None)
        if kind:
            notes.append(f"{e.name}: not baked: a {kind} volume (liveinit opens LUKS only)")
            continue
        options = e.options
        keyfile = ""
        source = next((k for k in KEY_SOURCES if e.option(k) is not None), None)
        if source:
            notes.append(f"{e.name}: {source}= is not supported at boot: the passphrase will be asked")
            options = ",".join(w for w in options.split(",") if w.partition("=")[0] not in KEY_SOURCES)
        elif e.keyfile:
            keyfile, note = _key(e)
            if note:
                notes.append(note)
            if keyfile:
                files.append((f"{KEY_DIR}/{e.name}.key", Path(e.keyfile).read_bytes(), 0o400))
                keys.append(e.name)
        chosen.append(crypttab.Entry(e.name, source_uuid(e.source, resolve), keyfile, options, e.line))
    if chosen:
        files.insert(0, (CRYPTTAB, crypttab.render(chosen).encode(), 0o600 if keys else 0o644))
    return Baked(tuple(chosen), tuple(files), tuple(keys), tuple(notes))


def _key(e: crypttab.Entry) -> tuple[str, str]:
    """(the key's path in the image or "" when it is not baked, a note or "")."""
    path = Path(e.keyfile)
    if ":" in e.keyfile or e.keyfile.startswith("/dev/"):
        return "", f"{e.name}: key file {e.keyfile} is on a device: not baked, the passphrase will be asked"
    try:
        st = path.stat()
    except OSError as err:
        return "", f"{e.name}: key file {e.keyfile}: {err.strerror}: the passphrase will be asked"
    if not stat.S_ISREG(st.st_mode):
        return "", f"{e.name}: key file {e.keyfile} is not a regular file: the passphrase will be asked"
    if st.st_mode & 0o077:
        return (f"{KEY_DIR}/{e.name}.key", f"{e.name}: key file {e.keyfile} is readable by others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 0400 it")
    return f"{KEY_DIR}/{e.name}.key", ""


def for_pack(path: Path | None, host_only: bool) -> Baked:
    """What `liveinit pack` bakes: --crypttab FILE, else with --host-only the host's
    /etc/crypttab (when it has one); the root's chain with --host-only."""
    if path is None and not (host_only and HOST_CRYPTTAB.is_file()):
        return Baked()
    entries = read(path or HOST_CRYPTTAB)
    names: set[str] = set()
    if host_only:
        from packer.blocktools import crypt_names_below, device_name
        from packer.hostonly import root_filesystem
        names = crypt_names_below(device_name(root_filesystem("/")[0]))
    return bake(entries, names)
