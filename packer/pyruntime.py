"""The embedded Python: interpreter, traced stdlib subset, extensions, packages.

What goes in is found by *tracing*, not guessed: the chosen interpreter runs
`-IS` (as /init will) on a script that imports every liveinit runtime module,
every import statement found anywhere in their source (including the lazy
ones inside functions) that names a stdlib module or a packed package, the
names any module lists in a `LAZY_IMPORTS` tuple, and the third-party
packages; `sys.modules` then says which files were really used.

Python sources are compiled by that interpreter into sourceless
unchecked-hash .pyc files placed where the .py would be: no mtime to go
stale when the archive clamps mtimes, so no recompiling at boot, and the
bytes depend only on the source. CPython's getpath finds its prefix through
the `lib/python3.X/os.pyc` landmark, which is therefore always packed, and
needs `lib-dynload/` to exist.

Third-party packages (psutil, pyudev) are copied whole from the first
site-packages that has them; their extension modules must carry an ABI tag
the interpreter loads. pyudev finds libudev through ctypes.util.find_library,
which runs `/sbin/ldconfig -p`: the image gets a tiny Python `ldconfig` that
prints the packed libraries in that format (see `ldconfig_script`)."""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from packer import tools
from packer.config import DEFAULT_CACHE
from packer.errors import CommandError

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_SRC = REPO_ROOT / "liveinit"
RUNTIME_PACKAGE = "liveinit"
IMAGE_LIBDIR = "usr/lib/liveinit"          # on sys.path at boot; packages live here
IMAGE_LDCONFIG = "sbin/ldconfig"           # what ctypes.util runs
LIBUDEV = "libudev.so.1"
LANDMARK = "os"                            # getpath looks for lib/python3.X/os.py[c]
SKIP_PACKAGE_DIRS = frozenset({"tests", "test", "__pycache__"})
HASHSEED_VAR = "PYTHONHASHSEED"

# Printed by the interpreter being embedded (run -IS, empty environment).
_INFO_SCRIPT = r"""
import sys, sysconfig, importlib.machinery, importlib.util, json, site
print(json.dumps({
    "executable": sys.executable,
    "version": "%d.%d" % sys.version_info[:2],
    "stdlib": sysconfig.get_path("stdlib"),
    "dynload": sysconfig.get_config_var("DESTSHARED") or "",
    "ext_suffixes": importlib.machinery.EXTENSION_SUFFIXES,
    "magic": importlib.util.MAGIC_NUMBER.hex(),
    "site_dirs": site.getsitepackages(),
    "stdlib_names": sorted(sys.stdlib_module_names),
}))
"""

# argv: PATH... -- MODULE... ; sys.modules is snapshotted before json is imported.
_TRACE_SCRIPT = r"""
import sys
argv = sys.argv[1:]
cut = argv.index("--")
sys.path[:0] = argv[:cut]
failed = {}
def imp(name):
    try:
        __import__(name)
    except BaseException as e:
        failed[name] = "%s: %s" % (type(e).__name__, e)
for name in argv[cut + 1:]:
    imp(name)
lazy = set()
for name, mod in list(sys.modules.items()):
    if name == "liveinit" or name.startswith("liveinit."):
        lazy.update(getattr(mod, "LAZY_IMPORTS", ()) or ())
for name in sorted(lazy):
    imp(name)
found = {}
for name, mod in list(sys.modules.items()):
    spec = getattr(mod, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else None
    if origin in ("built-in", "frozen", None):
        origin = None
    found[name] = origin
import json
print(json.dumps({"modules": found, "failed": failed, "lazy": sorted(lazy)}))
"""

# stdin: lines "SRC\tCFILE\tDFILE".
_COMPILE_SCRIPT = r"""
import sys, py_compile
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
for line in sys.stdin.read().splitlines():
    src, cfile, dfile = line.split("\t")
    py_compile.compile(src, cfile=cfile, dfile=dfile, doraise=True, invalidation_mode=mode)
"""


@dataclass(frozen=True)
class Interpreter:
    """What the packer needs to know about the interpreter it embeds."""

    path: Path                        # resolved, e.g. /usr/bin/python3.11
    version: str                      # "3.11"
    stdlib: Path                      # /usr/lib/python3.11
    dynload: Path                     # /usr/lib/python3.11/lib-dynload
    ext_suffixes: tuple[str, ...]     # (".cpython-311-x86_64-linux-gnu.so", ".abi3.so", ".so")
    magic: str                        # importlib.util.MAGIC_NUMBER as hex
    site_dirs: tuple[Path, ...]
    stdlib_names: frozenset[str]


@dataclass(frozen=True)
class ImageFile:
    """One file of the image: `name` without leading '/', from `src` or `data`."""

    name: str
    src: Path | None = None
    data: bytes | None = None
    mode: int | None = None
    kind: str = "stdlib"              # interpreter|stdlib|extension|packages|runtime|tools

    def size(self) -> int:
        return len(self.data) if self.data is not None else (self.src.stat().st_size if self.src else 0)


@dataclass(frozen=True)
class PyRuntime:
    """The embedded runtime: files to pack plus the ELF files whose closure is needed."""

    interpreter: Interpreter
    files: tuple[ImageFile, ...]
    elf: tuple[Path, ...]
    modules: tuple[str, ...]                    # traced module names
    packages: dict[str, Path] = field(default_factory=dict)   # top-level -> where it came from
    symlinks: tuple[tuple[str, str], ...] = ()  # (name, target)
    dirs: tuple[str, ...] = ()
    libraries: tuple[Path, ...] = ()            # shared libs dlopened by soname: pack at their host path

    def sizes(self) -> dict[str, int]:
        """Bytes per kind (interpreter, stdlib, extension, packages, runtime, tools)."""
        out: dict[str, int] = {}
        for f in self.files:
            out[f.kind] = out.get(f.kind, 0) + f.size()
        return out


def inspect_interpreter(python: Path, cache: Path | None = None) -> Interpreter:
    """Resolve `python` (symlinks) and ask it where its stdlib and extensions live.

    Cached by the interpreter's path, size and mtime."""
    if not python.exists():
        raise CommandError(f"interpreter {python} does not exist", hint="pass --python PATH to a CPython 3")
    real = Path(os.path.realpath(python))
    st = real.stat()
    cfile = _cache_root(cache) / "interp" / f"{_digest(str(real), str(st.st_size), str(st.st_mtime_ns))}.json"
    if cfile.exists():
        info = json.loads(cfile.read_text())
    else:
        proc = tools.run([str(real), "-IS", "-c", _INFO_SCRIPT],
                         f"report its stdlib and extension paths ({real})", env={}, text=True)
        info = json.loads(proc.stdout)
        _atomic_write(cfile, json.dumps(info).encode())
    return Interpreter(path=real, version=info["version"], stdlib=Path(info["stdlib"]),
                       dynload=Path(info["dynload"] or Path(info["stdlib"]) / "lib-dynload"),
                       ext_suffixes=tuple(info["ext_suffixes"]), magic=info["magic"],
                       site_dirs=tuple(Path(p) for p in info["site_dirs"]),
                       stdlib_names=frozenset(info["stdlib_names"]))


def runtime_sources(src: Path = RUNTIME_SRC) -> list[Path]:
    """Every .py of the runtime package, sorted."""
    return sorted(p for p in src.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path, src: Path) -> str:
    rel = path.relative_to(src.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def static_imports(files: list[Path], cache: Path | None = None) -> set[str]:
    """Absolute module names of every import statement in `files` (also inside functions).

    Cached per file content (parsing the runtime takes ~0.1 s)."""
    names: set[str] = set()
    root = _cache_root(cache) / "imports"
    for path in files:
        data = path.read_bytes()
        cfile = root / f"{_digest(data)}.json"
        if cfile.exists():
            names.update(json.loads(cfile.read_text()))
            continue
        found = _imports_of(data, str(path))
        _atomic_write(cfile, json.dumps(sorted(found)).encode())
        names |= found
    return names


def _imports_of(data: bytes, filename: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(data, filename)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # "from pkg import sub" may name a submodule: try it too.
            names.update(f"{node.module}.{a.name}" for a in node.names if a.name != "*")
    return names


def _venv_site_dirs(version: str) -> list[Path]:
    """The running packer's site-packages, when it is the same Python version."""
    if "{}.{}".format(*sys.version_info[:2]) != version:
        return []
    return [Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]


def search_dirs(interp: Interpreter, extra: tuple[str, ...] = ()) -> list[Path]:
    """Where third-party packages are looked for, in order."""
    out: list[Path] = []
    for d in [*map(Path, extra), *_venv_site_dirs(interp.version), *interp.site_dirs]:
        if d.is_dir() and d not in out:
            out.append(d)
    return out


def find_package(name: str, dirs: list[Path]) -> Path:
    """The package dir (or single-file module) of top-level `name` in the first dir that has it."""
    for d in dirs:
        if (d / name / "__init__.py").exists():
            return d / name
        if (d / f"{name}.py").exists():
            return d / f"{name}.py"
        so = sorted(d.glob(f"{name}.*.so")) + sorted(d.glob(f"{name}.so"))
        if so:
            return so[0]
    where = ", ".join(map(str, dirs)) or "any site-packages"
    raise CommandError(f"runtime package {name!r} not found in {where}",
                       hint="install it for the embedded interpreter, pass --site-packages DIR, "
                       "or leave it out of --packages")


def check_abi(so: Path, interp: Interpreter, package: str) -> None:
    """Refuse an extension module the embedded interpreter would not load (wrong ABI tag)."""
    tag = "." + so.name.split(".", 1)[1] if "." in so.name else ""
    if tag in interp.ext_suffixes:
        return
    raise CommandError(
        f"{package}: extension {so} is built for another Python ({tag.strip('.')}); "
        f"the embedded {interp.path} (Python {interp.version}) loads only "
        f"{', '.join(interp.ext_suffixes)}",
        hint=f"install {package} for {interp.path.name} (e.g. `{interp.path} -m pip install --target DIR "
        f"{package}` then --site-packages DIR), or choose a matching --python")


def _cache_root(cache: Path | None) -> Path:
    return (cache or DEFAULT_CACHE) / "pyruntime"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def trace(interp: Interpreter, names: list[str], paths: list[Path],
          cache: Path | None = None) -> dict:
    """Run the interpreter -IS importing `names` with `paths` first on sys.path.

    Returns {"modules": {name: file or None}, "failed": {name: error}, "lazy": [...]}.
    Cached by the interpreter, the names, the paths and every runtime source."""
    st = interp.path.stat()
    key = _digest(str(interp.path), str(st.st_size), str(st.st_mtime_ns), *names, *map(str, paths),
                  *(p.read_bytes() for p in runtime_sources()))
    cfile = _cache_root(cache) / "trace" / f"{key}.json"
    if cfile.exists():
        return json.loads(cfile.read_text())
    out = tools.run([str(interp.path), "-IS", "-c", _TRACE_SCRIPT, *map(str, paths), "--", *names],
                    "trace the runtime's imports", env={}, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    _atomic_write(cfile, json.dumps(result, sort_keys=True).encode())
    return result


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def compile_pycs(interp: Interpreter, jobs: list[tuple[Path, str]], cache: Path | None = None) -> list[Path]:
    """Compile each (source, image path of the .py) to an unchecked-hash pyc; returns the pyc paths.

    The image path is the pyc's co_filename (what tracebacks show). Results
    are cached by interpreter magic, image path and source bytes."""
    root = _cache_root(cache) / "pyc" / interp.magic
    outs: list[Path] = []
    todo: list[tuple[Path, Path, str]] = []
    for src, dfile in jobs:
        key = _digest(dfile, src.read_bytes())
        out = root / key[:2] / f"{key}.pyc"
        outs.append(out)
        if not out.exists():
            todo.append((src, out, dfile))
    if todo:
        with tempfile.TemporaryDirectory(dir=_ensure(root)) as tmp:
            lines = []
            for i, (src, _out, dfile) in enumerate(todo):
                lines.append(f"{src}\t{tmp}/{i}.pyc\t{dfile}")
            tools.run([str(interp.path), "-IS", "-c", _COMPILE_SCRIPT], "compile .pyc files",
                      input="\n".join(lines), env={}, text=True)
            for i, (_src, out, _dfile) in enumerate(todo):
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f"{tmp}/{i}.pyc", out)
    return outs


def _ensure(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    return d


def _image(path: Path) -> str:
    return str(path).lstrip("/")


def _under(path: Path, base: Path) -> bool:
    return path == base or base in path.parents


def _package_files(top: Path) -> list[Path]:
    if top.is_file():
        return [top]
    out = []
    for p in sorted(top.rglob("*")):
        rel = p.relative_to(top).parts
        if p.is_file() and not SKIP_PACKAGE_DIRS.intersection(rel[:-1]) and p.suffix in (".py", ".so"):
            out.append(p)
    return out


def shebang(python: str, env: str | None = None) -> str:
    """The `#!` line of a Python script in the image (without the newline).

    The kernel passes everything after the interpreter as ONE argument.
    Without `env`: `python -IS` (isolated). With `env` (GNU env, which
    splits that argument with -S): `env -S -i PYTHONHASHSEED=0 python -sSP`,
    which is -IS but with a fixed hash seed, so that CPython does not read
    /dev/urandom at start-up, which before the kernel's crng is ready (no
    RDRAND, no virtio-rng) stalls for the jitter-entropy collection (~1 s
    under TCG). -I would ignore PYTHONHASHSEED, so it is spelled out: `-i`
    empties the environment (what -E achieves: no PYTHONPATH, PYTHONHOME,
    PYTHONINSPECT... from the kernel command line), -s no user site, -P no
    script directory on sys.path, -S no site."""
    if env is None:
        return f"#!{python} -IS"
    return f"#!{env} -S -i {HASHSEED_VAR}=0 {python} -sSP"


def ldconfig_script(interp: Interpreter, libs: list[str], env: str | None = None) -> bytes:
    """A stand-in for `/sbin/ldconfig -p` listing the image's libraries (for ctypes.util)."""
    lines = [f"\t{Path(p).name} (libc6,x86-64) => /{p.lstrip('/')}" for p in sorted(set(libs))
             if Path(p).name.startswith("lib")]
    body = "\n".join(lines)
    return (f"{shebang('/' + _image(interp.path), env)}\n"
            f"# Generated by liveinit pack: ctypes.util.find_library runs `ldconfig -p`.\n"
            f"print({len(lines)!r}, 'libs found in cache `/etc/ld.so.cache\\'')\n"
            f"print({body!r})\n").encode()


def build_runtime(python: Path, packages: tuple[str, ...] = (),
                  site_packages: tuple[str, ...] = (), extra_modules: tuple[str, ...] = (),
                  cache: Path | None = None, runtime_src: Path = RUNTIME_SRC) -> PyRuntime:
    """Everything Python the image needs, traced and compiled."""
    interp = inspect_interpreter(python, cache)
    dirs = search_dirs(interp, site_packages)
    pkg_paths = {name: find_package(name, dirs) for name in packages}
    sources = runtime_sources(runtime_src)
    own = [_module_name(p, runtime_src) for p in sources]
    mentioned = static_imports(sources, cache)
    # Third-party packages the runtime itself imports are packed without
    # being asked for, when installed (the runtime treats them as optional).
    for name in sorted(mentioned):
        top = name.split(".")[0]
        if top not in interp.stdlib_names and top != RUNTIME_PACKAGE and top not in pkg_paths:
            with contextlib.suppress(CommandError):
                pkg_paths[top] = find_package(top, dirs)
    packages = tuple(pkg_paths)

    # What to import: the runtime's modules, every stdlib or packed name its
    # source mentions (lazy imports included), the packages, the extras.
    wanted = set(own) | set(packages) | set(extra_modules) | {LANDMARK}
    for name in mentioned:
        top = name.split(".")[0]
        if top in interp.stdlib_names or top in packages:
            wanted.add(name)
    paths = [runtime_src.parent, *sorted({p.parent for p in pkg_paths.values()}, key=str)]
    result = trace(interp, sorted(wanted), paths, cache)
    broken = {n: e for n, e in result["failed"].items() if n in own or n in packages or n in extra_modules}
    if broken:
        name, err = sorted(broken.items())[0]
        raise CommandError(f"the runtime module {name} does not import with {interp.path} -IS: {err}",
                           hint="fix the module (or its LAZY_IMPORTS), or install what it needs")

    files: list[ImageFile] = []
    elf: list[Path] = [interp.path]
    pyc_jobs: list[tuple[Path, str, str]] = []          # (src, image .py path, kind)
    modules = result["modules"]
    extra_tops: set[str] = set()
    for name, origin in sorted(modules.items()):
        if origin is None:
            continue
        path = Path(origin)
        top = name.split(".")[0]
        if top == RUNTIME_PACKAGE or top in pkg_paths:
            continue
        site = next((d for d in dirs if _under(path, d)), None)
        if site is not None:
            extra_tops.add(top)                          # a dependency of a packed package
        elif _under(path, interp.dynload):
            files.append(ImageFile(_image(path), src=path, kind="extension"))
            elf.append(path)
        elif _under(path, interp.stdlib) and path.suffix == ".py":
            pyc_jobs.append((path, _image(path), "stdlib"))
    landmark = interp.stdlib / f"{LANDMARK}.py"
    if all(j[0] != landmark for j in pyc_jobs):
        pyc_jobs.append((landmark, _image(landmark), "stdlib"))

    for top in sorted(extra_tops - set(pkg_paths)):
        pkg_paths[top] = find_package(top, dirs)
    for top, where in sorted(pkg_paths.items()):
        base = where.parent
        for f in _package_files(where):
            dest = f"{IMAGE_LIBDIR}/{f.relative_to(base)}"
            if f.suffix == ".so":
                check_abi(f, interp, top)
                files.append(ImageFile(dest, src=f, kind="packages"))
                elf.append(f)
            else:
                pyc_jobs.append((f, dest, "packages"))
    for src in sources:
        pyc_jobs.append((src, f"{IMAGE_LIBDIR}/{src.relative_to(runtime_src.parent)}", "runtime"))

    pycs = compile_pycs(interp, [(src, "/" + name) for src, name, _k in pyc_jobs], cache)
    for (_src, name, kind), pyc in zip(pyc_jobs, pycs, strict=True):
        files.append(ImageFile(name[:-3] + ".pyc", src=pyc, mode=0o644, kind=kind))
    files.append(ImageFile(_image(interp.path), src=interp.path, kind="interpreter"))

    libraries: list[Path] = []
    if "pyudev" in pkg_paths:
        # pyudev dlopens libudev by soname: pack it (and its closure) too.
        lib = find_library(LIBUDEV)
        if lib is None:
            raise CommandError(f"pyudev is packed but the host has no {LIBUDEV}",
                               hint="apt-get install libudev1, or leave pyudev out of --packages")
        elf.append(lib)
        libraries.append(lib)

    symlinks = []
    if python.name != interp.path.name and Path(os.path.realpath(python)) == interp.path:
        symlinks.append((_image(python), interp.path.name))
    return PyRuntime(interpreter=interp, files=tuple(files), elf=tuple(elf),
                     modules=tuple(sorted(modules)), packages=pkg_paths, symlinks=tuple(symlinks),
                     libraries=tuple(libraries), dirs=(_image(interp.dynload), IMAGE_LIBDIR))


def find_library(soname: str) -> Path | None:
    """Where the host's loader cache says `soname` lives (e.g. libudev.so.1)."""
    try:
        out = tools.run(["/sbin/ldconfig", "-p"], "list the loader cache", env={"LC_ALL": "C"},
                        text=True).stdout
    except CommandError:
        return None
    for line in out.splitlines():
        parts = line.strip().split(" => ")
        if len(parts) == 2 and parts[0].split()[0] == soname and "x86-64" in parts[0]:
            return Path(parts[1])
    return None
