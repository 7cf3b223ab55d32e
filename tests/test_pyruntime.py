"""The embedded Python: trace, sourceless unchecked-hash pycs, getpath landmark,
ABI check, the ldconfig stand-in; the real oracle is the interpreter itself,
run in a chroot holding only what the packer selected."""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from packer import pyruntime
from packer.errors import CommandError
from packer.elf import path_chain, resolve

PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def interp() -> pyruntime.Interpreter:
    return pyruntime.inspect_interpreter(PYTHON)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> pyruntime.PyRuntime:
    return pyruntime.build_runtime(PYTHON, packages=("psutil", "pyudev"), cache=tmp_path_factory.mktemp("cache"))


def _stage(rt: pyruntime.PyRuntime, root: Path) -> None:
    """Copy the runtime plus its ELF closure into `root` at their image paths."""
    def put_host(p: Path) -> None:
        for q in path_chain(p):
            dest = root / str(q).lstrip("/")
            if dest.exists() or dest.is_symlink():
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            if q.is_symlink():
                os.symlink(os.readlink(q), dest)
            elif q.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
            else:
                shutil.copy2(q, dest)
    closure = resolve(rt.elf)
    for p in [*closure.files, *rt.libraries]:
        put_host(p)
    for f in rt.files:
        dest = root / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if f.src is not None:
            shutil.copyfile(f.src, dest)
            shutil.copymode(f.src, dest)
        else:
            dest.write_bytes(f.data or b"")
    for d in rt.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, target in rt.symlinks:
        os.symlink(target, root / name)
    libs = [str(p) for p in (*closure.libraries, *rt.libraries)]
    (root / "dev").mkdir()
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # as the image has it
    ldc = root / pyruntime.IMAGE_LDCONFIG
    ldc.parent.mkdir(parents=True, exist_ok=True)
    ldc.write_bytes(pyruntime.ldconfig_script(rt.interpreter, libs))
    ldc.chmod(0o755)


def _chroot(root: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(root), str(PYTHON.resolve()), "-IS", "-c", code],
                          capture_output=True, text=True, env={}, timeout=60)


def test_interpreter_resolves_symlink(interp: pyruntime.Interpreter) -> None:
    assert interp.path == Path(os.path.realpath(PYTHON))
    assert interp.path.name == f"python{interp.version}"
    assert (interp.stdlib / "os.py").exists()
    assert ".abi3.so" in interp.ext_suffixes


def test_trace_finds_runtime_imports_and_nothing_unrelated(runtime: pyruntime.PyRuntime) -> None:
    names = set(runtime.modules)
    assert "liveinit.machine" in names and "liveinit.cmdline" in names
    assert "ctypes" in names             # liveinit.syscalls
    assert "psutil" in names and "pyudev" in names
    for unrelated in ("tkinter", "email", "http", "unittest", "asyncio", "xml"):
        assert unrelated not in names


def test_every_python_file_is_a_sourceless_unchecked_hash_pyc(runtime: pyruntime.PyRuntime,
                                                              interp: pyruntime.Interpreter) -> None:
    pycs = [f for f in runtime.files if f.name.endswith(".pyc")]
    assert not [f for f in runtime.files if f.name.endswith(".py")]
    assert any(f.name == "usr/lib/python3.11/os.pyc" for f in pycs)        # getpath landmark
    assert any(f.name == "usr/lib/liveinit/liveinit/machine.pyc" for f in pycs)
    for f in pycs:
        head = f.src.read_bytes()[:8]
        assert head[:4].hex() == interp.magic
        # PEP 552 flags: bit 0 = hash-based, bit 1 = check_source (off: unchecked).
        assert int.from_bytes(head[4:8], "little") == 0b01, f.name


def test_pycs_are_reproducible_and_cached(runtime: pyruntime.PyRuntime, tmp_path: Path,
                                          interp: pyruntime.Interpreter) -> None:
    src = interp.stdlib / "fnmatch.py"
    a = pyruntime.compile_pycs(interp, [(src, "/usr/lib/python3.11/fnmatch.py")], tmp_path / "c1")[0]
    b = pyruntime.compile_pycs(interp, [(src, "/usr/lib/python3.11/fnmatch.py")], tmp_path / "c2")[0]
    assert a.read_bytes() == b.read_bytes()
    mtime = a.stat().st_mtime_ns
    assert pyruntime.compile_pycs(interp, [(src, "/usr/lib/python3.11/fnmatch.py")], tmp_path / "c1")[0] == a
    assert a.stat().st_mtime_ns == mtime      # a cache hit does not recompile


def test_lazy_imports_declared_and_inside_functions_are_traced(tmp_path: Path) -> None:
    pkg = tmp_path / "liveinit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "boot.py").write_text('LAZY_IMPORTS = ("fractions",)\n'
                                 "def later():\n    import zoneinfo\n    from email import message\n")
    rt = pyruntime.build_runtime(PYTHON, packages=(), cache=tmp_path / "cache", runtime_src=pkg)
    names = set(rt.modules)
    assert {"fractions", "zoneinfo", "email.message"} <= names
    files = {f.name for f in rt.files}
    assert "usr/lib/python3.11/fractions.pyc" in files
    assert "usr/lib/python3.11/zoneinfo/__init__.pyc" in files
    assert "usr/lib/liveinit/liveinit/boot.pyc" in files
    assert "psutil" not in names


def test_runtime_module_that_fails_to_import_is_an_error(tmp_path: Path) -> None:
    pkg = tmp_path / "liveinit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("import no_such_module_anywhere\n")
    with pytest.raises(CommandError, match="liveinit.bad"):
        pyruntime.build_runtime(PYTHON, packages=(), cache=tmp_path / "cache", runtime_src=pkg)


def test_abi_check_refuses_wrong_tag(tmp_path: Path, interp: pyruntime.Interpreter) -> None:
    site = tmp_path / "site"
    (site / "fakepkg").mkdir(parents=True)
    (site / "fakepkg" / "__init__.py").write_text("")
    bad = site / "fakepkg" / "_speedups.cpython-312-x86_64-linux-gnu.so"
    bad.write_bytes(b"\x7fELF")
    with pytest.raises(CommandError, match="cpython-312") as e:
        pyruntime.build_runtime(PYTHON, packages=("fakepkg",), site_packages=(str(site),),
                                cache=tmp_path / "cache")
    assert "_speedups" in str(e.value) and "--site-packages" in e.value.hint
    for ok in ("_x.abi3.so", f"_x{interp.ext_suffixes[0]}", "_x.so"):
        pyruntime.check_abi(Path(ok), interp, "fakepkg")


def test_missing_package_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no_such_pkg") as e:
        pyruntime.build_runtime(PYTHON, packages=("no_such_pkg",), site_packages=(str(tmp_path),),
                                cache=tmp_path / "cache")
    assert str(tmp_path) in str(e.value)


def test_ldconfig_script_satisfies_ctypes_util_regex(interp: pyruntime.Interpreter, tmp_path: Path) -> None:
    script = tmp_path / "ldconfig"
    script.write_bytes(pyruntime.ldconfig_script(interp, ["/usr/lib/x86_64-linux-gnu/libudev.so.1"]))
    script.chmod(0o755)
    out = subprocess.run([str(script), "-p"], capture_output=True, check=True).stdout
    # The pattern ctypes.util._findSoname_ldconfig uses on x86_64.
    assert re.search(rb"\s+(libudev\.[^\s]+)\s+\(libc6,x86-64", out).group(1) == b"libudev.so.1"


@pytest.mark.slow
def test_staged_runtime_runs_in_a_chroot(runtime: pyruntime.PyRuntime, tmp_path: Path) -> None:
    root = tmp_path / "root"
    _stage(runtime, root)
    assert not list(root.rglob("*.py"))
    code = ("import sys; sys.path.insert(0, '/usr/lib/liveinit'); import os, ctypes.util; import liveinit.machine, psutil, pyudev; "
            "print(sys.prefix, sys.exec_prefix, os.__file__, ctypes.util.find_library('udev')); "
            "pyudev.Context()")
    proc = _chroot(root, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/usr", "/usr", "/usr/lib/python3.11/os.py", "libudev.so.1"]
    assert "Could not find" not in proc.stderr     # getpath found both landmarks
    assert not list(root.rglob("__pycache__"))      # nothing recompiled
