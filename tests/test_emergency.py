"""The emergency shell's lock (rd.shell=0, rd.emergency=, the baked password),
SHA-512 crypt against OpenSSL, and the medium check (verify.check_tree)."""
from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

import pytest

from liveinit import emergency, shellgate, verify
from liveinit.emergency import ShellPolicy
from liveinit.log import Log
from liveinit.machine import Machine
from qemu.fakes import FakeSyscalls


def machine(tmp_path: Path) -> tuple[Machine, FakeSyscalls, Log, io.StringIO]:
    sysc = FakeSyscalls(root=str(tmp_path))
    out = io.StringIO()
    return Machine(str(tmp_path), sysc), sysc, Log(out=out), out


@pytest.mark.parametrize("password,salt", [
    ("hunter2", "saltsalt"), ("a", "x"), ("ü" * 40, "0123456789abcdefXYZ"),   # salt cut at 16
    ("a" * 200, "rounds=1000$short"), ("pw", "rounds=10$s")])                 # rounds raised to 1000
def test_sha512_crypt_matches_openssl(password: str, salt: str) -> None:
    ref = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, password], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert shellgate.check(password, ref)
    assert not shellgate.check(password + "x", ref)
    rounds, given, s, _ = shellgate.parse(ref)
    assert shellgate.sha512_crypt(password.encode(), s, rounds, given) == ref


@pytest.mark.parametrize("bad", ["$1$abc$def", "$6$salt", "$6$rounds=x$s$" + "a" * 86, "$6$s$short", "plain"])
def test_unusable_hashes_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError):
        shellgate.parse(bad)


def test_rd_shell_0_locks_down_with_the_action(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, log, out = machine(tmp_path)
    slept: list[float] = []
    monkeypatch.setattr(emergency.time, "sleep", slept.append)
    monkeypatch.setattr(emergency, "run_shell", lambda m, banner: pytest.fail("a shell was opened"))
    emergency.shell(m, log, "stage findroot failed", ShellPolicy(False, "poweroff", ""))
    assert sysc.of("reboot") == [("reboot", emergency.ACTIONS["poweroff"])]
    assert slept == [emergency.LOCKDOWN_PAUSE]
    assert "no emergency shell (the shell is disabled by rd.shell=0): poweroff in 10 s" in out.getvalue()
    emergency.shell(m, log, "boot failed", ShellPolicy(False, "", ""))
    assert sysc.of("reboot")[-1] == ("reboot", emergency.ACTIONS["halt"])   # the default


def test_three_wrong_passwords_then_the_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, log, out = machine(tmp_path)
    hashed = shellgate.sha512_crypt(b"right", "abcdefgh")
    answers = iter(["wrong", "nope", "Right"])
    prompts: list[str] = []

    def read(prompt: str) -> str | None:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(emergency, "read_secret", read)
    monkeypatch.setattr(emergency.time, "sleep", lambda s: None)
    monkeypatch.setattr(emergency, "run_shell", lambda m, banner: pytest.fail("a shell was opened"))
    emergency.shell(m, log, "stage stack failed", ShellPolicy(True, "reboot", hashed))
    assert prompts == ["liveinit: emergency shell password: "] * 3
    text = out.getvalue()
    assert "wrong password; 2 more tries" in text and "wrong password; 1 more tries" in text
    assert "no emergency shell (3 wrong passwords): reboot in 10 s" in text
    assert sysc.of("reboot") == [("reboot", emergency.ACTIONS["reboot"])]


def test_the_right_password_opens_the_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, log, out = machine(tmp_path)
    hashed = shellgate.sha512_crypt(b"right", "abcdefgh")
    answers = iter(["wrong", "right"])
    monkeypatch.setattr(emergency, "read_secret", lambda prompt: next(answers))
    opened: list[str] = []
    monkeypatch.setattr(emergency, "run_shell", lambda m, banner: opened.append(banner))
    emergency.shell(m, log, "stage stack failed", ShellPolicy(True, "", hashed))
    assert opened == ["liveinit: stage stack failed"] and sysc.of("reboot") == []


def test_open_shell_is_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, log, out = machine(tmp_path)
    opened: list[str] = []
    monkeypatch.setattr(emergency, "run_shell", lambda m, banner: opened.append(banner))
    emergency.shell(m, log, "stage stack failed")
    assert opened and "liveinit: emergency shell" in out.getvalue()


def medium(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    import hashlib
    rng = random.Random(12)
    files = {"live/filesystem.squashfs": rng.randbytes(3 << 20), "live/vmlinuz": rng.randbytes(1000),
             "boot/grub/grub.cfg": b"menuentry {}\n", "empty": b""}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    return tmp_path, {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def test_check_tree_passes_an_intact_medium(tmp_path: Path) -> None:
    root, sums = medium(tmp_path)
    res = verify.check_tree(str(root), sums)
    assert res.ok and res.files == 4 and res.size == (3 << 20) + 1000 + 13
    assert res.lines() == ["check: the medium is intact (4 files, 3 MiB, SHA-256)"]


@pytest.mark.parametrize("offset", [0, 1 << 20, (3 << 20) - 1])
def test_a_flipped_byte_is_caught_and_named(tmp_path: Path, offset: int) -> None:
    root, sums = medium(tmp_path)
    p = root / "live/filesystem.squashfs"
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x01
    p.write_bytes(bytes(data))
    (root / "live/vmlinuz").unlink()
    res = verify.check_tree(str(root), sums)
    assert [name for name, _ in res.bad] == ["live/filesystem.squashfs", "live/vmlinuz"]
    assert res.lines()[0].startswith("check: live/filesystem.squashfs: SHA-256 mismatch: ")
    assert res.lines()[1] == "check: live/vmlinuz: missing"
