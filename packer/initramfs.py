"""Assemble the initramfs: skeleton, /dev nodes, /init, modules, ELF closure,
the embedded Python, then one deterministic archive, compressed.

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
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packer import pyruntime
from packer.cli import CommandError
from packer.config import DEFAULT_BUSYBOX, PackConfig
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
IMAGE_MODDIR = "lib/modules"
MODPROBE_D = "etc/modprobe.d/"


@dataclass(frozen=True)
class PackResult:
    """What a pack produced, for the summary and the tests."""

    output: Path
    kver: str
    identity: str
    entries: int
    modules: tuple[str, ...]
    firmware: int
    uncompressed: int
    compressed: int                    # size of the written file (microcode included)
    times: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)   # uncompressed bytes per part


def resolve_kernel(cfg: PackConfig) -> tuple[str, Path]:
    """(kver, moddir): --moddir, else /lib/modules/--kver, else the running
    kernel's modules, else the fetched test kernel."""
    if cfg.moddir is not None:
        if not cfg.moddir.is_dir():
            raise CommandError(f"--moddir {cfg.moddir} is not a directory",
                               hint="give a lib/modules/KVER directory")
        return cfg.kver or cfg.moddir.name, cfg.moddir
    from packer.kernelpkg import fetch_kernel
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


class _Image:
    """The archive being assembled, with host-path placement and size accounting."""

    def __init__(self) -> None:
        from packer.cpio import ArchiveBuilder
        self.ar = ArchiveBuilder()
        self.links: dict[str, str] = {}
        self.sizes: dict[str, int] = {}
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
        self._count(part, len(data) if data is not None else os.stat(src).st_size)  # type: ignore[arg-type]

    def host_path(self, path: Path, part: str) -> None:
        """A host file at its own path: every symlink of its chain, then the real file."""
        from packer.elf import path_chain
        for p in path_chain(path):
            name = str(p).lstrip("/")
            if name in self.ar:
                continue
            if p.is_symlink():
                self.ar.add_symlink(self.canon(name), os.readlink(p))
            elif p.is_dir():
                self.ar.add_dir(self.canon(name))
            else:
                self.file(name, part, src=p)


def render_init(python: str, settings: dict[str, object]) -> bytes:
    """The /init script: ONE shebang argument (the kernel passes the rest as one)."""
    body = ",\n".join(f"    {k!r}: {settings[k]!r}" for k in sorted(settings))
    return f'''#!{python} -IS
"""liveinit /init, generated by `liveinit pack`: the Python runtime as PID 1."""
import sys
sys.path.insert(0, "/{pyruntime.IMAGE_LIBDIR}")
SETTINGS = {{
{body},
}}
try:
    from liveinit.boot import main
except BaseException as e:
    # The runtime cannot even load: say why and keep a shell rather than panic.
    print("liveinit: FAILED: cannot import the runtime: %s: %s" % (type(e).__name__, e), flush=True)
    print("liveinit: emergency shell", flush=True)
    import os
    for sh in ("/bin/sh", "/usr/bin/sh"):
        if os.path.exists(sh):
            os.execv(sh, [sh])
    import time
    while True:
        time.sleep(3600)
else:
    main(SETTINGS)
'''.encode()


def _split_modules(specs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    names, globs = [], []
    for s in specs:
        (globs if GLOB_CHARS & set(s) or "/" in s else names).append(s)
    return names, globs


def _add_modules(img: _Image, cfg: PackConfig, kver: str, moddir: Path,
                 rep: Reporter) -> tuple[tuple[str, ...], int]:
    from packer.kmod import ModuleTree
    tree = ModuleTree(moddir, cache=(cfg.cache / "kmod") if cfg.cache else None)
    if cfg.host_only:
        from packer import hostonly
        profile = hostonly.probe_host()
        rep.debug(f"host-only: root {profile.root_device} ({profile.root_fstype}), "
                  f"chain {', '.join(profile.root_drivers)}, {len(profile.modaliases)} modaliases")
        wanted = hostonly.host_modules(tree, profile)
    else:
        wanted = set(tree.select(groups=cfg.groups))
    names, globs = _split_modules(cfg.modules)
    if names or globs:
        wanted |= set(tree.select(names=names, globs=globs))
    dest = f"{IMAGE_MODDIR}/{kver}"
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
        for name in rep.progress(mods, len(mods), "modules"):
            ko = tree.path(name)
            img.file(f"{dest}/{ko.relative_to(moddir)}", "modules", src=ko)
        out = Path(tmp) / "index"
        tree.write_index(out, mods, config_dirs=[conf])
        for p in sorted(out.rglob("*")):
            if p.is_file():
                img.file(f"{dest}/{p.relative_to(out)}", "modules", data=p.read_bytes(), mode=0o644)
    fw = tree.firmware(mods) if cfg.firmware else []
    for p in fw:
        img.host_path(Path(p), "firmware")
    return tuple(mods), len(fw)


def _add_skeleton(img: _Image, skel: Path) -> None:
    if not skel.is_dir():
        raise CommandError(f"skeleton directory {skel} does not exist", hint="pass --skeleton DIR")
    for dirpath, dirnames, filenames in os.walk(skel):
        dirnames.sort()
        base = Path(dirpath)
        for d in dirnames:
            p = base / d
            rel = str(p.relative_to(skel))
            if p.is_symlink():
                img.ar.add_symlink(img.canon(rel), os.readlink(p))
            else:
                img.ar.add_dir(img.canon(rel), stat.S_IMODE(p.stat().st_mode))
        for f in sorted(filenames):
            p = base / f
            rel = str(p.relative_to(skel))
            if rel in SKELETON_SKIP or f == ".keep":
                continue
            if p.is_symlink():
                img.ar.add_symlink(img.canon(rel), os.readlink(p))
            else:
                img.file(rel, "skeleton", src=p)


def _busybox_applets(busybox: Path) -> list[str]:
    out = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
    return sorted(a for a in out.stdout.split() if a not in BUSYBOX_SKIP)


def derive_identity(kver: str, mods: tuple[str, ...], runtime: pyruntime.PyRuntime, cfg: PackConfig) -> str:
    """A stable id from what the image is made of (same inputs, same id)."""
    h = hashlib.sha256()
    for part in (kver, cfg.cmdline, runtime.interpreter.version, *mods, *runtime.modules,
                 *(p.read_bytes() for p in pyruntime.runtime_sources())):
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return "liveinit-" + h.hexdigest()[:16]


def build(cfg: PackConfig, rep: Reporter | None = None) -> PackResult:
    """The whole pack: returns what was written to cfg.output."""
    from packer.compress import compress, microcode_entries
    from packer.cpio import ArchiveBuilder
    from packer.elf import resolve
    rep = rep or Reporter(quiet=True)
    img = _Image()
    for name, mode in BASE_DIRS:
        img.ar.add_dir(name, mode)
    for name, kind, major, minor, mode in DEV_NODES:
        img.ar.add_device(name, kind, major, minor, mode)
    _add_skeleton(img, cfg.skeleton)

    with rep.phase("modules"):
        kver, moddir = resolve_kernel(cfg)
        mods, nfw = _add_modules(img, cfg, kver, moddir, rep)
        rep.debug(f"modules: {len(mods)} from {moddir} ({nfw} firmware files)")

    with rep.phase("python"):
        rt = pyruntime.build_runtime(cfg.python, cfg.packages, cfg.site_packages, cfg.python_modules,
                                     cfg.cache)
        rep.debug(f"python: {rt.interpreter.path} {rt.interpreter.version}, {len(rt.modules)} modules traced, "
                  f"packages: {', '.join(rt.packages) or 'none'}")
        for f in rt.files:
            img.file(f.name, "python", src=f.src, data=f.data, mode=f.mode)
        for d in rt.dirs:
            img.ar.add_dir(img.canon(d))
        for name, target in rt.symlinks:
            if img.canon(name) not in img.ar:
                img.ar.add_symlink(img.canon(name), target)

    with rep.phase("elf"):
        busybox = DEFAULT_BUSYBOX if cfg.busybox and DEFAULT_BUSYBOX.exists() else None
        extra = [Path(b) for b in cfg.binaries]
        for b in extra:
            if not b.exists():
                raise CommandError(f"--binaries {b}: no such file", hint="give the path of an executable")
        closure = resolve([*rt.elf, *extra, *([busybox] if busybox else [])])
        for p in [*closure.files, *rt.libraries]:
            img.host_path(p, "libs")
        for b in extra:
            img.host_path(b, "binaries")
        if busybox is not None:
            img.host_path(busybox, "busybox")
            real = "/" + img.canon(str(busybox).lstrip("/"))
            for applet in _busybox_applets(busybox):
                if img.canon(applet) not in img.ar:
                    img.ar.add_symlink(img.canon(applet), real)
        if rt.packages:
            libs = [str(p) for p in (*closure.libraries, *rt.libraries)]
            img.file(pyruntime.IMAGE_LDCONFIG, "python", data=pyruntime.ldconfig_script(rt.interpreter, libs),
                     mode=0o755)
        for src, dest in cfg.extra_files():
            if not src.is_file():
                raise CommandError(f"--files {src}: no such file", hint="use SRC[:DEST] with an existing SRC")
            img.file(dest, "files", src=src, replace=True)     # the user's file wins over the skeleton

    with rep.phase("archive"):
        identity = cfg.identity or derive_identity(kver, mods, rt, cfg)
        settings: dict[str, object] = {
            "cmdline": cfg.cmdline, "identity": identity, "kver": kver,
            "moddir": f"/{IMAGE_MODDIR}/{kver}", "index": f"/{IMAGE_MODDIR}/{kver}/liveinit.index",
            "busybox": str(DEFAULT_BUSYBOX) if busybox else None,
        }
        img.ar.add_file("init", data=render_init("/" + str(rt.interpreter.path).lstrip("/"), settings),
                        mode=0o755)
        buf = io.BytesIO()
        img.ar.write(buf, mtime=cfg.epoch)
        raw = buf.getvalue()

    with rep.phase("compress"):
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
        blob = early + compress(raw, cfg.compress, cfg.compress_level)
        out = Path(cfg.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, out)

    return PackResult(output=out, kver=kver, identity=identity, entries=len(img.ar), modules=mods,
                      firmware=nfw, uncompressed=len(raw), compressed=len(blob), times=dict(rep.times),
                      sizes=dict(img.sizes))
