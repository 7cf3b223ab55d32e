"""`liveinit pack`: /init, the image layout, reproducibility, the archive
oracles (GNU cpio, bsdtar) and the packed runtime importing in a chroot."""
from __future__ import annotations

import ast
import gzip
import io
import lzma
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from liveinit.contract import Settings
from liveinit.kmodindex import ModuleIndex, modname
from liveinit.modfile import uncompressed_name
from packer import cli, initramfs, modstore
from packer.config import PackConfig
from packer.cpio import Entry, read_archive, segment_bytes
from packer.errors import CommandError
from packer.image import baked_settings
from packer.kernel import KernelTree
from packer.kmod import ModuleTree
from packer.progress import Reporter

PY = "/usr/bin/python3.11"


def _entries(img: Path) -> dict[str, Entry]:
    return {e.name: e for seg in read_archive(img.read_bytes()) for e in seg.entries}


def _extract(img: Path, root: Path) -> None:
    """Unpack every segment in order into `root` with bsdtar, as the kernel would."""
    for i, (_method, raw) in enumerate(segment_bytes(img.read_bytes())):
        f = root.parent / f"{root.name}.seg{i}.cpio"
        f.write_bytes(raw)
        subprocess.run(["bsdtar", "-xpf", str(f), "-C", str(root)], check=True)   # makes /dev/null


def _pack(tmp: Path, kernel: KernelTree, name: str = "initrd.img", **kw: object) -> initramfs.PackResult:
    kw.setdefault("moddir", kernel.moddir)
    kw.setdefault("microcode", False)
    return initramfs.build(PackConfig(output=tmp / name, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory, kernel: KernelTree) -> initramfs.PackResult:
    return _pack(tmp_path_factory.mktemp("pack"), kernel)


@pytest.fixture(scope="module")
def image(packed: initramfs.PackResult) -> dict[str, Entry]:
    return _entries(packed.output)


# -- /init ----------------------------------------------------------------------------------

def test_init_has_one_shebang_argument_and_the_settings() -> None:
    baked = {"cmdline": "quiet rootdelay=5", "identity": "liveinit-x", "kver": "6.1.0-1-amd64",
             "moddir": "/lib/modules/6.1.0-1-amd64", "index": "/lib/modules/6.1.0-1-amd64/liveinit.index"}
    # Only the baked fields reach /init; the boot-time ones are set by /init itself.
    settings = Settings(**baked, max_attempts=3)
    text = initramfs.render_init(PY, settings).decode()
    # Every baked field (those not given take their defaults), none of the boot-time ones.
    baked = {k: getattr(settings, k) for k in Settings.BAKED}
    assert not {"t0", "argv", "max_attempts"} & set(baked)
    first = text.splitlines()[0]
    assert first == f"#!{PY} -IS"           # the kernel passes "-IS" as ONE argument
    tree = ast.parse(text)
    assigned = {t.targets[0].id: t.value for t in tree.body
                if isinstance(t, ast.Assign) and isinstance(t.targets[0], ast.Name)}
    assert ast.literal_eval(assigned["SETTINGS"]) == baked
    assert baked_settings(text) == baked
    assert 'sys.path.insert(0, "/usr/lib/liveinit")' in text
    # The runtime's clock starts on /init's first statements, before any other
    # import, and reaches main() as t0.
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert ast.unparse(body[0]) == "import time" and ast.unparse(body[1]) == "T0 = time.monotonic()"
    assert "main(Settings(t0=T0, **SETTINGS))" in text


def test_init_without_the_runtime_reports_and_opens_a_shell(tmp_path: Path) -> None:
    # On the host /usr/lib/liveinit does not exist: the import fails the way
    # a broken image would, and /init must say so and exec a shell, not die.
    init = tmp_path / "init"
    init.write_bytes(initramfs.render_init(PY, Settings(kver="x")))
    init.chmod(0o755)
    proc = subprocess.run([str(init)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert "liveinit: FAILED: cannot import the runtime: ModuleNotFoundError" in proc.stdout
    assert "liveinit: emergency shell" in proc.stdout
    assert proc.returncode == 0                # the shell read EOF and exited


def test_init_shebang_fixes_the_hash_seed_and_isolates_python() -> None:
    assert initramfs.render_init(PY, Settings(), "/usr/bin/env").decode().splitlines()[0] == \
        f"#!/usr/bin/env -S -i PYTHONHASHSEED=0 {PY} -sSP"
    assert initramfs.env_program() == Path("/usr/bin/env")      # GNU env with -S on this host
    assert initramfs.env_program(Path("/bin/busybox")) is None  # busybox env has no -S


# What the runtime sees at its first line: run by the host kernel's shebang
# handling, inside a chroot of the real image, with a fake liveinit.boot.
_PROBE = """import os, sys
def main(settings):
    print(repr({"flags": [sys.flags.hash_randomization, sys.flags.no_user_site, sys.flags.safe_path,
                          sys.flags.inspect, sys.flags.verbose, sys.flags.optimize, sys.flags.no_site],
                "path": sys.path, "env": dict(os.environ), "hash": hash("liveinit"),
                "argv": sys.argv, "settings": {k: getattr(settings, k) for k in settings.BAKED}}))
"""


@pytest.mark.slow
def test_init_starts_without_entropy_and_ignores_python_variables(packed: initramfs.PackResult,
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _extract(packed.output, root)
    boot = root / "usr/lib/liveinit/liveinit"
    (boot / "boot.pyc").unlink()
    (boot / "boot.py").write_text(_PROBE)
    # What a kernel command line could smuggle in: all ignored, as with -I.
    env = {"HOME": "/", "TERM": "linux", "PYTHONPATH": "/evil", "PYTHONHOME": "/nonexistent",
           "PYTHONINSPECT": "1", "PYTHONVERBOSE": "1", "PYTHONOPTIMIZE": "2", "PYTHONHASHSEED": "random",
           "PYTHONUSERBASE": "/evil", "PYTHONSTARTUP": "/evil.py", "FOO": "bar"}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    runs = [subprocess.run([chroot, str(root), "/init", "single"], capture_output=True, text=True, env=env,
                           stdin=subprocess.DEVNULL, timeout=60) for _ in range(2)]
    for proc in runs:
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    seen = [ast.literal_eval(proc.stdout.strip().splitlines()[-1]) for proc in runs]
    first = seen[0]
    assert first["flags"] == [0, 1, True, 0, 0, 0, 1]   # fixed seed; -s -P -S; no PYTHON* honoured
    assert seen[1]["hash"] == first["hash"]              # hash randomization off: no urandom read
    assert first["path"][0] == "/usr/lib/liveinit" and "/evil" not in first["path"]
    assert not any(p == "/" or p.endswith("/init") for p in first["path"])   # no script dir
    # The real init inherits no PYTHONHASHSEED, and the kernel's HOME/TERM.
    assert first["env"] == {"HOME": "/", "TERM": "linux"}     # FOO=bar is dropped too (env -i)
    assert first["argv"] == ["/init", "single"]
    assert first["settings"]["kver"] == packed.kver


# -- layout ---------------------------------------------------------------------------------

def test_dev_nodes_and_base_directories(image: dict[str, Entry]) -> None:
    for name, (major, minor) in {"dev/console": (5, 1), "dev/null": (1, 3), "dev/urandom": (1, 9),
                                 "dev/kmsg": (1, 11)}.items():
        e = image[name]
        assert stat.S_ISCHR(e.mode) and (e.rdevmajor, e.rdevminor) == (major, minor), name
    for d in ("proc", "sys", "dev", "run", "sysroot", "tmp", "etc", "etc/modprobe.d"):
        assert stat.S_ISDIR(image[d].mode), d
    assert stat.S_IMODE(image["tmp"].mode) == 0o1777


def test_init_entry(image: dict[str, Entry], packed: initramfs.PackResult) -> None:
    e = image["init"]
    assert stat.S_ISREG(e.mode) and stat.S_IMODE(e.mode) == 0o755
    assert e.data.startswith(f"#!/usr/bin/env -S -i PYTHONHASHSEED=0 {PY} -sSP\n".encode())
    assert stat.S_ISREG(image["usr/bin/env"].mode)
    assert repr(packed.identity).encode() in e.data and repr(packed.kver).encode() in e.data


def test_python_is_sourceless_with_its_landmarks(image: dict[str, Entry]) -> None:
    assert stat.S_ISREG(image["usr/bin/python3.11"].mode)
    assert "usr/lib/python3.11/os.pyc" in image
    assert stat.S_ISDIR(image["usr/lib/python3.11/lib-dynload"].mode)
    assert "usr/lib/liveinit/liveinit/boot.pyc" in image
    assert not [n for n in image if n.endswith(".py")]
    for top in ("bin", "sbin", "lib", "lib64"):      # the host's merged /usr, mirrored
        assert image[top].target == os.readlink(Path("/") / top)


def test_skeleton_and_ldso(image: dict[str, Entry]) -> None:
    assert image["etc/passwd"].data.startswith(b"root:x:0:0:")
    assert "README.md" not in image and "etc/modprobe.d/.keep" not in image
    assert "usr/bin/busybox" not in image                       # off by default (size budget)
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in image
    assert image["usr/lib64/ld-linux-x86-64.so.2"].target is not None


@pytest.mark.slow
def test_busybox_applets_never_shadow_init_or_env(tmp_path: Path, kernel: KernelTree) -> None:
    img = _entries(_pack(tmp_path, kernel, busybox=True).output)
    assert img["usr/bin/sh"].target == "/usr/bin/busybox"
    assert stat.S_ISREG(img["usr/bin/busybox"].mode)
    assert "init" in img and img["init"].target is None         # busybox never shadows /init
    assert img["usr/bin/env"].target is None                    # GNU env (-S) for the shebang


def test_modules_and_their_index_agree(image: dict[str, Entry], packed: initramfs.PackResult) -> None:
    base = f"usr/lib/modules/{packed.kver}/"
    kos = {Path(uncompressed_name(n)).name.removesuffix(".ko").replace("-", "_") for n in image
           if n.startswith(base) and n.endswith((".ko", ".ko.xz"))}
    assert kos == set(packed.modules)
    for needed in ("virtio_blk", "virtio_pci", "ext4", "squashfs", "overlay", "isofs", "loop", "sr_mod",
                   "ahci", "nvme", "usb_storage", "xhci_pci"):
        assert needed in kos, needed
    index = ModuleIndex.loads(image[base + "liveinit.index"].data)
    assert set(index.names()) == kos
    for f in ("modules.dep", "modules.alias", "modules.softdep", "modules.builtin", "modules.pcimap"):
        assert base + f in image
    # Every dependency listed in modules.dep is itself in the image.
    for line in image[base + "modules.dep"].data.decode().splitlines():
        for dep in line.split(":", 1)[1].split():
            assert base + dep in image, dep


def test_rarely_loaded_modules_are_stored_xz_in_the_uncompressed_segment(
        packed: initramfs.PackResult, image: dict[str, Entry], kernel: KernelTree) -> None:
    """The expected modules are plain .ko in a compressed segment; every other
    one is a .ko.xz in the stored (uncompressed) first segment, which gives back
    the tree's module byte for byte; the index names each file as stored."""
    base = f"usr/lib/modules/{packed.kver}/"
    segs = read_archive(packed.output.read_bytes())
    stored = segs[0]
    assert stored.compression == "none" and [s.compression for s in segs[1:]] == ["zstd"] * 3
    files = [e for e in stored.entries if e.kind == "file"]
    assert files and all(e.name.startswith(base) and e.name.endswith(".ko.xz") for e in files)
    plain = {e.name for seg in segs[1:] for e in seg.entries if e.name.endswith(".ko")}
    assert not [n for seg in segs[1:] for e in seg.entries if (n := e.name).endswith(".ko.xz")]
    tree = ModuleTree(kernel.moddir)
    expected = tree.closure(modstore.EXPECTED) & set(packed.modules)
    assert {base + tree.modules[n].path for n in expected} == plain     # the likely ones stay plain
    index = ModuleIndex.loads(image[base + "liveinit.index"].data)
    dep = image[base + "modules.dep"].data.decode()
    for e in files:
        rel = e.name.removeprefix(base)
        name = modname(rel)
        assert lzma.decompress(e.data) == (kernel.moddir / uncompressed_name(rel)).read_bytes(), rel
        assert index.path(name) == rel                                   # the runtime finds the .ko.xz
        assert f"\n{rel}:" in "\n" + dep                                 # and so would kmod
    assert "kernel/fs/ext4/ext4.ko:" in dep and "ext4.ko.xz" not in dep


def test_gnu_cpio_and_bsdtar_list_the_same_names(packed: initramfs.PackResult, tmp_path: Path,
                                                 image: dict[str, Entry]) -> None:
    gnu_names: set[str] = set()
    bsd_names: set[str] = set()
    for i, (_method, data) in enumerate(segment_bytes(packed.output.read_bytes())):
        raw = tmp_path / f"raw{i}.cpio"
        raw.write_bytes(data)
        gnu = subprocess.run(["cpio", "-t", "--quiet", "-F", str(raw)], capture_output=True, text=True,
                             check=True)
        bsd = subprocess.run(["bsdtar", "-tf", str(raw)], capture_output=True, text=True, check=True)
        gnu_names |= set(gnu.stdout.split("\n")) - {""}
        bsd_names |= {n.rstrip("/") for n in bsd.stdout.split("\n")} - {""}
    assert gnu_names == set(image)
    assert bsd_names == set(image)


# Modules compressed as other distributions ship them (Ubuntu/Arch: .ko.zst).
COMPRESSED_PICK = ("ext4", "isofs", "loop", "virtio_blk")
MODULE_COMPRESSORS = {
    ".zst": lambda raw: subprocess.run(["zstd", "-q", "-19", "-c"], input=raw, capture_output=True,
                                       check=True).stdout,
    ".xz": lambda raw: lzma.compress(raw, check=lzma.CHECK_CRC32),
    ".gz": lambda raw: gzip.compress(raw, mtime=0),
}


@pytest.mark.slow
def test_compressed_modules_are_packed_plain(tmp_path: Path, kernel: KernelTree) -> None:
    full = ModuleTree(kernel.moddir)
    names = sorted(full.closure(COMPRESSED_PICK))
    moddir = tmp_path / "lib" / "modules" / kernel.version
    originals: dict[str, tuple[str, bytes]] = {}
    for i, name in enumerate(names):
        rel = full.modules[name].path
        raw = (kernel.moddir / rel).read_bytes()
        suffix = list(MODULE_COMPRESSORS)[i % len(MODULE_COMPRESSORS)]
        dst = moddir / f"{rel}{suffix}"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(MODULE_COMPRESSORS[suffix](raw))
        originals[name] = (rel, raw)
    # The tree's own depmod-like index names the compressed files, as on Ubuntu.
    ModuleTree(moddir, cache=tmp_path / "kmod").write_index(moddir, names)
    assert {".zst", ".xz", ".gz"} <= {p.suffix for p in moddir.rglob("*.ko.*")}
    assert ".ko.zst" in (moddir / "modules.dep").read_text()

    # Named with --modules, they are expected at boot: stored plain, whatever the tree's compression.
    res = _pack(tmp_path, kernel, moddir=moddir, groups=(), modules=tuple(names), firmware=False,
                compress="none")
    img = _entries(res.output)
    base = f"usr/lib/modules/{kernel.version}/"
    assert sorted(res.modules) == names
    assert not [n for n in img if n.endswith((".ko.zst", ".ko.xz", ".ko.gz"))]
    for name, (rel, raw) in originals.items():
        assert img[base + rel].data == raw, name              # the decompressed original, byte for byte
    index_file = tmp_path / "liveinit.index"
    index_file.write_bytes(img[base + "liveinit.index"].data)
    index = ModuleIndex.load(str(index_file))
    assert sorted(index.names()) == names
    for name, (rel, _raw) in originals.items():
        assert index.path(name) == rel, name
    for f in ("modules.dep", "modules.order"):
        listed = img[base + f].data.decode().replace(":", " ").split()
        assert sorted(set(listed)) == sorted(rel for rel, _raw in originals.values()), f
    assert ".ko.zst" not in img[base + "modules.alias"].data.decode()


# -- reproducibility -----------------------------------------------------------------------

def test_two_packs_are_byte_identical(tmp_path: Path, kernel: KernelTree) -> None:
    # Back to back: the runtime sources are inputs, and they are being edited.
    one = _pack(tmp_path, kernel, "one.img")
    two = _pack(tmp_path, kernel, "two.img")
    assert one.output.read_bytes() == two.output.read_bytes()
    assert one.identity == two.identity


def test_mtimes_are_clamped(tmp_path: Path, kernel: KernelTree) -> None:
    res = _pack(tmp_path, kernel, compress="none", source_date_epoch=1234)
    mtimes = {e.mtime for e in _entries(res.output).values()}
    assert max(mtimes) <= 1234


# -- the packed runtime in a chroot -----------------------------------------------------------

@pytest.mark.slow
def test_every_runtime_module_imports_inside_the_image(packed: initramfs.PackResult, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    _extract(packed.output, root)
    mods = sorted(p.stem for p in (root / "usr/lib/liveinit/liveinit").glob("*.pyc"))
    code = ("import sys; sys.path.insert(0, '/usr/lib/liveinit')\n"
            + "".join(f"import liveinit.{m}\n" for m in mods if m != "__init__")
            + "import code, lzma, traceback, _signal\nprint(sys.prefix, len(sys.modules))")
    proc = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(root), PY, "-IS", "-c", code],
                          capture_output=True, text=True, env={}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("/usr ")
    assert not list(root.rglob("__pycache__"))


# -- options ----------------------------------------------------------------------------------

def test_extra_files_binaries_and_modules(tmp_path: Path, kernel: KernelTree) -> None:
    conf = tmp_path / "my.conf"
    conf.write_text("options loop max_loop=4\n")
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:admin:/root:/bin/sh\n")
    res = _pack(tmp_path, kernel, compress="none", groups=(), busybox=False,
                files=(f"{conf}:/etc/modprobe.d/my.conf", "/etc/hostname", f"{passwd}:etc/passwd"),
                binaries=("/sbin/blkid",), modules=("nvme", "loop", "kernel/fs/btrfs/*"))
    img = _entries(res.output)
    assert img["etc/modprobe.d/my.conf"].data == conf.read_bytes()
    assert "etc/hostname" in img
    assert img["etc/passwd"].data == passwd.read_bytes()       # --files wins over the skeleton
    assert "usr/sbin/blkid" in img and "usr/lib/x86_64-linux-gnu/libblkid.so.1" in img
    assert {"nvme", "nvme_core", "btrfs"} <= set(res.modules)
    assert "ext4" not in res.modules and "usr/bin/busybox" not in img
    index = ModuleIndex.loads(img[f"usr/lib/modules/{res.kver}/liveinit.index"].data)
    assert "max_loop=4" in index.options("loop")


def test_clear_errors(tmp_path: Path, kernel: KernelTree) -> None:
    with pytest.raises(CommandError, match="skeleton"):
        _pack(tmp_path, kernel, skeleton=tmp_path / "none")
    with pytest.raises(CommandError, match="no_such_module"):
        _pack(tmp_path, kernel, modules=("no_such_module",))
    with pytest.raises(CommandError, match="does not exist"):
        _pack(tmp_path, kernel, python=tmp_path / "python9")
    with pytest.raises(CommandError, match="--moddir"):
        _pack(tmp_path, kernel, moddir=tmp_path / "nomods")


def test_command_line_prints_the_summary(tmp_path: Path, kernel: KernelTree,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.img"
    rc = cli.main(["pack", "-o", str(out), "--moddir", str(kernel.moddir), "--compress", "gzip",
                   "--compress-level", "1", "--no-microcode", "--groups", "live"])
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert f"{out}:" in text and "modules" in text and "uncompressed" in text
    for phase in ("modules", "python", "elf", "archive", "compress"):
        assert f"{phase} " in text.split("\n  time: ")[1]
    for seg in ("kernel", "python", "runtime"):                 # per-segment sizes and codecs
        assert f"  segment {seg}: " in text and "gzip -1" in text
    rc = cli.main(["pack", "-q", "-o", str(out), "--moddir", str(kernel.moddir), "--compress", "none",
                   "--no-microcode", "--groups", "live"])
    assert rc == 0 and capsys.readouterr().out == ""


@pytest.mark.slow
def test_host_only_pack_is_small(tmp_path: Path, kernel: KernelTree, packed: initramfs.PackResult) -> None:
    res = _pack(tmp_path, kernel, compress="none", host_only=True)
    assert {"virtio_blk", "virtio_pci", "ext4", "squashfs", "overlay", "loop"} <= set(res.modules)
    assert len(res.modules) < len(packed.modules) / 3
    assert res.uncompressed < packed.uncompressed


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal() -> None:
    tty = _Tty()
    rep = Reporter(out=tty)
    with rep.phase("modules"):
        assert list(rep.progress(range(3), 3, "modules")) == [0, 1, 2]
    assert "\rmodules..." in tty.getvalue() and "modules 3/3" in tty.getvalue()
    assert rep.times["modules"] >= 0
    pipe = io.StringIO()
    rep = Reporter(out=pipe)
    with rep.phase("elf"):
        list(rep.progress(range(3), 3, "elf"))
    assert pipe.getvalue() == "" and "elf" in rep.times
    quiet = _Tty()
    rep = Reporter(quiet=True, out=quiet)
    with rep.phase("elf"):
        rep.info("hello")
    assert quiet.getvalue() == ""


def test_microcode_goes_first_uncompressed(tmp_path: Path, kernel: KernelTree,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import packer.compress
    blob = b"\x01\x00\x00\x00fake-intel-ucode" * 8
    monkeypatch.setattr(packer.compress, "microcode_entries",
                        lambda host_root=Path("/"): [("kernel/x86/microcode/GenuineIntel.bin", blob)])
    res = _pack(tmp_path, kernel, microcode=True, groups=("live",), compress="gzip", compress_level=1)
    segs = read_archive(res.output.read_bytes())
    assert [s.compression for s in segs] == ["none", "none", "gzip", "gzip", "gzip"]   # microcode, modules
    early = {e.name: e for e in segs[0].entries}
    assert early["kernel/x86/microcode/GenuineIntel.bin"].data == blob
    assert "init" in {e.name for e in segs[-1].entries}
    off = _pack(tmp_path, kernel, "off.img", microcode=False, groups=("live",), compress="gzip",
                compress_level=1)
    # The stored modules segment (the live group's rarely loaded erofs, udf) then the compressed ones.
    assert [s.compression for s in read_archive(off.output.read_bytes())] == ["none"] + ["gzip"] * 3


@pytest.mark.slow
def test_third_party_packages_work_inside_the_image(tmp_path: Path, kernel: KernelTree) -> None:
    res = _pack(tmp_path, kernel, compress="none", groups=("live",), packages=("psutil", "pyudev"))
    img = _entries(res.output)
    assert "usr/lib/liveinit/psutil/__init__.pyc" in img
    assert "usr/lib/liveinit/psutil/_psutil_linux.abi3.so" in img
    assert "usr/lib/liveinit/pyudev/core.pyc" in img
    assert img["usr/lib/x86_64-linux-gnu/libudev.so.1"].target is not None
    ldconfig = img["usr/sbin/ldconfig"]
    assert stat.S_IMODE(ldconfig.mode) == 0o755 and b"libudev.so.1 (libc6,x86-64)" in ldconfig.data
    root = tmp_path / "root"
    root.mkdir()
    _extract(res.output, root)
    code = ("import sys; sys.path.insert(0, '/usr/lib/liveinit')\n"
            "import ctypes.util, psutil, pyudev\n"
            "pyudev.Context()\n"
            "print(ctypes.util.find_library('udev'), psutil.__name__)")
    proc = subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", str(root), PY, "-IS", "-c", code],
                          capture_output=True, text=True, env={}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["libudev.so.1", "psutil"]
