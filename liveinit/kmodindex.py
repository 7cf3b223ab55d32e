"""The kernel module index PID 1 reads: kmod-compatible alias matching, PCI
map matching and load order over the index the packer compiled
(packer.modindex).

The index is one `marshal` blob (`liveinit.index`) of tuples, dicts and strings:
alias patterns arrive precompiled and bucketed by their literal prefix, so
PID 1 only loads the blob and matches a modalias against a handful of
candidates. Matching follows kmod: both the pattern and the modalias are
normalised (`-` -> `_` outside brackets), patterns use glibc `fnmatch(3)`
semantics with flags 0 (`*`, `?`, `[...]` with `!`/`^`, ranges and classes,
backslash escapes), and a lookup tries, in order, modprobe.d aliases, module
names, modules.alias, then the builtin modules and their aliases.

Stdlib only and import-light: marshal and nothing else; no `re`, no `fnmatch`
(our matcher is cheaper than compiling a regex per pattern at boot)."""
from __future__ import annotations

import marshal
from binascii import crc32

# Format 3: a PCI map entry is (module, pattern, (vendor, device, subvendor,
# subdevice, class, class_mask)).
FORMAT = 3
# Version 2 writes no object references: equal indexes give equal bytes
# (the packer's index and its module cache are written with it).
MARSHAL_VERSION = 2
# The file: this magic, the CRC-32 of the marshal payload (4 bytes, little
# endian), the payload. marshal trusts its input (a damaged length field can
# make it allocate gigabytes), so nothing reaches it before the CRC matches.
INDEX_MAGIC = b"LIIX"
INDEX_NAME = "liveinit.index"
PCI_ANY = 0xFFFFFFFF
HEX_DIGITS = "0123456789ABCDEF"  # the kernel writes modalias ids in upper-case hex
_PCI_KEYS = "pci:vdsvsdbcsci"   # a PCI modalias without its ids
_CLASSES = {
    "alnum": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "alpha": "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    "blank": " \t",
    "cntrl": "".join(map(chr, range(32))) + "\x7f",
    "digit": "0123456789",
    "graph": "".join(map(chr, range(33, 127))),
    "lower": "abcdefghijklmnopqrstuvwxyz",
    "print": "".join(map(chr, range(32, 127))),
    "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "space": " \t\n\r\f\v",
    "upper": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "xdigit": "0123456789ABCDEFabcdef",
}
# A compiled pattern that never matches (glibc returns FNM_NOMATCH for a
# trailing backslash or an unknown [:class:]).
NEVER = (-1, ())


# ---------------------------------------------------------------- names

def modname(path_or_name: str) -> str:
    """kmod's module name of a path or name: basename up to the first dot, `-` -> `_`."""
    base = path_or_name.rpartition("/")[2]
    return base.partition(".")[0].replace("-", "_")


def normalize_alias(alias: str) -> str | None:
    """kmod's alias_normalize: `-` -> `_` outside `[...]`; None if brackets are unbalanced."""
    if "-" not in alias and "[" not in alias and "]" not in alias:
        return alias
    out = []
    i, n = 0, len(alias)
    while i < n:
        c = alias[i]
        if c == "-":
            out.append("_")
        elif c == "]":
            return None
        elif c == "[":
            j = alias.find("]", i)
            if j < 0:
                return None
            out.append(alias[i:j + 1])
            i = j
        else:
            out.append(c)
        i += 1
    return "".join(out)


# ---------------------------------------------------------------- matcher

def _bracket(pat: str, i: int) -> tuple[object, int] | None:
    """Parse `[...]` starting after the `[` at pat[i-1]; returns (element, next index).

    Returns None when the bracket is unterminated (then `[` is a literal) and
    (NEVER, 0) when glibc would refuse the whole pattern."""
    n = len(pat)
    neg = i < n and pat[i] in "!^"
    if neg:
        i += 1
    chars: list[str] = []
    first = True
    while True:
        if i >= n:
            return None
        c = pat[i]
        if c == "]" and not first:
            return (neg, "".join(sorted(set(chars)))), i + 1
        first = False
        if c == "\\":
            if i + 1 >= n:
                return NEVER, 0
            c = pat[i + 1]
            i += 2
        elif c == "[" and i + 1 < n and pat[i + 1] in ":.=":
            kind = pat[i + 1]
            end = pat.find(kind + "]", i + 2)
            name = pat[i + 2:end] if end >= 0 else ""
            if kind == ":" and end >= 0 and name and all("a" <= ch < "z" for ch in name):
                if name not in _CLASSES:
                    return NEVER, 0
                chars.extend(_CLASSES[name])
                i = end + 2
                continue
            if kind in ".=" and end >= 0 and len(name) == 1:
                c = name
                i = end + 2
            else:
                i += 1
        else:
            i += 1
        # A range: c-x, unless the dash closes the bracket.
        if i + 1 < n and pat[i] == "-" and pat[i + 1] != "]":
            hi = pat[i + 1]
            i += 2
            if hi == "\\":
                if i >= n:
                    return NEVER, 0
                hi = pat[i]
                i += 1
            lo_o, hi_o = ord(c), ord(hi)
            if hi_o - lo_o > 4096:
                hi_o = lo_o + 4096
            chars.extend(chr(o) for o in range(lo_o, hi_o + 1))
        else:
            chars.append(c)


def compile_pattern(pat: str) -> tuple:
    """Compile a glob into (fixed length, segments): the pattern split at its
    stars; a segment is a str (all literal) or a tuple of elements (a 1-char
    str, None for `?`, (negated, chars) for a bracket)."""
    segs: list[list[object]] = []
    cur: list[object] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        i += 1
        if c == "*":
            segs.append(cur)
            cur = []
        elif c == "?":
            cur.append(None)
        elif c == "\\":
            if i >= n:
                return NEVER
            cur.append(pat[i])
            i += 1
        elif c == "[":
            got = _bracket(pat, i)
            if got is None:
                cur.append("[")
            elif got[0] is NEVER:
                return NEVER
            else:
                cur.append(got[0])
                i = got[1]
        else:
            cur.append(c)
    segs.append(cur)
    out: list[str | tuple[object, ...]] = []
    for seg in segs:
        if all(e.__class__ is str for e in seg):
            out.append("".join(seg))  # type: ignore[arg-type]
        else:
            out.append(tuple(seg))
    return (sum(len(s) for s in out), tuple(out))


def _at(seg: tuple, s: str, i: int) -> bool:
    for e in seg:
        c = s[i]
        i += 1
        if e is None:
            continue
        if e.__class__ is str:
            if c != e:
                return False
        elif (c in e[1]) == e[0]:
            return False
    return True


def _find(seg: object, s: str, pos: int, end: int) -> int:
    """Leftmost start >= pos of `seg` ending at or before `end`, or -1."""
    if seg.__class__ is str:
        return s.find(seg, pos, end)  # type: ignore[arg-type]
    last = end - len(seg)  # type: ignore[arg-type]
    while pos <= last:
        if _at(seg, s, pos):  # type: ignore[arg-type]
            return pos
        pos += 1
    return -1


def match_compiled(cp: tuple, s: str) -> bool:
    """fnmatch(3) with flags 0 of a compiled pattern against `s`."""
    fixed, segs = cp
    if fixed < 0 or len(s) < fixed:
        return False
    first = segs[0]
    if len(segs) == 1:
        if len(s) != fixed:
            return False
        return s == first if first.__class__ is str else _at(first, s, 0)
    if first.__class__ is str:
        if not s.startswith(first):
            return False
    elif not _at(first, s, 0):
        return False
    pos = len(first)
    last = segs[-1]
    end = len(s) - len(last)
    for seg in segs[1:-1]:
        if seg:
            p = _find(seg, s, pos, end)
            if p < 0:
                return False
            pos = p + len(seg)
    if end < pos:
        return False
    return s.endswith(last) if last.__class__ is str else _at(last, s, end)


_cache: dict[str, tuple] = {}


def fnmatch(pattern: str, s: str) -> bool:
    """glibc fnmatch(pattern, s, 0) == 0, with compiled patterns cached."""
    cp = _cache.get(pattern)
    if cp is None:
        cp = _cache[pattern] = compile_pattern(pattern)
    return match_compiled(cp, s)


# ---------------------------------------------------------------- PCI

def parse_pci_modalias(s: str) -> tuple[int, int, int, int, int] | None:
    """(vendor, device, subvendor, subdevice, class) of a modalias exactly as
    the kernel writes it, "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X", the
    class as 24 bits (class << 16 | subclass << 8 | prog-if); else None."""
    if len(s) != 53 or s[:5] + s[13] + s[22:24] + s[32:34] + s[42:44] + s[46:48] + s[50] != _PCI_KEYS:
        return None
    ids = s[5:13] + s[14:22] + s[24:32] + s[34:42] + s[44:46] + s[48:50] + s[51:53]
    if ids.strip(HEX_DIGITS):
        return None  # not upper-case hex digits only
    return (int(ids[:8], 16), int(ids[8:16], 16), int(ids[16:24], 16), int(ids[24:32], 16),
            int(ids[32:], 16))


def pci_modalias(vendor: int, device: int, subvendor: int, subdevice: int, class_: int) -> str:
    """The modalias the kernel shows for a PCI function."""
    return (f"pci:v{vendor:08X}d{device:08X}sv{subvendor:08X}sd{subdevice:08X}"
            f"bc{class_ >> 16 & 0xFF:02X}sc{class_ >> 8 & 0xFF:02X}i{class_ & 0xFF:02X}")


def pci_match_entry(ids: tuple[int, int, int, int, int, int], vendor: int, device: int, subvendor: int,
                    subdevice: int, class_: int) -> bool:
    """Classic pcimap semantics for the map fields `ids` (vendor, device,
    subvendor, subdevice, class, class_mask): 0xffffffff is a wildcard, the
    class is masked."""
    v, d, sv, sd, cls, mask = ids
    return (v in (PCI_ANY, vendor) and d in (PCI_ANY, device) and sv in (PCI_ANY, subvendor)
            and sd in (PCI_ANY, subdevice) and (class_ & mask) == cls)


# ---------------------------------------------------------------- the index

class ModuleIndex:
    """Modules, their dependencies, aliases, softdeps, builtins and modprobe.d
    settings of one kernel, ready for matching and load ordering.

    `data` is the compiled form (packer.modindex builds and writes it; see
    there for how each part is made)."""

    __slots__ = ("data", "kver", "modules", "exact", "wild", "wild_lens", "pci", "builtin",
                 "builtin_aliases", "softdeps", "options_", "blacklist", "config_aliases",
                 "cpu_gated", "_rank", "_pci_by_vendor")

    def __init__(self, data: dict) -> None:
        self.data = data
        self.kver: str = data["kver"]
        # name -> (relative path, dependency names in modules.dep order), in modules.order priority
        self.modules: dict[str, tuple[str, tuple[str, ...]]] = data["modules"]
        self.exact: dict[str, tuple[str, ...]] = data["exact"]  # alias -> module names
        self.wild: dict[str, tuple] = data["wild"]   # literal prefix -> ((compiled, module names), ...)
        self.wild_lens: tuple[int, ...] = data["wild_lens"]    # the prefix lengths, ascending
        self.pci: tuple = data["pci"]                # (module, pattern, (v, d, sv, sd, class, class_mask))
        self.builtin: frozenset[str] = frozenset(data["builtin"])
        self.builtin_aliases: tuple = data["builtin_aliases"]  # (compiled, module)
        self.softdeps: tuple = data["softdeps"]      # (compiled name pattern, pre, post), first match wins
        self.options_: dict[str, str] = data["options"]
        self.blacklist: frozenset[str] = frozenset(data["blacklist"])
        self.config_aliases: tuple = data["config_aliases"]  # (compiled, module)
        # Modules with an x86cpu device table (`cpu:type:...:feature:...` aliases):
        # their init returns ENODEV on a CPU without those features (crc32c_intel
        # without SSE4.2), so the loader checks the CPU before trying them.
        self.cpu_gated: frozenset[str] = frozenset(data["cpu_gated"])
        self._rank: dict[str, int] | None = None
        self._pci_by_vendor: dict[int, list[tuple]] | None = None

    @classmethod
    def loads(cls, blob: bytes) -> ModuleIndex:
        """The index in `blob` (as packer.modindex.dumps writes it); ValueError
        when it is not one or is damaged."""
        payload = memoryview(blob)[8:]
        if blob[:4] != INDEX_MAGIC or crc32(payload) != int.from_bytes(blob[4:8], "little"):
            raise ValueError("not a liveinit module index, or a damaged one (its CRC-32 does not match)")
        data = marshal.loads(payload)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a liveinit module index of format {FORMAT}")
        return cls(data)

    @classmethod
    def load(cls, path: str) -> ModuleIndex:
        """Read an index the packer wrote."""
        with open(str(path), "rb") as f:
            return cls.loads(f.read())

    # -- queries

    def __contains__(self, name: str) -> bool:
        return modname(name) in self.modules

    def names(self) -> list[str]:
        return list(self.modules)

    def path(self, name: str) -> str | None:
        """The module's path relative to the module directory, None if not a module."""
        ent = self.modules.get(modname(name))
        if ent is None:
            return None
        path, _deps = ent
        return path

    def deps(self, name: str) -> tuple[str, ...]:
        ent = self.modules.get(modname(name))
        if ent is None:
            return ()
        _path, deps = ent
        return deps

    def is_builtin(self, name: str) -> bool:
        return modname(name) in self.builtin

    def is_blacklisted(self, name: str) -> bool:
        return modname(name) in self.blacklist

    def cpu_fits(self, name: str, cpu_modalias: str | None) -> bool:
        """Whether the CPU (its /sys/devices/system/cpu/modalias) has what a
        CPU-gated module needs; True for other modules or an unknown CPU."""
        name = modname(name)
        if name not in self.cpu_gated or not cpu_modalias:
            return True
        return name in self.match_aliases(cpu_modalias)

    def options(self, name: str) -> str:
        """Options from modprobe.d for a module ("" if none)."""
        return self.options_.get(modname(name), "")

    def _sorted(self, mods: list[str]) -> list[str]:
        if len(mods) < 2:
            return mods
        rank = self._rank
        if rank is None:
            rank = self._rank = {m: i for i, m in enumerate(self.modules)}
        big = len(rank)
        return sorted(mods, key=lambda m: rank.get(m, big))

    def _pcimap(self, vendor: int, device: int, subvendor: int, subdevice: int, class_: int,
                out: list[str]) -> None:
        table = self._pci_by_vendor
        if table is None:
            table = self._pci_by_vendor = {}
            for entry in self.pci:
                _mod, _pattern, ids = entry
                table.setdefault(ids[0], []).append(entry)
        for key in (vendor, PCI_ANY):
            for mod, _pattern, ids in table.get(key, ()):
                if mod not in out and pci_match_entry(ids, vendor, device, subvendor, subdevice, class_):
                    out.append(mod)

    def match_aliases(self, modalias: str) -> list[str]:
        """Modules whose modules.alias patterns match (kmod's alias step only)."""
        s = normalize_alias(modalias)
        if s is None:
            return []
        out: list[str] = list(self.exact.get(s, ()))
        wild = self.wild
        n = len(s)
        for ln in self.wild_lens:
            if ln > n:
                break
            bucket = wild.get(s[:ln])
            if bucket:
                for cp, mods in bucket:
                    if match_compiled(cp, s):
                        for m in mods:
                            if m not in out:
                                out.append(m)
        if s.startswith("pci:") and self.pci:
            ids = parse_pci_modalias(s)
            if ids is not None:
                self._pcimap(*ids, out)
            else:  # not a kernel-made PCI modalias: match the original patterns
                for mod, pattern, _ids in self.pci:
                    if mod not in out and fnmatch(pattern, s):
                        out.append(mod)
        return self._sorted(out)

    def match_pci(self, vendor: int, device: int, subvendor: int, subdevice: int, class_: int) -> list[str]:
        """Modules for a PCI function: the pcimap entries plus the pci aliases
        the map cannot represent."""
        out: list[str] = []
        self._pcimap(vendor, device, subvendor, subdevice, class_, out)
        for m in self.match_aliases(pci_modalias(vendor, device, subvendor, subdevice, class_)):
            if m not in out:
                out.append(m)
        return self._sorted(out)

    def lookup(self, name: str) -> list[str]:
        """What `modprobe -R name` resolves: modprobe.d aliases, then a module
        name, then modules.alias, then builtin modules and their aliases."""
        s = normalize_alias(name)
        if s is None:
            return []
        out: list[str] = []
        for cp, mod in self.config_aliases:
            if match_compiled(cp, s) and mod not in out:
                out.append(mod)
        if out:
            return out
        if s in self.modules:
            return [s]
        out = self.match_aliases(s)
        if out:
            return out
        if s in self.builtin:
            return [s]
        for cp, mod in self.builtin_aliases:
            if match_compiled(cp, s) and mod not in out:
                out.append(mod)
        return out

    # What coldplug and the loader call for a device modalias or a name.
    match = lookup

    def softdeps_of(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(pre, post) of the first softdep line whose pattern matches the module."""
        name = modname(name)
        for cp, pre, post in self.softdeps:
            if match_compiled(cp, name):
                return pre, post
        return (), ()

    def load_order(self, name: str) -> list[str]:
        """Modules to insert, in order, to load `name`: kmod's probe list
        (each dependency with its own softdeps, then pre-softdeps, the module,
        post-softdeps), first occurrences only, builtins left out."""
        out: list[str] = []
        self._probe(modname(name), set(), out)
        seen = set()
        res = []
        for m in out:
            if m not in seen and m in self.modules:
                seen.add(m)
                res.append(m)
        return res

    def _probe(self, mod: str, visited: set[str], out: list[str]) -> None:
        if mod in visited:
            return
        visited.add(mod)
        for dep in reversed(self.deps(mod)):
            self._with_softdeps(dep, visited, out)
        self._with_softdeps(mod, visited, out)

    def _with_softdeps(self, mod: str, visited: set[str], out: list[str]) -> None:
        pre, post = self.softdeps_of(mod) if self.softdeps else ((), ())
        for p in pre:
            for m in self.lookup(p):
                self._probe(m, visited, out)
        out.append(mod)
        for p in post:
            for m in self.lookup(p):
                self._probe(m, visited, out)
