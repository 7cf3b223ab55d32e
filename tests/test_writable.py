"""`liveinit image --writable-from`: the wraith list baked into the image's root, and the bind
method (union=bind) making exactly those paths writable on a fake machine."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

from liveinit import stack
from liveinit.cmdline import parse
from liveinit.contract import WRITABLE_LIST
from liveinit.discovery import Discovery, NullLoader
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.rootfind import Found
from liveinit.syscalls import MS_BIND
from qemu.fakes import FakeSyscalls, FakeUevents

IMAGE = "/run/liveinit/medium/live/filesystem.squashfs"
RO = "/run/liveinit/ro"


def test_bind_paths() -> None:
    assert stack.bind_paths(None) == stack.BIND_DIRS
    text = "# /var: 3 paths, 1 KiB\n/var/log\n/var/log/syslog\n/var/lib/x/\n\n# /etc\n/etc/hostname\n" \
           "relative\n/a/../b\n/\n"
    assert stack.bind_paths(text) == ("etc/hostname", "var/lib/x", "var/log")
    assert stack.bind_paths("") == ()


def test_the_bind_method_makes_exactly_the_listed_paths_writable(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
    root = tmp_path / "machine"
    for d in ("dev", "proc", "run/liveinit/medium/live", "run/liveinit/ro/etc/liveinit",
              "run/liveinit/ro/var/log", "run/liveinit/ro/home/u"):
        (root / d).mkdir(parents=True)
    (root / IMAGE.lstrip("/")).write_bytes(b"hsqs" + bytes(4092))
    lower = root / RO.lstrip("/")
    (lower / "etc" / "hostname").write_text("live\n")
    (lower / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (lower / "var" / "log" / "syslog").write_text("old\n")
    (lower / "home" / "u" / "notes").write_text("mine\n")
    (lower / WRITABLE_LIST.lstrip("/")).write_text("/var/log\n/var/log/syslog\n/etc/hostname\n/gone\n")
    for d in ("etc", "var/log"):       # what the read-only bind of the image shows at /sysroot
        (root / "sysroot" / d).mkdir(parents=True)
    (root / "sysroot/etc/hostname").write_text("live\n")
    sys = FakeSyscalls(root=str(root))
    m = Machine(str(root), sys)
    log = Log(out=io.StringIO())
    found = Found("/dev/sr0", "iso9660", {}, "test", "/run/liveinit/medium", IMAGE)
    st = stack.stack(m, parse("union=bind"), found, Discovery(m, NullLoader(), FakeUevents(), log), log)
    assert st.union == "bind"
    binds = [(c[1], c[2]) for c in sys.of("mount") if c[4] == MS_BIND]
    assert binds == [("/run/liveinit/rw/bind/etc/hostname", "/sysroot/etc/hostname"),
                     ("/run/liveinit/rw/bind/var/log", "/sysroot/var/log")]
    copies = root / "run/liveinit/rw/bind"
    assert (copies / "etc" / "hostname").read_text() == "live\n"
    assert (copies / "var" / "log" / "syslog").read_text() == "old\n"
    assert not (copies / "etc" / "passwd").exists() and not (copies / "home").exists()


def test_writable_from_bakes_the_list_into_the_copy(tmp_path: Path) -> None:
    import subprocess

    from packer import snapshot
    from packer.errors import CommandError
    from packer.image import build_squashfs
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "sbin" / "init").write_text("#!/bin/sh\n")
    wl = tmp_path / "written"
    wl.write_text("# /var: 2 paths, 10 B\n/var/log\n/var/lib/app/state\n# /etc: 1 path, 5 B\n/etc/hostname\n")
    work = tmp_path / "work"
    work.mkdir()
    plan = snapshot.plan(root, work, writable_from=wl, keep_identity=True)
    assert plan.cleanup == (f"{WRITABLE_LIST}: 3 paths union=bind makes writable",)
    sfs = build_squashfs(root, tmp_path / "o.sfs", excludes=plan.excludes, pseudo_file=plan.pseudo_file,
                         epoch=0)
    baked = subprocess.run(["unsquashfs", "-cat", str(sfs), WRITABLE_LIST.lstrip("/")], check=True,
                           capture_output=True, text=True).stdout
    assert baked == "/var/log\n/var/lib/app/state\n/etc/hostname\n"
    assert stack.bind_paths(baked) == ("etc/hostname", "var/lib/app/state", "var/log")
    assert not (root / "etc" / "liveinit").exists()        # the host's tree untouched
    wl.write_text("var/log\n")
    with pytest.raises(CommandError, match="is not an absolute path"):
        snapshot.plan(root, work, writable_from=wl)
