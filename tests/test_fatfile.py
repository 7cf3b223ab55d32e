"""liveinit.fatfile: where a file on a FAT lies, checked against images made with mkfs.vfat and
mcopy (the bytes at the offset it gives are the file's), fragmented files refused by name."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from liveinit import fatfile
from liveinit.syscalls import MS_REMOUNT
from qemu.fakes import FakeSyscalls

ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def _fat(tmp: Path, bits: int, kib: int = 70000) -> Path:
    img = tmp / f"fat{bits}.img"
    subprocess.run(["mkfs.vfat", "-C", "-F", str(bits), "-n", "TEST", str(img), str(kib)], check=True,
                   capture_output=True)
    return img


def _put(img: Path, src: Path, dest: str) -> None:
    subprocess.run(["mcopy", "-i", str(img), str(src), f"::{dest}"], check=True, env=ENV)


def _file(tmp: Path, name: str, size: int) -> Path:
    p = tmp / name
    p.write_bytes(os.urandom(size))
    return p


@pytest.mark.parametrize("bits", [16, 32])
def test_a_contiguous_file_is_found_where_its_bytes_are(tmp_path: Path, bits: int) -> None:
    img = _fat(tmp_path, bits)
    subprocess.run(["mmd", "-i", str(img), "::/Deep", "::/Deep/er"], check=True, env=ENV)
    _put(img, _file(tmp_path, "note", 100), "/NOTE.TXT")
    big = _file(tmp_path, "big", 3 * 1024 * 1024 + 123)
    _put(img, big, "/persistence.img")
    _put(img, big, "/Deep/er/Persistence-Long-Name.img")
    data = img.read_bytes()
    for path in ("/persistence.img", "/PERSISTENCE.IMG", "Deep/er/persistence-long-name.img"):
        got = fatfile.extent(str(img), path)
        assert isinstance(got, tuple), got
        offset, size = got
        assert size == big.stat().st_size
        assert data[offset:offset + size] == big.read_bytes()
    offset, size = fatfile.extent(str(img), "/note.txt")   # type: ignore[misc]
    assert data[offset:offset + size] == (tmp_path / "note").read_bytes()


def test_a_fragmented_file_is_refused(tmp_path: Path) -> None:
    # a full FAT with a 64 KiB hole: a 96 KiB file takes the hole and the 32 KiB left at the end
    img = _fat(tmp_path, 32)
    for i in range(2):
        _put(img, _file(tmp_path, f"f{i}", 64 * 1024), f"/f{i}")
    listing = subprocess.run(["mdir", "-i", str(img), "::/"], check=True, env=ENV, capture_output=True,
                             text=True).stdout
    free = int("".join(c for c in listing.split("bytes free")[0].splitlines()[-1] if c.isdigit()))
    _put(img, _file(tmp_path, "filler", free - 32 * 1024), "/filler")
    subprocess.run(["mdel", "-i", str(img), "::/f0"], check=True, env=ENV)
    _put(img, _file(tmp_path, "big", 96 * 1024), "/persistence.img")
    got = fatfile.extent(str(img), "/persistence.img")
    assert isinstance(got, str) and "fragmented" in got


def test_what_is_not_there(tmp_path: Path) -> None:
    img = _fat(tmp_path, 32)
    subprocess.run(["mmd", "-i", str(img), "::/dir"], check=True, env=ENV)
    _put(img, _file(tmp_path, "empty", 0), "/empty")
    assert fatfile.extent(str(img), "/persistence.img") == "no persistence.img in /"
    assert fatfile.extent(str(img), "/dir") == "/dir is a directory"
    assert fatfile.extent(str(img), "/empty") == "/empty is empty"
    assert fatfile.extent(str(img), "/empty/x") == "empty is not a directory"
    other = tmp_path / "zero.img"
    other.write_bytes(bytes(1 << 20))
    assert fatfile.extent(str(other), "/x") == f"{other} holds no FAT filesystem"


# -- the stack stage: a persistence image on the FAT medium itself ---------------------------------
MEDIUM_IMAGE = "/run/liveinit/medium/live/filesystem.squashfs"


def _stack_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fat: Path) -> tuple[FakeSyscalls, str]:
    """Stack with liveinit.persistence=/persistence.img on a fake machine whose medium /dev/sda1
    is the FAT image `fat`, mounted read-only (its /proc/mounts line)."""
    import io

    from liveinit import stack
    from liveinit.cmdline import parse
    from liveinit.discovery import Discovery, NullLoader
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.rootfind import Found
    from qemu.fakes import FakeUevents
    root = tmp_path / "machine"
    for d in ("dev", "proc", "run/liveinit/medium/live"):
        (root / d).mkdir(parents=True)
    (root / MEDIUM_IMAGE.lstrip("/")).write_bytes(b"hsqs" + bytes(4092))
    (root / "run/liveinit/medium/persistence.img").write_bytes(bytes(4096))   # what the mount shows
    (root / "dev/sda1").write_bytes(fat.read_bytes())
    (root / "proc/mounts").write_text("/dev/sda1 /run/liveinit/medium vfat ro,relatime 0 0\n")
    monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs" if path.endswith(".squashfs")
                                                       else "ext4"})
    sys = FakeSyscalls(root=str(root))
    m = Machine(str(root), sys)
    out = io.StringIO()
    log = Log(out=out)
    found = Found("/dev/sda1", "vfat", {}, "test", "/run/liveinit/medium", MEDIUM_IMAGE)
    stack.stack(m, parse("liveinit.persistence=/persistence.img"), found,
                Discovery(m, NullLoader(), FakeUevents(), log), log)
    return sys, out.getvalue()


def test_a_contiguous_persistence_file_is_written_through_the_device(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = _fat(tmp_path, 32)
    _put(img, _file(tmp_path, "p", 1 << 20), "/persistence.img")
    offset, size = fatfile.extent(str(img), "/persistence.img")   # type: ignore[misc]
    sys, console = _stack_on(tmp_path, monkeypatch, img)
    assert sys.of("loop_attach")[1] == ("loop_attach", "/dev/sda1", False, offset, size)
    assert ("mount", "/dev/loop1", "/run/liveinit/rw", "ext4", 0, None) in sys.of("mount")
    assert not [c for c in sys.of("mount") if c[4] & MS_REMOUNT]
    assert "the FAT stays read-only" in console


def test_a_fragmented_persistence_file_remounts_the_medium(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    img = _fat(tmp_path, 32)
    sys, console = _stack_on(tmp_path, monkeypatch, img)   # no persistence.img in the FAT itself
    remount = ("mount", "/dev/sda1", "/run/liveinit/medium", None, MS_REMOUNT, None)
    assert remount in sys.of("mount")
    assert sys.of("loop_attach")[1] == ("loop_attach", "/run/liveinit/medium/persistence.img", False)
    assert "no persistence.img in /; the medium is remounted read-write" in console
