"""crypttab(5): the one reader, for the packer (the root's /etc/crypttab) and
the runtime (the entries the packer baked into the image, contract.CRYPTTAB).

A line is `NAME SOURCE [KEYFILE [OPTIONS]]`: the /dev/mapper name, the
encrypted device (UUID=, LABEL=, PARTUUID=, /dev/disk/by-uuid/..., a /dev
path), a key file ("none" or "-": ask for the passphrase) and comma-separated
options. The packer rewrites what it bakes: SOURCE as UUID= of the LUKS
header where the host can tell it, KEYFILE as the key's path in the image.
Standard library only, no re: this runs at boot."""
from __future__ import annotations

from liveinit.cmdline import luks_uuid
from liveinit.plain import Plain

NO_KEY = ("", "none", "-")
# Options the runtime acts on are in liveinit/layers.py; these only matter to the
# packer (which entries to bake) or to the installed system, and are accepted quietly.
QUIET = ("luks", "initramfs", "nofail", "noauto", "x-initrd.attach", "_netdev", "auto", "force",
         "headless")
# Kinds of volume liveinit cannot open (only LUKS): their entries are refused by name.
NOT_LUKS = ("plain", "tcrypt", "bitlk", "veracrypt", "swap", "tmp")


class Entry(Plain):
    """One crypttab line: mapper `name`, `source` device, `keyfile` ("" = ask), `options`."""

    __slots__ = ("name", "source", "keyfile", "options", "line")
    name: str
    source: str
    keyfile: str
    options: str
    line: int
    _defaults = {"keyfile": "", "options": "", "line": 0}

    def option(self, key: str) -> str | None:
        """The value of option `key` ("" for a bare word), None when absent."""
        for word in self.options.split(","):
            k, eq, v = word.strip().partition("=")
            if k == key:
                return v if eq else ""
        return None

    def uuid(self) -> str:
        """The LUKS UUID `source` names (lower case), or ""."""
        s = self.source
        for prefix in ("UUID=", "/dev/disk/by-uuid/"):
            if s.startswith(prefix):
                return luks_uuid(s[len(prefix):].strip('"'))
        return ""

    def render(self) -> str:
        return f"{self.name} {self.source} {self.keyfile or 'none'} {self.options or 'luks'}"


def parse(text: str) -> tuple[list[Entry], list[str]]:
    """Entries and errors (line N: what is wrong) of crypttab `text`."""
    entries: list[Entry] = []
    errors: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or len(fields) > 4:
            errors.append(f"line {n}: {len(fields)} fields in {line!r} (NAME SOURCE [KEYFILE [OPTIONS]])")
            continue
        name, source = fields[0], fields[1]
        if "/" in name:
            errors.append(f"line {n}: the name {name!r} has a '/' (it becomes /dev/mapper/NAME)")
            continue
        keyfile = fields[2] if len(fields) > 2 else ""
        entries.append(Entry(name, source, "" if keyfile in NO_KEY else keyfile,
                             fields[3] if len(fields) > 3 else "", n))
    return entries, errors


def render(entries: list[Entry]) -> str:
    return "".join(e.render() + "\n" for e in entries)


def find(entries: list[Entry], node: str, info: dict[str, str]) -> Entry | None:
    """The entry for LUKS device `node` (/dev/vda2) with identity `info` (blkid's
    UUID, LABEL): by UUID, by LABEL (LUKS2) or by the /dev path itself."""
    uuid = info.get("UUID", "").lower()
    label = info.get("LABEL", "")
    for e in entries:
        if uuid and e.uuid() == uuid:
            return e
        if label and e.source in ("LABEL=" + label, "/dev/disk/by-label/" + label):
            return e
        if e.source == node:
            return e
    return None
