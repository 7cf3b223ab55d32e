"""The first open of an encrypted persistence partition `liveinit usb` wrote without
device-mapper (liveinit/freshfs.py through stack's persistence): a real LUKS2 header
made by cryptsetup on a fake sysfs tree, cryptsetup's open and mke2fs answered by a
recording runner that makes (or not) the file system on the fake /dev/mapper node."""
from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_layers import Runner, _machine

from liveinit import command, freshfs
from liveinit.cmdline import parse
from liveinit.contract import PERSISTENCE_FRESH
from liveinit.discovery import Discovery, NullLoader
from qemu.fakes import FakeSyscalls, FakeUevents
from qemu.fakesysfs import SysfsBuilder, log_text, quiet_log

MAPPER = "/dev/mapper/liveinit-persistence"


World = tuple[FakeSyscalls, Runner, Callable[[], tuple[tuple[str, str], Any]]]


def _world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, marked: bool = True, ext4_inside: bool = False,
           tools: tuple[str, ...] = ("cryptsetup", "mke2fs")) -> World:
    from liveinit import stack
    b = SysfsBuilder(tmp_path)
    (tmp_path / "dev" / "mapper").mkdir(parents=True)
    b.disk(None, "vdb", 253, 16, 32 * 2048)
    vdb = tmp_path / "dev" / "vdb"
    with vdb.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--label", "persistence",
                    *(["--subsystem", PERSISTENCE_FRESH] if marked else []),
                    "--pbkdf", "pbkdf2", "--iter-time", "10", "--key-file=-", str(vdb)],
                   input=b"pw", check=True)
    mapper = tmp_path / MAPPER.lstrip("/")

    def opened(argv: list[str], stdin: bytes) -> command.Result:
        with mapper.open("wb") as f:       # what a fresh volume decrypts to: no file system
            f.write(b"\x5a" * (8 << 20))
        if ext4_inside:
            subprocess.run(["mkfs.ext4", "-q", "-F", str(mapper), "8M"], check=True)
        return command.Result(0, "", 0.1)

    def mke2fs(argv: list[str], stdin: bytes) -> command.Result:
        label = argv[argv.index("-L") + 1]
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, argv[-1], "8M"], check=True)
        return command.Result(0, "", 0.3)

    m = _machine(tmp_path, tools)
    run = Runner({"cryptsetup open": opened, "mke2fs -q": mke2fs})
    monkeypatch.setattr(command, "run", run)
    monkeypatch.setattr("liveinit.passphrase.Prompt.ask", lambda *a, **kw: bytearray(b"pw"))
    log = quiet_log()
    cfg = parse("persistence persistence-encryption=luks")
    discovery = Discovery(m, NullLoader(), FakeUevents(), log, walk=False)
    return m.sys, run, lambda: (stack._writable(m, cfg, discovery, log), log)


def _argvs(run: Runner, root: Path) -> list[list[str]]:
    return [[a.replace(str(root), "") for a in argv] for argv, _ in run.calls]


def test_a_marked_empty_volume_gets_its_ext4_and_loses_the_mark(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sysc, run, writable = _world(tmp_path, monkeypatch)
    (base, what), log = writable()
    assert base == "/run/liveinit/rw/liveinit-rw"
    calls = _argvs(run, tmp_path)
    mkfs = ["/usr/sbin/mke2fs", "-q", "-t", "ext4", "-L", "persistence", MAPPER]
    unmark = ["/usr/sbin/cryptsetup", "config", "--label", "persistence", "--subsystem", "", "/dev/vdb"]
    assert mkfs in calls and unmark in calls
    assert calls.index(mkfs) < calls.index(unmark)          # a crash between them leaves a usable volume
    assert ("mount", MAPPER, "/run/liveinit/rw", "ext4", 0, None) in sysc.mount_calls()  # type: ignore[attr-defined]
    assert "first open: made ext4 'persistence' inside" in log_text(log)


def test_an_unmarked_volume_holding_nothing_is_never_formatted(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    sysc, run, writable = _world(tmp_path, monkeypatch, marked=False)
    (base, what), log = writable()
    assert what == "tmpfs"
    assert not any("mke2fs" in argv[0] for argv, _ in run.calls)
    assert "holds no filesystem liveinit recognises; changes will be lost at power-off (tmpfs)" \
        in log_text(log)


def test_a_marked_volume_holding_ext4_is_not_formatted_again(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sysc, run, writable = _world(tmp_path, monkeypatch, ext4_inside=True)   # the mark survived a crash
    (base, what), log = writable()
    assert base == "/run/liveinit/rw/liveinit-rw"
    assert not any("mke2fs" in argv[0] for argv, _ in run.calls)


def test_without_mke2fs_in_the_image_it_says_so_and_uses_ram(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sysc, run, writable = _world(tmp_path, monkeypatch, tools=("cryptsetup",))
    (base, what), log = writable()
    assert what == "tmpfs"
    text = log_text(log)
    assert "the new encrypted persistence volume is not formatted: mke2fs is not in the image" in text
    assert "changes will be lost at power-off (tmpfs)" in text


def test_is_fresh_reads_the_luks2_subsystem() -> None:
    assert freshfs.is_fresh({"TYPE": "crypto_LUKS", "SUBSYSTEM": PERSISTENCE_FRESH})
    assert not freshfs.is_fresh({"TYPE": "crypto_LUKS", "SUBSYSTEM": "other"})
    assert not freshfs.is_fresh({"TYPE": "crypto_LUKS"})
    assert not freshfs.is_fresh({"TYPE": "ext4", "SUBSYSTEM": PERSISTENCE_FRESH})
