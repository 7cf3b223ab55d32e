"""Layers under the root (liveinit/layers.py, layerprobe.py) without a kernel:
superblock identities against blkid, the LUKS/LVM/md decisions with a
recording tool runner and a scripted prompt, and the root search opening a
LUKS volume on a fake sysfs tree whose dm device appears when cryptsetup
"runs"."""
from __future__ import annotations

import os
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from liveinit import blockdev, command, layerprobe, layers, rootfind
from liveinit.cmdline import parse
from liveinit.discovery import Discovery, NullLoader
from liveinit.emergency import BootFailure
from liveinit.machine import Machine
from packer import blocktools
from qemu.fakes import FakeSyscalls, FakeUevents
from qemu.fakesysfs import SysfsBuilder, log_text, quiet_log

LUKS_UUID = "5e5e5e5e-1111-4222-8333-444444444444"
ROOT_UUID = "0c0c0c0c-aaaa-4bbb-8ccc-dddddddddddd"


def blkid(path: Path) -> dict[str, str]:
    out = subprocess.run(["blkid", "-p", "-o", "export", str(path)], capture_output=True, text=True).stdout
    keys = {}
    for line in out.splitlines():
        k, _, v = line.partition("=")
        if k not in ("DEVNAME", "USAGE"):
            keys[k] = v.replace("\\ ", " ")
    return keys


# -- identities against blkid ------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--type", "luks1"],
                                  ["--type", "luks2", "--label", "persistence", "--subsystem", "sub"],
                                  ["--type", "luks2"]])
def test_luks_headers_match_blkid(tmp_path: Path, args: list[str]) -> None:
    img = tmp_path / "luks.img"
    img.write_bytes(b"")
    os.truncate(img, 20 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "-q", *args, "--pbkdf", "pbkdf2", "--iter-time", "10",
                    "--key-file=-", str(img)], input=b"pw", check=True)
    got = layerprobe.probe(str(img))
    assert got == blkid(img)
    assert got["TYPE"] == "crypto_LUKS"


def _md1(size: int, offset: int, level: int = 1) -> tuple[bytes, bytes, bytes]:
    """An md v1 superblock for a device of `size` bytes at byte `offset` (with a valid checksum)."""
    set_uuid, dev_uuid = uuid.uuid4().bytes, uuid.uuid4().bytes
    sb = bytearray(4096)
    struct.pack_into("<IIII", sb, 0, 0xA92B4EFC, 1, 0, 0)
    sb[16:32] = set_uuid
    sb[32:41] = b"host:root"
    struct.pack_into("<QiiQII", sb, 64, 0, level, 0, (size - 2 * 1024 * 1024) // 512, 0, 2)
    struct.pack_into("<QQQ", sb, 128, 2048, (size - 2 * 1024 * 1024) // 512, offset // 512)
    sb[168:184] = dev_uuid
    struct.pack_into("<I", sb, 220, 2)                 # max_dev
    n = 256 + 2 * 2
    total = sum(struct.unpack_from(f"<{n // 4}I", sb, 0))
    struct.pack_into("<I", sb, 216, ((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF)
    return bytes(sb), set_uuid, dev_uuid


@pytest.mark.parametrize("where", ["1.2", "1.1", "1.0"])
def test_md_v1_superblocks_match_blkid(tmp_path: Path, where: str) -> None:
    size = 32 << 20
    offset = {"1.2": 4096, "1.1": 0, "1.0": ((size // 512 - 16) & ~7) * 512}[where]
    sb, set_uuid, dev_uuid = _md1(size, offset)
    img = tmp_path / "md.img"
    with img.open("wb") as f:
        f.truncate(size)
        f.seek(offset)
        f.write(sb)
    got = layerprobe.probe(str(img))
    assert got == blkid(img)
    assert got["UUID"] == str(uuid.UUID(bytes=set_uuid)) and got["LABEL"] == "host:root"
    assert layerprobe.md_level(str(img)) == 1


def test_md_superblock_checksum_is_not_verified_as_in_blkid(tmp_path: Path) -> None:
    sb, _, _ = _md1(32 << 20, 4096)
    bad = bytearray(sb)
    bad[40] ^= 1
    img = tmp_path / "md.img"
    with img.open("wb") as f:
        f.truncate(32 << 20)
        f.seek(4096)
        f.write(bad)
    assert layerprobe.probe(str(img)) == blkid(img) != {}


def test_lvm_label_matches_blkid(tmp_path: Path) -> None:
    """A label as pvcreate writes it (sector 1, pv_header at +32), checked by blkid."""
    img = tmp_path / "pv.img"
    raw = "vmesJxxfiozFZVMm5UCrnGLYRwvGe3KU"
    label = bytearray(512)
    label[0:8] = b"LABELONE"
    struct.pack_into("<QII", label, 8, 1, 0, 32)
    label[24:32] = b"LVM2 001"
    label[32:64] = raw.encode()
    struct.pack_into("<I", label, 16, layerprobe.lvm_crc(bytes(label[20:])))
    with img.open("wb") as f:
        f.truncate(8 << 20)
        f.seek(512)
        f.write(label)
    got = layerprobe.probe(str(img))
    assert got == {"TYPE": "LVM2_member", "VERSION": "LVM2 001",
                   "UUID": "vmesJx-xfio-zFZV-Mm5U-CrnG-LYRw-vGe3KU"}
    assert got == blkid(img)


def test_norm_uuid_spellings() -> None:
    assert layerprobe.norm_uuid("luks-5E5E5E5E-1111-4222-8333-444444444444") == \
        "5e5e5e5e111142228333444444444444"
    assert layerprobe.norm_uuid("01234567:89abcdef:01234567:89ABCDEF") == layerprobe.norm_uuid(
        "01234567-89ab-cdef-0123-456789abcdef")


# -- options, names -----------------------------------------------------------------------------
def test_luks_options() -> None:
    flags, tries, timeout, ignored = layers.luks_options(
        "discard,tries=5,timeout=30s,header=/x,no-read-workqueue")
    assert flags == ["--allow-discards", "--perf-no_read_workqueue"]
    assert (tries, timeout, ignored) == (5, 30.0, ["header=/x"])
    assert layers.luks_options("") == ([], layers.TRIES, None, [])


def test_dm_and_md_aliases(tmp_path: Path) -> None:
    b = SysfsBuilder(tmp_path)
    d = b.disk(None, "dm-0", 254, 0, 2048)
    (d / "dm").mkdir()
    (d / "dm" / "name").write_text("my--vg-root--fs\n")
    (d / "dm" / "uuid").write_text("LVM-abc\n")
    e = b.disk(None, "dm-1", 254, 1, 2048)
    (e / "dm").mkdir()
    (e / "dm" / "name").write_text("cryptroot\n")
    (e / "dm" / "uuid").write_text("CRYPT-LUKS2-5e5e-cryptroot\n")
    b.disk(None, "md127", 9, 127, 2048)
    (tmp_path / "dev" / "md").mkdir(parents=True)
    os.symlink("../md127", tmp_path / "dev" / "md" / "root")
    m = Machine(str(tmp_path), FakeSyscalls(str(tmp_path)))
    assert layers.aliases(m, "dm-0") == {"/dev/mapper/my--vg-root--fs", "/dev/my-vg/root-fs"}
    assert layers.aliases(m, "dm-1") == {"/dev/mapper/cryptroot"}
    assert layers.aliases(m, "md127") == {"/dev/md/root"}
    # the packer's view of the same tree: LVM on LUKS on md
    os.makedirs(tmp_path / "sys" / "class" / "block" / "dm-0" / "slaves")
    os.symlink("../../dm-1", d / "slaves" / "dm-1")
    (e / "slaves").mkdir()
    os.symlink("../../md127", e / "slaves" / "md127")
    (tmp_path / "sys" / "class" / "block" / "md127" / "md").mkdir()
    assert blocktools.layers_below("dm-0", tmp_path / "sys") == {blocktools.Layer.LVM, blocktools.Layer.LUKS,
                                                                 blocktools.Layer.MD}
    assert blocktools.layers_below("dm-1", tmp_path / "sys") == {blocktools.Layer.LUKS, blocktools.Layer.MD}


# -- decisions with a recording runner -------------------------------------------------------------
class Runner:
    """Records argv and stdin; answers from `script` (argv[1] -> Result or callable)."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], bytes]] = []

    def __call__(self, argv: list[str], stdin: bytes = b"", timeout: float = 0) -> command.Result:
        self.calls.append((list(argv), bytes(stdin)))
        a = self.answers.get(os.path.basename(argv[0]) + " " + argv[1], command.Result(0, "", 0.01))
        return a(argv, stdin) if callable(a) else a  # type: ignore[return-value]


class Prompt:
    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, str]] = []
        self.given: list[bytearray] = []

    def ask(self, device: str, what: str, timeout: float | None = None) -> bytearray | None:
        self.asked.append((device, what))
        a = self.answers.pop(0)
        if a is None:
            return None
        b = bytearray(a)
        self.given.append(b)
        return b


def _machine(tmp_path: Path, tools: tuple[str, ...] = ("cryptsetup", "lvm", "mdadm")) -> Machine:
    sbin = tmp_path / "usr" / "sbin"
    sbin.mkdir(parents=True, exist_ok=True)
    for t in tools:
        (sbin / t).write_text("#!/bin/sh\n")
        (sbin / t).chmod(0o755)
    return Machine(str(tmp_path), FakeSyscalls(str(tmp_path)))


LUKS_INFO = {"TYPE": "crypto_LUKS", "VERSION": "2", "UUID": LUKS_UUID, "LABEL": "root"}


def test_luks_passphrase_goes_on_the_pipe_and_is_wiped(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    run = Runner({})
    prompt = Prompt([b"hunter2"])
    ly = layers.Layers(m, parse(f"root=/dev/mapper/r rd.luks.name={LUKS_UUID}=r rd.luks.options=discard"),
                       NullLoader(), quiet_log(), prompt, run=run)  # type: ignore[arg-type]
    assert ly.offer("/dev/vda", LUKS_INFO)
    argv, stdin = run.calls[0]
    assert argv == ["/usr/sbin/cryptsetup", "open", "--type", "luks", "--key-file=-", "--allow-discards",
                    f"{tmp_path}/dev/vda", "r"]
    assert stdin == b"hunter2"
    assert prompt.given[0] == bytearray(7)                       # wiped after use
    assert prompt.asked == [("/dev/vda", f"LUKS UUID={LUKS_UUID} LABEL=root")]
    assert ly.opened[0]["name"] == "r" and ly.opened[0]["tries"] == 1


def test_three_wrong_passphrases_leave_the_volume_locked(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    run = Runner({"cryptsetup open": command.Result(2, "No key available with this passphrase.", 0.5)})
    prompt = Prompt([b"a", None, b"c"])
    log = quiet_log()
    cfg = parse("root=UUID=" + ROOT_UUID)
    ly = layers.Layers(m, cfg, NullLoader(), log, prompt, run=run)  # type: ignore[arg-type]
    assert not ly.offer("/dev/vda", LUKS_INFO)
    assert len(prompt.asked) == 3 and len(run.calls) == 2    # an unanswered prompt runs nothing
    assert ly.refused is not None and "2 wrong passphrases, 1 prompt not answered in time" in ly.refused
    assert ly.opened == []
    assert "no passphrase typed in time" in log_text(log)


def test_cryptsetup_error_is_not_asked_again(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    run = Runner({"cryptsetup open": command.Result(4, "Device /dev/vda is not a valid LUKS device.", 0.1)})
    prompt = Prompt([b"a", b"b", b"c"])
    cfg = parse("root=UUID=" + ROOT_UUID)
    ly = layers.Layers(m, cfg, NullLoader(), quiet_log(), prompt, run=run)  # type: ignore[arg-type]
    ly.offer("/dev/vda", LUKS_INFO)
    assert len(prompt.asked) == 1
    assert ly.refused and "exit 4" in ly.refused


def test_cryptsetup_killed_is_reported_as_a_crash_not_a_wrong_passphrase(tmp_path: Path) -> None:
    """A cryptsetup that dies (argon2's threads abort without libgcc_s, say) is not the user's typing."""
    m = _machine(tmp_path)
    run = Runner({"cryptsetup open": command.Result(None, "libgcc_s.so.1 must be installed; killed by signal 6",
                                                    0.1)})
    prompt = Prompt([b"a", b"b", b"c"])
    ly = layers.Layers(m, parse("root=UUID=" + ROOT_UUID), NullLoader(), quiet_log(),  # type: ignore[arg-type]
                       prompt, run=run)
    ly.offer("/dev/vda", LUKS_INFO)
    assert len(prompt.asked) == 1
    assert ly.refused and "did not finish" in ly.refused and "signal 6" in ly.refused
    assert "wrong passphrase" not in ly.refused


def test_command_run_names_the_signal(tmp_path: Path) -> None:
    r = command.run(["/bin/sh", "-c", "echo before; kill -9 $$"])
    assert r.rc is None and "before" in r.out and "killed by signal 9" in r.out


@pytest.mark.parametrize("cmdline,opens,why", [
    ("root=UUID=x rd.luks=0", False, "skipped (rd.luks=0)"),
    ("root=UUID=x rd.luks.uuid=luks-00000000-0000-0000-0000-000000000000", False, "rd.luks.uuid= names"),
    ("root=UUID=x rd.luks.uuid=luks-" + LUKS_UUID.upper(), True, ""),
    ("", False, ""),        # a live search opens only what the command line names
])
def test_which_luks_volumes_are_opened(tmp_path: Path, cmdline: str, opens: bool, why: str) -> None:
    m = _machine(tmp_path)
    run = Runner({})
    cfg = parse(cmdline)
    ly = layers.Layers(m, cfg, NullLoader(), quiet_log(), Prompt([b"pw"]), run=run,  # type: ignore[arg-type]
                       for_root=not cfg.root.live)
    assert ly.offer("/dev/vda", LUKS_INFO) is opens
    assert bool(run.calls) is opens
    assert why in " ".join(ly.tried)


def test_missing_tool_names_the_pack_option(tmp_path: Path) -> None:
    m = _machine(tmp_path, tools=())
    ly = layers.Layers(m, parse("root=UUID=x"), NullLoader(), quiet_log(), Prompt([]))  # type: ignore[arg-type]
    assert not ly.offer("/dev/vdb", {"TYPE": "LVM2_member", "UUID": "abc"})
    assert ly.tried == ["LVM PV /dev/vdb (UUID=abc): lvm is not in the image "
                        "(pack with `liveinit pack --with lvm`)"]


def test_lvm_activates_the_named_lvs(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    active = '  1 logical volume(s) in volume group "vg0" now active'
    run = Runner({"lvm lvchange": command.Result(0, active, 0.2)})
    ly = layers.Layers(m, parse("root=/dev/vg0/root rd.lvm.lv=vg0/root"), NullLoader(), quiet_log(), None,
                       run=run)
    assert ly.offer("/dev/dm-0", {"TYPE": "LVM2_member", "UUID": "abc"})
    argv = run.calls[0][0]
    assert argv[:4] == ["/usr/sbin/lvm", "lvchange", "-ay", "--sysinit"] and argv[-1] == "vg0/root"
    assert "udev_sync=0" in argv[argv.index("--config") + 1]
    assert ly.opened[0]["what"] == '1 logical volume(s) in volume group "vg0" now active'
    run2 = Runner({})
    ly2 = layers.Layers(m, parse("root=/dev/vg0/root"), NullLoader(), quiet_log(), None, run=run2)
    ly2.offer("/dev/dm-0", {"TYPE": "LVM2_member", "UUID": "abc"})
    assert run2.calls[0][0][1] == "vgchange" and run2.calls[0][0][-1] == layers.LVM_CONFIG


def test_md_member_waits_then_starts_degraded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _machine(tmp_path)
    run = Runner({"mdadm --incremental": lambda argv, stdin: command.Result(
        0, "mdadm: /dev/md/root attached to /dev/md127, not enough to start (1)."
        if "--scan" not in argv else "mdadm: /dev/md127 has been started with 1 drive (out of 2).", 0.1)})
    log = quiet_log()
    ly = layers.Layers(m, parse("root=UUID=" + ROOT_UUID), NullLoader(), log, None, run=run)
    info = {"TYPE": "linux_raid_member", "UUID": "aa-bb", "LABEL": "h:root"}
    assert ly.offer("/dev/vda", info)
    assert run.calls[0][0] == ["/usr/sbin/mdadm", "--incremental", f"{tmp_path}/dev/vda"]
    assert not ly.tick()                                          # too early
    ly.md_waiting["aa-bb"] = time.monotonic() - layers.MD_DEGRADED_AFTER
    assert ly.tick()
    assert run.calls[-1][0] == ["/usr/sbin/mdadm", "--incremental", "--run", "--scan"]
    assert ly.opened[-1]["degraded"] is True
    assert "started degraded" in log_text(log)
    assert not ly.tick()                                          # once


def test_md_uuid_filter_and_report(tmp_path: Path) -> None:
    m = _machine(tmp_path)
    ly = layers.Layers(m, parse("root=UUID=x rd.md.uuid=01234567:89abcdef:01234567:89abcdef"), NullLoader(),
                       quiet_log(), None, run=Runner({}))
    other = {"TYPE": "linux_raid_member", "UUID": "ffffffff-0000-0000-0000-000000000000"}
    assert not ly.offer("/dev/vda", other)
    report = "\n".join(ly.report())
    assert "not assembled (rd.md.uuid= names" in report
    assert "md array 01234567:89abcdef:01234567:89abcdef (rd.md.uuid=): no member appeared" in report


# -- the root search opens the volume and finds the root inside ----------------------------------------
def test_root_search_opens_luks_and_finds_the_mapper_root(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    b = SysfsBuilder(tmp_path)
    (tmp_path / "dev").mkdir()
    b.disk(None, "vda", 253, 0, 64 * 2048)
    ids = {"vda": dict(LUKS_INFO)}
    monkeypatch.setattr(blockdev, "identify", lambda m, dev: dict(ids.get(dev.name, {})))
    m = _machine(tmp_path)

    def cryptsetup(argv: list[str], stdin: bytes) -> command.Result:
        assert stdin == b"pw"
        d = b.disk(None, "dm-0", 254, 0, 48 * 2048)
        (d / "dm").mkdir()
        (d / "dm" / "name").write_text(argv[-1] + "\n")
        ids["dm-0"] = {"TYPE": "ext4", "UUID": ROOT_UUID}
        return command.Result(0, "", 0.3)

    monkeypatch.setattr(command, "run", Runner({"cryptsetup open": cryptsetup}))
    monkeypatch.setattr("liveinit.passphrase.Prompt.ask", lambda *a, **kw: bytearray(b"pw"))
    cfg = parse(f"root=/dev/mapper/cryptroot rd.luks.name={LUKS_UUID}=cryptroot rootdelay=2")
    log = quiet_log()
    found = rootfind.find_root(m, cfg, "", Discovery(m, NullLoader(), FakeUevents(), log, walk=False), log)
    assert (found.device, found.fstype) == ("/dev/dm-0", "ext4")
    assert [o["name"] for o in found.layers] == ["cryptroot"]


def test_root_search_failure_lists_the_locked_volume(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    b = SysfsBuilder(tmp_path)
    (tmp_path / "dev").mkdir()
    b.disk(None, "vda", 253, 0, 64 * 2048)
    monkeypatch.setattr(blockdev, "identify", lambda m, dev: dict(LUKS_INFO))
    m = _machine(tmp_path)
    monkeypatch.setattr(command, "run", Runner({"cryptsetup open": command.Result(2, "No key", 0.1)}))
    monkeypatch.setattr("liveinit.passphrase.Prompt.ask", lambda *a, **kw: bytearray(b"x"))
    cfg = parse(f"root=UUID={ROOT_UUID} rootdelay=30")
    log = quiet_log()
    begun = time.monotonic()
    with pytest.raises(BootFailure) as e:
        rootfind.find_root(m, cfg, "", Discovery(m, NullLoader(), FakeUevents(), log, walk=False), log)
    assert time.monotonic() - begun < 5            # not the whole rootdelay: nothing more will come
    msg = e.value.message
    assert "LUKS /dev/vda (UUID=" + LUKS_UUID + " LABEL=root): not opened: 3 wrong passphrases" in msg
    assert "rd.luks" in e.value.hint


# -- a LUKS persistence partition (stack) -------------------------------------------------------------
def _persistence_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: command.Result,
                       cmdline: str = "persistence") -> tuple[Machine, FakeSyscalls, object]:
    from liveinit import stack
    b = SysfsBuilder(tmp_path)
    (tmp_path / "dev").mkdir()
    b.disk(None, "vdb", 253, 16, 32 * 2048)
    vdb = tmp_path / "dev" / "vdb"
    with vdb.open("wb") as f:
        f.truncate(32 << 20)
    subprocess.run(["cryptsetup", "luksFormat", "-q", "--type", "luks2", "--label", "persistence",
                    "--pbkdf", "pbkdf2", "--iter-time", "10", "--key-file=-", str(vdb)],
                   input=b"pw", check=True)

    def cryptsetup(argv: list[str], stdin: bytes) -> command.Result:
        if answer.rc == 0:
            mapper = tmp_path / "dev" / "mapper" / argv[-1]
            mapper.parent.mkdir(exist_ok=True)
            subprocess.run(["mkfs.ext4", "-q", "-F", str(mapper), "8M"], check=True)
        return answer

    m = _machine(tmp_path)
    sysc = m.sys
    monkeypatch.setattr(command, "run", Runner({"cryptsetup open": cryptsetup}))
    monkeypatch.setattr("liveinit.passphrase.Prompt.ask", lambda *a, **kw: bytearray(b"pw"))
    log = quiet_log()
    cfg = parse(cmdline)
    discovery = Discovery(m, NullLoader(), FakeUevents(), log, walk=False)
    return m, sysc, lambda: (stack._writable(m, cfg, discovery, log), log)


def test_luks_persistence_is_opened_and_mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, writable = _persistence_world(tmp_path, monkeypatch, command.Result(0, "", 0.2))
    (base, what), log = writable()  # type: ignore[operator]
    assert base == "/run/liveinit/rw/liveinit-rw"
    assert what.startswith("persistence LABEL=persistence (LUKS /dev/vdb opened in ")
    assert ("mount", "/dev/mapper/liveinit-persistence", "/run/liveinit/rw", "ext4", 0, None) in \
        sysc.mount_calls()  # type: ignore[attr-defined]


def test_luks_persistence_locked_falls_back_to_ram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, writable = _persistence_world(tmp_path, monkeypatch, command.Result(2, "No key", 0.2))
    (base, what), log = writable()  # type: ignore[operator]
    assert (base, what) == ("/run/liveinit/rw", "tmpfs")
    assert "LABEL=persistence): 3 wrong passphrases; changes will be lost at power-off (tmpfs)" \
        in log_text(log)


def test_persistence_encryption_none_refuses_a_luks_partition(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    m, sysc, writable = _persistence_world(tmp_path, monkeypatch, command.Result(0, "", 0.2),
                                           "persistence persistence-encryption=none")
    (base, what), log = writable()  # type: ignore[operator]
    assert what == "tmpfs"
    assert "is LUKS-encrypted but persistence-encryption=none" in log_text(log)
