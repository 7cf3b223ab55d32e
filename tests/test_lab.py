"""Boot lab: profile command lines (QEMU itself validates them), the console
parser (hypothesis on the timing lines), the accelerator choice, and the
promise that no QEMU process outlives a boot."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import given, settings, strategies as st

from liveinit import contract
from packer.cpio import ArchiveBuilder, image_bytes
from packer.kernel import KernelTree
from qemu import cmd_boot, console, lab, profiles

TINY_MARK = "tiny-initramfs-up"


def tiny_initramfs(path: Path, method: str = "gzip") -> Path:
    """A busybox initramfs whose /init prints a mark and powers off."""
    ar = ArchiveBuilder()
    ar.add_file("bin/busybox", src=Path("/bin/busybox"), mode=0o755)
    ar.add_symlink("bin/sh", "busybox")
    ar.add_dir("proc")
    ar.add_file("init", data=f"#!/bin/sh\n/bin/busybox echo {TINY_MARK}\n/bin/busybox poweroff -f\n".encode(),
                mode=0o755)
    path.write_bytes(image_bytes(ar, method))
    return path


REQUIRED_STORAGES = {"virtio-blk", "virtio-scsi", "ide-cd", "ahci-cd", "ahci-disk", "usb-xhci", "usb-ehci",
                     "nvme", "scsi-lsi", "sd-card"}


def test_every_required_profile_exists() -> None:
    assert REQUIRED_STORAGES <= set(profiles.STORAGES)
    assert {"bios-cd", "bios-usb", "uefi-cd", "uefi-usb"} <= set(profiles.names())
    assert profiles.STORAGES["ide-cd"].machine == "pc"
    assert profiles.STORAGES["ahci-cd"].machine == "q35" and profiles.STORAGES["ahci-disk"].machine == "q35"


def test_profile_names_resolve() -> None:
    p = profiles.profile("nvme")
    assert p.direct and p.storage.name == "nvme"
    p = profiles.profile("nvme+uefi")
    assert p.firmware is profiles.Firmware.UEFI and p.storage.name == "nvme"
    assert profiles.profile("bios-usb").storage.name.startswith("usb-")
    with pytest.raises(KeyError, match="ide-cd"):
        profiles.profile("floppy")
    with pytest.raises(KeyError):
        profiles.profile("nvme+coreboot")


def test_storage_args(tmp_path: Path) -> None:
    img = tmp_path / "x.iso"
    args = profiles.STORAGES["usb-xhci"].args(img)
    assert args[:2] == ["-drive", f"file={img},if=none,id=live,format=raw,media=disk,readonly=on"]
    assert "usb-storage,bus=xhci0.0,drive=live,removable=on" in args
    cd = profiles.STORAGES["ide-cd"].args(img, boot=True)
    assert "media=cdrom" in cd[1] and "ide-cd,drive=live,bus=ide.1,bootindex=0" in cd


def test_firmware_args(tmp_path: Path) -> None:
    assert profiles.Firmware.BIOS.args() == []
    uefi = profiles.Firmware.UEFI.args(tmp_path / "vars.fd")
    assert f"file={profiles.OVMF_CODE}" in uefi[1] and "readonly=on" in uefi[1]
    assert uefi[3].endswith(f"file={tmp_path / 'vars.fd'}")
    with pytest.raises(ValueError):
        profiles.Firmware.UEFI.args(None)


def test_direct_command_line(tmp_path: Path) -> None:
    img, k, rd = tmp_path / "a.iso", tmp_path / "vmlinuz", tmp_path / "initrd"
    img.write_bytes(b"\0" * 4096)
    cmd = lab.command(profiles.profile("virtio-blk"), img, tmp_path, tmp_path / "log", kernel=k, initrd=rd,
                      cmdline="console=ttyS0 x=1", disks=(tmp_path / "p.img",))
    assert cmd[0] == lab.QEMU and "-nodefaults" in cmd and "-no-reboot" in cmd
    assert cmd[cmd.index("-kernel") + 1] == str(k) and cmd[cmd.index("-initrd") + 1] == str(rd)
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 x=1"
    assert "virtio-rng-pci" in cmd and f"file:{tmp_path / 'log'}" in cmd
    assert "virtio-blk-pci,drive=extra0" in cmd
    assert cmd[cmd.index("-accel") + 1] == "tcg" and cmd[cmd.index("-cpu") + 1] == "max"


def test_firmware_boot_has_no_kernel_and_a_vars_copy(tmp_path: Path) -> None:
    img = tmp_path / "a.iso"
    img.write_bytes(b"\0" * 4096)
    cmd = lab.command(profiles.profile("uefi-cd"), img, tmp_path, tmp_path / "log")
    assert "-kernel" not in cmd
    assert (tmp_path / "OVMF_VARS.fd").read_bytes() == profiles.OVMF_VARS.read_bytes()
    assert any("bootindex=0" in a for a in cmd)


def test_sd_card_gets_a_power_of_two_copy(tmp_path: Path) -> None:
    img = tmp_path / "a.iso"
    img.write_bytes(b"\1" * 5000)
    cmd = lab.command(profiles.profile("sd-card"), img, tmp_path, tmp_path / "log", kernel=img, initrd=img)
    drive = next(a for a in cmd if a.startswith("file=") and "id=live" in a)
    copy = Path(drive.split(",")[0].removeprefix("file="))
    assert copy != img and copy.stat().st_size == 8192
    assert copy.read_bytes()[:5000] == img.read_bytes()
    assert "readonly=on" not in drive and "snapshot=on" in drive


@pytest.mark.qemu
@pytest.mark.parametrize("name", profiles.names() + ["nvme+uefi", "ahci-disk+bios", "interactive"])
def test_qemu_accepts_every_profile(name: str, tmp_path: Path, kernel: KernelTree) -> None:
    """QEMU as the oracle: it parses and realizes every device, paused (-S), then we stop it."""
    img = tmp_path / "a.iso"
    img.write_bytes(b"\0" * (1 << 20))
    interactive = name == "interactive"
    (tmp_path / "extra.img").write_bytes(b"\0" * 4096)
    prof = profiles.profile("ide-cd" if interactive else name)
    cmd = lab.command(prof, img, tmp_path, tmp_path / "log", kernel=kernel, initrd=img, cmdline="x",
                      disks=(tmp_path / "extra.img",) if interactive else (), interactive=interactive)
    proc = subprocess.Popen(cmd + ["-S"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        time.sleep(1.5)
        alive = proc.poll() is None
    finally:
        lab.kill_tree(proc.pid)
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert alive, f"QEMU rejected {name}: {err}"


# ---- console parser -------------------------------------------------------------

SAMPLE = """\
[    0.000000] Linux version 6.1.0-56-amd64
[    2.391000] Run /init as init process
liveinit: stage early 12 ms
[    2.500100] liveinit: stage early 12 ms
liveinit: stage cmdline 1.5 ms
liveinit: stage coldplug 840 ms
liveinit: stage findroot 310 ms
liveinit: stage stack 95 ms
liveinit: starting /sbin/init after 1290 ms
[    3.700000] liveinit-demo: init running
LIVEINIT-DEMO-OK uptime=3.75 root=overlay writable=yes persisted=no init=1
[    3.800000] reboot: Power down
"""


def test_parse_sample() -> None:
    r = lab.parse_console(SAMPLE)
    assert r.success and r.failure is None and not r.emergency_shell
    t = r.timings
    assert t.run_init == 2.391
    assert t.stages == {"early": 12.0, "cmdline": 1.5, "coldplug": 840.0, "findroot": 310.0, "stack": 95.0}
    assert [n for n, _ in t.stages_ms] == ["early", "cmdline", "coldplug", "findroot", "stack"]
    assert t.handover_ms == 1290.0 and r.init == "/sbin/init"
    assert t.init_started == 3.7 and t.uptime == 3.75
    assert t.in_initramfs == pytest.approx(1.309)
    assert r.demo == {"uptime": "3.75", "root": "overlay", "writable": "yes", "persisted": "no", "init": "1"}


def test_parse_demo_modules_line() -> None:
    r = lab.parse_console(SAMPLE)
    assert r.modules is None and r.boot_record is None
    text = SAMPLE.replace("LIVEINIT-DEMO-OK", "[    3.7] ahci: noise\nLIVEINIT-DEMO-MODULES record=yes "
                          "modules=ahci,nvme,nvme_core\nLIVEINIT-DEMO-OK")
    r = lab.parse_console(text)
    assert r.modules == ("ahci", "nvme", "nvme_core") and r.boot_record is True
    r = lab.parse_console("LIVEINIT-DEMO-MODULES record=no modules=\n")
    assert r.modules == () and r.boot_record is False


def test_parse_failure() -> None:
    text = ("[ 2.0] Run /init as init process\nliveinit: FAILED: no live medium found\n"
            "liveinit: hint: is the CD attached? try liveinit.debug\nliveinit: emergency shell\n")
    r = lab.parse_console(text)
    assert not r.success and r.failure == "no live medium found"
    assert r.hint == "is the CD attached? try liveinit.debug" and r.emergency_shell
    p = lab.parse_console("[ 1.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    assert p.failure == "kernel panic: VFS: Unable to mount root fs"


def test_parse_custom_success_regex() -> None:
    text = "Debian GNU/Linux 12 liveinit ttyS0\n\nliveinit login: "
    assert lab.parse_console(text, r"login:").success
    assert not lab.parse_console(text).success


STAGE_NAMES = st.sampled_from(["early", "cmdline", "coldplug", "findroot", "stack", "handover"])
MS = st.floats(min_value=0, max_value=1e6, allow_nan=False).map(lambda x: round(x, 3))
NOISE = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
                max_size=40).filter(lambda s: "liveinit" not in s and "Run " not in s)
STAMP = st.floats(min_value=0, max_value=99999, allow_nan=False).map(lambda x: round(x, 6))


def _ms(v: float) -> str:
    return f"{v:.3f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


@settings(max_examples=200, deadline=None)
@given(stages=st.lists(st.tuples(STAGE_NAMES, MS), max_size=8), noise=st.lists(NOISE, max_size=8),
       run_init=STAMP, handover=MS, prefix=st.booleans(), crlf=st.booleans())
def test_timing_lines_roundtrip(stages: list[tuple[str, float]], noise: list[str], run_init: float,
                                handover: float, prefix: bool, crlf: bool) -> None:
    lines = [f"[{run_init:12.6f}] Run /init as init process"]
    expected: dict[str, float] = {}
    for i, (name, ms) in enumerate(stages):
        if i < len(noise):
            lines.append(noise[i])
        pre = f"[{run_init + i:12.6f}] " if prefix else ""
        lines.append(f"{pre}liveinit: stage {name} {_ms(ms)} ms")
        expected.setdefault(name, float(_ms(ms)))
    lines.append(f"liveinit: starting /lib/systemd/systemd after {_ms(handover)} ms")
    text = ("\r\n" if crlf else "\n").join(lines) + "\n"
    r = lab.parse_console(text)
    assert r.timings.run_init == pytest.approx(run_init)
    assert r.timings.stages == expected
    assert [n for n, _ in r.timings.stages_ms] == list(expected)
    assert r.timings.handover_ms == float(_ms(handover))
    assert r.init == "/lib/systemd/systemd"
    assert not r.success and r.failure is None


@given(st.dictionaries(st.sampled_from(["uptime", "root", "writable", "persisted", "init"]),
                       st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=10),
                       min_size=1))
def test_demo_line_fields(fields: dict[str, str]) -> None:
    text = "LIVEINIT-DEMO-OK " + " ".join(f"{k}={v}" for k, v in fields.items()) + "\n"
    assert lab.parse_console(text).demo == fields


# ---- console patterns from the contract's formats ----------------------------------------

def test_line_pattern_escapes_literals_and_names_the_fields() -> None:
    p = console.line_pattern("a.b (x) {name} [{ms:.0f}] ms", name=console.WORD, ms=console.NUMBER)
    m = p.search("noise a.b (x) coldplug [840] ms")
    assert m is not None and m["name"] == "coldplug" and m["ms"] == "840"
    assert p.search("aXb (x) coldplug [840] ms") is None     # '.' is literal, not any character
    assert console.line_pattern("FAILED: {message}").search("FAILED: no medium: try X")["message"] == \
        "no medium: try X"                                   # no pattern given: the rest of the line
    with pytest.raises(ValueError, match="no field"):
        console.line_pattern("stage {name}", nmae=console.WORD)


@given(name=st.from_regex(r"[a-z_][a-z0-9_.-]{0,12}", fullmatch=True),
       ms=st.floats(min_value=0, max_value=1e7, allow_nan=False),
       init=st.from_regex(r"/[a-z/]{1,20}", fullmatch=True),
       text=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40))
def test_runtime_lines_parse_what_the_contract_formats(name: str, ms: float, init: str, text: str) -> None:
    """Each pattern reads back the fields of the line the runtime prints with the same format."""
    stage = console.STAGE.search(contract.PREFIX + contract.STAGE_LINE.format(name=name, ms=ms))
    assert stage is not None and stage["name"] == name and float(stage["ms"]) == round(ms)
    starting = console.STARTING.search(contract.PREFIX + contract.STARTING_LINE.format(init=init, ms=ms))
    assert starting is not None and starting["init"] == init and float(starting["ms"]) == round(ms)
    failed = console.FAILED.search(contract.PREFIX + contract.FAILED_LINE.format(message=text))
    assert failed is not None and failed["message"] == text
    hint = console.HINT.search(contract.PREFIX + contract.HINT_LINE.format(hint=text))
    assert hint is not None and hint["hint"] == text
    assert console.SHELL.search(contract.PREFIX + contract.SHELL_LINE)


@given(record=st.sampled_from(["yes", "no"]),
       modules=st.lists(st.from_regex(r"[a-z0-9_-]{1,10}", fullmatch=True), max_size=6))
def test_demo_modules_line_roundtrip(record: str, modules: list[str]) -> None:
    line = console.DEMO_MODULES_LINE.format(record=record, modules=",".join(modules))
    r = lab.parse_console(line + "\n")
    assert r.modules == tuple(modules) and r.boot_record is (record == "yes")


# ---- accelerator and cleanup -------------------------------------------------

def test_accel_env_override_and_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LIVEINIT_ACCEL", "tcg")
    assert lab.accel(tmp_path / "none.json") == ["-accel", "tcg", "-cpu", "max"]
    monkeypatch.delenv("LIVEINIT_ACCEL")
    cache = tmp_path / "accel.json"
    monkeypatch.setattr(lab, "_qemu_version", lambda: "QEMU test")
    monkeypatch.setattr(lab, "kvm_works", lambda *a, **k: pytest.fail("probe must not run on a cache hit"))
    cache.write_text(json.dumps({"key": f"QEMU test / {os.uname().release}", "kvm": True}))
    assert lab.accel(cache)[:2] == ["-accel", "kvm"]
    cache.write_text(json.dumps({"key": "other", "kvm": True}))
    monkeypatch.setattr(lab, "kvm_works", lambda *a, **k: False)
    assert lab.accel(cache)[:2] == ["-accel", "tcg"]
    assert json.loads(cache.read_text())["kvm"] is False


def test_kill_tree_kills_descendants() -> None:
    proc = subprocess.Popen(["sh", "-c", "sleep 300 & sleep 300 & wait"], start_new_session=True)
    time.sleep(0.3)
    kids = psutil.Process(proc.pid).children(recursive=True)
    assert len(kids) == 2
    lab.kill_tree(proc.pid)
    assert proc.poll() is not None
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)


def _qemus_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in a for a in (p.info["cmdline"] or [])):
            out.append(p)
    return out


@pytest.mark.qemu
def test_timeout_reports_and_leaves_no_qemu(tmp_path: Path) -> None:
    """SeaBIOS with an unbootable disk loops forever: the lab must time out and kill it."""
    img = tmp_path / "blank-disk.img"
    img.write_bytes(b"\0" * (1 << 20))
    log = tmp_path / "timeout-console.log"
    res = lab.boot("ahci-disk+bios", image=img, timeout=3, log_path=log)
    assert not res.success and res.reason.startswith("timeout after 3")
    assert 3 <= res.wall_s < 20
    assert _qemus_with(str(log)) == []


def test_cli_lists_profiles_and_rejects_unknown(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from packer.cli import main
    assert main(["boot", "--list-profiles"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in profiles.names())
    img = tmp_path / "a.iso"
    img.write_bytes(b"\0")
    assert main(["boot", str(img), "--profile", "floppy"]) == 1
    assert "unknown profile 'floppy'" in capsys.readouterr().err


# ---- the boot command ------------------------------------------------------------

def test_cli_bad_success_regex_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from packer.cli import main
    img = tmp_path / "a.iso"
    img.write_bytes(b"\0" * 4096)
    assert main(["boot", str(img), "--success", "("]) == 1
    err = capsys.readouterr().err
    assert "--success '('" in err and "not a valid regular expression" in err and "Traceback" not in err


def test_cli_positional_initramfs_boots_directly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 kernel: KernelTree, capsys: pytest.CaptureFixture[str]) -> None:
    from packer.cli import main
    seen: dict[str, object] = {}

    def fake_boot(profile: str, **kw: object) -> lab.BootResult:
        seen.update(kw, profile=profile)
        return lab.BootResult(profile=profile, success=True, reason="success line seen", log_path=None,
                              wall_s=0.0, accel="tcg", command=(), report=lab.parse_console(SAMPLE))

    monkeypatch.setattr(lab, "boot", fake_boot)
    for method in ("none", "xz", "zstd"):
        rd = tiny_initramfs(tmp_path / f"rd.{method}", method)
        assert cmd_boot.is_initramfs(rd)
        assert main(["boot", str(rd), "--profile", "nvme"]) == 0
        assert seen["initrd"] == rd and seen["image"] is None and seen["profile"] == "nvme"
        assert Path(str(seen["kernel"])) == kernel.vmlinuz
    iso = tmp_path / "x.iso"
    iso.write_bytes(b"\x33\xed" + b"\0" * 4094)    # an isohybrid MBR starts like this
    assert not cmd_boot.is_initramfs(iso)
    capsys.readouterr()
    assert main(["boot", str(tmp_path / "rd.xz"), "--profile", "uefi-cd"]) == 1
    err = capsys.readouterr().err
    assert "is an initramfs" in err and "uefi-cd" in err and "hint:" in err
    assert main(["boot", str(tmp_path / "rd.xz"), "--initrd", str(tmp_path / "rd.none")]) == 1
    assert "only one initramfs" in capsys.readouterr().err
    assert main(["boot", "--kernel", str(kernel.vmlinuz)]) == 1
    assert "no initramfs" in capsys.readouterr().err


def test_boot_leaves_no_scratch_directory_even_on_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("LIVEINIT_ACCEL", "tcg")

    def broken(*a: object, **kw: object) -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(lab, "command", broken)
    with pytest.raises(RuntimeError):
        lab.boot("virtio-blk", kernel=tmp_path / "k", initrd=tmp_path / "i")
    assert list(tmp_path.glob("liveinit-boot-*")) == []


@pytest.mark.qemu
def test_cli_boots_an_initramfs_and_cleans_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               kernel: KernelTree, capsys: pytest.CaptureFixture[str]) -> None:
    """`liveinit boot INITRD`: direct boot with the default kernel; no --log, nothing left in $TMPDIR."""
    from packer.cli import main
    rd = tiny_initramfs(tmp_path / "tiny.img")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert main(["-q", "boot", str(rd), "--profile", "virtio-blk", "--success", TINY_MARK, "--timeout", "120"]) == 0
    assert "boot: OK virtio-blk" in capsys.readouterr().out
    assert list(scratch.iterdir()) == []
    res = lab.boot("virtio-blk", kernel=kernel, initrd=rd, success=TINY_MARK, timeout=120)
    assert res.success and TINY_MARK in res.console and res.log_path is None
    assert list(scratch.iterdir()) == []
