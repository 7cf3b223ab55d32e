"""crypttab: the one reader (liveinit/crypttab.py), what `pack` bakes from it
(packer/crypttab.py: which entries, their key files, the image's mode 0600),
and the runtime opening a baked volume with its key file before it asks."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from liveinit import command, crypttab, layers
from liveinit.cmdline import parse as parse_cmdline
from liveinit.contract import CRYPTTAB, KEY_DIR
from liveinit.discovery import NullLoader
from packer import blocktools
from packer import crypttab as bake
from packer.errors import CommandError
from qemu.fakesysfs import log_text, quiet_log
from tests.test_layers import LUKS_INFO, LUKS_UUID, Prompt, Runner, _machine

SAMPLE = f"""\
# <target> <source> <key file> <options>
cryptroot UUID={LUKS_UUID} none luks,discard,initramfs
home      /dev/disk/by-uuid/AAAAAAAA-0000-4000-8000-000000000000 /etc/keys/home.key luks
swap      /dev/sdb2 /dev/urandom swap,cipher=aes-xts-plain64,size=256
data      LABEL=data - luks,keyfile-offset=16,keyfile-size=32,initramfs
"""


# -- the reader ---------------------------------------------------------------------------------
def test_parse_fields_defaults_and_options() -> None:
    entries, errors = crypttab.parse(SAMPLE + "\n   \n")
    assert errors == []
    assert [e.name for e in entries] == ["cryptroot", "home", "swap", "data"]
    root, home, swap, data = entries
    assert (root.source, root.keyfile, root.line) == (f"UUID={LUKS_UUID}", "", 2)
    assert root.option("initramfs") == "" and root.option("tries") is None
    assert home.uuid() == "aaaaaaaa-0000-4000-8000-000000000000"          # by-uuid, lower case
    assert home.keyfile == "/etc/keys/home.key"
    assert swap.option("size") == "256" and swap.uuid() == ""
    assert data.keyfile == "" and data.option("keyfile-size") == "32"     # "-" asks, as "none"
    assert crypttab.Entry("x", "UUID=luks-" + LUKS_UUID.upper()).uuid() == LUKS_UUID


def test_parse_errors_name_the_line() -> None:
    entries, errors = crypttab.parse("ok /dev/sda1\nlonely\na/b /dev/sda2\n1 2 3 4 5\n")
    assert [e.name for e in entries] == ["ok"]
    assert errors[0].startswith("line 2: 1 fields")
    assert errors[1].startswith("line 3: the name 'a/b'")
    assert errors[2].startswith("line 4: 5 fields")


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)
words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10)


@given(st.lists(st.tuples(names, st.sampled_from(["UUID=", "LABEL=", "/dev/", "PARTUUID="]), words,
                          st.one_of(st.just(""), words.map(lambda w: "/etc/" + w)),
                          st.lists(st.tuples(words, st.one_of(st.just(""), words)), max_size=4)),
                max_size=6))
def test_render_parse_round_trip(specs: list[tuple[str, str, str, str, list[tuple[str, str]]]]) -> None:
    entries = [crypttab.Entry(n, kind + src, key, ",".join(k + (f"={v}" if v else "") for k, v in opts))
               for n, kind, src, key, opts in specs]
    back, errors = crypttab.parse(crypttab.render(entries))
    assert errors == []
    assert [(e.name, e.source, e.keyfile, e.options or "luks") for e in back] == \
        [(e.name, e.source, e.keyfile, e.options or "luks") for e in entries]


def test_find_by_uuid_label_and_path() -> None:
    entries, _ = crypttab.parse(SAMPLE + "byname /dev/vdc none luks\n")
    assert crypttab.find(entries, "/dev/vda", {"UUID": LUKS_UUID}).name == "cryptroot"  # type: ignore[union-attr]
    assert crypttab.find(entries, "/dev/vdb", {"UUID": "1-2", "LABEL": "data"}).name == "data"  # type: ignore[union-attr]
    assert crypttab.find(entries, "/dev/vdc", {"UUID": "3-4"}).name == "byname"  # type: ignore[union-attr]
    assert crypttab.find(entries, "/dev/vdd", {"UUID": "5-6"}) is None


# -- what pack bakes ----------------------------------------------------------------------------
def _tab(tmp_path: Path, text: str) -> list[crypttab.Entry]:
    p = tmp_path / "crypttab"
    p.write_text(text)
    return bake.read(p)


def test_bake_chooses_initramfs_and_root_entries(tmp_path: Path) -> None:
    key = tmp_path / "root.key"
    key.write_bytes(b"\x00secret\xff" * 8)
    key.chmod(0o400)
    entries = _tab(tmp_path, f"cryptroot /dev/vda2 {key} luks,discard\n"
                             "home UUID=11111111-2222-4333-8444-555555555555 none luks\n"
                             "data LABEL=data none luks,initramfs\n"
                             "scratch /dev/vdb /dev/urandom plain,cipher=aes-xts-plain64,initramfs\n")
    resolved = {"/dev/vda2": LUKS_UUID, "LABEL=data": None}
    b = bake.bake(entries, {"cryptroot"}, resolve=resolved.get)
    assert [e.render() for e in b.entries] == [
        f"cryptroot UUID={LUKS_UUID} {KEY_DIR}/cryptroot.key luks,discard",   # the root's chain
        "data LABEL=data none luks,initramfs"]                                # unresolved: as written
    assert b.keys == ("cryptroot",)
    files = {name: (data, mode) for name, data, mode in b.files}
    assert files[f"{KEY_DIR}/cryptroot.key"] == (key.read_bytes(), 0o400)
    assert files[CRYPTTAB] == (crypttab.render(list(b.entries)).encode(), 0o600)
    assert any(n.startswith("home: not baked (not under the root") for n in b.notes)
    assert any(n.startswith("scratch: not baked: a plain volume") for n in b.notes)


def test_bake_keys_it_cannot_carry_fall_back_to_the_passphrase(tmp_path: Path) -> None:
    loose = tmp_path / "loose.key"
    loose.write_bytes(b"k" * 64)
    loose.chmod(0o644)
    entries = _tab(tmp_path, f"a UUID={LUKS_UUID} /dev/sdz luks,initramfs\n"
                             f"b UUID={LUKS_UUID} /missing.key luks,initramfs\n"
                             f"c UUID={LUKS_UUID} none luks,initramfs,tpm2-device=auto\n"
                             f"d UUID={LUKS_UUID} {loose} luks,initramfs\n"
                             f"e UUID={LUKS_UUID} /key.img:UUID=1234 luks,initramfs\n")
    b = bake.bake(entries, set(), resolve=lambda s: None)
    by = {e.name: e for e in b.entries}
    assert by["a"].keyfile == by["b"].keyfile == by["c"].keyfile == by["e"].keyfile == ""
    assert by["c"].options == "luks,initramfs"                     # the unsupported key source dropped
    assert by["d"].keyfile == f"{KEY_DIR}/d.key" and b.keys == ("d",)
    notes = "\n".join(b.notes)
    assert "a: key file /dev/sdz is on a device" in notes
    assert "b: key file /missing.key: No such file or directory" in notes
    assert "c: tpm2-device= is not supported at boot" in notes
    assert "readable by others (mode 0644): chmod 0400 it" in notes
    assert "e: key file /key.img:UUID=1234 is on a device" in notes


def test_bake_nothing_without_a_crypttab(tmp_path: Path) -> None:
    assert bake.for_pack(None, host_only=False) == bake.Baked()
    b = bake.bake(_tab(tmp_path, "home UUID=x none luks\n"), set(), resolve=lambda s: None)
    assert b.entries == () and b.files == ()
    with pytest.raises(CommandError, match="line 1: 1 fields"):
        _tab(tmp_path, "broken\n")
    with pytest.raises(CommandError, match="cannot read the crypttab"):
        bake.read(tmp_path / "none")


def test_host_only_reads_the_hosts_crypttab_and_follows_the_root(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from packer import hostonly
    tab = tmp_path / "crypttab"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} none luks\nhome UUID=1-2 none luks\n")
    monkeypatch.setattr(bake, "HOST_CRYPTTAB", tab)
    monkeypatch.setattr(hostonly, "root_filesystem", lambda mountpoint: ("/dev/mapper/vg-root", "ext4"))
    monkeypatch.setattr(blocktools, "device_name", {"/dev/mapper/vg-root": "dm-0"}.get)
    monkeypatch.setattr(blocktools, "crypt_names_below", {"dm-0": {"cryptroot"}}.get)
    b = bake.for_pack(None, host_only=True)
    assert [e.name for e in b.entries] == ["cryptroot"]
    assert bake.for_pack(None, host_only=False) == bake.Baked()     # the host's file only with --host-only
    monkeypatch.setattr(bake, "HOST_CRYPTTAB", tmp_path / "none")
    assert bake.for_pack(None, host_only=True) == bake.Baked()      # no /etc/crypttab: nothing to bake


def test_blkid_resolves_a_source_to_its_luks_uuid(tmp_path: Path) -> None:
    """blkid as the host's oracle: a LUKS2 header written by cryptsetup into a file."""
    img = tmp_path / "luks.img"
    img.write_bytes(b"\0" * (20 << 20))
    r = os.system("printf pw | cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 "
                  f"--pbkdf-force-iterations 1000 --uuid {LUKS_UUID} --label vault --key-file=- {img} "
                  ">/dev/null 2>&1")
    assert r == 0
    assert bake.source_uuid(str(img)) == f"UUID={LUKS_UUID}"
    assert bake.source_uuid("/dev/disk/by-uuid/" + LUKS_UUID.upper()) == f"UUID={LUKS_UUID}"
    assert bake.source_uuid(str(tmp_path / "nothing")) == str(tmp_path / "nothing")


def test_crypt_names_below_the_root(tmp_path: Path) -> None:
    """LVM (dm-0) on LUKS (dm-1, cryptroot) on md127: the mapper name of the LUKS volume."""
    blk = tmp_path / "class" / "block"
    for n, uuid, name in (("dm-0", "LVM-abc", "vg-root"),
                          ("dm-1", "CRYPT-LUKS2-5e5e-cryptroot", "cryptroot")):
        (blk / n / "dm").mkdir(parents=True)
        (blk / n / "dm" / "uuid").write_text(uuid + "\n")
        (blk / n / "dm" / "name").write_text(name + "\n")
        (blk / n / "slaves").mkdir()
    (blk / "md127" / "md").mkdir(parents=True)
    os.symlink("../../dm-1", blk / "dm-0" / "slaves" / "dm-1")
    os.symlink("../../md127", blk / "dm-1" / "slaves" / "md127")
    assert blocktools.crypt_names_below("dm-0", tmp_path) == {"cryptroot"}
    assert blocktools.crypt_names_below("md127", tmp_path) == set()


# -- the runtime: key file first, then the prompt -----------------------------------------------
def _with_tab(tmp_path: Path, text: str, key: bytes | None = b"k" * 32) -> None:
    (tmp_path / CRYPTTAB.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / CRYPTTAB.lstrip("/")).write_text(text)
    if key is not None:
        (tmp_path / KEY_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (tmp_path / KEY_DIR.lstrip("/") / "cryptroot.key").write_bytes(key)


TAB = f"cryptroot UUID={LUKS_UUID} {KEY_DIR}/cryptroot.key luks,discard,keyfile-size=32,initramfs\n"


def test_a_baked_key_opens_the_volume_without_asking(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    _with_tab(tmp_path, TAB)
    run, prompt, log = Runner({}), Prompt([]), quiet_log()
    ly = layers.Layers(m, parse_cmdline("root=/dev/mapper/cryptroot"), NullLoader(), log, prompt,  # type: ignore[arg-type]
                       run=run)
    assert ly.offer("/dev/vda", LUKS_INFO)
    argv, stdin = run.calls[0]
    assert argv == ["/usr/sbin/cryptsetup", "open", "--type", "luks",
                    f"--key-file={tmp_path}{KEY_DIR}/cryptroot.key", "--keyfile-size=32", "--allow-discards",
                    f"{tmp_path}/dev/vda", "cryptroot"]
    assert stdin == b"" and prompt.asked == []
    assert ly.opened[0]["key"] == f"{KEY_DIR}/cryptroot.key" and ly.opened[0]["name"] == "cryptroot"
    assert "with key file" in log_text(log) and "ignored" not in log_text(log)


def test_a_key_that_does_not_open_it_falls_back_to_the_prompt(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    _with_tab(tmp_path, TAB)

    def open_(argv: list[str], stdin: bytes) -> command.Result:
        return command.Result(0 if stdin == b"pw" else 2, "No key available with this passphrase.", 0.1)

    run, prompt, log = Runner({"cryptsetup open": open_}), Prompt([b"pw"]), quiet_log()
    ly = layers.Layers(m, parse_cmdline("root=UUID=x"), NullLoader(), log, prompt, run=run)  # type: ignore[arg-type]
    assert ly.offer("/dev/vda", LUKS_INFO)
    assert len(run.calls) == 2 and len(prompt.asked) == 1
    assert "--key-file=-" in run.calls[1][0] and not any("keyfile-size" in a for a in run.calls[1][0])
    assert "key file /etc/liveinit/keys/cryptroot.key does not open it (it is not a key of this volume)" \
        in log_text(log)
    assert ly.opened[0]["key"] == "passphrase"


def test_a_missing_key_file_asks_and_a_crypttab_entry_is_opened_in_a_live_search(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    _with_tab(tmp_path, TAB, key=None)
    run, prompt = Runner({}), Prompt([b"pw"])
    ly = layers.Layers(m, parse_cmdline(""), NullLoader(), quiet_log(), prompt, run=run,  # type: ignore[arg-type]
                       for_root=False)
    assert ly.offer("/dev/vda", LUKS_INFO)                      # named by crypttab: opened
    assert run.calls[0][0][-1] == "cryptroot" and len(prompt.asked) == 1
    assert any("is not in the image" in t for t in ly.tried)


def test_the_command_line_wins_over_crypttab(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    _with_tab(tmp_path, TAB)
    run = Runner({})
    cfg = parse_cmdline(f"root=UUID=x rd.luks.name={LUKS_UUID}=other rd.luks.options={LUKS_UUID}=readonly")
    ly = layers.Layers(m, cfg, NullLoader(), quiet_log(), Prompt([]), run=run)  # type: ignore[arg-type]
    assert ly.offer("/dev/vda", LUKS_INFO)
    argv = run.calls[0][0]
    assert argv[-1] == "other" and "--readonly" in argv and "--allow-discards" not in argv
    run2 = Runner({})
    off = parse_cmdline("root=UUID=x rd.luks=0")
    ly2 = layers.Layers(m, off, NullLoader(), quiet_log(), Prompt([]), run=run2)  # type: ignore[arg-type]
    assert not ly2.offer("/dev/vda", LUKS_INFO) and run2.calls == []


def test_a_baked_volume_that_never_appears_is_reported(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    _with_tab(tmp_path, TAB + "broken line with too many fields here\n")
    log = quiet_log()
    ly = layers.Layers(m, parse_cmdline("root=UUID=x"), NullLoader(), log, Prompt([]))  # type: ignore[arg-type]
    assert f"  LUKS volume cryptroot ({CRYPTTAB}: UUID={LUKS_UUID}): no such device appeared" in ly.report()
    assert "line 2: 7 fields" in log_text(log)


def test_pack_bakes_the_key_and_writes_the_image_owner_only(tmp_path: Path, kernel: object) -> None:
    from packer import initramfs
    from packer.config import PackConfig
    from packer.cpio import read_archive
    key = tmp_path / "root.key"
    key.write_bytes(os.urandom(64))
    key.chmod(0o400)
    tab = tmp_path / "crypttab"
    tab.write_text(f"cryptroot UUID={LUKS_UUID} {key} luks,initramfs\nhome UUID=1-2 none luks\n")
    out = tmp_path / "initrd.img"
    out.write_bytes(b"old")
    out.chmod(0o644)
    res = initramfs.build(PackConfig(output=out, moddir=kernel.moddir, microcode=False,  # type: ignore[attr-defined]
                                     groups=(), compress="none", crypttab=tab))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and res.key_files == ("cryptroot",)
    img = {e.name: e for seg in read_archive(out.read_bytes()) for e in seg.entries}
    assert img[KEY_DIR.lstrip("/") + "/cryptroot.key"].data == key.read_bytes()
    assert stat.S_IMODE(img[KEY_DIR.lstrip("/") + "/cryptroot.key"].mode) == 0o400
    assert stat.S_IMODE(img[KEY_DIR.lstrip("/")].mode) == 0o700
    assert img[CRYPTTAB.lstrip("/")].data.decode() == \
        f"cryptroot UUID={LUKS_UUID} {KEY_DIR}/cryptroot.key luks,initramfs\n"
    assert any(n.endswith("/cryptsetup") for n in img) and "dm_crypt" in res.modules   # LUKS implied
    # without a key file the image is not secret
    tab.write_text(f"cryptroot UUID={LUKS_UUID} none luks,initramfs\n")
    res = initramfs.build(PackConfig(output=out, moddir=kernel.moddir, microcode=False,  # type: ignore[attr-defined]
                                     groups=(), compress="none", crypttab=tab))
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 & ~_umask() and res.key_files == ()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old
