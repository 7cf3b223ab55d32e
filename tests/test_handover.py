"""Stage `handover` on a fake root: finding init inside the new root
(symlinks resolved there, never on the host), the switch_root / pivot_root
decision, the switch_root call sequence (pivot_root's is booted for real in
test_faults.py), and deleting the initramfs without crossing
mount points."""
from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from liveinit import handover
from liveinit.cmdline import parse
from liveinit.emergency import BootFailure
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.syscalls import MNT_DETACH, MS_MOVE
from qemu.fakes import FakeSyscalls, Mount


def exe(path: Path, text: str = "#!/bin/sh\n") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def machine(tmp: Path, **kw) -> tuple[Machine, FakeSyscalls]:
    fake = FakeSyscalls(root=str(tmp), **kw)
    return Machine(str(tmp), fake), fake


# -- find_init ----------------------------------------------------------------------
def test_absolute_symlink_is_followed_inside_the_new_root(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    link(new / "sbin" / "init", "/lib/systemd/systemd")
    exe(new / "lib" / "systemd" / "systemd")
    m, _ = machine(tmp_path)
    assert handover.find_init(m, parse("")) == "/sbin/init"
    assert handover.resolve_in(str(new), "/sbin/init") == str(new) + "/lib/systemd/systemd"


def test_symlink_to_a_host_path_is_not_found(tmp_path: Path) -> None:
    # /bin/true exists on the host but not in the new root: must not count.
    new = tmp_path / "sysroot"
    link(new / "sbin" / "init", "/bin/true")
    exe(new / "bin" / "sh")
    m, _ = machine(tmp_path)
    assert handover.find_init(m, parse("")) == "/bin/sh"


def test_merged_usr_relative_links(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    link(new / "sbin", "usr/sbin")
    link(new / "usr" / "sbin" / "init", "../lib/systemd/systemd")
    exe(new / "usr" / "lib" / "systemd" / "systemd")
    assert handover.resolve_in(str(new), "/sbin/init") == str(new) + "/usr/lib/systemd/systemd"


def test_dotdot_cannot_escape_the_root(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    link(new / "sbin" / "init", "../../../../../../bin/init")
    exe(new / "bin" / "init")
    assert handover.resolve_in(str(new), "/sbin/init") == str(new) + "/bin/init"


def test_symlink_loop_is_not_an_init(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    link(new / "sbin" / "init", "/sbin/init2")
    link(new / "sbin" / "init2", "/sbin/init")
    assert handover.resolve_in(str(new), "/sbin/init") is None


def test_init_parameter_first_then_the_defaults(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    exe(new / "sbin" / "init")
    exe(new / "opt" / "myinit")
    m, _ = machine(tmp_path)
    assert handover.find_init(m, parse("init=/opt/myinit")) == "/opt/myinit"
    with pytest.raises(BootFailure) as exc:   # not /sbin/init in its place (issue 12)
        handover.find_init(m, parse("init=/missing"))
    assert exc.value.message == "init=/missing is not in the new root"
    assert "remove it to start /sbin/init" in exc.value.hint


def test_non_executable_init_is_skipped(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    (new / "sbin").mkdir(parents=True)
    (new / "sbin" / "init").write_text("not executable")
    exe(new / "etc" / "init")
    m, _ = machine(tmp_path)
    assert handover.find_init(m, parse("")) == "/etc/init"


def test_no_init_names_what_was_tried_and_what_is_there(tmp_path: Path) -> None:
    new = tmp_path / "sysroot"
    (new / "home").mkdir(parents=True)
    (new / "sbin").mkdir()
    (new / "sbin" / "init").write_text("x")
    m, _ = machine(tmp_path)
    with pytest.raises(BootFailure) as exc:
        handover.find_init(m, parse(""))
    assert exc.value.message == ("no init in the new root: tried /sbin/init (not an "
                                 "executable file), /etc/init, /bin/init, /bin/sh")
    assert "holds: home, sbin" in exc.value.hint and "init=" in exc.value.hint


# -- switch_root or pivot_root ---------------------------------------------------------
@pytest.mark.parametrize("mounts, rootfs", [
    ("rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n", True),
    ("none / tmpfs rw 0 0\n", True),
    ("none / ramfs rw 0 0\n", True),
    ("rootfs / rootfs rw 0 0\n/dev/root / ext2 rw 0 0\n", False),
    ("/dev/ram0 / ext2 rw 0 0\n", False),
    ("", True),
])
def test_from_rootfs(tmp_path: Path, mounts: str, rootfs: bool) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "mounts").write_text(mounts)
    m, _ = machine(tmp_path)
    assert handover.from_rootfs(m) is rootfs


def initramfs(tmp: Path, proc_mounts: str) -> tuple[Machine, FakeSyscalls]:
    """An initramfs tree with the early mounts and a stacked /sysroot."""
    exe(tmp / "init", "#!/usr/bin/python3 -IS\n")
    exe(tmp / "usr" / "bin" / "python3")
    (tmp / "usr" / "lib" / "python3.11").mkdir(parents=True)
    (tmp / "usr" / "lib" / "python3.11" / "os.pyc").write_bytes(b"x")
    link(tmp / "bin", "usr/bin")
    for d in ("dev", "proc", "sys", "run/liveinit/ro"):
        (tmp / d).mkdir(parents=True)
    (tmp / "dev" / "console").write_text("")
    (tmp / "proc" / "mounts").write_text(proc_mounts)
    (tmp / "run" / "liveinit" / "ro" / "kept").write_text("image")
    exe(tmp / "sysroot" / "sbin" / "init")
    m, fake = machine(tmp, devs={"/dev": 5, "/proc": 4, "/sys": 3, "/run": 2, "/sysroot": 1})
    for d in ("/dev", "/proc", "/sys", "/run", "/sysroot"):
        fake.mounts[d] = Mount(d, "x", 0, None)
    return m, fake


def test_switch_root_sequence_and_initramfs_deleted(tmp_path: Path) -> None:
    m, fake = initramfs(tmp_path, "rootfs / rootfs rw 0 0\n")
    plan = handover.prepare(m, parse("-- splash"))
    assert plan == handover.Plan("/sbin/init", ("/sbin/init", "splash"), "switch_root", "/sysroot")
    steps: set[str] = set()
    handover.enter(m, plan, Log(out=io.StringIO()), steps)
    seen = [len(fake.calls)]       # the boot's last words go here, before the exec
    handover.exec_init(m, plan)
    assert fake.calls == [
        ("mount", "/dev", "/sysroot/dev", None, MS_MOVE, None),
        ("mount", "/proc", "/sysroot/proc", None, MS_MOVE, None),
        ("mount", "/sys", "/sysroot/sys", None, MS_MOVE, None),
        ("mount", "/run", "/sysroot/run", None, MS_MOVE, None),
        ("chdir", "/sysroot"),
        ("mount", "/sysroot", "/", None, MS_MOVE, None),
        ("chroot", "."),
        ("chdir", "/"),
        ("console", "/dev/console"),
        ("execv", "/sbin/init", ["/sbin/init", "splash"]),
    ]
    assert seen == [9]   # inside the new root, everything but the exec done
    assert handover.INSIDE in steps
    left = sorted(os.listdir(tmp_path))
    assert left == ["dev", "proc", "run", "sys", "sysroot"]   # mount points stay
    assert (tmp_path / "dev" / "console").exists()            # other filesystems untouched
    assert (tmp_path / "run" / "liveinit" / "ro" / "kept").exists()
    assert (tmp_path / "sysroot" / "sbin" / "init").exists()
    assert "/" in fake.mounts and "/sysroot" not in fake.mounts


def test_an_initrd_is_left_by_pivot_root_and_nothing_is_deleted(tmp_path: Path) -> None:
    # The call sequence itself is proven by a real boot, not by this fake's record:
    # test_faults.py::test_pivot_root_from_an_initrd_disk (root=/dev/vda init=/init in QEMU).
    m, fake = initramfs(tmp_path, "rootfs / rootfs rw 0 0\n/dev/ram0 / ext2 rw 0 0\n")
    plan = handover.prepare(m, parse(""))
    assert plan.method == "pivot_root"
    handover.enter(m, plan, Log(out=io.StringIO()), set())
    assert (tmp_path / "init").exists()    # nothing deleted: the initrd is unmounted instead
    assert (tmp_path / "sysroot" / "run" / "liveinit" / "initrd").is_dir()


def test_unmovable_mount_is_detached(tmp_path: Path) -> None:
    m, fake = initramfs(tmp_path, "rootfs / rootfs rw 0 0\n")
    del fake.mounts["/sys"]
    out = io.StringIO()
    handover.move_mounts(m, "/sysroot", Log(out=out))
    assert ("umount2", "/sys", MNT_DETACH) in fake.calls
    assert "cannot move /sys into the new root" in out.getvalue()


def test_exec_failure_is_a_boot_failure(tmp_path: Path) -> None:
    m, fake = initramfs(tmp_path, "rootfs / rootfs rw 0 0\n")
    fake.fail["execv"] = errno.ENOEXEC
    plan = handover.prepare(m, parse(""))
    handover.enter(m, plan, Log(out=io.StringIO()), set())
    with pytest.raises(BootFailure) as exc:
        handover.exec_init(m, plan)
    assert exc.value.message.startswith("cannot start /sbin/init:")


# -- deletion ----------------------------------------------------------------------------
def test_delete_tree_does_not_cross_mount_points(tmp_path: Path) -> None:
    for f in ("a/one", "a/b/two", "a/mnt/keep", "a/mnt/deep/keep2", "c/three", "top"):
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f)
    link(tmp_path / "a" / "ln", "/etc/passwd")
    m, fake = machine(tmp_path, devs={"/": 1, "/a/mnt": 9})
    n = handover.delete_tree(m, str(tmp_path), 1)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "a", "a/mnt", "a/mnt/deep", "a/mnt/deep/keep2", "a/mnt/keep"]
    assert n == 7   # one, two, b, ln, three, c, top (a stays: it holds a mount point)
    assert os.path.exists("/etc/passwd")   # symlinks are removed, never followed
