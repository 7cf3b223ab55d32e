"""The kernel module index: kmod-compatible alias matching, PCI map matching
and load order, shared by the packer and PID 1.

The packer builds a `ModuleIndex` for exactly the packed modules and dumps it
with `marshal` (`liveinit.index`): alias patterns arrive precompiled and
bucketed by their literal prefix, so PID 1 only loads plain tuples and dicts
and matches a modalias against a handful of candidates. Matching follows
kmod: both the pattern and the modalias are normalised (`-` -> `_` outside
brackets), patterns use glibc `fnmatch(3)` semantics with flags 0 (`*`, `?`,
`[...]` with `!`/`^`, ranges and classes, backslash escapes), and a lookup
tries, in order, modprobe.d aliases, module names, modules.alias, then the
builtin modules and their aliases.

Stdlib only and import-light: no `re`, no `fnmatch` (our matcher is cheaper
than compiling a regex per pattern at boot)."""
from __future__ import annotations

import marshal
import os

FORMAT = 2
# Version 2 writes no object references: equal indexes give equal bytes.
MARSHAL_VERSION = 2
CPU_ALIAS = "cpu:type:"     # MODULE_DEVICE_TABLE(x86cpu, ...) entries
INDEX_NAME = "liveinit.index"
PCI_ANY = 0xFFFFFFFF
# Literal prefixes longer than this are cut: fewer distinct key lengths to
# probe per modalias, still selective enough ("usb:v0627p0001d" has 15).
PREFIX_CAP = 24
_HEX = "0123456789ABCDEF"
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


def _underscores(s: str) -> str:
    """kmod's lenient variant used for names in modprobe.d files."""
    norm = normalize_alias(s)
    return norm if norm is not None else s.replace("-", "_")


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
    segs: list[object] = []
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
    out = []
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


def _literal_prefix(cp: tuple) -> str | None:
    """The literal text every match starts with; None when the pattern has no
    wildcard at all (an exact alias)."""
    fixed, segs = cp
    first = segs[0]
    if len(segs) == 1 and first.__class__ is str:
        return None
    if first.__class__ is str:
        return first
    out = []
    for e in first:
        if e.__class__ is not str:
            break
        out.append(e)
    return "".join(out)


# ---------------------------------------------------------------- PCI

def pci_entry(pattern: str) -> tuple[int, int, int, int, int, int] | None:
    """The modules.pcimap fields (vendor, device, subvendor, subdevice, class,
    class_mask) equivalent to a `pci:` alias on well-formed PCI modaliases,
    or None when the map cannot represent it (partial wildcards, ranges...)."""
    if not pattern.startswith("pci:"):
        return None
    vals = []
    pos = 4
    n = len(pattern)
    for key, width in (("v", 8), ("d", 8), ("sv", 8), ("sd", 8), ("bc", 2), ("sc", 2), ("i", 2)):
        if pos >= n and vals and vals[-1] is None:
            vals.append(None)  # after a trailing star every field is free
            continue
        if not pattern.startswith(key, pos):
            return None
        pos += len(key)
        if pattern.startswith("*", pos):
            vals.append(None)
            pos += 1
            continue
        field = pattern[pos:pos + width]
        if len(field) != width or any(c not in _HEX for c in field):
            return None
        vals.append(int(field, 16))
        pos += width
    rest = pattern[pos:]
    if rest not in ("", "*"):
        return None
    ids = [PCI_ANY if v is None else v for v in vals[:4]]
    cls = mask = 0
    for v, shift in zip(vals[4:], (16, 8, 0)):
        if v is not None:
            cls |= v << shift
            mask |= 0xFF << shift
    return (ids[0], ids[1], ids[2], ids[3], cls, mask)


def _hex(s: str) -> int:
    for c in s:
        if c not in _HEX:
            return -1
    return int(s, 16)


def parse_pci_modalias(s: str) -> tuple[int, int, int, int, int] | None:
    """(vendor, device, subvendor, subdevice, class) of a well-formed
    `pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X` modalias, else None."""
    if (len(s) != 53 or not s.startswith("pci:v") or s[13] != "d" or s[22:24] != "sv"
            or s[32:34] != "sd" or s[42:44] != "bc" or s[46:48] != "sc" or s[50] != "i"):
        return None
    v, d, sv, sd = _hex(s[5:13]), _hex(s[14:22]), _hex(s[24:32]), _hex(s[34:42])
    bc, sc, pi = _hex(s[44:46]), _hex(s[48:50]), _hex(s[51:53])
    if min(v, d, sv, sd, bc, sc, pi) < 0:
        return None
    return (v, d, sv, sd, (bc << 16) | (sc << 8) | pi)


def pci_modalias(vendor: int, device: int, subvendor: int, subdevice: int, class_: int) -> str:
    """The modalias the kernel shows for a PCI function."""
    return "pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X" % (
        vendor, device, subvendor, subdevice, class_ >> 16 & 0xFF, class_ >> 8 & 0xFF, class_ & 0xFF)


def pci_match_entry(e: tuple, v: int, d: int, sv: int, sd: int, cls: int) -> bool:
    """Classic pcimap semantics: 0xffffffff is a wildcard, the class is masked."""
    return ((e[0] == PCI_ANY or e[0] == v) and (e[1] == PCI_ANY or e[1] == d)
            and (e[2] == PCI_ANY or e[2] == sv) and (e[3] == PCI_ANY or e[3] == sd)
            and (cls & e[5]) == e[4])


def parse_pcimap(text: str) -> list[tuple]:
    """Entries (vendor, device, subvendor, subdevice, class, mask, module) of a modules.pcimap."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 7 or f[0].startswith("#"):
            continue
        try:
            nums = [int(x, 16) for x in f[1:7]]
        except ValueError:
            continue
        out.append((nums[0], nums[1], nums[2], nums[3], nums[4], nums[5], modname(f[0])))
    return out


# ---------------------------------------------------------------- text readers

def parse_dep(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """modules.dep lines as (name, relative path, dependency names in file order)."""
    out = []
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        path = path.strip()
        out.append((modname(path), path, tuple(modname(d) for d in deps.split())))
    return out


def parse_alias(text: str) -> list[tuple[str, str]]:
    """(pattern, module) pairs of a modules.alias file."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "alias":
            out.append((f[1], modname(f[2])))
    return out


def parse_builtin(text: str) -> list[str]:
    """Module names of modules.builtin."""
    return [modname(line.strip()) for line in text.splitlines() if line.strip()]


def parse_builtin_modinfo(data: bytes) -> list[tuple[str, str, str]]:
    """(module, key, value) triples of modules.builtin.modinfo."""
    out = []
    for item in data.split(b"\0"):
        if not item:
            continue
        s = item.decode("utf-8", "replace")
        mod, dot, rest = s.partition(".")
        key, eq, value = rest.partition("=")
        if dot and eq:
            out.append((mod.replace("-", "_"), key, value))
    return out


def parse_softdep_value(value: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(pre, post) of a softdep body "pre: a b post: c"; words before any
    `pre:`/`post:` are ignored, as kmod does."""
    pre: list[str] = []
    post: list[str] = []
    mode = None
    for w in value.split():
        if w == "pre:":
            mode = pre
        elif w == "post:":
            mode = post
        elif mode is not None:
            mode.append(w)
    return tuple(pre), tuple(post)


def parse_config(text: str) -> list[tuple[str, ...]]:
    """modprobe.d directives: ("alias", pattern, module), ("blacklist", module),
    ("options", module, opts), ("softdep", pattern, body), ("install", module, cmd).
    Names are normalised as kmod does; bad lines are skipped."""
    out: list[tuple[str, ...]] = []
    lines = text.replace("\\\n", "").splitlines()
    for line in lines:
        if not line or line[0] == "#":
            continue
        f = line.split(None, 2)
        if not f:
            continue
        cmd = f[0]
        if cmd == "alias" and len(f) == 3 and f[2].split():
            out.append(("alias", _underscores(f[1]), _underscores(f[2].split()[0])))
        elif cmd == "blacklist" and len(f) >= 2:
            out.append(("blacklist", _underscores(f[1])))
        elif cmd in ("options", "softdep", "install", "remove") and len(f) == 3:
            out.append((cmd, _underscores(f[1]), f[2].strip()))
    return out


# ---------------------------------------------------------------- the index

class ModuleIndex:
    """Modules, their dependencies, aliases, softdeps, builtins and modprobe.d
    settings of one kernel, ready for matching and load ordering."""

    __slots__ = ("kver", "modules", "exact", "wild", "wild_lens", "pci", "builtin",
                 "builtin_aliases", "softdeps", "options_", "blacklist", "config_aliases",
                 "cpu_gated", "_rank", "_pci_by_vendor")

    def __init__(self, data: dict) -> None:
        self.kver: str = data["kver"]
        # name -> (relative path, dependency names in modules.dep order)
        self.modules: dict = data["modules"]
        self.exact: dict = data["exact"]          # alias -> module names
        self.wild: dict = data["wild"]            # literal prefix -> ((compiled, modules), ...)
        self.wild_lens: tuple = data["wild_lens"]
        self.pci: tuple = data["pci"]             # (v, d, sv, sd, class, mask, module, pattern)
        self.builtin: frozenset = frozenset(data["builtin"])
        self.builtin_aliases: tuple = data["builtin_aliases"]  # (compiled, module)
        self.softdeps: tuple = data["softdeps"]   # (compiled name pattern, pre, post), first match wins
        self.options_: dict = data["options"]
        self.blacklist: frozenset = frozenset(data["blacklist"])
        self.config_aliases: tuple = data["config_aliases"]  # (compiled, module)
        # Modules with an x86cpu device table (`cpu:type:...:feature:...` aliases):
        # their init returns ENODEV on a CPU without those features (crc32c_intel
        # without SSE4.2), so the loader checks the CPU before trying them.
        self.cpu_gated: frozenset = frozenset(data["cpu_gated"])
        self._rank: dict | None = None
        self._pci_by_vendor: dict | None = None

    # -- construction

    @classmethod
    def build(cls, kver: str, modules: list | tuple, aliases: list | tuple, builtin: list | tuple = (),
              builtin_aliases: list | tuple = (), config: list | tuple = ()) -> ModuleIndex:
        """Compile an index. `modules`: (name, relpath, dep names) in kmod's
        priority order (modules.order); `aliases`: (pattern, module);
        `builtin_aliases`: (pattern, module) from modules.builtin.modinfo;
        `config`: (file name, text) of modprobe.d files and modules.softdep,
        applied in file-name order as kmod does."""
        mods = {m[0]: (m[1], tuple(m[2])) for m in modules}
        exact: dict[str, list[str]] = {}
        wild: dict[str, list] = {}
        pci = []
        compiled: dict[str, tuple] = {}
        cpu_gated = set()
        for pattern, mod in aliases:
            norm = normalize_alias(pattern)
            if norm is None:
                continue  # depmod drops these too
            if norm.startswith(CPU_ALIAS):
                cpu_gated.add(mod)
            ent = pci_entry(norm)
            if ent is not None:
                pci.append(ent + (mod, norm))
                continue
            cp = compiled.get(norm)
            if cp is None:
                cp = compiled[norm] = compile_pattern(norm)
            if cp[0] < 0:
                continue  # glibc would refuse it for every string
            prefix = _literal_prefix(cp)
            if prefix is None:
                lst = exact.setdefault(norm, [])
                if mod not in lst:
                    lst.append(mod)
            else:
                wild.setdefault(prefix[:PREFIX_CAP], []).append((norm, mod))
        wild_t = {}
        for prefix, items in wild.items():
            by_pat: dict[str, list[str]] = {}
            for norm, mod in items:
                lst = by_pat.setdefault(norm, [])
                if mod not in lst:
                    lst.append(mod)
            wild_t[prefix] = tuple((compiled[p], tuple(ms)) for p, ms in by_pat.items())
        b_aliases = []
        for pattern, mod in builtin_aliases:
            norm = normalize_alias(pattern)
            if norm is not None:
                b_aliases.append((compile_pattern(norm), mod))
        softdeps, options, blacklist, c_aliases = [], {}, set(), []
        for _name, text in sorted(config, key=lambda c: c[0]):
            for d in parse_config(text):
                if d[0] == "softdep":
                    pre, post = parse_softdep_value(d[2])
                    softdeps.append((compile_pattern(d[1]), pre, post))
                elif d[0] == "options":
                    options[d[1]] = (options[d[1]] + " " + d[2]) if d[1] in options else d[2]
                elif d[0] == "blacklist":
                    blacklist.add(d[1])
                elif d[0] == "alias":
                    c_aliases.append((compile_pattern(d[1]), d[2]))
        return cls({
            "kver": kver, "modules": mods,
            "exact": {k: tuple(v) for k, v in exact.items()},
            "wild": wild_t, "wild_lens": tuple(sorted({len(p) for p in wild_t})),
            "pci": tuple(pci), "builtin": tuple(sorted(set(builtin))),
            "builtin_aliases": tuple(b_aliases), "softdeps": tuple(softdeps),
            "options": options, "blacklist": tuple(sorted(blacklist)),
            "config_aliases": tuple(c_aliases), "cpu_gated": tuple(sorted(cpu_gated)),
        })

    @classmethod
    def from_moddir(cls, moddir: str, config_dirs: list | tuple = ()) -> ModuleIndex:
        """The index of a module directory: `liveinit.index` when present,
        else modules.dep/alias/softdep/builtin(.modinfo) and modules.order.
        With `config_dirs` (modprobe.d directories) the text files are read,
        so their settings apply."""
        moddir = str(moddir).rstrip("/")
        if not config_dirs:
            try:
                return cls.load(moddir + "/" + INDEX_NAME)
            except OSError:
                pass

        def read(name: str) -> str:
            try:
                with open(moddir + "/" + name, "rb") as f:
                    return f.read().decode("utf-8", "replace")
            except OSError:
                return ""

        dep_text = read("modules.dep")
        if not dep_text:
            raise OSError(f"{moddir}: no {INDEX_NAME} and no modules.dep")
        deps = parse_dep(dep_text)
        order = {modname(p): i for i, p in enumerate(read("modules.order").split())}
        big = len(order)
        deps.sort(key=lambda m: order.get(m[0], big))
        try:
            with open(moddir + "/modules.builtin.modinfo", "rb") as f:
                binfo = parse_builtin_modinfo(f.read())
        except OSError:
            binfo = []
        config = [("modules.softdep", read("modules.softdep"))]
        seen = {"modules.softdep"}
        for d in config_dirs:
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for fn in names:
                if fn in seen or fn.startswith(".") or not fn.endswith((".conf", ".alias")):
                    continue
                seen.add(fn)
                with open(str(d) + "/" + fn, "rb") as f:
                    config.append((fn, f.read().decode("utf-8", "replace")))
        kver = moddir.rpartition("/")[2]
        return cls.build(kver, deps, parse_alias(read("modules.alias")),
                         parse_builtin(read("modules.builtin")),
                         [(v, m) for m, k, v in binfo if k == "alias"], config)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "kver": self.kver, "modules": self.modules, "exact": self.exact,
            "wild": self.wild, "wild_lens": self.wild_lens, "pci": self.pci,
            "builtin": tuple(sorted(self.builtin)), "builtin_aliases": self.builtin_aliases,
            "softdeps": self.softdeps, "options": self.options_,
            "blacklist": tuple(sorted(self.blacklist)), "config_aliases": self.config_aliases,
            "cpu_gated": tuple(sorted(self.cpu_gated)),
        }

    def dumps(self) -> bytes:
        return marshal.dumps(self.to_dict(), MARSHAL_VERSION)

    def dump(self, path: str) -> None:
        """Write the index as one marshal blob (deterministic for equal input)."""
        with open(str(path), "wb") as f:
            f.write(self.dumps())

    @classmethod
    def loads(cls, blob: bytes) -> ModuleIndex:
        data = marshal.loads(blob)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a liveinit module index of format {FORMAT}")
        return cls(data)

    @classmethod
    def load(cls, path: str) -> ModuleIndex:
        """Read an index written by `dump`."""
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
        return ent[0] if ent else None

    def deps(self, name: str) -> tuple:
        ent = self.modules.get(modname(name))
        return ent[1] if ent else ()

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

    def _sorted(self, mods: list) -> list:
        if len(mods) < 2:
            return mods
        rank = self._rank
        if rank is None:
            rank = self._rank = {m: i for i, m in enumerate(self.modules)}
        big = len(rank)
        return sorted(mods, key=lambda m: rank.get(m, big))

    def _pci_table(self) -> dict:
        table = self._pci_by_vendor
        if table is None:
            table = self._pci_by_vendor = {}
            for e in self.pci:
                table.setdefault(e[0], []).append(e)
        return table

    def _pcimap(self, ids: tuple, out: list) -> None:
        table = self._pci_table()
        v, d, sv, sd, cls = ids
        for e in table.get(v, ()):
            if pci_match_entry(e, v, d, sv, sd, cls) and e[6] not in out:
                out.append(e[6])
        for e in table.get(PCI_ANY, ()):
            if pci_match_entry(e, v, d, sv, sd, cls) and e[6] not in out:
                out.append(e[6])

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
                self._pcimap(ids, out)
            else:  # not a kernel-made PCI modalias: match the original patterns
                for e in self.pci:
                    if e[6] not in out and fnmatch(e[7], s):
                        out.append(e[6])
        return self._sorted(out)

    def match_pci(self, vendor: int, device: int, subvendor: int, subdevice: int, class_: int) -> list[str]:
        """Modules for a PCI function: the pcimap entries plus the pci aliases
        the map cannot represent."""
        out: list[str] = []
        self._pcimap((vendor, device, subvendor, subdevice, class_), out)
        s = pci_modalias(vendor, device, subvendor, subdevice, class_)
        for m in self.match_aliases(s):
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

    def _probe(self, mod: str, visited: set, out: list) -> None:
        if mod in visited:
            return
        visited.add(mod)
        ent = self.modules.get(mod)
        if ent:
            for dep in reversed(ent[1]):
                self._with_softdeps(dep, visited, out)
        self._with_softdeps(mod, visited, out)

    def _with_softdeps(self, mod: str, visited: set, out: list) -> None:
        pre, post = self.softdeps_of(mod) if self.softdeps else ((), ())
        for p in pre:
            for m in self.lookup(p):
                self._probe(m, visited, out)
        out.append(mod)
        for p in post:
            for m in self.lookup(p):
                self._probe(m, visited, out)
