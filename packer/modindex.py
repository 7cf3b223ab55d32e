"""The module index compiler: depmod's text files and modprobe.d directories
read into typed records, and one pipeline from module records to the
`ModuleIndex` PID 1 loads.

    module tree (packer.kmod) or depmod's files (read_depmod_modules)
        -> Module records (+ Builtins, modprobe.d ConfigFiles)
        -> build_index -> ModuleIndex -> dump -> liveinit.index

liveinit.kmodindex reads what this writes (its FORMAT) and owns the matcher
the patterns are compiled for."""
from __future__ import annotations

import marshal
import os
from binascii import crc32
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from liveinit.kmodindex import (
    FORMAT,
    HEX_DIGITS,
    INDEX_MAGIC,
    INDEX_NAME,
    MARSHAL_VERSION,
    PCI_ANY,
    ModuleIndex,
    compile_pattern,
    modname,
    normalize_alias,
)

CPU_ALIAS = "cpu:type:"     # MODULE_DEVICE_TABLE(x86cpu, ...) entries
# Literal prefixes longer than this are cut: fewer distinct key lengths to
# probe per modalias, still selective enough ("usb:v0627p0001d" has 15).
PREFIX_CAP = 24
SOFTDEP_FILE = "modules.softdep"
SOFTDEP_HEADER = "# Soft dependencies extracted from modules themselves.\n"
CONFIG_SUFFIXES = (".conf", ".alias")
PCIMAP_HEADER = ("# pci module         vendor     device     subvendor  subdevice  class      class_mask"
                 " driver_data\n")


# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class Module:
    """One module as depmod sees it."""

    name: str
    path: str                         # relative to the module directory
    depends: tuple[str, ...] = ()     # every dependency, in modules.dep order
    aliases: tuple[str, ...] = ()
    softdeps: tuple[str, ...] = ()    # raw softdep values ("pre: a b post: c")
    firmware: tuple[str, ...] = ()


class Alias(NamedTuple):
    """An alias line: `pattern` resolves to `module`."""

    pattern: str
    module: str


@dataclass(frozen=True)
class Builtins:
    """The modules built into the kernel (modules.builtin) and their aliases
    (modules.builtin.modinfo)."""

    paths: tuple[str, ...] = ()
    aliases: tuple[Alias, ...] = ()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(modname(p) for p in self.paths)


@dataclass(frozen=True)
class ConfigFile:
    """A modprobe.d file (or depmod's modules.softdep): kmod applies them in name order."""

    name: str
    text: str


class Command(StrEnum):
    """The modprobe.d commands kmod reads (others are skipped, as kmod warns and skips them)."""

    ALIAS = "alias"
    BLACKLIST = "blacklist"
    OPTIONS = "options"
    SOFTDEP = "softdep"
    INSTALL = "install"
    REMOVE = "remove"


@dataclass(frozen=True)
class Directive:
    """One modprobe.d line: `name` is the alias pattern or module, `value`
    the target module, options, softdep body or command ("" for blacklist)."""

    command: Command
    name: str
    value: str = ""


class DepLine(NamedTuple):
    """A modules.dep line."""

    name: str
    path: str
    depends: tuple[str, ...]


class ModinfoEntry(NamedTuple):
    """A modules.builtin.modinfo entry (`module.key=value`)."""

    module: str
    key: str
    value: str


class Softdep(NamedTuple):
    pre: tuple[str, ...]
    post: tuple[str, ...]


class PciId(NamedTuple):
    """The modules.pcimap fields of a PCI match; PCI_ANY is a wildcard."""

    vendor: int
    device: int
    subvendor: int
    subdevice: int
    class_: int
    class_mask: int


class PcimapEntry(NamedTuple):
    module: str
    ids: PciId


# ---------------------------------------------------------------- text parsers

def parse_dep(text: str) -> list[DepLine]:
    """modules.dep lines: module name, relative path, dependency names in file order."""
    out = []
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if not sep:
            continue
        path = path.strip()
        out.append(DepLine(modname(path), path, tuple(modname(d) for d in deps.split())))
    return out


def parse_alias(text: str) -> list[Alias]:
    """The alias lines of a modules.alias file."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "alias":
            out.append(Alias(f[1], modname(f[2])))
    return out


def parse_builtin(text: str) -> list[str]:
    """Module names of modules.builtin."""
    return [modname(line.strip()) for line in text.splitlines() if line.strip()]


def parse_builtin_modinfo(data: bytes) -> list[ModinfoEntry]:
    """The entries of modules.builtin.modinfo (NUL-separated `module.key=value`)."""
    out = []
    for item in data.split(b"\0"):
        if not item:
            continue
        s = item.decode("utf-8", "replace")
        mod, dot, rest = s.partition(".")
        key, eq, value = rest.partition("=")
        if dot and eq:
            out.append(ModinfoEntry(mod.replace("-", "_"), key, value))
    return out


def parse_softdep_value(value: str) -> Softdep:
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
    return Softdep(tuple(pre), tuple(post))


def _underscores(s: str) -> str:
    """kmod's lenient normalisation of names in modprobe.d files."""
    norm = normalize_alias(s)
    return norm if norm is not None else s.replace("-", "_")


def parse_config(text: str) -> list[Directive]:
    """The directives of a modprobe.d file, names normalised as kmod does;
    unknown commands and malformed lines are skipped, as kmod does."""
    out: list[Directive] = []
    for line in text.replace("\\\n", "").splitlines():
        if not line or line[0] == "#":
            continue
        f = line.split(None, 2)
        if not f:
            continue
        cmd = f[0]
        if cmd == Command.ALIAS and len(f) == 3 and f[2].split():
            out.append(Directive(Command.ALIAS, _underscores(f[1]), _underscores(f[2].split()[0])))
        elif cmd == Command.BLACKLIST and len(f) >= 2:
            out.append(Directive(Command.BLACKLIST, _underscores(f[1])))
        elif cmd in (Command.OPTIONS, Command.SOFTDEP, Command.INSTALL, Command.REMOVE) and len(f) == 3:
            out.append(Directive(Command(cmd), _underscores(f[1]), f[2].strip()))
    return out


def pci_entry(pattern: str) -> PciId | None:
    """The modules.pcimap fields equivalent to a `pci:` alias on well-formed
    PCI modaliases, or None when the map cannot represent it (partial
    wildcards, ranges...)."""
    if not pattern.startswith("pci:"):
        return None
    vals: list[int | None] = []
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
        if len(field) != width or field.strip(HEX_DIGITS):
            return None
        vals.append(int(field, 16))
        pos += width
    if pattern[pos:] not in ("", "*"):
        return None
    vendor, device, subvendor, subdevice = (PCI_ANY if v is None else v for v in vals[:4])
    cls = mask = 0
    for v, shift in zip(vals[4:], (16, 8, 0), strict=True):
        if v is not None:
            cls |= v << shift
            mask |= 0xFF << shift
    return PciId(vendor, device, subvendor, subdevice, cls, mask)


def parse_pcimap(text: str) -> list[PcimapEntry]:
    """The entries of a modules.pcimap."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) < 7 or f[0].startswith("#"):
            continue
        try:
            ids = PciId(*(int(x, 16) for x in f[1:7]))
        except ValueError:
            continue
        out.append(PcimapEntry(modname(f[0]), ids))
    return out


def pcimap_lines(aliases: Iterable[Alias]) -> tuple[list[str], list[Alias]]:
    """modules.pcimap lines (header first) for the `pci:` aliases, and the
    aliases the map cannot represent."""
    lines = [PCIMAP_HEADER]
    bad = []
    for a in aliases:
        if not a.pattern.startswith("pci:"):
            continue
        ids = pci_entry(a.pattern)
        if ids is None:
            bad.append(a)
            continue
        fields = " ".join(f"0x{v:08x}" for v in ids)
        lines.append(f"{a.module:<20} {fields} 0x0\n")
    return lines, bad


def softdep_text(modules: Iterable[Module]) -> str:
    """depmod's modules.softdep of the modules: one line per softdep value."""
    return SOFTDEP_HEADER + "".join(f"softdep {m.name} {v}\n" for m in modules for v in m.softdeps)


# ---------------------------------------------------------------- readers

def _read_text(moddir: Path, name: str) -> str:
    try:
        return (moddir / name).read_bytes().decode("utf-8", "replace")
    except OSError:
        return ""


def read_config_dirs(dirs: Iterable[Path | str]) -> list[ConfigFile]:
    """The modprobe.d files of directories, by kmod's rules: `*.conf` and
    `*.alias`, no dot files, the first directory wins a name; in name order."""
    out: dict[str, ConfigFile] = {}
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            p = Path(d) / name
            if name.startswith(".") or not name.endswith(CONFIG_SUFFIXES) or name in out or not p.is_file():
                continue
            out[name] = ConfigFile(name, p.read_bytes().decode("utf-8", "replace"))
    return [out[name] for name in sorted(out)]


def read_builtins(moddir: Path) -> Builtins:
    """modules.builtin and the aliases of modules.builtin.modinfo (empty when absent)."""
    paths = tuple(line.strip() for line in _read_text(moddir, "modules.builtin").splitlines() if line.strip())
    try:
        info = parse_builtin_modinfo((moddir / "modules.builtin.modinfo").read_bytes())
    except OSError:
        info = []
    return Builtins(paths, tuple(Alias(e.value, e.module) for e in info if e.key == "alias"))


def read_depmod_modules(moddir: Path) -> list[Module]:
    """The modules depmod's files describe (modules.dep, .alias, .softdep), in
    modules.order priority (the rest after, in modules.dep order).
    FileNotFoundError without modules.dep."""
    deps = parse_dep((moddir / "modules.dep").read_bytes().decode("utf-8", "replace"))
    aliases: dict[str, list[str]] = {}
    for a in parse_alias(_read_text(moddir, "modules.alias")):
        aliases.setdefault(a.module, []).append(a.pattern)
    softdeps: dict[str, list[str]] = {}
    for d in parse_config(_read_text(moddir, SOFTDEP_FILE)):
        if d.command is Command.SOFTDEP:
            softdeps.setdefault(d.name, []).append(d.value)
    order = {modname(p): i for i, p in enumerate(_read_text(moddir, "modules.order").split())}
    deps.sort(key=lambda dep: order.get(dep.name, len(order)))
    return [Module(d.name, d.path, d.depends, tuple(aliases.get(d.name, ())), tuple(softdeps.get(d.name, ())))
            for d in deps]


# ---------------------------------------------------------------- the compiler

def _literal_prefix(cp: tuple) -> str | None:
    """The literal text every match of a compiled pattern starts with; None
    when the pattern has no wildcard at all (an exact alias)."""
    _fixed, segs = cp
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


def build_index(kver: str, modules: Sequence[Module], builtins: Builtins = Builtins(),
                config: Sequence[ConfigFile] = ()) -> ModuleIndex:
    """Compile the index of `modules` (in kmod's priority order, modules.order):
    their aliases, their softdeps (as depmod's modules.softdep), the builtins
    and the modprobe.d files, applied in file-name order as kmod does."""
    exact: dict[str, list[str]] = {}
    wild: dict[str, dict[str, list[str]]] = {}  # literal prefix -> pattern -> modules
    compiled: dict[str, tuple] = {}
    pci: list[tuple] = []
    cpu_gated: set[str] = set()
    for m in modules:
        for pattern in m.aliases:
            norm = normalize_alias(pattern)
            if norm is None:
                continue  # depmod drops these too
            if norm.startswith(CPU_ALIAS):
                cpu_gated.add(m.name)
            ids = pci_entry(norm)
            if ids is not None:
                pci.append((m.name, norm, tuple(ids)))
                continue
            cp = compiled.get(norm)
            if cp is None:
                cp = compiled[norm] = compile_pattern(norm)
            fixed, _segs = cp
            if fixed < 0:
                continue  # glibc would refuse it for every string
            prefix = _literal_prefix(cp)
            mods = (exact.setdefault(norm, []) if prefix is None
                    else wild.setdefault(prefix[:PREFIX_CAP], {}).setdefault(norm, []))
            if m.name not in mods:
                mods.append(m.name)
    softdeps: list[tuple] = []
    options: dict[str, str] = {}
    blacklist: set[str] = set()
    config_aliases: list[tuple] = []
    files = [ConfigFile(SOFTDEP_FILE, softdep_text(modules)), *config]
    for conf in sorted(files, key=lambda c: c.name):
        for d in parse_config(conf.text):
            if d.command is Command.SOFTDEP:
                pre, post = parse_softdep_value(d.value)
                softdeps.append((compile_pattern(d.name), pre, post))
            elif d.command is Command.OPTIONS:
                options[d.name] = f"{options[d.name]} {d.value}" if d.name in options else d.value
            elif d.command is Command.BLACKLIST:
                blacklist.add(d.name)
            elif d.command is Command.ALIAS:
                config_aliases.append((compile_pattern(d.name), d.value))
    builtin_aliases = []
    for a in builtins.aliases:
        norm = normalize_alias(a.pattern)
        if norm is not None:
            builtin_aliases.append((compile_pattern(norm), a.module))
    wild_t = {prefix: tuple((compiled[p], tuple(ms)) for p, ms in by_pattern.items())
              for prefix, by_pattern in wild.items()}
    return ModuleIndex({
        "format": FORMAT, "kver": kver,
        "modules": {m.name: (m.path, m.depends) for m in modules},
        "exact": {k: tuple(v) for k, v in exact.items()},
        "wild": wild_t, "wild_lens": tuple(sorted({len(p) for p in wild_t})),
        "pci": tuple(pci), "builtin": tuple(sorted(builtins.names)),
        "builtin_aliases": tuple(builtin_aliases), "softdeps": tuple(softdeps),
        "options": options, "blacklist": tuple(sorted(blacklist)),
        "config_aliases": tuple(config_aliases), "cpu_gated": tuple(sorted(cpu_gated)),
    })


def from_moddir(moddir: Path | str, config_dirs: Iterable[Path | str] = ()) -> ModuleIndex:
    """The index of a module directory: its `liveinit.index` when present and
    no modprobe.d directories are given, else depmod's text files with the
    modprobe.d files of `config_dirs` applied."""
    moddir = Path(moddir)
    dirs = list(config_dirs)
    if not dirs:
        try:
            return ModuleIndex.load(str(moddir / INDEX_NAME))
        except OSError:
            pass
    try:
        modules = read_depmod_modules(moddir)
    except OSError:
        raise OSError(f"{moddir}: no {INDEX_NAME} and no modules.dep") from None
    return build_index(moddir.name, modules, read_builtins(moddir), read_config_dirs(dirs))


def dumps(index: ModuleIndex) -> bytes:
    """The index as PID 1 reads it: one marshal blob, equal bytes for equal indexes."""
    payload = marshal.dumps(index.data, MARSHAL_VERSION)
    return INDEX_MAGIC + crc32(payload).to_bytes(4, "little") + payload


def dump(index: ModuleIndex, path: Path | str) -> None:
    Path(path).write_bytes(dumps(index))
