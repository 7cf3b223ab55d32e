"""QEMU: a stick `liveinit usb --persistence-encrypt --keymap de-latin1` wrote (on this host,
which has no device-mapper: the LUKS2 header only, marked for the first open) boots from USB
through its own boot loaders, SeaBIOS (syslinux) then OVMF (shim, signed GRUB). The test types
the passphrase: on the serial console at the first boot (the runtime then makes the ext4 inside),
on the emulated PS/2 keyboard at the second (the de-latin1 keys y z [ type z y ü). The second
boot finds the first one's write; the raw partition holds none of it in clear; three wrong
passphrases end in a RAM-only writable layer, said on the console, and the boot goes on.

One stick is made for the module (about 25 s); the wrong-passphrase boot takes a copy."""
from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from test_layers_boot import Guest
from test_usb_boot import STICK

from liveinit.contract import DEMO_OK, PASSPHRASE_PROMPT, PERSISTENCE_FRESH
from packer.cli import main
from packer.kernel import KernelTree
from packer.usb import LUKS_HEADER
from qemu import lab
from qemu.demoroot import STAMP
from qemu.profiles import Firmware, Profile

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PASSPHRASE = "zyüstick"
# On the PS/2 keyboard with de-latin1 loaded: QEMU's (US) key names that type PASSPHRASE.
PASSPHRASE_KEYS = ["y", "z", "bracket_left", "s", "t", "i", "c", "k", "ret"]
PROMPT = PASSPHRASE_PROMPT.split("{")[0]      # "Passphrase for "
BOOT_TIMEOUT = 600.0
FALLBACK_BOUND_S = 150.0     # first prompt -> the live system up on RAM, three wrong passphrases typed
DEMO_LINE = re.compile(re.escape(DEMO_OK) + r" .*")


class StickGuest(Guest):
    """The stick booted by its firmware (no -kernel), the serial console and the monitor on
    sockets as in test_layers_boot."""

    def __init__(self, stick: Path, firmware: Firmware, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        cmd = lab.command(Profile(f"stick+{firmware}", STICK, firmware), stick, work, None,
                          accel_args=lab.accel())
        self.launch(cmd, work)

    def demo(self) -> dict[str, str]:
        """The demo init's report line as a dict (root=, writable=, persisted=, init=)."""
        line = self.line(DEMO_OK, BOOT_TIMEOUT)
        return dict(w.split("=", 1) for w in line.split()[1:] if "=" in w)


@pytest.fixture
def guest(tmp_path: Path):  # type: ignore[no-untyped-def]
    guests: list[StickGuest] = []

    def start(stick: Path, firmware: Firmware) -> StickGuest:
        g = StickGuest(stick, firmware, tmp_path / f"boot{len(guests)}")
        guests.append(g)
        return g

    yield start
    for g in guests:
        g.close()


@pytest.fixture(scope="module")
def stick(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qemu.demoroot import build_demo_root
    work = tmp_path_factory.mktemp("usb-luks")
    root = build_demo_root(work / "root")
    secret = work / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    out = work / "stick.img"
    # small argon2id costs: the TCG guest opens it in seconds (real sticks keep the defaults)
    assert main(["usb", str(root), str(out), "--size", "300M", "--persistence", "rest",
                 "--persistence-encrypt", "--passphrase-file", str(secret), "--luks-iter-time", "200",
                 "--luks-pbkdf-memory", "32768",
                 "--keymap", "de-latin1", "--kernel-root", str(kernel.root), "--all-root"]) == 0
    return out


def _partition(stick: Path, number: int) -> tuple[int, int]:
    """(start, size) in bytes of partition `number`, read with sfdisk."""
    table = subprocess.run(["sfdisk", "-d", str(stick)], check=True, capture_output=True, text=True).stdout
    start, size = (int(f.split("=")[1]) for f in table.split(f"{stick}{number} :")[1].split(",")[:2])
    return start * 512, size * 512


def _luks_identity(stick: Path) -> dict[str, str]:
    start, _ = _partition(stick, 2)
    out = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(start), str(stick)],
                         capture_output=True, text=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_encrypted_stick_keeps_the_write_bios_then_uefi_with_no_plaintext(stick: Path, guest) -> None:  # type: ignore[no-untyped-def]
    before = _luks_identity(stick)
    assert (before["TYPE"], before["LABEL"], before["SUBSYSTEM"]) == ("crypto_LUKS", "persistence",
                                                                      PERSISTENCE_FRESH)

    first = guest(stick, Firmware.BIOS)
    first.expect(PROMPT + "/dev/sd")
    first.type(PASSPHRASE + "\n")          # UTF-8 on the serial line: no keymap in the way
    demo = first.demo()
    text = first.text()
    assert "SYSLINUX" in text
    assert "persistence-encryption=luks" in text and "vconsole.keymap=de-latin1" in text   # the menu
    assert "keymap: de-latin1 loaded" in text
    assert "first open: made ext4 'persistence' inside" in text
    assert "(ext4) holds the writable layer" in text
    assert (demo["root"], demo["writable"], demo["persisted"]) == ("overlay", "yes", "no")
    assert PASSPHRASE not in text                                     # no echo
    first.close()
    after = _luks_identity(stick)
    assert after["LABEL"] == "persistence" and "SUBSYSTEM" not in after   # the mark is gone
    assert after["UUID"] == before["UUID"]

    second = guest(stick, Firmware.UEFI)
    second.expect(PROMPT + "/dev/sd")
    second.sendkeys(PASSPHRASE_KEYS)        # through the de-latin1 keymap on tty0
    demo2 = second.demo()
    text2 = second.text()
    assert "wrong passphrase" not in text2 and "first open" not in text2
    assert (demo2["root"], demo2["persisted"]) == ("overlay", "yes")
    second.close()

    # The raw partition: the demo's stamp file (name, directory, content) is nowhere in clear.
    start, size = _partition(stick, 2)
    with stick.open("rb") as f:
        f.seek(start)
        raw = f.read(size)
    zero = bytes(4096)
    written = sum(1 for i in range(LUKS_HEADER, size, 4096) if raw[i:i + 4096] != zero)
    assert written > 100, "the ext4 and the live system's writes went somewhere else"
    for needle in (Path(STAMP).name.encode(), b"liveinit-demo", b"liveinit-rw"):
        assert needle not in raw, needle
    for pid in (demo["init"], demo2["init"]):                  # the stamp's content: "PID EPOCH\n"
        assert not re.search(rb"(?<!\d)" + pid.encode() + rb" \d{10}\n", raw)


def test_three_wrong_passphrases_boot_with_a_ram_layer(stick: Path, guest, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "stick.img"
    subprocess.run(["cp", "--sparse=always", str(stick), str(copy)], check=True)
    g = guest(copy, Firmware.BIOS)
    first = g.expect(PROMPT + "/dev/sd")
    for _ in range(3):
        g.type("wrong\n")
        g.expect("wrong passphrase for /dev/sd")
    demo = g.demo()
    up = time.monotonic()
    text = g.text()
    assert "3 wrong passphrases" in text
    assert "changes will be lost at power-off (tmpfs)" in text
    assert (demo["root"], demo["writable"], demo["persisted"]) == ("overlay", "yes", "no")
    assert up - first < FALLBACK_BOUND_S, f"{up - first:.0f} s from the prompt to the live system"
