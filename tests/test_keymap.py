"""Console keymaps: compiled on the host with loadkeys -b (packer/keymap.py),
parsed and loaded with KDSKBENT by the runtime (liveinit/keymap.py), chosen
from the command line among those baked into the image."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from liveinit import keymap
from liveinit.cmdline import parse
from liveinit.contract import KEYMAP_DIR
from packer import keymap as pkeymap
from packer.errors import CommandError

KT_LETTER = 0xB00


@pytest.fixture(scope="module")
def german() -> bytes:
    return pkeymap.compile_keymap("de-latin1")


def test_german_swaps_y_and_z_and_has_umlauts(german: bytes) -> None:
    plain = {k: v for t, k, v in keymap.parse(german) if t == 0}
    assert plain[21] == KT_LETTER | ord("z")      # the US y key
    assert plain[44] == KT_LETTER | ord("y")      # the US z key
    assert plain[26] == KT_LETTER | 0xFC          # the US [ key: ü
    us = {k: v for t, k, v in keymap.parse(pkeymap.compile_keymap("us")) if t == 0}
    assert us[21] == KT_LETTER | ord("y")


def test_parse_rejects_what_is_not_a_binary_keymap(german: bytes) -> None:
    with pytest.raises(keymap.KeymapError, match="magic"):
        keymap.parse(b"keymaps 0-2\n")
    with pytest.raises(keymap.KeymapError, match="bytes of actions"):
        keymap.parse(german[:-2])


def test_unknown_keymap_names_the_fix() -> None:
    with pytest.raises(CommandError) as e:
        pkeymap.compile_keymap("no-such-layout")
    assert "no console keymap named no-such-layout" in str(e.value)
    with pytest.raises(CommandError):
        pkeymap.compile_keymap("../etc/passwd")


def test_the_first_keymap_is_the_baked_default() -> None:
    assert pkeymap.with_default("quiet", ("de-latin1", "fr")) == "vconsole.keymap=de-latin1 quiet"
    assert pkeymap.with_default("vconsole.keymap=fr", ("de-latin1",)) == "vconsole.keymap=fr"
    assert pkeymap.with_default("quiet", ()) == "quiet"
    # the kernel's command line overrides the baked default, live-boot's spelling too
    baked = pkeymap.with_default("", ("de-latin1",))
    assert parse("", baked).keymap == "de-latin1"
    assert parse("keyboard-layouts=fr,us", baked).keymap == "fr"
    assert parse("rd.vconsole.keymap=us", baked).keymap == "us"


@pytest.mark.parametrize("wanted,name", [("de-latin1", "de-latin1"), ("de", "de-latin1"),
                                         ("de-latin1-nodeadkeys", "de-latin1"), ("fr", None), (None, None)])
def test_choose_among_the_baked_keymaps(wanted: str | None, name: str | None) -> None:
    got, why = keymap.choose(wanted, ["de-latin1", "us"])
    assert got == name
    if wanted == "fr":
        assert "not in the image (it has: de-latin1, us)" in why


def test_load_sets_every_entry_with_kdskbent(tmp_path: Path, german: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl
    d = tmp_path / KEYMAP_DIR.lstrip("/")
    d.mkdir(parents=True)
    (d / "de-latin1.bmap").write_bytes(german)
    vt = tmp_path / "tty0"
    vt.write_text("")
    calls: list[tuple[int, bytes]] = []
    monkeypatch.setattr(fcntl, "ioctl", lambda fd, req, arg: calls.append((req, arg)))
    monkeypatch.setattr(keymap, "VTS", (str(vt),))
    km = keymap.Keymaps(str(tmp_path), "de")
    note = km.ensure()
    assert km.loaded == "de-latin1" and note.startswith("keymap: de-latin1 (asked: de) loaded")
    entries = keymap.parse(german)
    assert len(calls) == len(entries) + 1          # + the probe that the fd is a VT
    assert {req for req, _ in calls} == {keymap.KDSKBENT}
    assert struct.unpack("=BBH", calls[1 + 21][1]) == (0, 21, KT_LETTER | ord("z"))
    assert km.ensure() == note and len(calls) == len(entries) + 1   # loaded once


def test_no_vt_keeps_the_default(tmp_path: Path, german: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / KEYMAP_DIR.lstrip("/")
    d.mkdir(parents=True)
    (d / "de-latin1.bmap").write_bytes(german)
    monkeypatch.setattr(keymap, "VTS", (str(tmp_path / "missing"),))
    km = keymap.Keymaps(str(tmp_path), "de-latin1")
    assert "cannot load de-latin1" in km.ensure() and km.loaded is None
