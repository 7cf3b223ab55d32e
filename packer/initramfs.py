"""Assemble the initramfs: skeleton, /dev nodes, /init, modules, ELF closure,
the embedded Python, then deterministic archive segments, compressed (and
cached) one by one: see packer/segments.py for the cut and the cache.

Phases (timed, in the summary): modules, python, elf, archive, compress.
Every input path is placed at its host path with a symlink-free parent, and
the host's merged-/usr links (/lib -> usr/lib...) are mirrored, so that the
interpreter finds its stdlib exactly where the host's getpath computed it."""
from __future__ import annotations

import hashlib
import io
import os
import platform
import stat
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from liveinit.contract import FAILED_LINE, KEY_DIR, PREFIX, SHELL_LINE, Settings, index_for, moddir_for
from packer import blocktools, crypttab, keymap, modstore, pyruntime, segments, tools
from packer.busybox import BUSYBOX, applets
from packer.config import DEFAULT_CACHE, PackConfig, check_cmdline
from packer.errors import CommandError
from packer.progress import Reporter

# Directories every image has (mode), and the console/entropy nodes CPython
# needs before anything is mounted: (name, kind, major, minor, mode).
BASE_DIRS = (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755), ("sysroot", 0o755),
             ("tmp", 0o1777), ("etc", 0o755), ("etc/modprobe.d", 0o755), ("root", 0o700))
DEV_NODES = (("dev/console", "c", 5, 1, 0o600), ("dev/null", "c", 1, 3, 0o666),
             ("dev/urandom", "c", 1, 9, 0o666), ("dev/kmsg", "c", 1, 11, 0o644))
MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
BUSYBOX_SKIP = frozenset({"linuxrc", "sbin/init", "init"})  # never shadow the real /init
SKELETON_SKIP = frozenset({"README.md"})
GLOB_CHARS = frozenset("*?[")
MODPROBE_D = "etc/modprobe.d/"
# GNU env for /init's shebang (pyruntime.shebang: no entropy stall at start-up).
ENV_PROGRAM = Path("/usr/bin/env")

# Which segment each kind of content goes to (the size summary counts parts).
PART_SEGMENT = {
    "modules": segments.KERNEL, "firmware": segments.KERNEL, "compressed modules": segments.MODULES,
    "python": segments.PYTHON, "libs": segments.PYTHON, "busybox": segments.PYTHON, "env": segments.PYTHON,
    "modindex": segments.RUNTIME, "runtime": segments.RUNTIME, "skeleton": segments.RUNTIME,
    "files": segments.RUNTIME, "binaries": segments.RUNTIME, "init": segments.RUNTIME,
}


@dataclass(frozen=True)
class PackResult:
    """What a pack produced, for the summary and the tests."""

    output: Path
    kver: str
    identity: str
    entries: int
    modules: tuple[str, ...]
    firmware: int
    uncompressed: int                  # all segments' cpio bytes (microcode excluded)
    compressed: int                    # size of the written file (microcode included)
    times: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)   # uncompressed bytes per part
    segments: tuple[segments.SegmentInfo, ...] = ()      # in image order
    microcode: int = 0                 # bytes of the early uncompressed segment
    key_files: tuple[str, ...] = ()    # crypttab names whose key file is in the image (then mode 0600)


def resolve_kernel(cfg: PackConfig) -> tuple[str, Path]:
    """(kver, moddir): --moddir, else /lib/modules/--kver, else the running
    kernel's modules, else the fetched test kernel."""
    if cfg.moddir is not None:
        if not cfg.moddir.is_dir():
            raise CommandError(f"--moddir {cfg.moddir} is not a directory",
                               hint="give a lib/modules/KVER directory")
        return cfg.kver or cfg.moddir.name, cfg.moddir
    # The lab's test kernel, for hosts (CI, containers) with no modules of their own.
    from qemu.testkernel import fetch_kernel
    if cfg.kver is not None:
        host = Path("/lib/modules") / cfg.kver
        if host.is_dir():
            return cfg.kver, host
        tree = fetch_kernel()
        if tree.version == cfg.kver:
            return tree.version, tree.moddir
        raise CommandError(f"no modules for kernel {cfg.kver}: /lib/modules/{cfg.kver} is missing",
                           hint="install that kernel's modules or pass --moddir DIR")
    running = Path("/lib/modules") / platform.release()
    if running.is_dir():
        return running.name, running
    tree = fetch_kernel()
    return tree.version, tree.moddir


class _Contents:
    """The archive being assembled, with host-path placement and size accounting."""

    def __init__(self) -> None:
        from packer.cpio import ArchiveBuilder
        self.ar = ArchiveBuilder()
        self.links: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
        self.where: dict[str, str] = {}        # entry -> segment (default: runtime)
        for top in MERGED_USR:
            p = Path("/") / top
            if p.is_symlink():
                target = os.readlink(p)
                self.ar.add_symlink(top, target)
                self.links[top] = target.strip("/")

    def canon(self, name: str) -> str:
        """`name` with its first component resolved through the merged-/usr links."""
        name = name.strip("/")
        head, _, rest = name.partition("/")
        if head in self.links and rest:
            return f"{self.links[head]}/{rest}"
        return name

    def _count(self, part: str, n: int) -> None:
        self.sizes[part] = self.sizes.get(part, 0) + n

    def file(self, name: str, part: str, src: Path | None = None, data: bytes | None = None,
             mode: int | None = None, replace: bool = False) -> None:
        name = self.canon(name)
        if name in self.ar and not replace:
            return
        self.ar.add_file(name, src=src, data=data, mode=mode)
        self.where[name] = PART_SEGMENT[part]
        self._count(part, len(data) if data is not None else os.stat(src).st_size)  # type: ignore[arg-type]

    def symlink(self, name: str, target: str, part: str) -> None:
        """A symlink in `part`'s segment (the first one added for a name wins)."""
        name = self.canon(name)
        if name not in self.ar:
            self.ar.add_symlink(name, target)
            self.where[name] = PART_SEGMENT[part]

    def dir(self, name: str, part: str, mode: int = 0o755) -> None:
        name = self.canon(name)
        self.ar.add_dir(name, mode)
        self.where.setdefault(name, PART_SEGMENT[part])

    def host_path(self, path: Path, part: str) -> None:
        """A host file at its own path: every symlink of its chain, then the real file."""
        from packer.elf import path_chain
        for p in path_chain(path):
            name = str(p).lstrip("/")
            if name in self.ar:
                continue
            if p.is_symlink():
                self.symlink(name, os.readlink(p), part)
            elif p.is_dir():
                self.dir(name, part)
            else:
                self.file(name, part, src=p)


def render_init(python: str, settings: Settings, env: str | None = None) -> bytes:
    """The /init script: ONE shebang argument (the kernel passes the rest as one).

    It bakes `settings`' `Settings.BAKED` fields as a dict literal, SETTINGS
    (read back without running it by packer.image.baked_settings), and calls
    `main(Settings(t0=T0, **SETTINGS))`.

    With `env` (GNU env in the image) the interpreter starts with a fixed
    hash seed and an empty environment (pyruntime.shebang); /init then
    takes the seed out again, so that the real init and everything it
    starts hash randomly as usual, and puts back the two variables the
    kernel always gives init (init/main.c: HOME=/ TERM=linux).

    Why a fixed seed is safe here: hash randomization defends a process
    that puts many attacker-chosen strings in a dict (hash flooding). PID 1
    of the initramfs hashes a few dozen keys it chose itself (module names,
    sysfs attributes, cmdline words, filesystem labels) for a few seconds,
    then execs the real init, which gets a fresh random seed."""
    baked = {k: getattr(settings, k) for k in Settings.BAKED}
    body = ",\n".join(f"    {k!r}: {baked[k]!r}" for k in sorted(baked))
    env_fix = "" if env is None else f'''import os
os.environ.pop("{pyruntime.HASHSEED_VAR}", None)
os.environ.setdefault("HOME", "/")
os.environ.setdefault("TERM", "linux")
'''
    failed = PREFIX + FAILED_LINE.format(message="cannot import the runtime: %s: %s")
    shell = PREFIX + SHELL_LINE
    locked_msg = PREFIX + "no shell (locked, or none in the image): waiting; power the machine off"
    return f'''{pyruntime.shebang(python, env)}
"""liveinit /init, generated by `liveinit pack`: the Python runtime as PID 1."""
import time
T0 = time.monotonic()   # the runtime's clock starts here: start-up and imports count
import sys
{env_fix}sys.path.insert(0, "/{pyruntime.IMAGE_LIBDIR}")
SETTINGS = {{
{body},
}}
try:
    from liveinit.boot import main
    from liveinit.contract import Settings
except BaseException as e:
    # The runtime cannot even load: say why and keep a shell rather than panic.
    print({failed!r} % (type(e).__name__, e), flush=True)
    print({shell!r}, flush=True)
    import os
    # A locked shell (a baked password, rd.shell=0 baked) stays locked here too.
    locked = SETTINGS.get("shell_password_hash") or "rd.shell=0" in str(SETTINGS.get("cmdline")).split()
    for sh in () if locked else ("/bin/sh", "/usr/bin/sh"):
        if os.path.exists(sh):
            os.execv(sh, [sh])
    print({locked_msg!r}, flush=True)
    import time
    while True:
        time.sleep(3600)
else:
    main(Settings(t0=T0, **SETTINGS))
'''.encode()


def _split_modules(specs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    names: list[str] = []
    globs: list[str] = []
    for s in specs:
        (globs if GLOB_CHARS & set(s) or "/" in s else names).append(s)
    return names, globs


def _add_modules(contents: _Contents, cfg: PackConfig, kver: str, moddir: Path,
                 rep: Reporter) -> tuple[tuple[str, ...], int, set[blocktools.Layer]]:
    """The modules (and their firmware); returns (modules, firmware files, block layers packed for)."""
    from liveinit.modfile import uncompressed_name
    from packer.kmod import ModuleTree, uncompressed_modules
    tree = ModuleTree(moddir, cache=(cfg.cache / "kmod") if cfg.cache else None)
    layers = blocktools.parse_layers(cfg.layers)
    if cfg.host_only:
        from packer import hostonly
        scan = hostonly.scan_host()
        rep.debug(f"host-only: root {scan.root_device} ({scan.root_fstype}), "
                  f"chain {', '.join(scan.root_drivers)}, {len(scan.modaliases)} modaliases"
                  + (f", on {', '.join(scan.layers)}" if scan.layers else ""))
        wanted = hostonly.host_modules(tree, scan)
        layers |= blocktools.parse_layers(scan.layers)
    else:
        wanted = set(tree.select(groups=cfg.groups))
    layer_modules = blocktools.modules(tree, layers)
    wanted |= layer_modules
    names, globs = _split_modules(cfg.modules)
    if names or globs:
        wanted |= set(tree.select(names=names, globs=globs))
    dest = moddir_for(kver).lstrip("/")
    with tempfile.TemporaryDirectory() as tmp:
        # The image's modprobe.d (skeleton + --files) is baked into the index
        # and its softdeps widen the closure.
        conf = Path(tmp) / "modprobe.d"
        conf.mkdir()
        for src in sorted((cfg.skeleton / "etc" / "modprobe.d").glob("*.conf")):
            (conf / src.name).write_bytes(src.read_bytes())
        for src, name in cfg.extra_files():
            if name.startswith(MODPROBE_D) and name.endswith(".conf") and src.is_file():
                (conf / Path(name).name).write_bytes(src.read_bytes())
        mods = sorted(tree.closure(wanted, config_dirs=[conf]))
        # The modules a boot is likely to load stay plain .ko (the kernel unpacks them with
        # their segment); the others are compressed one by one and decompressed by PID 1
        # only if loaded (packer/modstore.py). Whatever the distribution ships (.ko.zst on
        # Ubuntu/Arch) is decompressed here first.
        expected = set(mods) if cfg.host_only else tree.closure([*modstore.EXPECTED, *names, *layer_modules],
                                                                config_dirs=[conf])
        elf = uncompressed_modules(tree.path(name) for name in mods)
        cold = [(name, elf.get(tree.path(name)) or tree.path(name).read_bytes())
                for name in mods if name not in expected]
        store = modstore.ModuleStore(cfg.cache or DEFAULT_CACHE)
        packed = store.compress_all(cold)
        paths: dict[str, str] = {}
        for name in mods:
            ko = tree.path(name)
            rel = uncompressed_name(str(ko.relative_to(moddir)))
            if name in packed:
                paths[name] = rel + store.suffix
                contents.file(f"{dest}/{paths[name]}", "compressed modules", data=packed[name], mode=0o644)
            else:
                paths[name] = rel
                contents.file(f"{dest}/{rel}", "modules", data=elf.get(ko), src=None if ko in elf else ko,
                         mode=ko.stat().st_mode)
        out = Path(tmp) / "index"
        tree.write_index(out, mods, config_dirs=[conf], paths=paths)
        for p in sorted(out.rglob("*")):
            if p.is_file():
                contents.file(f"{dest}/{p.relative_to(out)}", "modindex", data=p.read_bytes(), mode=0o644)
    fw = tree.firmware(mods) if cfg.firmware else []
    for p in fw:
        contents.host_path(Path(p), "firmware")
    return tuple(mods), len(fw), layers


def _add_skeleton(contents: _Contents, skel: Path) -> None:
    if not skel.is_dir():
        raise CommandError(f"skeleton directory {skel} does not exist", hint="pass --skeleton DIR")
    for dirpath, dirnames, filenames in os.walk(skel):
        dirnames.sort()
        base = Path(dirpath)
        for d in dirnames:
            p = base / d
            rel = str(p.relative_to(skel))
            if p.is_symlink():
                contents.ar.add_symlink(contents.canon(rel), os.readlink(p))
            else:
                contents.ar.add_dir(contents.canon(rel), stat.S_IMODE(p.stat().st_mode))
        for f in sorted(filenames):
            p = base / f
            rel = str(p.relative_to(skel))
            if rel in SKELETON_SKIP or f == ".keep":
                continue
            if p.is_symlink():
                contents.ar.add_symlink(contents.canon(rel), os.readlink(p))
            else:
                contents.file(rel, "skeleton", src=p)


def env_program(path: Path = ENV_PROGRAM) -> Path | None:
    """`path` if it is an env that understands `-S -i` (GNU coreutils >= 8.30), else None."""
    if not path.is_file():
        return None
    try:
        tools.run([str(path), "-S -i", "true"], "check that env understands -S -i")
    except CommandError:
        return None
    return path


def shell_password_hash(cfg: PackConfig) -> str:
    """--shell-password-hash, checked: a hash the runtime could not read would lock the shell for good."""
    text = (cfg.shell_password_hash or "").strip()
    if not text:
        return ""
    from liveinit.shellgate import parse
    try:
        parse(text)
    except ValueError as e:
        raise CommandError(f"--shell-password-hash {text!r}: {e}",
                           hint="make one with: openssl passwd -6 (it asks for the password)") from None
    return text


def derive_identity(kver: str, mods: tuple[str, ...], runtime: pyruntime.PyRuntime, cfg: PackConfig) -> str:
    """A stable id from what the image is made of (same inputs, same id)."""
    h = hashlib.sha256()
    parts: list[str | bytes] = [kver, cfg.cmdline, runtime.interpreter.version, *mods, *runtime.modules,
                                *(p.read_bytes() for p in pyruntime.runtime_sources())]
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return "liveinit-" + h.hexdigest()[:16]


def build(cfg: PackConfig, rep: Reporter | None = None) -> PackResult:
    """The whole pack: returns what was written to cfg.output."""
    from packer.compress import microcode_entries
    from packer.cpio import ArchiveBuilder
    from packer.elf import resolve
    rep = rep or Reporter(quiet=True)
    codecs = segments.codecs(cfg.compress, cfg.compress_level)   # bad flags fail before any work
    check_cmdline(cfg.cmdline)
    contents = _Contents()
    for name, mode in BASE_DIRS:
        contents.ar.add_dir(name, mode)
    for name, kind, major, minor, mode in DEV_NODES:
        contents.ar.add_device(name, kind, major, minor, mode)
    _add_skeleton(contents, cfg.skeleton)
    crypt = crypttab.for_pack(cfg.crypttab, cfg.host_only)
    for note in crypt.notes:
        rep.info(f"crypttab: {note}")
    if crypt.entries:
        rep.debug("crypttab: baked " + ", ".join(e.render() for e in crypt.entries))
        contents.dir(KEY_DIR.lstrip("/"), "files", 0o700)
        cfg = replace(cfg, layers=(*cfg.layers, blocktools.Layer.LUKS.value))   # cryptsetup to open them
    for name, data, mode in crypt.files:
        contents.file(name, "files", data=data, mode=mode, replace=True)

    with rep.phase("modules"):
        kver, moddir = resolve_kernel(cfg)
        mods, nfw, layers = _add_modules(contents, cfg, kver, moddir, rep)
        rep.debug(f"modules: {len(mods)} from {moddir} ({nfw} firmware files)")

    with rep.phase("python"):
        rt = pyruntime.build_runtime(cfg.python, cfg.packages, cfg.site_packages, cfg.python_modules,
                                     cfg.cache)
        rep.debug(f"python: {rt.interpreter.path} {rt.interpreter.version}, "
                  f"{len(rt.modules)} modules traced, "
                  f"packages: {', '.join(rt.packages) or 'none'}")
        for f in rt.files:
            contents.file(f.name, "runtime" if f.kind == "runtime" else "python", src=f.src, data=f.data,
                     mode=f.mode)
        for d in rt.dirs:
            contents.dir(d, "runtime" if d == pyruntime.IMAGE_LIBDIR else "python")
        for name, target in rt.symlinks:
            contents.symlink(name, target, "python")

    with rep.phase("elf"):
        busybox = BUSYBOX if cfg.busybox and BUSYBOX.exists() else None
        # -P (no script directory on sys.path) exists from Python 3.11 on.
        safe_path = tuple(int(x) for x in rt.interpreter.version.split(".")[:2]) >= (3, 11)
        env = env_program() if safe_path else None
        if env is None:
            rep.debug(f"no GNU env at {ENV_PROGRAM} or Python < 3.11: /init starts Python -IS "
                      f"(which waits for entropy at boot)")
        extra = [Path(b) for b in cfg.binaries]
        for b in extra:
            if not b.exists():
                raise CommandError(f"--binaries {b}: no such file", hint="give the path of an executable")
        extra += blocktools.binaries(layers)
        for name, data in keymap.keymap_files(cfg.keymap):
            contents.file(name, "files", data=data, mode=0o644)
        closure = resolve([*rt.elf, *extra, *([busybox] if busybox else []), *([env] if env else [])])
        for p in [*closure.files, *rt.libraries]:
            contents.host_path(p, "libs")
        for b in extra:
            contents.host_path(b, "binaries")
        if env is not None:
            contents.host_path(env, "env")           # before busybox: its env applet has no -S
        env_name = "/" + contents.canon(str(env).lstrip("/")) if env else None
        if busybox is not None:
            contents.host_path(busybox, "busybox")
            real = "/" + contents.canon(str(busybox).lstrip("/"))
            for applet in applets(busybox):
                if applet in BUSYBOX_SKIP:
                    continue
                contents.symlink(applet, real, "busybox")
        if rt.packages:
            libs = [str(p) for p in (*closure.libraries, *rt.libraries)]
            contents.file(pyruntime.IMAGE_LDCONFIG, "runtime",
                     data=pyruntime.ldconfig_script(rt.interpreter, libs, env_name), mode=0o755)
        for src, dest in cfg.extra_files():
            if not src.is_file():
                raise CommandError(f"--files {src}: no such file", hint="use SRC[:DEST] with an existing SRC")
            contents.file(dest, "files", src=src, replace=True)     # the user's file wins over the skeleton

    with rep.phase("archive"):
        identity = cfg.identity or derive_identity(kver, mods, rt, cfg)
        baked = keymap.with_default(cfg.cmdline, cfg.keymap)   # the first keymap is the default
        settings = Settings(cmdline=baked, identity=identity, kver=kver, moddir=moddir_for(kver),
                            index=index_for(kver), shell_password_hash=shell_password_hash(cfg))
        contents.file("init", "init", data=render_init("/" + str(rt.interpreter.path).lstrip("/"), settings,
                                                  env_name), mode=0o755, replace=True)
        parts: list[tuple[str, bytes, int, segments.Codec]] = []
        for name, builder in contents.ar.split(lambda n: contents.where.get(n, segments.RUNTIME),
                                          segments.ORDER).items():
            buf = io.BytesIO()
            builder.write(buf, mtime=cfg.epoch)
            parts.append((name, buf.getvalue(), len(builder), codecs[name]))

    with rep.phase("compress"):
        cache = segments.SegmentCache(cfg.cache or DEFAULT_CACHE)
        done = segments.compress_all(parts, cache)
        for _blob, info in done:
            rep.debug(f"segment {info.name}: {info.entries} entries, "
                      f"{info.uncompressed} -> {info.compressed} "
                      f"bytes, {info.codec}, " + ("cached" if info.cached else f"{info.seconds:.2f} s"))
        if cache.write_error:
            rep.info(f"note: the segment cache is not writable ({cache.write_error}); every pack will "
                     f"compress from scratch: use --cache DIR or LIVEINIT_CACHE=DIR")
        early = b""
        if cfg.microcode:
            entries = microcode_entries()
            if entries:
                mc = ArchiveBuilder()
                for name, data in entries:
                    mc.add_file(name, data=data)
                ebuf = io.BytesIO()
                mc.write(ebuf, mtime=cfg.epoch)
                early = ebuf.getvalue()
        blob = early + b"".join(b for b, _info in done)
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.unlink(missing_ok=True)
        # Whoever reads an image with a key file can open the volume: owner only, from the start.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if crypt.keys else 0o666)
        with os.fdopen(fd, "wb") as stream:
            stream.write(blob)
        os.replace(tmp, out)
        if crypt.keys:
            rep.info(f"{out}: holds the key file{'s' if len(crypt.keys) > 1 else ''} of "
                     f"{', '.join(crypt.keys)}: written mode 0600")

    return PackResult(output=out, kver=kver, identity=identity, entries=len(contents.ar), modules=mods,
                      firmware=nfw, uncompressed=sum(len(p[1]) for p in parts), compressed=len(blob),
                      times=dict(rep.times), sizes=dict(contents.sizes),
                      segments=tuple(info for _b, info in done), microcode=len(early), key_files=crypt.keys)
