"""packer.elf against glibc: crafted binaries built with gcc, compared with `ldd`
(and with `ld.so --list` run in a chroot for --root), then every ELF of the
host's /usr/bin, /usr/sbin and Python extension directories."""
from __future__ import annotations

import glob
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from packer import elf
from packer.cli import main as cli_main
from packer.errors import CommandError
from packer.elf import (ARCHES, EM_X86_64, ELFCLASS64, ElfError, NotElfError, RootFS, _Resolver,
                        expand_dst, read_elf, read_ident, resolve, search_dirs)

X86_64 = ARCHES[(ELFCLASS64, EM_X86_64)]
LDD_LINE = re.compile(r"^\s*(?:(\S+) => )?(\S+) \(0x[0-9a-f]+\)$")
LDD_MISSING = re.compile(r"^\s*(\S+) => not found$")
EXTENSION_DIRS = ("/usr/lib/python3.11/lib-dynload", "/usr/lib/python3/dist-packages")


@dataclass(frozen=True)
class Listing:
    """What ldd (or ld.so --list) printed: the paths, or the names not found."""

    paths: frozenset[str]
    missing: tuple[str, ...]


def parse_ldd(text: str) -> Listing:
    paths: set[str] = set()
    missing: list[str] = []
    for line in text.splitlines():
        if not line.strip() or "statically linked" in line:
            continue
        if m := LDD_MISSING.match(line):
            missing.append(m.group(1))
            continue
        m = LDD_LINE.match(line)
        assert m, f"unexpected ldd line {line!r}"
        if not m.group(2).startswith("linux-vdso"):
            paths.add(m.group(2))
    return Listing(frozenset(paths), tuple(missing))


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LD_")}


def ldd(path: Path | str) -> Listing | None:
    """ldd's view, or None when ldd does not handle the file (not dynamic)."""
    proc = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=clean_env())
    if proc.returncode != 0:
        return None
    return parse_ldd(proc.stdout)


def mine(path: Path | str, root: Path = Path("/")) -> Listing:
    """packer.elf's view in the same shape: the first missing name, as ld.so stops there."""
    try:
        return Listing(frozenset(str(p) for p in resolve([Path(path)], root=root).paths), ())
    except ElfError as e:
        return Listing(frozenset(), (e.missing,))


def assert_like_ldd(path: Path) -> Listing:
    expected = ldd(path)
    assert expected is not None, f"ldd cannot handle {path}"
    got = mine(path)
    if expected.missing:
        # ldd keeps going and lists all; ld.so proper (and we) stop at the first.
        assert got.missing and got.missing[0] in expected.missing, (got, expected)
    else:
        assert got == expected
    return got


# -- crafted binaries ------------------------------------------------------------------

class Lab:
    """Builds small shared libraries and executables with gcc in one directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dirs: set[Path] = set()

    def _cc(self, out: Path, source: str, flags: list[str]) -> Path:
        out.parent.mkdir(parents=True, exist_ok=True)
        src = out.with_name(out.name + ".c")
        src.write_text(source)
        links = [f"-Wl,-rpath-link,{d}" for d in sorted(self.dirs)]
        subprocess.run(["gcc", "-o", str(out), str(src), "-Wl,--no-as-needed", *links, *flags],
                       check=True, capture_output=True)
        src.unlink()
        return out

    @staticmethod
    def _source(symbol: str, needs: list[Path], main: bool = False) -> str:
        calls = [f"f_{lib_symbol(p)}" for p in needs]
        decls = "".join(f"extern int {c}(void);\n" for c in calls)
        body = " + ".join([f"{c}()" for c in calls] + ["1"])
        name = "main" if main else f"f_{symbol}"
        return f"{decls}int {name}(void) {{ return {body}; }}\n"

    def lib(self, rel: str, needs: list[Path] = (), soname: str | None = None,  # type: ignore[assignment]
            rpath: str | None = None, runpath: str | None = None) -> Path:
        """A shared library at base/rel (SONAME: its file name unless given)."""
        out = self.base / rel
        self.dirs.add(out.parent)
        flags = ["-shared", "-fPIC", f"-Wl,-soname,{soname or out.name}", *map(str, needs)]
        flags += self._rpath_flags(rpath, runpath)
        return self._cc(out, self._source(lib_symbol(out), list(needs)), flags)

    def exe(self, rel: str, needs: list[Path] = (), rpath: str | None = None,  # type: ignore[assignment]
            runpath: str | None = None, extra: list[str] = ()) -> Path:  # type: ignore[assignment]
        return self._cc(self.base / rel, self._source("", list(needs), main=True),
                        [*map(str, needs), *self._rpath_flags(rpath, runpath), *extra])

    @staticmethod
    def _rpath_flags(rpath: str | None, runpath: str | None) -> list[str]:
        if rpath is not None:
            return ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
        if runpath is not None:
            return ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
        return []


def lib_symbol(path: Path) -> str:
    return path.name.split(".so")[0].removeprefix("lib").replace("-", "_")


def lib32(path: Path) -> Path:
    """A 32-bit i386 shared library: built with gcc -m32 when it can, else a crafted header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = path.with_suffix(".o32")
    src = path.with_suffix(".c32")
    src.write_text("int f_w(void) { return 32; }\n")
    built = subprocess.run(["gcc", "-m32", "-fPIC", "-x", "c", "-c", str(src), "-o", str(obj)],
                           capture_output=True).returncode == 0 and subprocess.run(
        ["ld", "-m", "elf_i386", "-shared", "-soname", path.name, str(obj), "-o", str(path)],
        capture_output=True).returncode == 0
    if not built:
        # ELF32 header of an i386 ET_DYN with no program headers: enough for
        # ld.so's class check, which is all it ever reads of it.
        ident = b"\x7fELF\x01\x01\x01" + bytes(9)
        path.write_bytes(ident + struct.pack("<HHIIIIIHHHHHH", 3, 3, 1, 0, 0, 0, 0, 52, 32, 0, 40, 0, 0))
    src.unlink()
    obj.unlink(missing_ok=True)
    assert read_ident(str(path))[:2] == (1, 3)  # type: ignore[index]
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("elf-lab"))


def test_rpath_of_the_executable_is_inherited(lab: Lab) -> None:
    rb = lab.lib("ri1/librb.so")
    ra = lab.lib("ri2/libra.so", [rb])
    exe = lab.exe("ri-bin/exe", [ra], rpath="$ORIGIN/../ri2:$ORIGIN/../ri1")
    got = assert_like_ldd(exe)
    base = str(lab.base)
    assert f"{base}/ri-bin/../ri1/librb.so" in got.paths
    assert f"{base}/ri-bin/../ri2/libra.so" in got.paths


def test_runpath_is_not_inherited(lab: Lab) -> None:
    nb = lab.lib("rn1/libnb.so")
    na = lab.lib("rn2/libna.so", [nb])
    exe = lab.exe("rn-bin/exe", [na], runpath="$ORIGIN/../rn2:$ORIGIN/../rn1")
    assert assert_like_ldd(exe).missing == ("libnb.so",)
    with pytest.raises(ElfError) as err:
        resolve([exe])
    assert err.value.missing == "libnb.so"
    assert str(exe) in str(err.value) and "libnb.so" in str(err.value)
    assert "libna.so" in str(err.value)  # who needed it
    assert isinstance(err.value, CommandError) and err.value.hint


def test_rpath_of_every_loader_up_the_chain(lab: Lab) -> None:
    cc = lab.lib("ch3/libcc.so")
    cb = lab.lib("ch2/libcb.so", [cc])
    ca = lab.lib("ch1/libca.so", [cb], rpath="$ORIGIN/../ch2:$ORIGIN/../ch3")
    exe = lab.exe("ch-bin/exe", [ca], rpath="$ORIGIN/../ch1")
    got = assert_like_ldd(exe)
    # libcc is found through libca's RPATH although libcb (its loader) has none.
    assert f"{lab.base}/ch-bin/../ch1/../ch3/libcc.so" in got.paths


def test_runpath_disables_the_loaders_rpath(lab: Lab) -> None:
    db = lab.lib("rd2/libdb.so")
    da = lab.lib("rd1/libda.so", [db], runpath="$ORIGIN")
    exe = lab.exe("rd-bin/exe", [da], rpath="$ORIGIN/../rd1:$ORIGIN/../rd2")
    assert assert_like_ldd(exe).missing == ("libdb.so",)
    # The same library without RUNPATH is found through the executable's RPATH.
    da2 = lab.lib("rd3/libda2.so", [db])
    exe2 = lab.exe("rd-bin/exe2", [da2], rpath="$ORIGIN/../rd3:$ORIGIN/../rd2")
    assert f"{lab.base}/rd-bin/../rd2/libdb.so" in assert_like_ldd(exe2).paths


def test_library_finds_its_dependency_via_its_own_origin_runpath(lab: Lab) -> None:
    eb = lab.lib("or-deps/libeb.so")
    ea = lab.lib("or1/libea.so", [eb], runpath="$ORIGIN/../or-deps")
    exe = lab.exe("or-bin/exe", [ea], runpath="${ORIGIN}/../or1")
    got = assert_like_ldd(exe)
    assert f"{lab.base}/or-bin/../or1/../or-deps/libeb.so" in got.paths


def test_lib_and_platform_tokens(lab: Lab) -> None:
    pl = lab.lib(f"tok/{X86_64.lib}/libtl.so")
    pp = lab.lib(f"tok/{X86_64.platform}/libtp.so")
    exe = lab.exe("tok/bin/exe", [pl, pp], rpath="$ORIGIN/../$LIB:$ORIGIN/../${PLATFORM}")
    got = assert_like_ldd(exe)
    assert f"{lab.base}/tok/bin/../lib/x86_64-linux-gnu/libtl.so" in got.paths
    assert f"{lab.base}/tok/bin/../x86_64/libtp.so" in got.paths


def test_symlink_chain_and_directory_symlink(lab: Lab) -> None:
    real = lab.lib("sy/libsy.so.1.2.3", soname="libsy.so.1")
    (lab.base / "sy/libsy.so.1").symlink_to("libsy.so.1.2.3")
    (lab.base / "sy-link").symlink_to("sy")
    exe = lab.exe("sy-bin/exe", [real], runpath="$ORIGIN/../sy-link")
    assert read_elf(str(exe)).needed[0] == "libsy.so.1"
    assert_like_ldd(exe)
    closure = resolve([exe])
    printed = Path(f"{lab.base}/sy-bin/../sy-link/libsy.so.1")
    assert printed in closure.libraries
    for needed in (lab.base / "sy-link", lab.base / "sy/libsy.so.1", lab.base / "sy/libsy.so.1.2.3"):
        assert needed in closure.files
    assert_image_sane(closure.files, Path("/"), closure.paths)


def assert_image_sane(files: tuple[Path, ...], root: Path, printed: tuple[Path, ...]) -> None:
    """files must be copyable as they are: no parent is a symlink, and copied
    (symlinks as symlinks) they make every printed path resolve to a file."""
    fs = RootFS(root)
    for f in files:
        walked = fs.walk(str(f.parent))
        assert walked is not None and walked.real == str(f.parent), f"{f} has a symlink in its parent"
        assert os.path.islink(fs.host(str(f))) or os.path.isfile(fs.host(str(f))), f
    assert len(set(files)) == len(files) and list(files) == sorted(files, key=str)
    for path in printed:
        walked = fs.walk(str(path))
        assert walked is not None and {*walked.links, walked.real} <= set(map(str, files)), path


def replay(files: tuple[Path, ...], root: Path, dest: Path) -> None:
    """What an image builder does with files: symlinks recreated, files copied."""
    for f in files:
        src = Path(RootFS(root).host(str(f)))
        out = dest / str(f).lstrip("/")
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)


def test_files_replayed_into_an_image_resolve_every_path(lab: Lab, tmp_path: Path) -> None:
    closure = resolve([Path(sys.executable).resolve(), Path("/usr/bin/ls")])
    replay(closure.files, Path("/"), tmp_path / "img")
    image = RootFS(tmp_path / "img")
    for path in closure.paths:
        walked = image.walk(str(path))
        assert walked is not None and os.path.isfile(image.host(walked.real)), path


def test_wrong_class_library_earlier_in_the_path_is_skipped(lab: Lab) -> None:
    lib32(lab.base / "wc32/libw.so")
    w64 = lab.lib("wc64/libw.so")
    exe = lab.exe("wc-bin/exe", [w64], rpath="$ORIGIN/../wc32:$ORIGIN/../wc64")
    got = assert_like_ldd(exe)
    assert f"{lab.base}/wc-bin/../wc64/libw.so" in got.paths
    only32 = lab.exe("wc-bin/exe32", [w64], rpath="$ORIGIN/../wc32")
    with pytest.raises(ElfError, match="libw.so.*another ELF class"):
        resolve([only32])


def test_missing_library_error_and_cli_exit(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    gone = lab.lib("gone/libgone.so")
    exe = lab.exe("gone-bin/exe", [gone], rpath="$ORIGIN/../gone")
    gone.unlink()
    assert assert_like_ldd(exe).missing == ("libgone.so",)
    with pytest.raises(ElfError) as err:
        resolve([exe])
    assert err.value.missing == "libgone.so" and err.value.binary == exe
    assert cli_main(["ldd", str(exe)]) == 1
    out, errors = capsys.readouterr()
    assert out == "" and "libgone.so" in errors and str(exe) in errors and "hint:" in errors


def test_ld_library_path_only_when_given_and_between_rpath_and_runpath(lab: Lab) -> None:
    for d in ("lp-r", "lp-l", "lp-n"):
        lab.lib(f"{d}/liblp.so")
    built = lab.base / "lp-r/liblp.so"
    via_rpath = lab.exe("lp-bin/rpath", [built], rpath="$ORIGIN/../lp-r")
    via_runpath = lab.exe("lp-bin/runpath", [built], runpath="$ORIGIN/../lp-n")
    llp = str(lab.base / "lp-l")
    for exe in (via_rpath, via_runpath):
        env = {**clean_env(), "LD_LIBRARY_PATH": llp}
        expected = parse_ldd(subprocess.run(["ldd", str(exe)], capture_output=True, text=True,
                                            env=env, check=True).stdout)
        got = {str(p) for p in resolve([exe], ld_library_path=[llp]).paths}
        assert got == expected.paths
    assert f"{llp}/liblp.so" in got and f"{llp}/liblp.so" not in mine(via_runpath).paths
    assert f"{lab.base}/lp-bin/../lp-r/liblp.so" in {
        str(p) for p in resolve([via_rpath], ld_library_path=[llp]).paths}


def test_nodeflib_skips_the_cache_and_default_dirs(lab: Lab) -> None:
    exe = lab.exe("nd-bin/exe", [], extra=["-Wl,-z,nodefaultlib"])
    assert read_elf(str(exe)).nodeflib
    assert assert_like_ldd(exe).missing == ("libc.so.6",)


def test_static_binary_has_an_empty_closure(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    exe = lab.exe("st/exe", [], extra=["-static"])
    assert read_elf(str(exe)).interp is None
    closure = resolve([exe])
    assert closure.interpreter is None and closure.libraries == () and closure.files == ()
    assert ldd(exe) is None  # "not a dynamic executable"
    pie = lab.exe("st/pie", [], extra=["-static-pie"])
    assert resolve([pie]).paths == () and ldd(pie) == Listing(frozenset(), ())
    assert cli_main(["ldd", str(exe), str(pie)]) == 0
    assert capsys.readouterr().out == ""


def test_script_is_reported_as_not_elf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "hello"
    script.write_text("#!/bin/sh -e\necho hi\n")
    with pytest.raises(NotElfError, match="not an ELF file.*script for /bin/sh"):
        resolve([script])
    assert cli_main(["ldd", str(script)]) == 1
    assert "not an ELF file" in capsys.readouterr().err


def test_cli_prints_what_ldd_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["ldd", "/usr/bin/ls", sys.executable]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = ldd("/usr/bin/ls").paths | ldd(sys.executable).paths  # type: ignore[union-attr]
    assert printed == sorted(expected)
    assert cli_main(["ldd", "--files", "/usr/bin/ls"]) == 0
    files = capsys.readouterr().out.splitlines()
    assert files == [str(p) for p in resolve([Path("/usr/bin/ls")]).files]
    assert all(os.path.lexists(f) for f in files)


# -- inside another root ---------------------------------------------------------------

def make_root(lab: Lab, root: Path) -> None:
    """A merged-/usr tree like a debootstrap one: /lib -> usr/lib, an absolute
    /usr/lib64 rtld link, ld.so.conf with a relative include, and an app
    library behind an absolute directory symlink /opt/app -> /srv/app."""
    multiarch = root / "usr/lib/x86_64-linux-gnu"
    multiarch.mkdir(parents=True)
    for name in ("libc.so.6", "ld-linux-x86-64.so.2"):
        shutil.copy2(os.path.realpath(f"/lib/x86_64-linux-gnu/{name}"), multiarch / name)
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    for name in ("lib", "lib64", "bin"):
        (root / name).symlink_to(f"usr/{name}")
    (root / "etc/ld.so.conf.d").mkdir(parents=True)
    (root / "etc/ld.so.conf").write_text("# test\ninclude ld.so.conf.d/*.conf\n")
    (root / "etc/ld.so.conf.d/app.conf").write_text("/opt/app/lib  # the app\n")
    (root / "etc/ld.so.conf.d/multiarch.conf").write_text("/usr/lib/x86_64-linux-gnu\n/lib/x86_64-linux-gnu\n")
    applib = lab.lib("rootsrc/libapp.so.1.0", soname="libapp.so.1")
    (root / "srv/app/lib").mkdir(parents=True)
    shutil.copy2(applib, root / "srv/app/lib/libapp.so.1.0")
    (root / "srv/app/lib/libapp.so.1").symlink_to("libapp.so.1.0")
    (root / "opt").mkdir()
    (root / "opt/app").symlink_to("/srv/app")
    (root / "usr/bin").mkdir()
    shutil.copy2(lab.exe("rootsrc/app", [applib]), root / "usr/bin/app")
    subprocess.run(["ldconfig", "-X", "-r", str(root)], check=True)


@pytest.mark.root
def test_resolve_inside_a_root_like_ld_so_in_a_chroot(lab: Lab, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    make_root(lab, root)
    listed = subprocess.run(["chroot", str(root), "/lib64/ld-linux-x86-64.so.2", "--list", "/bin/app"],
                            capture_output=True, text=True, check=True, env=clean_env())
    expected = parse_ldd(listed.stdout)
    # ldconfig keeps the first of the two names of one directory (inode): the conf's order.
    assert expected.paths == {"/opt/app/lib/libapp.so.1", "/usr/lib/x86_64-linux-gnu/libc.so.6",
                              "/lib64/ld-linux-x86-64.so.2"}
    closure = resolve([Path("/bin/app")], root=root)
    assert {str(p) for p in closure.paths} == expected.paths
    assert closure.interpreter == Path("/lib64/ld-linux-x86-64.so.2")
    assert {"/lib64", "/usr/lib64/ld-linux-x86-64.so.2", "/lib", "/opt/app",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "/srv/app/lib/libapp.so.1",
            "/srv/app/lib/libapp.so.1.0", "/usr/lib/x86_64-linux-gnu/libc.so.6"} == {
        str(p) for p in closure.files}
    assert_image_sane(closure.files, root, closure.paths)
    assert dict(closure.real_paths)[Path("/opt/app/lib/libapp.so.1")] == Path("/srv/app/lib/libapp.so.1.0")
    assert dict(closure.real_paths)[Path("/lib64/ld-linux-x86-64.so.2")] == Path(
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    # The CLI takes the in-root path or the host path under the root.
    assert cli_main(["ldd", "--root", str(root), str(root / "bin/app")]) == 0
    assert capsys.readouterr().out.splitlines() == sorted(expected.paths)
    # Nothing leaks from the host: without the conf, /opt/app is not searched.
    (root / "etc/ld.so.conf.d/app.conf").unlink()
    with pytest.raises(ElfError, match="libapp.so.1"):
        resolve([Path("/usr/bin/app")], root=root)


def test_absolute_symlinks_are_rerooted(tmp_path: Path) -> None:
    (tmp_path / "real/dir").mkdir(parents=True)
    (tmp_path / "real/dir/file").write_text("x")
    (tmp_path / "abs").symlink_to("/real")
    (tmp_path / "up").symlink_to("../../../../../real/dir")
    (tmp_path / "loop").symlink_to("loop")
    fs = RootFS(tmp_path)
    assert fs.walk("/abs/dir/file").real == "/real/dir/file"  # type: ignore[union-attr]
    assert fs.walk("/abs/dir/file").links == ("/abs",)  # type: ignore[union-attr]
    assert fs.walk("/up/file").real == "/real/dir/file"  # type: ignore[union-attr]
    assert fs.walk("/abs/../real/dir/../dir/file").real == "/real/dir/file"  # type: ignore[union-attr]
    assert fs.walk("/loop/x") is None and fs.walk("/nothing") is None
    assert fs.walk("/real/dir/file/x") is None


# -- ld.so.cache emulation ---------------------------------------------------------------

def test_cache_emulation_agrees_with_the_hosts_ld_so_cache() -> None:
    """For every x86-64 soname in /etc/ld.so.cache, the conf emulation picks the same path."""
    out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=True).stdout
    first: dict[str, str] = {}
    for line in out.splitlines()[1:]:
        m = re.match(r"^\s*(\S+) \(([^)]*)\) => (\S+)$", line)
        if m and "x86-64" in m.group(2) and "hwcap" not in m.group(2):
            first.setdefault(m.group(1), m.group(3))
    assert len(first) > 100
    resolver = _Resolver(Path("/"), ())
    differ = {name: (path, resolver.cache_lookup(name, X86_64, ELFCLASS64, EM_X86_64))
              for name, path in first.items()
              if resolver.cache_lookup(name, X86_64, ELFCLASS64, EM_X86_64) != path}
    assert differ == {}


# -- the real oracle: every ELF of the system ---------------------------------------------

def system_elves() -> list[str]:
    found: list[str] = []
    for directory in ("/usr/bin", "/usr/sbin"):
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if os.path.isfile(path) and read_ident(path) is not None:
                found.append(path)
    return found


def extension_modules() -> list[str]:
    found: list[str] = []
    for directory in EXTENSION_DIRS:
        found += sorted(glob.glob(f"{directory}/**/*.so", recursive=True))
    return found


@pytest.mark.slow
def test_oracle_every_system_binary_and_extension_module_like_ldd() -> None:
    binaries, modules = system_elves(), extension_modules()
    with ThreadPoolExecutor(max_workers=2) as pool:
        listings = dict(zip(binaries + modules, pool.map(ldd, binaries + modules)))
    handled = {path: listing for path, listing in listings.items() if listing is not None}
    mismatches: list[tuple[str, Listing, Listing]] = []
    for path, expected in handled.items():
        got = mine(path)
        same = (got.missing and got.missing[0] in expected.missing) if expected.missing else got == expected
        if not same:
            mismatches.append((path, expected, got))
    assert mismatches == []
    assert sum(1 for path in handled if path in binaries) >= 100
    assert all(handled.get(m) is not None for m in modules)  # ldd handles every extension module


def chroot_list(root: Path, path: str) -> Listing | None:
    """ld.so --list run inside root (it reads the root's own ld.so.cache)."""
    proc = subprocess.run(["chroot", str(root), X86_64.rtld, "--list", path],
                          capture_output=True, text=True, env=clean_env())
    return parse_ldd(proc.stdout) if proc.returncode == 0 else None


@pytest.mark.slow
@pytest.mark.root
def test_oracle_debootstrap_tree_like_ld_so_in_the_chroot() -> None:
    """Every ELF of a Debian minbase tree (the e2e test's cached debootstrap), resolved with
    root= against ld.so --list in a chroot of it."""
    from test_debian_e2e import debian_root
    root = debian_root()
    found: list[str] = []
    for directory in ("/usr/bin", "/usr/sbin", f"/usr/lib/{X86_64.triplet}"):
        for name in sorted(os.listdir(f"{root}{directory}")):
            host = f"{root}{directory}/{name}"
            if not os.path.islink(host) and os.path.isfile(host) and read_ident(host) is not None:
                found.append(f"{directory}/{name}")
    with ThreadPoolExecutor(max_workers=2) as pool:
        listings = dict(zip(found, pool.map(lambda p: chroot_list(root, p), found)))
    handled = {path: listing for path, listing in listings.items() if listing is not None}
    mismatches = [(path, expected, got) for path, expected in handled.items()
                  if (got := mine(path, root=root)) != expected
                  and not (expected.missing and got.missing and got.missing[0] in expected.missing)]
    assert mismatches == []
    assert len(handled) >= 200


def test_speed_of_fifty_extension_modules() -> None:
    modules = [Path(p) for p in extension_modules()]
    assert len(modules) >= 50
    elf._PARSED.clear()  # cold: nothing parsed by earlier tests
    started = time.perf_counter()
    closure = resolve(modules)
    elapsed = time.perf_counter() - started
    assert closure.interpreter == Path(X86_64.rtld)
    assert elapsed < 1.0, f"{len(modules)} modules took {elapsed:.2f} s"


# -- dynamic string tokens ----------------------------------------------------------------

def reference_expand(text: str, origin: str, arch_lib: str, platform: str) -> str:
    """A second, regex-based reading of ld.so's _dl_dst_substitute."""
    values = {"ORIGIN": origin, "LIB": arch_lib, "PLATFORM": platform}
    pattern = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")
    return pattern.sub(lambda m: values[m.group(1) or m.group(2)], text)


TOKENISH = st.lists(st.sampled_from(list("$/{}_.:aLIBORGNPLATFMx9-é") + [
    "$ORIGIN", "${ORIGIN}", "$LIB", "${LIB}", "$PLATFORM", "${PLATFORM}"]), max_size=30).map("".join)
ORIGINS = st.from_regex(r"\A/[a-z0-9_./-]{0,20}\Z")


@given(TOKENISH, ORIGINS)
def test_expand_dst_matches_the_reference(text: str, origin: str) -> None:
    assert expand_dst(text, origin, X86_64) == reference_expand(text, origin, X86_64.lib, X86_64.platform)


@given(TOKENISH)
def test_without_origin_an_origin_token_drops_the_element(text: str) -> None:
    expanded = expand_dst(text, None, X86_64)
    if reference_expand(text, "\0", "lib", "p").count("\0"):
        assert expanded is None
    else:
        assert expanded == reference_expand(text, "", X86_64.lib, X86_64.platform)


@given(st.lists(st.one_of(st.just(""), ORIGINS, st.just("$ORIGIN/x"), st.just("rel/dir"),
                          st.just("/a//")), max_size=6), ORIGINS)
def test_search_dirs_are_absolute_unique_and_without_trailing_slash(elements: list[str], origin: str) -> None:
    dirs = search_dirs(":".join(elements), origin, X86_64, cwd="/cwd")
    assert len(dirs) == len(set(dirs))
    for d in dirs:
        assert d.startswith("/") and (d == "/" or not d.endswith("/"))
    if elements and "" in elements:
        assert "/cwd" in dirs
    expected = {expand_dst(e, origin, X86_64).rstrip("/") or "/" for e in elements if e.startswith(("/", "$"))}
    assert expected <= set(dirs)


def test_dst_examples() -> None:
    assert expand_dst("$ORIGIN/../$LIB", "/opt/a/bin", X86_64) == "/opt/a/bin/../lib/x86_64-linux-gnu"
    assert expand_dst("${ORIGIN}x/${PLATFORM}", "/o", X86_64) == "/ox/x86_64"
    assert expand_dst("$ORIGINx:$FOO:$", "/o", X86_64) == "$ORIGINx:$FOO:$"
    assert expand_dst("${ORIGIN", "/o", X86_64) == "${ORIGIN"
    assert expand_dst("$ORIGIN", None, X86_64) is None
    assert search_dirs("/a/:$ORIGIN::/a", "/o", X86_64, "/cwd") == ["/a", "/o", "/cwd"]
