"""Stage `stack` on a fake root with FakeSyscalls: every union method and
the fallback chain (exact mount calls and directories), toram, persistence
(partition and image file), device roots, and the failures."""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from liveinit import rootfind, stack
from liveinit.cmdline import parse
from liveinit.discovery import Discovery, NullLoader
from liveinit.emergency import BootFailure
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.rootfind import Found
from liveinit.syscalls import MS_BIND, MS_NOATIME, MS_NODEV, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT
from qemu.fakes import FakeSyscalls, FakeUevents

IMAGE = "/run/liveinit/medium/live/filesystem.squashfs"
RO, RW = "/run/liveinit/ro", "/run/liveinit/rw"
TMPFS = MS_NOSUID | MS_NODEV


class FakeLoader:
    """ModuleLoader's interface; a loaded module makes its fs known to FakeSyscalls."""

    def __init__(self, sys: FakeSyscalls) -> None:
        self.sys = sys
        self.asked: list[str] = []
        self.loaded: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def load(self, name: str, reason: str) -> bool:
        self.asked.append(name)
        self.loaded[name] = reason
        self.sys.modules.append(name)
        return True

    def load_alias(self, alias: str, reason: str) -> list[str]:
        self.asked.append(alias)
        name = alias[3:] if alias.startswith("fs-") else alias
        self.loaded[name] = reason
        self.sys.modules.append(name)
        return [name]


class Env:
    def __init__(self, tmp: Path, **kw) -> None:
        self.root = str(tmp)
        self.sys = FakeSyscalls(root=self.root, **kw)
        self.m = Machine(self.root, self.sys)
        self.out = io.StringIO()
        self.log = Log(out=self.out)
        self.loader = FakeLoader(self.sys)
        img = tmp / IMAGE.lstrip("/")
        img.parent.mkdir(parents=True)
        img.write_bytes(b"hsqs" + bytes(4092))
        (tmp / "dev").mkdir()
        (tmp / "proc").mkdir()

    def p(self, path: str) -> str:
        return self.root + path

    def found(self) -> Found:
        return Found("/dev/sr0", "iso9660", {"LABEL": "LIVE"}, "test", "/run/liveinit/medium", IMAGE)

    def stack(self, text: str = "", found: Found | None = None):
        discovery = Discovery(self.m, self.loader, FakeUevents(), self.log)
        return stack.stack(self.m, parse(text), found or self.found(), discovery, self.log)

    def mounts(self) -> list[tuple]:
        return self.sys.of("mount")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    return Env(tmp_path)


def overlay_data(e: Env, base: str = RW) -> str:
    return (f"lowerdir={e.p(RO)},upperdir={e.p(base)}/upper,workdir={e.p(base)}/work")


def test_overlay_default(env: Env) -> None:
    st = env.stack()
    assert env.sys.of("loop_attach") == [("loop_attach", IMAGE, True)]
    assert env.mounts() == [
        ("mount", "/dev/loop0", RO, "squashfs", MS_RDONLY, None),
        ("mount", "tmpfs", RW, "tmpfs", TMPFS, "size=50%,mode=0755"),
        ("mount", "overlay", "/sysroot", "overlay", 0, overlay_data(env)),
    ]
    assert os.path.isdir(env.p(RW + "/upper")) and os.path.isdir(env.p(RW + "/work"))
    assert (st.union, st.image_fstype, st.loop, st.writable, st.tried) == (
        "overlay", "squashfs", env.p("/dev/loop0"), "tmpfs", ())
    assert env.loader.asked == ["loop", "overlay"]


def test_the_mounts_of_the_stage_count_in_the_boot_costs(env: Env) -> None:
    # stack() sees the syscalls through its undo log; their time still lands in the machine's costs.
    env.stack()
    calls = len(env.mounts()) + len(env.sys.of("loop_attach"))
    assert calls == 4 and env.m.costs.totals()["mounts"][0] == calls


def test_overlay_size_from_cmdline(env: Env) -> None:
    env.stack("liveinit.overlay_size=2g")
    assert env.mounts()[1][5] == "size=2g,mode=0755"


def test_fs_module_loaded_on_enodev_then_retried(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, filesystems={"tmpfs"})
    e.stack()
    assert e.loader.asked == ["loop", "fs-squashfs", "overlay"]
    assert [c[3] for c in e.mounts()] == ["squashfs", "squashfs", "tmpfs", "overlay"]
    assert e.sys.mounts[RO].fstype == "squashfs"


def aufs_branches(data: str) -> list[tuple[str, str]]:
    """The branches of an aufs mount's data, read by aufs(5)'s grammar (not by
    liveinit's): "br:BRANCH[:BRANCH ...]" or "dirs=BRANCH[:BRANCH ...]", a BRANCH
    "dir_path[=permission[+attribute]]", permission rw/ro/rr, the first branch on top."""
    opts = [o for o in data.split(",") if o.startswith(("br:", "br=", "dirs="))]
    assert len(opts) == 1, data
    body = opts[0].split(":", 1)[1] if opts[0].startswith("br:") else opts[0].split("=", 1)[1]
    out = []
    for branch in body.split(":"):
        path, _, perm = branch.rpartition("=")
        assert path.startswith("/") and perm.split("+")[0] in ("rw", "ro", "rr"), branch
        out.append((path, perm))
    return out


def unionfs_branches(data: str) -> list[tuple[str, str]]:
    """Unionfs's Documentation/filesystems/unionfs/usage.txt: "dirs=branch[=ro|=rw][:...]",
    the leftmost branch has the highest priority; a branch without a mode is rw."""
    opts = [o for o in data.split(",") if o.startswith("dirs=")]
    assert len(opts) == 1, data
    out = []
    for branch in opts[0][5:].split(":"):
        path, eq, mode = branch.rpartition("=")
        if not eq:
            path, mode = branch, "rw"
        assert path.startswith("/") and mode in ("ro", "rw"), branch
        out.append((path, mode))
    return out


def test_overlay_enodev_falls_back_to_aufs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:overlay": errno.ENODEV})
    st = e.stack()
    assert e.mounts()[2] == ("mount", "overlay", "/sysroot", "overlay", 0, overlay_data(e))
    _, source, target, fstype, flags, data = e.mounts()[3]
    assert (target, fstype, flags) == ("/sysroot", "aufs", 0)
    assert aufs_branches(data) == [(e.p(RW) + "/upper", "rw"), (e.p(RO), "ro")]
    assert st.union == "aufs" and st.tried == ("overlay: not supported by this kernel",)
    assert "fs-aufs" in e.loader.asked
    assert "union: using aufs" in e.out.getvalue()


def test_chain_down_to_unionfs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:overlay": errno.ENODEV, "mount:aufs": errno.ENODEV})
    st = e.stack()
    _, source, target, fstype, flags, data = e.mounts()[-1]
    assert (target, fstype, flags) == ("/sysroot", "unionfs", 0)
    assert unionfs_branches(data) == [(e.p(RW) + "/upper", "rw"), (e.p(RO), "ro")]
    assert st.union == "unionfs"


def lower_tree(e: Env) -> None:
    """What the image would show at /run/liveinit/ro, and the bind's mount points."""
    ro = Path(e.p(RO))
    (ro / "etc").mkdir(parents=True)
    (ro / "etc" / "hostname").write_text("live\n")
    (ro / "etc" / "mtab").symlink_to("/proc/self/mounts")
    (ro / "var" / "log").mkdir(parents=True)
    os.mkfifo(ro / "var" / "initctl")
    (ro / "tmp").mkdir()
    (ro / "tmp").chmod(0o1777)
    (ro / "root").mkdir(mode=0o700)
    (ro / "usr").mkdir()
    for d in ("etc", "var", "tmp", "root", "usr"):   # the read-only bind shows them
        Path(e.p("/sysroot/" + d)).mkdir(parents=True)


def test_bind_wraith_when_no_union_filesystem(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:overlay": errno.ENODEV, "mount:aufs": errno.ENODEV,
                            "mount:unionfs": errno.ENODEV})
    lower_tree(e)
    st = e.stack()
    assert st.union == "bind" and len(st.tried) == 3
    binds = e.mounts()[5:]
    assert binds == [
        ("mount", RO, "/sysroot", None, MS_BIND | MS_REC, None),
        ("mount", "none", "/sysroot", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
        ("mount", RW + "/bind/etc", "/sysroot/etc", None, MS_BIND, None),
        ("mount", RW + "/bind/var", "/sysroot/var", None, MS_BIND, None),
        ("mount", RW + "/bind/tmp", "/sysroot/tmp", None, MS_BIND, None),
        ("mount", RW + "/bind/root", "/sysroot/root", None, MS_BIND, None),
    ]   # no /home in the image: nothing bound; /usr stays read-only
    copy = Path(e.p(RW + "/bind"))
    assert (copy / "etc" / "hostname").read_text() == "live\n"
    assert os.readlink(copy / "etc" / "mtab") == "/proc/self/mounts"
    assert (copy / "var" / "log").is_dir()
    import stat
    assert stat.S_ISFIFO(os.lstat(copy / "var" / "initctl").st_mode)
    assert (copy / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (copy / "root").stat().st_mode & 0o777 == 0o700


def test_bind_keeps_existing_persistent_copies(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path)
    lower_tree(e)
    kept = Path(e.p(RW + "/bind/etc"))
    kept.mkdir(parents=True)
    (kept / "hostname").write_text("changed\n")
    e.stack("union=bind")
    assert (kept / "hostname").read_text() == "changed\n"


@pytest.mark.parametrize("method", ["aufs", "unionfs", "bind"])
def test_forced_union_is_the_only_one_tried(tmp_path: Path, monkeypatch, method: str) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:" + ("/sysroot" if method == "bind" else method): errno.ENODEV})
    with pytest.raises(BootFailure) as exc:
        e.stack("union=" + method)
    assert exc.value.message.startswith("cannot stack a writable layer over the image: "
                                        f"{method}: not supported by this kernel")
    assert "overlay" not in [c[3] for c in e.mounts()]
    assert exc.value.hint.startswith(f"union={method} allows only that method")


def test_no_union_at_all_fails_with_every_reason(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:/sysroot": errno.ENODEV})
    with pytest.raises(BootFailure) as exc:
        e.stack()
    msg = exc.value.message
    for method in ("overlay", "aufs", "unionfs", "bind"):
        assert f"{method}: not supported by this kernel" in msg
    assert "union=none" in exc.value.hint


def test_a_failed_attempt_leaves_nothing_mounted(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:/sysroot": errno.ENODEV})
    with pytest.raises(BootFailure):
        e.stack()
    assert e.sys.mounts == {}
    assert e.sys.calls[-3:] == [("umount2", RW, 2), ("umount2", RO, 2),
                                ("loop_release", "/dev/loop0")]
    e.sys.fail.clear()
    assert e.stack().union == "overlay"   # the retry starts clean


def test_union_none_mounts_the_image_read_only(env: Env) -> None:
    st = env.stack("union=none")
    assert env.mounts()[1:] == [
        ("mount", RO, "/sysroot", None, MS_BIND | MS_REC, None),
        ("mount", "none", "/sysroot", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None),
    ]
    assert (st.union, st.writable) == ("none", "none")


def test_erofs_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "erofs"})
    e = Env(tmp_path)
    assert e.stack().image_fstype == "erofs"
    assert e.mounts()[0][3] == "erofs"


# -- toram ---------------------------------------------------------------------
def meminfo(e: Env, avail_kib: int) -> None:
    Path(e.p("/proc/meminfo")).write_text(
        f"MemTotal:        4000000 kB\nMemFree:         {avail_kib} kB\n"
        f"MemAvailable:    {avail_kib} kB\n")


def test_toram_copies_and_releases_the_medium(env: Env) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    Path(env.p(IMAGE)).write_bytes(data)
    meminfo(env, 1024 * 1024)
    env.sys.mounts["/run/liveinit/medium"] = None   # rootfind mounted the medium
    st = env.stack("toram")
    assert st.toram
    ram = "/run/liveinit/ram/filesystem.squashfs"
    assert Path(env.p(ram)).read_bytes() == data
    assert env.mounts()[0] == ("mount", "tmpfs", "/run/liveinit/ram", "tmpfs", TMPFS,
                               f"size={len(data) + (1 << 20)},mode=0755")
    assert ("umount2", "/run/liveinit/medium", 0) in env.sys.calls
    assert env.sys.of("loop_attach") == [("loop_attach", ram, True)]
    out = env.out.getvalue()
    assert "toram: 100%" in out and "the medium can be removed" in out
    assert sum(1 for line in out.splitlines() if line.startswith("liveinit: toram: ") and "%" in line) >= 3


def test_toram_with_findiso_also_releases_the_filesystem_holding_the_iso(env: Env) -> None:
    Path(env.p(IMAGE)).write_bytes(os.urandom(4096))
    meminfo(env, 1024 * 1024)
    env.sys.mounts["/run/liveinit/medium"] = None
    env.sys.mounts["/run/liveinit/iso"] = None       # rootfind mounted the ISO's filesystem
    with open(env.p("/proc/mounts"), "a") as f:
        f.write("/dev/sda1 /run/liveinit/iso ext4 rw 0 0\n/dev/loop1 /run/liveinit/medium iso9660 ro 0 0\n")
    env.stack("toram findiso=/live.iso")
    calls = env.sys.calls
    assert (calls.index(("umount2", "/run/liveinit/medium", 0))
            < calls.index(("umount2", "/run/liveinit/iso", 2)))
    assert "the device holding the ISO can be removed" in env.out.getvalue()


def test_toram_without_findiso_leaves_no_iso_unmount(env: Env) -> None:
    Path(env.p(IMAGE)).write_bytes(os.urandom(4096))
    meminfo(env, 1024 * 1024)
    env.sys.mounts["/run/liveinit/medium"] = None
    env.stack("toram")
    assert not any(c[0] == "umount2" and c[1] == "/run/liveinit/iso" for c in env.sys.calls)


def test_toram_refuses_when_memory_is_short(env: Env) -> None:
    Path(env.p(IMAGE)).write_bytes(bytes(10 << 20))
    meminfo(env, 32 * 1024)   # 32 MiB
    with pytest.raises(BootFailure) as exc:
        env.stack("toram")
    assert "needs 74 MiB" in exc.value.message and "only 32 MiB" in exc.value.message
    assert "without copying to RAM" in exc.value.hint
    assert env.mounts() == []


# -- persistence -------------------------------------------------------------------
def test_persistence_partition_by_label(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "ext4"} if path.endswith("sdb1")
                        else {"TYPE": "squashfs"})
    monkeypatch.setattr(rootfind, "find_device",
                        lambda m, spec, *a, **k: "/dev/sdb1" if spec == "LABEL=persistence" else None)
    e = Env(tmp_path)
    st = e.stack("persistence")
    base = RW + "/liveinit-rw"
    assert e.mounts()[1:] == [
        ("mount", "/dev/sdb1", RW, "ext4", 0, None),
        ("mount", "overlay", "/sysroot", "overlay", 0, overlay_data(e, base)),
    ]
    assert os.path.isdir(e.p(base + "/upper"))
    assert st.writable == "persistence LABEL=persistence"


def test_persistence_image_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "ext4"} if not path.endswith(".squashfs")
                        else {"TYPE": "squashfs"})
    monkeypatch.setattr(rootfind, "find_device", lambda m, spec, *a, **k: "/dev/sdc1")
    e = Env(tmp_path)
    img = Path(e.p("/run/liveinit/persist/live-rw.img"))
    img.parent.mkdir(parents=True)
    img.write_bytes(bytes(4096))
    e.stack("liveinit.persistence=LABEL=store:/live-rw.img")
    assert e.sys.of("loop_attach") == [("loop_attach", IMAGE, True),
                                       ("loop_attach", "/run/liveinit/persist/live-rw.img", False)]
    assert e.mounts()[1:] == [
        ("mount", "/dev/sdc1", "/run/liveinit/persist", "ext4", 0, None),
        ("mount", "/dev/loop1", RW, "ext4", 0, None),
        ("mount", "overlay", "/sysroot", "overlay", 0, overlay_data(e, RW + "/liveinit-rw")),
    ]


def test_missing_persistence_falls_back_to_tmpfs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    monkeypatch.setattr(rootfind, "find_device", lambda m, spec, *a, **k: None)
    e = Env(tmp_path)
    st = e.stack("persistence persistence-label=gone")
    assert st.writable == "tmpfs"
    assert "persistence LABEL=gone: no device matches LABEL=gone" in e.out.getvalue()


def test_persistence_device_is_found_by_the_root_matcher(tmp_path: Path, monkeypatch) -> None:
    # One matcher for root= and persistence: UUIDs case-insensitive, labels exact,
    # and a device that shows up late is waited for.
    from liveinit import blockdev
    devs = [blockdev.BlockDevice("sda1", 8, 1, 1 << 30, False, False, True, "sda", 1)]
    late = blockdev.BlockDevice("sdb1", 8, 17, 1 << 30, True, False, True, "sdb", 1)
    idents = {"sda1": {"TYPE": "ext4", "LABEL": "data"},
              "sdb1": {"TYPE": "ext4", "LABEL": "persistence", "UUID": "AB-CD"}}
    scans = []

    def scan(m):
        scans.append(1)
        return devs + ([late] if len(scans) > 2 else [])

    monkeypatch.setattr(blockdev, "scan", scan)
    monkeypatch.setattr(blockdev, "identify", lambda m, d: idents[d.name])
    monkeypatch.setattr(blockdev, "node", lambda m, d: "/dev/" + d.name)
    monkeypatch.setattr(rootfind.time, "sleep", lambda s: None)
    m = Machine(str(tmp_path), FakeSyscalls(root=str(tmp_path)))
    log = Log(out=io.StringIO())
    discovery = Discovery(m, NullLoader(), FakeUevents(), log)
    assert rootfind.find_device(m, "LABEL=persistence", discovery, log) == "/dev/sdb1"
    assert len(scans) == 3   # appeared on the third scan
    assert rootfind.find_device(m, "UUID=ab-cd", discovery, log) == "/dev/sdb1"
    assert rootfind.find_device(m, "LABEL=Persistence", discovery, log, timeout=0) is None
    assert rootfind.find_device(m, "not a spec", discovery, log, timeout=0) is None


# -- device roots ----------------------------------------------------------------------
def device_root() -> Found:
    return Found("/dev/vda1", "ext4", {"TYPE": "ext4"}, "root=/dev/vda1", None, None)


def test_device_root_as_the_cmdline_asks(env: Env) -> None:
    st = env.stack("root=/dev/vda1 rw rootflags=noatime,data=ordered", device_root())
    assert env.mounts() == [("mount", "/dev/vda1", "/sysroot", "ext4", MS_NOATIME, "data=ordered")]
    assert (st.union, st.image_fstype) == ("device", "ext4")


def test_device_root_read_only_with_rootfstype(env: Env) -> None:
    env.stack("root=/dev/vda1 rootfstype=xfs", device_root())
    assert env.mounts() == [("mount", "/dev/vda1", "/sysroot", "xfs", MS_RDONLY, None)]


def test_device_root_under_overlay(env: Env) -> None:
    st = env.stack("root=/dev/vda1 rw liveinit.union=overlay", device_root())
    assert env.mounts() == [
        ("mount", "/dev/vda1", RO, "ext4", MS_RDONLY, None),
        ("mount", "tmpfs", RW, "tmpfs", TMPFS, "size=50%,mode=0755"),
        ("mount", "overlay", "/sysroot", "overlay", 0, overlay_data(env)),
    ]
    assert st.union == "overlay"


def test_device_root_mount_error(tmp_path: Path, monkeypatch) -> None:
    e = Env(tmp_path, fail={"mount:/sysroot": errno.EINVAL})
    with pytest.raises(BootFailure) as exc:
        e.stack("root=/dev/vda1 rootflags=bogus", device_root())
    assert exc.value.message.startswith("cannot mount the root /dev/vda1 (ext4) at /sysroot")
    assert "rootflags=" in exc.value.hint and "bogus" in exc.value.hint


def test_device_root_without_a_type(env: Env) -> None:
    with pytest.raises(BootFailure) as exc:
        env.stack("root=/dev/vda1", Found("/dev/vda1", "", {}, "root=/dev/vda1", None, None))
    assert "rootfstype=" in exc.value.hint


# -- live failures ------------------------------------------------------------------------
def test_corrupt_image_real_probe(tmp_path: Path) -> None:
    e = Env(tmp_path)   # the real fsprobe
    Path(e.p(IMAGE)).write_bytes(os.urandom(64 * 1024))
    with pytest.raises(BootFailure) as exc:
        e.stack()
    assert "is not a squashfs or erofs image" in exc.value.message
    assert "corrupt" in exc.value.hint


def test_real_squashfs_is_recognised(tmp_path: Path) -> None:
    import subprocess
    e = Env(tmp_path)
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello").write_text("hi")
    os.unlink(e.p(IMAGE))
    subprocess.run(["mksquashfs", str(src), e.p(IMAGE), "-noappend", "-quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    assert e.stack().image_fstype == "squashfs"


def test_missing_image(env: Env) -> None:
    os.unlink(env.p(IMAGE))
    with pytest.raises(BootFailure) as exc:
        env.stack()
    assert exc.value.message == f"the live image {IMAGE} is not on /dev/sr0"
    assert "liveinit.image=" in exc.value.hint


def test_image_mount_error_names_the_driver(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:squashfs": errno.EINVAL})
    with pytest.raises(BootFailure) as exc:
        e.stack()
    assert exc.value.message.startswith(f"cannot mount {IMAGE} (squashfs) from")
    assert "fs-squashfs" in exc.value.hint


def test_loop_failure(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"loop_attach": errno.ENOENT})
    with pytest.raises(BootFailure) as exc:
        e.stack()
    assert "loop device" in exc.value.message and "loop" in exc.value.hint



@pytest.mark.parametrize("module, fail", [("loop", {"loop_attach": errno.ENOENT}),
                                          ("squashfs", {"mount:squashfs": errno.ENODEV})])
def test_a_module_the_kernel_refused_is_the_hint(tmp_path: Path, monkeypatch, module: str, fail) -> None:
    """A module refused by signature checking is not 'missing': the hint repeats the loader's reason."""
    from liveinit.modload import SIGNATURE_REFUSED
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail=fail)
    (tmp_path / "sys/class/block/sr0").mkdir(parents=True)    # the medium is still there, readable
    (tmp_path / "dev/sr0").write_bytes(bytes(4096))
    e.loader.failed[module] = f"{SIGNATURE_REFUSED} (Key was rejected by service; {module}.ko)"
    with pytest.raises(BootFailure) as exc:
        e.stack()
    assert exc.value.hint == f"the {module} module was not loaded: {e.loader.failed[module]}"
    assert "missing" not in exc.value.hint


def test_mount_options() -> None:
    assert stack.mount_options("", True) == (MS_RDONLY, None)
    assert stack.mount_options("defaults,rw,noatime,nosuid,subvol=@", True) == (
        MS_NOATIME | MS_NOSUID, "subvol=@")


def test_enospc_in_the_bind_copy_names_the_tmpfs_size(tmp_path: Path, monkeypatch) -> None:
    """Not 'the kernel lacks overlayfs': the tmpfs is too small, and the parameter says how big."""
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path, fail={"mount:overlay": errno.ENODEV, "mount:aufs": errno.ENODEV,
                            "mount:unionfs": errno.ENODEV})
    lower_tree(e)

    def full(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stack, "_copy_tree", full)
    with pytest.raises(BootFailure) as exc:
        e.stack("liveinit.overlay_size=1m")
    msg = exc.value.message
    assert msg.startswith("the writable layer's tmpfs (liveinit.overlay_size=1m) is too small for the bind "
                          "method's copies of /etc, /var, /tmp, /root, /home")
    assert "overlay: not supported by this kernel" in msg
    assert "liveinit.overlay_size=" in exc.value.hint and "lacks overlayfs" not in exc.value.hint
    assert e.sys.mounts == {}    # undone for the retry


def test_unionfs_fuse_is_not_the_kernel_unionfs(tmp_path: Path, monkeypatch) -> None:
    """union=unionfs-fuse without the binary: reported as such, no in-kernel unionfs mount."""
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    e = Env(tmp_path)
    with pytest.raises(BootFailure) as exc:
        e.stack("union=unionfs-fuse")
    assert "unionfs-fuse: " in exc.value.message and "no unionfs-fuse binary" in exc.value.message
    assert "unionfs" not in [c[3] for c in e.mounts()]
    assert "--binaries /usr/bin/unionfs-fuse" in exc.value.hint
