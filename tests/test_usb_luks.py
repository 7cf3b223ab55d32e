"""liveinit usb --persistence-encrypt without QEMU: the passphrase dialogue, the LUKS2 header
(made by cryptsetup, checked with blkid and cryptsetup itself), the device-mapper route's
commands, what the image must carry, and the refusals. The boots: test_usb_luks_boot.py."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from liveinit.contract import PERSISTENCE_FRESH
from packer import cmd_usb, usb
from packer.cli import main
from packer.cpio import ArchiveBuilder, image_bytes
from packer.errors import CommandError


def _asker(answers: list[str]):  # type: ignore[no-untyped-def]
    it = iter(answers)
    return lambda prompt: next(it)


def test_passphrase_typed_twice_mismatch_and_empty_ask_again() -> None:
    said: list[str] = []
    got = cmd_usb.read_passphrase(None, _asker(["", "zyü", "zyx", "zyü", "zyü"]), said.append)
    assert got == bytearray("zyü".encode())
    assert said == ["an empty passphrase is refused: type one", "the two passphrases differ: again"]


def test_passphrase_never_agreed_is_an_error() -> None:
    with pytest.raises(CommandError, match="no passphrase agreed"):
        cmd_usb.read_passphrase(None, _asker(["a", "b"] * cmd_usb.PASSPHRASE_TRIES), lambda s: None)


def test_passphrase_file_drops_one_newline_and_refuses_empty(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"secret \n\n")
    assert cmd_usb.read_passphrase(f) == bytearray(b"secret \n")
    f.write_bytes(b"\n")
    with pytest.raises(CommandError, match="is empty"):
        cmd_usb.read_passphrase(f)


def _blkid(path: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.mark.parametrize("format_inside", [False, True])
def test_luks_header_label_mark_and_passphrase(tmp_path: Path, format_inside: bool) -> None:
    enc = usb.Encryption(bytearray(b"zy\xc3\xbcstick"), format_inside, iter_time_ms=50, pbkdf_memory_kib=8192)
    header = usb.luks_header(tmp_path, 64 << 20, enc)
    ident = _blkid(header)
    assert (ident["TYPE"], ident["VERSION"], ident["LABEL"]) == ("crypto_LUKS", "2", "persistence")
    assert ident.get("SUBSYSTEM") == (None if format_inside else PERSISTENCE_FRESH)
    assert header.stat().st_blocks * 512 <= usb.LUKS_HEADER       # luksFormat wrote only the header
    dump = subprocess.run(["cryptsetup", "luksDump", str(header)], capture_output=True, text=True,
                          check=True).stdout
    assert f"offset: {usb.LUKS_HEADER} [bytes]" in dump and "argon2id" in dump and "Memory:     8192" in dump
    for secret, rc in ((b"zy\xc3\xbcstick", 0), (b"zy\xc3\xbcstick\n", 2)):
        r = subprocess.run(["cryptsetup", "open", "--test-passphrase", "--key-file=-", str(header)],
                           input=secret, capture_output=True)
        assert r.returncode == rc


def test_format_inside_opens_formats_checks_and_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[list[str], Any]] = []

    def run(argv: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append((argv, kw.get("input")))
        return subprocess.CompletedProcess(argv, 0, "/dev/loop7\n" if argv[0] == "losetup" else "", "")

    monkeypatch.setattr(usb.tools, "run", run)
    monkeypatch.setattr(usb.os, "getpid", lambda: 42)
    enc = usb.Encryption(bytearray(b"pw"), True)
    usb.format_inside(Path("/dev/sdz"), usb.Partition(129 << 20, 171 << 20, "83"), enc, lambda s: None)
    assert [c[0] for c in calls] == [
        ["losetup", "--find", "--show", "--offset", str(129 << 20), "--sizelimit", str(171 << 20),
         "/dev/sdz"],
        ["cryptsetup", "open", "--type", "luks2", "--key-file=-", "/dev/loop7", "liveinit-usb-42"],
        ["mkfs.ext4", "-q", "-L", "persistence", "/dev/mapper/liveinit-usb-42"],
        ["e2fsck", "-f", "-n", "/dev/mapper/liveinit-usb-42"],
        ["cryptsetup", "close", "liveinit-usb-42"],
        ["losetup", "--detach", "/dev/loop7"]]
    assert calls[1][1] == bytearray(b"pw")                        # on stdin, nowhere else
    assert all(b"pw" not in " ".join(c[0]).encode() for c in calls)


def test_host_device_mapper_reads_proc_misc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usb.tools, "run", lambda argv, what, **kw: None)   # modprobe does nothing here
    monkeypatch.setattr(usb.os, "geteuid", lambda: 0)
    (tmp_path / "misc").write_text("236 loop-control\n183 hw_random\n")
    assert not usb.host_device_mapper(tmp_path)
    (tmp_path / "misc").write_text("236 device-mapper\n183 hw_random\n")
    assert usb.host_device_mapper(tmp_path)
    monkeypatch.setattr(usb.os, "geteuid", lambda: 1000)
    assert not usb.host_device_mapper(tmp_path)


def test_initrd_lacks_names_tools_and_keymaps(tmp_path: Path) -> None:
    a = ArchiveBuilder()
    a.add_file("usr/sbin/cryptsetup", data=b"\x7fELF", mode=0o755)
    a.add_file("etc/liveinit/keymaps/de-latin1.bmap", data=b"bkeymap")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(image_bytes(a, "gzip"))
    assert usb.initrd_lacks(initrd, ("cryptsetup", "mke2fs"), ("de-latin1", "fr")) == \
        ["mke2fs", "the keymap fr"]
    assert usb.initrd_lacks(initrd, ("cryptsetup",), ("de-latin1",)) == []


def test_persistence_arg_encrypted() -> None:
    layout = usb.plan(512 << 20, 100 << 20, None, "rest")
    assert usb.persistence_arg(layout, None, True) == \
        "liveinit.persistence=LABEL=persistence persistence-encryption=luks"
    assert usb.persistence_arg(layout, None) == "liveinit.persistence=LABEL=persistence"


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "root"
    src.mkdir()
    out = tmp_path / "s.img"
    assert main(["usb", str(src), str(out), "--size", "300M", "--persistence-encrypt"]) == 1
    assert "encrypts a persistence partition and none is asked for" in capsys.readouterr().err
    assert main(["usb", str(src), str(out), "--size", "300M", "--persistence-file", "64M",
                 "--persistence-encrypt"]) == 1
    assert "an encrypted --persistence-file is not supported" in capsys.readouterr().err
    assert main(["usb", str(src), str(out), "--size", "300M", "--passphrase-file", str(src)]) == 1
    assert "--passphrase-file without --persistence-encrypt" in capsys.readouterr().err
    assert not out.exists()
