"""The passphrase prompt on real pseudo-terminals: echo off while typing,
the first console to answer wins, a bounded wait, terminal modes restored,
the answer in a bytearray the caller wipes."""
from __future__ import annotations

import os
import termios
import threading
import time
from pathlib import Path

from liveinit import passphrase
from liveinit.machine import Machine
from qemu.fakes import FakeSyscalls
from qemu.fakesysfs import quiet_log


def _pty() -> tuple[int, str]:
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    return master, name


def _drain(fd: int) -> bytes:
    out = b""
    os.set_blocking(fd, False)
    try:
        while True:
            out += os.read(fd, 4096)
    except (BlockingIOError, OSError):
        return out


def _type_later(fd: int, text: bytes, delay: float = 0.3) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), os.write(fd, text)))
    t.start()
    return t


def _prompt(tmp_path: Path, ttys: list[str], timeout: float = 5) -> passphrase.Prompt:
    m = Machine(str(tmp_path), FakeSyscalls(str(tmp_path)))
    return passphrase.Prompt(m, quiet_log(), None, ttys=ttys, timeout=timeout)


def test_reads_the_line_without_echo_and_restores_the_terminal(tmp_path: Path) -> None:
    master, name = _pty()
    keep = os.open(name, os.O_RDWR | os.O_NOCTTY)      # the console stays open, as at boot
    before = termios.tcgetattr(keep)
    t = _type_later(master, b"s3cret \xc3\xbc\n")
    got = _prompt(tmp_path, [name]).ask("/dev/vda", "LUKS UUID=abc")
    t.join()
    assert got == bytearray("s3cret ü".encode())
    shown = _drain(master)
    assert b"Passphrase for /dev/vda (LUKS UUID=abc): " in shown
    assert b"s3cret" not in shown                     # no echo
    assert termios.tcgetattr(keep)[3] & termios.ECHO == before[3] & termios.ECHO
    passphrase.wipe(got)
    assert got == bytearray(len("s3cret ü".encode()))
    os.close(keep)
    os.close(master)


def test_the_first_console_to_answer_wins(tmp_path: Path) -> None:
    (m1, n1), (m2, n2) = _pty(), _pty()
    t = _type_later(m2, b"from-the-second\r")
    got = _prompt(tmp_path, [n1, n2]).ask("/dev/vdb", "LUKS UUID=x")
    t.join()
    assert got == bytearray(b"from-the-second")
    assert b"Passphrase for /dev/vdb" in _drain(m1)   # asked on both
    for fd in (m1, m2):
        os.close(fd)


def test_nobody_answers_within_the_timeout(tmp_path: Path) -> None:
    master, name = _pty()
    begun = time.monotonic()
    assert _prompt(tmp_path, [name]).ask("/dev/vda", "LUKS", timeout=0.5) is None
    assert 0.4 < time.monotonic() - begun < 3
    os.close(master)


def test_no_console_at_all(tmp_path: Path) -> None:
    assert _prompt(tmp_path, [str(tmp_path / "nonexistent")]).ask("/dev/vda", "LUKS") is None


def test_consoles_come_from_sysfs(tmp_path: Path) -> None:
    (tmp_path / "sys/class/tty/console").mkdir(parents=True)
    (tmp_path / "sys/class/tty/console/active").write_text("tty0 ttyS0\n")
    (tmp_path / "dev").mkdir()
    for n in ("tty0", "ttyS0"):
        (tmp_path / "dev" / n).write_text("")
    m = Machine(str(tmp_path), FakeSyscalls(str(tmp_path)))
    assert passphrase.consoles(m) == ["/dev/tty0", "/dev/ttyS0"]
    (tmp_path / "sys/class/tty/console/active").write_text("")
    assert passphrase.consoles(m) == ["/dev/console"]
