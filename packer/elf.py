"""The ELF closure of binaries, resolved the way Debian's glibc ld.so does.

`resolve()` reads PT_INTERP, DT_NEEDED, DT_RPATH, DT_RUNPATH, DT_SONAME and
DF_1_NODEFLIB with pyelftools and follows ld.so's search order for every
DT_NEEDED name, breadth-first, like `ldd`:

1. an object already loaded under that name (a DT_NEEDED name it was loaded
   as, its SONAME, or its path), or whose file is the same inode;
2. unless the loading object has DT_RUNPATH: the DT_RPATH of the loading
   object, of its loader, and so on up, then of the main program;
3. LD_LIBRARY_PATH, only when given explicitly;
4. the DT_RUNPATH of the loading object only (never inherited);
5. ld.so.cache, emulated from /etc/ld.so.conf (+ `include` globs) and
   ldconfig's system dirs: first directory (deduplicated by inode) holding a
   file of that SONAME wins; skipped under DF_1_NODEFLIB for trusted dirs;
6. the trusted default directories, unless DF_1_NODEFLIB.

Candidates of the wrong ELF class or machine are skipped. Deliberate
difference: the glibc-hwcaps and legacy hwcap subdirectories (x86-64-v3,
tls, x86_64) are not searched; the baseline library runs on every CPU, which
is what an image that boots anywhere needs.

Everything happens inside `root`: paths, conf files and symlinks (absolute
targets re-rooted, ".." clamped at the root). Returned paths are absolute
paths *inside* root; the host file is `root / path.relative_to("/")`.
"""
from __future__ import annotations

import fnmatch
import glob
import os
import stat
import struct
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from elftools.common.exceptions import ELFError as PyElfError
from elftools.common.utils import parse_cstring_from_stream, struct_parse
from elftools.construct import Container
from elftools.elf.structs import ELFStructs

from packer.errors import CommandError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2
ET_DYN = 3
EM_386, EM_X86_64, EM_AARCH64 = 3, 62, 183
DF_1_NODEFLIB = 0x800
MAX_SYMLINKS = 40  # ELOOP limit of the kernel's path walk
LD_SO_CONF = "/etc/ld.so.conf"
DST_NAMES = ("ORIGIN", "PLATFORM", "LIB")


@dataclass(frozen=True)
class Arch:
    """What Debian's multiarch glibc uses for one (ELF class, machine)."""

    triplet: str
    rtld: str  # the standard PT_INTERP; ldd loads libraries with it
    platform: str  # AT_PLATFORM, the value of $PLATFORM

    @property
    def lib(self) -> str:
        """The value of $LIB: Debian builds glibc with slibdir=/lib/<triplet>."""
        return f"lib/{self.triplet}"

    @property
    def default_dirs(self) -> tuple[str, ...]:
        """ld.so's trusted directories, searched last (`ld.so --help`)."""
        return (f"/lib/{self.triplet}", f"/usr/lib/{self.triplet}", "/lib", "/usr/lib")

    @property
    def ldconfig_dirs(self) -> tuple[str, ...]:
        """The directories ldconfig always adds to the cache after the conf ones (`ldconfig -v`)."""
        return self.default_dirs


ARCHES: dict[tuple[int, int], Arch] = {
    (ELFCLASS64, EM_X86_64): Arch("x86_64-linux-gnu", "/lib64/ld-linux-x86-64.so.2", "x86_64"),
    (ELFCLASS32, EM_386): Arch("i386-linux-gnu", "/lib/ld-linux.so.2", "i686"),
    (ELFCLASS64, EM_AARCH64): Arch("aarch64-linux-gnu", "/lib/ld-linux-aarch64.so.1", "aarch64"),
}


class ElfError(CommandError):
    """A binary whose closure cannot be resolved: names the binary and the library."""

    def __init__(self, binary: Path | str, missing: str, message: str = "", hint: str = "") -> None:
        self.binary = Path(binary)
        self.missing = missing
        super().__init__(
            message or f"{binary}: cannot find {missing}",
            hint or f"install the package that provides {missing} (in the root you pack), "
                    "or fix the binary's RPATH/RUNPATH",
        )


class NotElfError(ElfError):
    """The file is not an ELF object (a script, a text file)."""

    def __init__(self, binary: Path | str, what: str) -> None:
        super().__init__(binary, "", f"{binary}: not an ELF file ({what})",
                         "give the ELF interpreter of a script instead (e.g. the one after #!)")


@dataclass(frozen=True)
class ElfClosure:
    """The resolved closure of some binaries (paths inside the root).

    `interpreter`: the first PT_INTERP (for a shared library given directly,
    the standard rtld when something needs it, as ldd shows it).
    `libraries`: every other loaded object, as ldd prints the path, sorted.
    `files`: what to copy into an image for interpreter + libraries: every
    symlink met on the way (file or directory symlinks such as /lib ->
    usr/lib, always at a symlink-free parent) and each final regular file,
    sorted. The binaries themselves are not included (use `path_chain`).
    `real_paths`: (path as ldd prints it, the real file it ends at) for the
    interpreter and each library."""

    interpreter: Path | None
    libraries: tuple[Path, ...]
    files: tuple[Path, ...]
    real_paths: tuple[tuple[Path, Path], ...] = ()

    @property
    def paths(self) -> tuple[Path, ...]:
        """What `ldd` prints: interpreter and libraries, sorted and unique."""
        extra = (self.interpreter,) if self.interpreter is not None else ()
        return tuple(sorted(set(self.libraries) | set(extra)))


@dataclass(frozen=True)
class ElfInfo:
    """The parts of one ELF object the dynamic loader looks at."""

    elf_class: int
    machine: int
    etype: int
    interp: str | None
    dynamic: bool
    needed: tuple[str, ...]
    rpath: str | None  # already None when DT_RUNPATH is present (ld.so ignores it then)
    runpath: str | None
    soname: str | None
    nodeflib: bool


# -- dynamic string tokens ------------------------------------------------------------

def _dst_length(text: str, i: int, name: str) -> int:
    """Length of the token `name` or `{name}` at text[i:] (after the "$"), or 0."""
    curly = text.startswith("{", i)
    start = i + 1 if curly else i
    if not text.startswith(name, start):
        return 0
    end = start + len(name)
    nxt = text[end:end + 1]
    if curly:
        return len(name) + 2 if nxt == "}" else 0
    # ld.so uses isalnum() in the C locale.
    if nxt and (nxt == "_" or (nxt.isascii() and nxt.isalnum())):
        return 0
    return len(name)


def expand_dst(text: str, origin: str | None, arch: Arch) -> str | None:
    """Expand $ORIGIN, $PLATFORM, $LIB (and the ${...} forms) like ld.so.

    Unknown tokens stay literally. None when a known token has no value (no
    origin): ld.so then drops the whole path element."""
    values = {"ORIGIN": origin, "PLATFORM": arch.platform, "LIB": arch.lib}
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        i += 1
        if ch != "$":
            out.append(ch)
            continue
        for name in DST_NAMES:
            length = _dst_length(text, i, name)
            if length:
                value = values[name]
                if value is None:
                    return None
                out.append(value)
                i += length
                break
        else:
            out.append("$")
    return "".join(out)


def search_dirs(value: str, origin: str | None, arch: Arch, cwd: str = "/") -> list[str]:
    """The directories of a DT_RPATH/DT_RUNPATH/LD_LIBRARY_PATH value, as ld.so builds them.

    Split on ":", tokens expanded, elements that expand to nothing dropped,
    trailing slashes removed (except "/"). An empty element means the current
    directory and relative ones are relative to it: `cwd` makes them absolute."""
    dirs: list[str] = []
    for element in value.split(":"):
        if element:
            expanded = expand_dst(element, origin, arch)
            if not expanded:
                continue
            element = expanded.rstrip("/") or "/"
        if not element.startswith("/"):
            element = os.path.join(cwd, element) if element else cwd
        if element not in dirs:
            dirs.append(element)
    return dirs


# -- paths inside a root --------------------------------------------------------------

@dataclass(frozen=True)
class Walk:
    """A path resolved inside the root: the real path and the symlinks met."""

    real: str
    links: tuple[str, ...]


class RootFS:
    """Path resolution inside a root directory, like a chroot (memoized)."""

    def __init__(self, root: Path) -> None:
        real = os.path.realpath(root)
        self.prefix = "" if real == "/" else real
        self._walks: dict[str, Walk | None] = {}

    def host(self, path: str) -> str:
        """The host path of an absolute path inside the root."""
        return self.prefix + path

    def walk(self, path: str, _depth: int = 0) -> Walk | None:
        """Resolve an absolute in-root path; None when it does not exist."""
        if path in self._walks:
            return self._walks[path]
        if path == "/" or path == "":
            return Walk("/", ())
        if _depth > MAX_SYMLINKS:
            return None
        parent, _, name = path.rstrip("/").rpartition("/") if path != "/" else ("", "", "")
        base = self.walk(parent or "/", _depth)
        result = None if base is None else self._step(base, name, _depth)
        self._walks[path] = result
        return result

    def _step(self, base: Walk, name: str, depth: int) -> Walk | None:
        if name in ("", "."):
            return base
        if name == "..":
            return Walk(os.path.dirname(base.real), base.links)
        candidate = os.path.join(base.real, name)
        try:
            st = os.lstat(self.host(candidate))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISLNK(st.st_mode):
            return Walk(candidate, base.links)
        target = os.readlink(self.host(candidate))
        resolved = self.walk(target if target.startswith("/") else os.path.join(base.real, target),
                             depth + 1)
        if resolved is None:
            return None
        return Walk(resolved.real, _unique(base.links + (candidate,) + resolved.links))


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def path_chain(path: Path | str, root: Path = Path("/")) -> tuple[Path, ...]:
    """Every symlink met resolving `path` inside root, then the real file."""
    walked = RootFS(root).walk(_absolute(str(path)))
    if walked is None:
        raise CommandError(f"{path}: no such file in {root}", hint="check the path and --root")
    return tuple(Path(p) for p in walked.links + (walked.real,))


def _absolute(path: str) -> str:
    # Not normalized: ld.so keeps "dir/./x" and "bin/../lib" in the names it prints.
    return path if path.startswith("/") else os.getcwd().rstrip("/") + "/" + path


# -- reading ELF files ----------------------------------------------------------------

def read_ident(host_path: str) -> tuple[int, int, int] | None:
    """(class, machine, type) from the ELF header, or None when not ELF."""
    with open(host_path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != ELF_MAGIC or head[5] not in (ELFDATA2LSB, ELFDATA2MSB):
        return None
    order = "<" if head[5] == ELFDATA2LSB else ">"
    etype, machine = struct.unpack(order + "HH", head[16:20])
    return head[4], machine, etype


def read_elf(host_path: str) -> ElfInfo:
    """Parse the program headers and the dynamic array with pyelftools' structures.

    Only what ld.so reads: program headers, PT_INTERP, PT_DYNAMIC and the
    dynamic string table found through DT_STRTAB and the PT_LOAD mappings.
    (pyelftools' DynamicSegment would first scan every section header for
    the string table: half of the time, and sections may be stripped.)"""
    ident = read_ident(host_path)
    if ident is None:
        raise PyElfError("invalid ELF header")
    with open(host_path, "rb") as fh:
        structs, ehdr = _structs_and_header(fh, ident)
        loads: list[Container] = []
        interp = dynamic = None
        for i in range(ehdr.e_phnum):
            header = struct_parse(structs.Elf_Phdr, fh, ehdr.e_phoff + i * ehdr.e_phentsize)
            if header.p_type == "PT_LOAD":
                loads.append(header)
            elif header.p_type == "PT_INTERP":
                fh.seek(header.p_offset)
                interp = fh.read(header.p_filesz).split(b"\0", 1)[0].decode(errors="surrogateescape")
            elif header.p_type == "PT_DYNAMIC":
                dynamic = header
        entries: list[Container] = []
        if dynamic is not None:
            fh.seek(dynamic.p_offset)
            for _ in range(dynamic.p_filesz // structs.Elf_Dyn.sizeof()):
                entry = structs.Elf_Dyn.parse_stream(fh)
                if entry.d_tag == "DT_NULL":
                    break
                entries.append(entry)
        strtab = next((e.d_val for e in entries if e.d_tag == "DT_STRTAB"), None)
        base = None if strtab is None else _file_offset(loads, strtab)

        def string(offset: int) -> str:
            if base is None:
                raise PyElfError("dynamic section without a mapped DT_STRTAB")
            raw = parse_cstring_from_stream(fh, base + offset) or b""
            return raw.decode(errors="surrogateescape")

        values: dict[str, list[int]] = {}
        for entry in entries:
            values.setdefault(str(entry.d_tag), []).append(entry.d_val)
        rpath = [string(v) for v in values.get("DT_RPATH", [])]
        runpath = [string(v) for v in values.get("DT_RUNPATH", [])]
        soname = [string(v) for v in values.get("DT_SONAME", [])]
        needed = tuple(string(v) for v in values.get("DT_NEEDED", []))
    flags_1 = values.get("DT_FLAGS_1", [0])[-1]
    return ElfInfo(
        elf_class=ident[0],
        machine=ident[1],
        etype=ident[2],
        interp=interp,
        dynamic=dynamic is not None,
        needed=needed,
        # ld.so keeps the last of repeated tags and ignores DT_RPATH when DT_RUNPATH exists.
        rpath=None if runpath or not rpath else rpath[-1],
        runpath=runpath[-1] if runpath else None,
        soname=soname[-1] if soname else None,
        nodeflib=bool(flags_1 & DF_1_NODEFLIB),
    )


_STRUCTS: dict[tuple[object, ...], ELFStructs] = {}


def _structs_and_header(fh: BinaryIO, ident: tuple[int, int, int]) -> tuple[ELFStructs, Container]:
    """pyelftools' structures for this kind of file, built once per kind (ELFFile
    rebuilds them for every file, which is most of its cost), and the ELF header."""
    fh.seek(5)
    little, bits = fh.read(1) == b"\x01", 64 if ident[0] == ELFCLASS64 else 32
    basic_key = (little, bits)
    if basic_key not in _STRUCTS:
        _STRUCTS[basic_key] = ELFStructs(little_endian=little, elfclass=bits)
        _STRUCTS[basic_key].create_basic_structs()
    ehdr = struct_parse(_STRUCTS[basic_key].Elf_Ehdr, fh, 0)
    key = (little, bits, ehdr.e_type, ehdr.e_machine, ehdr.e_ident.EI_OSABI)
    if key not in _STRUCTS:
        structs = ELFStructs(little_endian=little, elfclass=bits)
        structs.create_basic_structs()
        structs.create_advanced_structs(ehdr.e_type, ehdr.e_machine, ehdr.e_ident.EI_OSABI)
        _STRUCTS[key] = structs
    return _STRUCTS[key], ehdr


def _file_offset(loads: list[Container], address: int) -> int | None:
    """The file offset of a virtual address, through the PT_LOAD segments."""
    for load in loads:
        if load.p_vaddr <= address < load.p_vaddr + load.p_filesz:
            return address - load.p_vaddr + load.p_offset
    return None


_PARSED: dict[tuple[str, int, int, int, int], ElfInfo] = {}


def read_elf_cached(host_path: str) -> ElfInfo:
    """read_elf, remembered across resolves while the file (inode, size, mtime) is unchanged."""
    st = os.stat(host_path)
    key = (host_path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _PARSED:
        _PARSED[key] = read_elf(host_path)
    return _PARSED[key]


# -- ld.so.conf -----------------------------------------------------------------------

def read_ld_so_conf(fs: RootFS, conf: str = LD_SO_CONF) -> list[str]:
    """The directories of ld.so.conf and its includes, in ldconfig's order (not deduplicated)."""
    dirs: list[str] = []
    _parse_conf(fs, conf, dirs, 0)
    return dirs


def _parse_conf(fs: RootFS, conf: str, dirs: list[str], depth: int) -> None:
    walked = fs.walk(conf)
    if walked is None or depth > MAX_SYMLINKS:
        return
    try:
        text = Path(fs.host(walked.real)).read_text(errors="replace")
    except OSError:
        return
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split(None, 1)
        if words[0] == "include" and len(words) == 2:
            for pattern in words[1].split():
                if not pattern.startswith("/"):
                    pattern = os.path.join(os.path.dirname(conf), pattern)
                for included in _glob_in_root(fs, pattern):
                    _parse_conf(fs, included, dirs, depth + 1)
        elif words[0].lower() == "hwcap" and len(words) == 2:
            continue
        else:
            # "dir=TYPE" is the old libc5 syntax; the type is ignored.
            directory = line.split("=", 1)[0].rstrip().rstrip("/")
            if directory:
                dirs.append(directory)


def _glob_in_root(fs: RootFS, pattern: str) -> list[str]:
    """glob(3) inside the root, sorted like glibc's glob."""
    directory, name = os.path.split(pattern)
    if glob.has_magic(directory):
        prefix = glob.escape(fs.prefix)
        return sorted(p[len(fs.prefix):] for p in glob.glob(prefix + pattern))
    walked = fs.walk(directory or "/")
    if walked is None:
        return []
    if not glob.has_magic(name):
        return [pattern] if fs.walk(pattern) is not None else []
    try:
        entries = os.listdir(fs.host(walked.real))
    except OSError:
        return []
    return [os.path.join(directory, e) for e in sorted(entries)
            if fnmatch.fnmatchcase(e, name) and not (e.startswith(".") and not name.startswith("."))]


# -- the resolver ---------------------------------------------------------------------

@dataclass(eq=False)
class _Object:
    """One loaded object in a link-map namespace."""

    name: str  # the path as ld.so prints it (l_name)
    info: ElfInfo
    loader: _Object | None
    origin: str | None
    real: str
    rpath_dirs: list[str] = field(default_factory=list)
    runpath_dirs: list[str] = field(default_factory=list)


class _Resolver:
    """State shared by the binaries of one resolve(): the parsed headers and the cache."""

    def __init__(self, root: Path, ld_library_path: Sequence[str]) -> None:
        self.fs = RootFS(root)
        self.ld_library_path = tuple(ld_library_path)
        self._infos: dict[str, ElfInfo] = {}
        self._idents: dict[str, tuple[int, int, int] | None] = {}
        self._cache: dict[tuple[Arch, str], str | None] = {}
        self._cache_dirs: dict[Arch, list[str]] = {}

    # Headers are cached per real path for the whole resolve.
    def info(self, real: str) -> ElfInfo:
        if real not in self._infos:
            try:
                self._infos[real] = read_elf_cached(self.fs.host(real))
            except (PyElfError, struct.error, ValueError, OSError) as e:
                raise ElfError(real, "", f"{real}: unreadable ELF file: {e}",
                               "the file is truncated or corrupt; reinstall its package") from None
        return self._infos[real]

    def ident(self, real: str) -> tuple[int, int, int] | None:
        if real not in self._idents:
            try:
                self._idents[real] = read_ident(self.fs.host(real))
            except OSError:
                self._idents[real] = None
        return self._idents[real]

    def cache_dirs(self, arch: Arch) -> list[str]:
        """ldconfig's directory list: conf order, then its system dirs, deduplicated by inode."""
        if arch not in self._cache_dirs:
            seen: set[tuple[int, int]] = set()
            dirs = self._cache_dirs[arch] = []
            for directory in read_ld_so_conf(self.fs) + list(arch.ldconfig_dirs):
                walked = self.fs.walk(directory)
                if walked is None:
                    continue
                try:
                    st = os.stat(self.fs.host(walked.real))
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) not in seen and stat.S_ISDIR(st.st_mode):
                    seen.add((st.st_dev, st.st_ino))
                    dirs.append(directory)
        return self._cache_dirs[arch]

    def cache_lookup(self, name: str, arch: Arch, elf_class: int, machine: int) -> str | None:
        """What ld.so.cache would give for a SONAME: the first conf dir with a matching library."""
        key = (arch, name)
        if key not in self._cache:
            self._cache[key] = None
            if name.startswith(("lib", "ld-")) and ".so" in name:
                for directory in self.cache_dirs(arch):
                    candidate = f"{directory}/{name}"
                    walked = self.fs.walk(candidate)
                    if walked is None or self.ident(walked.real) is None:
                        continue
                    cls, mach, _etype = self.ident(walked.real)  # type: ignore[misc]
                    if (cls, mach) != (elf_class, machine):
                        continue
                    if self._cached_as(candidate, self.info(walked.real).soname, name):
                        self._cache[key] = candidate
                        break
        return self._cache[key]

    def _cached_as(self, candidate: str, soname: str | None, name: str) -> bool:
        """Whether ldconfig files `candidate` under `name` (it keys libraries by SONAME)."""
        if soname in (None, name):
            return True
        # The ld(1) link "libfoo.so" -> libfoo.so.1.2 is keyed by its own name
        # (measured against ldconfig -p); other files only by their SONAME.
        if not (name.endswith(".so") and soname.startswith(name)):
            return False
        directory = self.fs.walk(os.path.dirname(candidate))
        return directory is not None and os.path.islink(self.fs.host(f"{directory.real}/{name}"))

    def closure(self, binary: str) -> tuple[str | None, list[str]]:
        """(interpreter, the other loaded objects as ld.so names them) of one binary."""
        walked = self.fs.walk(binary)
        if walked is None or not os.path.isfile(self.fs.host(walked.real)):
            raise ElfError(binary, binary, f"{binary}: no such file", "check the path (and --root)")
        ident = self.ident(walked.real)
        if ident is None:
            raise NotElfError(binary, _describe_non_elf(self.fs.host(walked.real)))
        main_info = self.info(walked.real)
        if not main_info.dynamic:
            return main_info.interp, []
        arch = ARCHES.get((main_info.elf_class, main_info.machine))
        if arch is None:
            raise ElfError(binary, "", f"{binary}: unsupported ELF machine {main_info.machine} "
                           f"(class {main_info.elf_class})", "only x86_64, i386 and aarch64 are known")
        return _Namespace(self, binary, walked.real, main_info, arch).load()


class _Namespace:
    """One link-map namespace: the main object and what ld.so loads for it."""

    def __init__(self, resolver: _Resolver, binary: str, real: str, info: ElfInfo, arch: Arch) -> None:
        self.r = resolver
        self.fs = resolver.fs
        self.binary = binary
        self.arch = arch
        self.elf_class, self.machine = info.elf_class, info.machine
        self.main = self._new(binary, info, None, real)
        self.fresh: list[_Object] = []  # objects mapped by _map and not yet queued
        self.by_name: dict[str, _Object] = {binary: self.main}
        self.by_file: dict[tuple[int, int], _Object] = {}
        self._remember(self.main)
        self.interp = info.interp if info.interp is not None else arch.rtld
        self.rtld_used = False
        rtld_walk = self.fs.walk(self.interp)
        if rtld_walk is None:
            if info.interp is not None:
                raise ElfError(binary, self.interp, f"{binary}: its interpreter {self.interp} is missing",
                               "install the C library (libc6) in the root")
            self.rtld: _Object | None = None
        else:
            self.rtld = self._new(self.interp, self.r.info(rtld_walk.real), None, rtld_walk.real)
            self._remember(self.rtld)

    def _new(self, name: str, info: ElfInfo, loader: _Object | None, real: str) -> _Object:
        origin = os.path.dirname(name) or "/"
        obj = _Object(name, info, loader, origin, real)
        cwd = os.getcwd()
        if info.rpath:
            obj.rpath_dirs = search_dirs(info.rpath, origin, self.arch, cwd)
        if info.runpath:
            obj.runpath_dirs = search_dirs(info.runpath, origin, self.arch, cwd)
        return obj

    def _remember(self, obj: _Object, *names: str) -> None:
        for name in (obj.name, obj.info.soname, *names):
            if name:
                self.by_name.setdefault(name, obj)
        st = os.stat(self.fs.host(obj.real))
        self.by_file.setdefault((st.st_dev, st.st_ino), obj)

    def load(self) -> tuple[str | None, list[str]]:
        """Breadth-first over DT_NEEDED, like _dl_map_object_deps."""
        loaded: list[str] = []
        queue = deque([self.main])
        while queue:
            obj = queue.popleft()
            for needed in obj.info.needed:
                if self._map(needed, obj) is self.rtld:
                    self.rtld_used = True
                for dep in self.fresh:
                    queue.append(dep)
                    loaded.append(dep.name)
                self.fresh.clear()
        interp = self.interp if (self.main.info.interp or self.rtld_used) else None
        return interp, loaded

    def _map(self, name: str, loader: _Object) -> _Object:
        known = self.by_name.get(name)
        if known is not None:
            return known
        other_class = False
        for candidate in self._candidates(name, loader):
            walked = self.fs.walk(candidate)
            if walked is None or not os.path.isfile(self.fs.host(walked.real)):
                continue
            ident = self.r.ident(walked.real)
            if ident is None:
                raise ElfError(self.binary, name, f"{self.binary}: {candidate} (needed by "
                               f"{loader.name}) is not an ELF file: invalid ELF header",
                               "ld.so stops at such a file too: remove it or fix the search path")
            if (ident[0], ident[1]) != (self.elf_class, self.machine):
                other_class = True
                continue
            st = os.stat(self.fs.host(walked.real))
            same = self.by_file.get((st.st_dev, st.st_ino))
            if same is not None:
                self.by_name.setdefault(name, same)
                return same
            obj = self._new(candidate, self.r.info(walked.real), loader, walked.real)
            self._remember(obj, name)
            self.fresh.append(obj)
            return obj
        via = "" if loader is self.main else f" (needed by {loader.name})"
        wrong = "; only libraries of another ELF class or machine were found" if other_class else ""
        raise ElfError(self.binary, name, f"{self.binary}: cannot find {name}{via}{wrong}")

    def _candidates(self, name: str, loader: _Object) -> Iterator[str]:
        """Paths ld.so tries for a DT_NEEDED name, in order."""
        if "/" in name:
            yield _absolute(name)
            return
        if loader.info.runpath is None:
            did_main = False
            obj: _Object | None = loader
            while obj is not None:
                if obj.rpath_dirs:
                    yield from (_join(d, name) for d in obj.rpath_dirs)
                    did_main |= obj is self.main
                obj = obj.loader
            if not did_main:
                yield from (_join(d, name) for d in self.main.rpath_dirs)
        # ld.so splits LD_LIBRARY_PATH on ":" and ";" and expands tokens for the main program.
        llp = ":".join(self.r.ld_library_path).replace(";", ":")
        for directory in search_dirs(llp, self.main.origin, self.arch, os.getcwd()) if llp else ():
            yield _join(directory, name)
        yield from (_join(d, name) for d in loader.runpath_dirs)
        nodeflib = loader.info.nodeflib
        cached = self.r.cache_lookup(name, self.arch, self.elf_class, self.machine)
        if cached is not None and not (nodeflib and any(
                cached.startswith(d.rstrip("/") + "/") for d in self.arch.default_dirs)):
            yield cached
        if not nodeflib:
            yield from (_join(d, name) for d in self.arch.default_dirs)


def _join(directory: str, name: str) -> str:
    return directory + name if directory.endswith("/") else f"{directory}/{name}"


def _describe_non_elf(host_path: str) -> str:
    with open(host_path, "rb") as fh:
        head = fh.read(256)
    if head.startswith(b"#!"):
        line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
        return f"a script for {line}" if line else "a script"
    return "empty file" if not head else "unknown format"


def resolve(binaries: Iterable[Path], root: Path = Path("/"),
            ld_library_path: Sequence[str] = ()) -> ElfClosure:
    """Resolve the ELF closure of binaries (paths inside root) like ldd.

    Raises ElfError naming the binary and the missing library, NotElfError
    for scripts. A static binary contributes nothing."""
    resolver = _Resolver(Path(root), ld_library_path)
    interpreter: str | None = None
    paths: set[str] = set()
    for binary in binaries:
        interp, loaded = resolver.closure(_absolute(str(binary)))
        if interp is not None:
            if interpreter is None:
                interpreter = interp
            elif interp != interpreter:
                paths.add(interp)
        paths.update(loaded)
    if interpreter is not None:
        paths.discard(interpreter)
    files: set[str] = set()
    real_paths: list[tuple[Path, Path]] = []
    for path in sorted(paths | ({interpreter} if interpreter else set())):
        walked = resolver.fs.walk(path)
        if walked is not None:
            files.update(walked.links)
            files.add(walked.real)
            real_paths.append((Path(path), Path(walked.real)))
    return ElfClosure(
        interpreter=Path(interpreter) if interpreter is not None else None,
        libraries=tuple(Path(p) for p in sorted(paths)),
        files=tuple(Path(p) for p in sorted(files)),
        real_paths=tuple(real_paths),
    )
