"""The whole boot sequence on a fake root: early mounts, stage order and
timing lines, the boot record, and every failure path ending in the
emergency shell with its message (the shell is faked)."""
from __future__ import annotations

import errno
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import liveinit.coldplug
import liveinit.kmodindex
import liveinit.modload
import liveinit.rootfind
import liveinit.uevent
from qemu.fakes import FakeSyscalls, FakeUevents
from liveinit import boot, emergency, stack
from liveinit.contract import Settings
from liveinit.emergency import BootFailure
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.rootfind import Found
from liveinit.syscalls import MS_NODEV, MS_NOEXEC, MS_NOSUID

IMAGE = "/run/liveinit/medium/live/filesystem.squashfs"


class FakeLoader:
    def __init__(self, m, index, moddir, cfg, log) -> None:
        self.m, self.index, self.moddir, self.cfg = m, index, moddir, cfg
        self.loaded: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.unfit: dict[str, str] = {}
        self.order: list[str] = []

    def load(self, name: str, reason: str) -> bool:
        self.order.append(name)
        self.loaded[name] = reason
        return True

    def load_alias(self, alias: str, reason: str) -> list[str]:
        self.order.append(alias)
        return []


class Lab:
    """A fake machine plus fakes for the discovery modules and the shell."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch, cmdline: str = "",
                 defaults: str = "", proc_mounts: str = "rootfs / rootfs rw 0 0\n",
                 **fake_kw) -> None:
        self.tmp = tmp
        for d in ("proc", "sys", "dev", "run", "lib/modules/6.1.0-t"):
            (tmp / d).mkdir(parents=True)
        (tmp / "proc" / "cmdline").write_text(cmdline + "\n")
        (tmp / "proc" / "mounts").write_text(proc_mounts)
        (tmp / "proc" / "meminfo").write_text("MemAvailable: 2000000 kB\n")
        (tmp / "init").write_text("#!/usr/bin/python3.11 -IS\n")
        devs = {"/proc": 2, "/sys": 3, "/dev": 4, "/run": 5, "/sysroot": 6}
        self.sys = FakeSyscalls(root=str(tmp), devs=devs, **fake_kw)
        self.m = Machine(str(tmp), self.sys)
        self.out = io.StringIO()
        self.log = Log(out=self.out)
        self.shells: list[str] = []
        self.on_shell = None
        self.events = FakeUevents()
        self.find_root_error: BootFailure | None = None
        self.coldplug_error: BaseException | None = None
        self.calls: list[str] = []
        self.loader: FakeLoader | None = None
        self.settings = Settings(cmdline=defaults, identity="liveinit-test", kver="6.1.0-t",
                                 moddir="/lib/modules/6.1.0-t",
                                 index="/lib/modules/6.1.0-t/liveinit.index", max_attempts=2)
        lab = self

        def loader(*a):
            lab.loader = FakeLoader(*a)
            return lab.loader

        def start(cp, workers=3, first=None):   # Coldplug.start, done at once here
            lab.calls.append("coldplug")
            if lab.coldplug_error is not None:
                raise lab.coldplug_error
            cp.loader.load("virtio_blk", "pci 0000:00:04.0")
            cp.ended = time.monotonic()

        def find_root(m, cfg, identity, discovery, log):
            lab.calls.append("find_root")
            assert discovery.listener is lab.events and identity == "liveinit-test"
            discovery.finish()   # as the real one: coldplug is joined before it returns or fails
            if lab.find_root_error is not None:
                raise lab.find_root_error
            img = lab.tmp / IMAGE.lstrip("/")
            img.parent.mkdir(parents=True, exist_ok=True)
            img.write_bytes(b"hsqs" + bytes(1000))
            return Found("/dev/sr0", "iso9660", {"LABEL": "LIVE"},
                         "search: /live/filesystem.squashfs on sr0 (identity match)",
                         "/run/liveinit/medium", IMAGE)

        def shell(m, banner):
            lab.shells.append(banner)
            if lab.on_shell is not None:
                lab.on_shell(len(lab.shells))

        monkeypatch.setattr(liveinit.kmodindex.ModuleIndex, "load", staticmethod(lambda p: ("index", p)))
        monkeypatch.setattr(liveinit.modload, "ModuleLoader", loader)
        monkeypatch.setattr(liveinit.uevent, "UeventListener", lambda m: lab.events)
        monkeypatch.setattr(liveinit.coldplug.Coldplug, "start", start)
        monkeypatch.setattr(liveinit.rootfind, "find_root", find_root)
        monkeypatch.setattr(stack, "_probe", lambda path: {"TYPE": "squashfs"})
        monkeypatch.setattr(emergency, "run_shell", shell)

    def init(self, path: str = "/sbin/init") -> None:
        p = self.tmp / "sysroot" / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)

    def run(self) -> None:
        boot.Boot(self.m, self.settings, log=self.log).run()

    def lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def record(self) -> dict:
        return json.loads((self.tmp / "run" / "liveinit" / "boot.json").read_text())


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    return Lab(tmp_path, monkeypatch)


# -- the good path ------------------------------------------------------------------------
def test_full_boot(lab: Lab) -> None:
    lab.init()
    lab.run()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    assert lab.sys.of("mount")[:4] == [
        ("mount", "proc", "/proc", "proc", flags, None),
        ("mount", "sysfs", "/sys", "sysfs", flags, None),
        ("mount", "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
        ("mount", "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
    ]
    assert lab.sys.calls[4] == ("console", "/dev/console")
    assert lab.sys.calls[-1] == ("execv", "/sbin/init", ["/sbin/init"])
    stages = [ln.split()[2] for ln in lab.lines() if ln.startswith("liveinit: stage ")]
    assert stages == ["early", "cmdline", "coldplug", "findroot", "stack", "handover"]
    for ln in lab.lines():
        if ln.startswith("liveinit: stage "):
            assert ln.split()[3].isdigit() and ln.endswith(" ms")
    last = lab.lines()[-1]
    assert last.startswith("liveinit: starting /sbin/init after ") and last.endswith(" ms")
    assert lab.shells == []
    assert lab.events.closed


def test_boot_record(lab: Lab) -> None:
    lab.init()
    lab.run()
    rec = lab.record()
    assert list(rec["stages"]) == ["early", "cmdline", "coldplug", "findroot", "stack", "handover"]
    assert rec["cmdline"] == "" and rec["cmdline_defaults"] == ""
    assert rec["identity"] == "liveinit-test" and rec["kver"] == "6.1.0-t"
    assert rec["modules"] == {"virtio_blk": "pci 0000:00:04.0", "loop": "loop device for " + IMAGE,
                              "overlay": "overlay for the writable layer"}
    assert rec["modules_left"] == []       # a live medium: coldplug ran to its end
    assert rec["root"]["device"] == "/dev/sr0" and "identity match" in rec["root"]["how"]
    assert rec["union"]["method"] == "overlay" and rec["union"]["writable"] == "tmpfs"
    assert rec["init"] == {"path": "/sbin/init", "argv": ["/sbin/init"], "method": "switch_root"}
    assert rec["errors"] == [] and rec["total_ms"] >= 0
    assert isinstance(rec["devices"], list)
    # Where the time went: every mount of the fake counted by the seam (this lab's
    # loader and root search are fakes: test_modload and test_rootfind count theirs).
    prof = rec["costs"]
    assert prof["mounts"]["calls"] == len(lab.sys.of("mount")) + len(lab.sys.of("loop_attach"))
    assert prof["initramfs cleanup"]["calls"] == 1
    assert all(v["ms"] >= 0 for v in prof.values())
    line = next(ln for ln in lab.lines() if ln.startswith("liveinit: costs: "))
    assert line.startswith("liveinit: costs: mounts ") and "initramfs cleanup" in line


def test_each_stage_is_timed_by_its_own_work(lab: Lab, monkeypatch) -> None:
    """Coldplug runs in the background for 0.4 s and findroot waits for it: the
    coldplug line says 0.4 s, findroot's does not count the wait."""
    import _thread

    def start(cp, workers=3, first=None):
        done = _thread.allocate_lock()
        done.acquire()
        cp._done, cp.running = done, True

        def run() -> None:
            time.sleep(0.4)
            cp.loader.load("virtio_blk", "pci 0000:00:04.0")
            cp.running, cp.ended = False, time.monotonic()
            done.release()

        _thread.start_new_thread(run, ())

    monkeypatch.setattr(liveinit.coldplug.Coldplug, "start", start)
    lab.init()
    lab.run()
    ms = {ln.split()[2]: int(ln.split()[3]) for ln in lab.lines() if ln.startswith("liveinit: stage ")}
    assert list(ms) == ["early", "cmdline", "coldplug", "findroot", "stack", "handover"]
    assert ms["coldplug"] >= 400 and ms["findroot"] < 300
    rec = lab.record()
    assert list(rec["stages"]) == list(ms) and rec["stages"]["coldplug"] >= 400
    assert rec["modules"]["virtio_blk"] == "pci 0000:00:04.0"


def test_early_modules_before_coldplug(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, cmdline="rd.driver.pre=ahci liveinit.modules=fs-ext4")
    lab.init()
    lab.run()
    assert lab.loader.order[:3] == ["ahci", "fs-ext4", "virtio_blk"]
    assert lab.loader.index == ("index", str(tmp_path) + "/lib/modules/6.1.0-t/liveinit.index")


def test_prepopulated_dev_and_proc_are_not_mounted_again(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, proc_mounts="rootfs / rootfs rw 0 0\nproc /proc proc rw 0 0\n"
              "devtmpfs /dev devtmpfs rw 0 0\n")
    lab.init()
    lab.run()
    assert [c[3] for c in lab.sys.of("mount")[:2]] == ["sysfs", "tmpfs"]


def test_busy_mount_point_is_tolerated(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, fail={"mount:devtmpfs": errno.EBUSY})
    lab.init()
    lab.run()
    assert lab.shells == []


def test_no_devtmpfs_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, defaults="", fail={"mount:devtmpfs": errno.ENODEV})
    lab.init()
    lab.run()
    assert any("cannot mount devtmpfs" in ln for ln in lab.lines())


def test_quiet_keeps_the_console_for_failures_only(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, defaults="quiet")
    with pytest.raises(boot.GiveUp):
        lab.run()   # no init: fails
    text = lab.out.getvalue()
    assert "liveinit: stage early" not in text
    assert "liveinit: FAILED: no init in the new root" in text


def test_bad_cmdline_is_reported_and_the_boot_goes_on(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, cmdline='union=zfs rootdelay=soon rd.break=never', defaults="")
    lab.init()
    lab.run()
    warn = [ln for ln in lab.lines() if ln.startswith("liveinit: warning: command line: ")]
    assert len(warn) == 3
    assert lab.record()["errors"] == [
        "cmdline: union=zfs: unknown union (use overlay, aufs, unionfs, unionfs-fuse, bind, none); using overlay",
        "cmdline: rootdelay=soon: not a number of seconds; using 30",
        "cmdline: rd.break=never: unknown break point (stages: early, cmdline, coldplug, findroot, "
        "stack, handover)"]
    assert lab.sys.calls[-1][0] == "execv"


def test_break_point_opens_a_shell_then_continues(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, cmdline="rd.break=pre-mount break=top", defaults="")
    lab.init()
    lab.run()
    assert lab.shells == ["liveinit: break before cmdline", "liveinit: break before stack"]
    assert "liveinit: break before stack: shell" in lab.lines()
    assert lab.sys.calls[-1][0] == "execv"


def test_device_root_with_union_given_is_stacked(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, cmdline="root=/dev/vda1 liveinit.union=overlay", defaults="")

    def device_root(*a):
        return Found("/dev/vda1", "ext4", {}, "root=/dev/vda1", None, None)

    monkeypatch.setattr(liveinit.rootfind, "find_root", device_root)
    lab.init()
    lab.run()
    assert [c[3] for c in lab.sys.of("mount")[4:7]] == ["ext4", "tmpfs", "overlay"]


# -- failures: FAILED, hint, emergency shell, retry ----------------------------------------
def failed(lab: Lab) -> list[str]:
    return [ln for ln in lab.lines() if ln.startswith(("liveinit: FAILED", "liveinit: hint",
                                                       "liveinit: emergency shell"))]


def test_no_root(lab: Lab) -> None:
    lab.find_root_error = BootFailure("no device with LABEL=LIVE appeared within 30 s",
                                      "check root= against the devices listed above")
    with pytest.raises(boot.GiveUp):
        lab.run()
    assert failed(lab)[:3] == ["liveinit: FAILED: no device with LABEL=LIVE appeared within 30 s",
                               "liveinit: hint: check root= against the devices listed above",
                               "liveinit: emergency shell"]
    assert lab.shells == ["liveinit: stage findroot failed"] * 2
    assert "liveinit: retrying stage findroot" in lab.lines()
    assert lab.sys.of("execv") == []


def test_no_root_then_the_user_fixes_it_in_the_shell(lab: Lab) -> None:
    lab.find_root_error = BootFailure("no device", "plug it in")
    lab.init()

    def fix(n: int) -> None:
        lab.find_root_error = None

    lab.on_shell = fix
    lab.run()
    assert lab.calls.count("find_root") == 2
    assert lab.sys.calls[-1][0] == "execv"
    assert lab.record()["errors"] == ["findroot: no device"]


def test_bad_cmdline_root_is_named_when_the_search_fails(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, cmdline="root=UUID=", defaults="")
    lab.find_root_error = BootFailure("no live medium found", "insert the medium")
    with pytest.raises(boot.GiveUp):
        lab.run()
    assert failed(lab)[:4] == [
        "liveinit: FAILED: no live medium found",
        "liveinit: hint: insert the medium",
        "liveinit: hint: the command line had problems: root=UUID=: not a device spec (use "
        "/dev/NAME, UUID=, LABEL=, PARTUUID=, PARTLABEL=, MAJ:MIN, live:... or live:auto)",
        "liveinit: emergency shell"]


def test_mount_error(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, fail={"mount:squashfs": errno.EIO})
    with pytest.raises(boot.GiveUp):
        lab.run()
    assert failed(lab)[0].startswith(f"liveinit: FAILED: cannot mount {IMAGE} (squashfs) from ")
    assert failed(lab)[2] == "liveinit: emergency shell"
    assert lab.shells[0] == "liveinit: stage stack failed"


def test_corrupt_image(lab: Lab, monkeypatch) -> None:
    monkeypatch.setattr(stack, "_probe", lambda path: {})
    with pytest.raises(boot.GiveUp):
        lab.run()
    assert failed(lab)[0] == (f"liveinit: FAILED: {IMAGE} on /dev/sr0 is not a squashfs or "
                              "erofs image (unrecognised content)")
    assert "corrupt" in failed(lab)[1]


def test_no_init_then_fixed_in_the_shell(lab: Lab) -> None:
    lab.on_shell = lambda n: lab.init("/bin/sh")
    lab.run()
    assert failed(lab)[0].startswith("liveinit: FAILED: no init in the new root: tried /sbin/init")
    assert failed(lab)[2] == "liveinit: emergency shell"
    assert lab.sys.calls[-1] == ("execv", "/bin/sh", ["/bin/sh"])


def test_exception_inside_a_stage(lab: Lab) -> None:
    lab.coldplug_error = ZeroDivisionError("division by zero")
    with pytest.raises(boot.GiveUp):
        lab.run()
    first = failed(lab)[0]
    assert first.startswith("liveinit: FAILED: unexpected error in stage coldplug: "
                            "ZeroDivisionError: division by zero at test_boot.py:")
    assert "debug" in failed(lab)[1]
    assert lab.shells == ["liveinit: stage coldplug failed"] * 2


def test_keyboard_interrupt_and_exit_inside_a_stage_are_caught(lab: Lab) -> None:
    lab.coldplug_error = SystemExit(3)
    with pytest.raises(boot.GiveUp):
        lab.run()
    assert "SystemExit" in failed(lab)[0]


def test_stack_failure_then_root_mounted_by_hand(tmp_path: Path, monkeypatch) -> None:
    lab = Lab(tmp_path, monkeypatch, fail={"mount:/sysroot": errno.EIO})

    def by_hand(n: int) -> None:
        with open(tmp_path / "proc" / "mounts", "a") as f:
            f.write("/dev/sda1 /sysroot ext4 rw 0 0\n")
        lab.sys.mounts["/sysroot"] = None
        lab.init()

    lab.on_shell = by_hand
    lab.run()
    assert "liveinit: the new root is ready: continuing after stage stack" in lab.lines()
    assert lab.record()["union"] == {"method": "manual (emergency shell)"}
    assert lab.sys.calls[-1][0] == "execv"


def test_missing_module_index_boots_with_builtins(lab: Lab, monkeypatch) -> None:
    def broken(path):
        raise FileNotFoundError(2, "No such file", path)

    monkeypatch.setattr(liveinit.kmodindex.ModuleIndex, "load", staticmethod(broken))
    lab.init()
    lab.run()
    assert any("cannot read the module index" in ln for ln in lab.lines())
    assert "coldplug" not in lab.calls and lab.sys.calls[-1][0] == "execv"


def test_main_never_raises(monkeypatch, capsys) -> None:
    def explode(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(boot.Boot, "run", explode)
    monkeypatch.setattr(boot, "Machine", lambda root: Machine("/nonexistent", FakeSyscalls()))
    boot.main({"cmdline": ""})   # not PID 1 here: returns instead of waiting for ever
    out = capsys.readouterr().out
    assert "liveinit: FAILED: unexpected error in stage boot: RuntimeError: boom" in out


def test_failed_switch_is_redone_not_just_exec_again(tmp_path: Path, monkeypatch) -> None:
    # chroot into the new root fails once: the retry must redo the switch
    # rather than exec init inside the old initramfs.
    lab = Lab(tmp_path, monkeypatch, fail={"chroot": [errno.EPERM]})
    lab.init()
    lab.run()
    assert lab.shells == ["liveinit: stage handover failed"]
    tail = [c[0] for c in lab.sys.calls if c[0] in ("chroot", "execv")]
    assert tail[-2:] == ["chroot", "execv"] and tail.count("chroot") == 2


def test_import_time_counts_from_the_first_line_of_init(monkeypatch, capsys) -> None:
    seen = {}

    def run(self):
        seen["t0"] = self.t0

    monkeypatch.setattr(boot.Boot, "run", run)
    monkeypatch.setattr(boot, "Machine", lambda root: Machine("/nonexistent", FakeSyscalls()))
    import time
    t0 = time.monotonic() - 0.25
    boot.main({"cmdline": "", "t0": t0})
    assert seen["t0"] == t0
    line = [ln for ln in capsys.readouterr().out.splitlines() if "stage imports" in ln][0]
    assert int(line.split()[3]) >= 250


def test_last_resort_shell_needs_no_syscalls_module(monkeypatch) -> None:
    def broken(root, sys=None):
        if sys is None:
            raise OSError("libffi.so.8: cannot open shared object file")
        return Machine(root, sys)

    monkeypatch.setattr(boot, "Machine", broken)
    m = boot._shell_machine()
    assert m.path("/bin/sh") == "/bin/sh"


# -- the shell itself ----------------------------------------------------------------------
def test_shell_prefers_busybox(tmp_path: Path, monkeypatch) -> None:
    bb = tmp_path / "bin" / "busybox"
    bb.parent.mkdir()
    bb.write_text("")
    bb.chmod(0o755)
    spawned = []
    monkeypatch.setattr(emergency, "_spawn", lambda path, argv: spawned.append(argv))
    emergency.run_shell(Machine(str(tmp_path), FakeSyscalls()), "x")
    assert spawned == [[str(bb), "cttyhack", "sh"]]


def test_shell_falls_back_to_python(tmp_path: Path, monkeypatch) -> None:
    import code
    seen = []
    def interact(banner, local, exitmsg):
        seen.append(banner)
        local["exit"]()

    monkeypatch.setattr(code, "interact", interact)
    out = io.StringIO()
    emergency.shell(Machine(str(tmp_path), FakeSyscalls()), Log(out=out), "stage x failed")
    assert seen and seen[0].startswith("liveinit: stage x failed\n(Python prompt")
    assert "the shell failed" not in out.getvalue()


def test_a_shell_that_cannot_start_does_not_kill_pid1(tmp_path: Path, monkeypatch) -> None:
    def broken(m, banner):
        raise OSError(errno.ENOENT, "gone")

    monkeypatch.setattr(emergency, "run_shell", broken)
    out = io.StringIO()
    emergency.shell(Machine(str(tmp_path), FakeSyscalls()), Log(out=out), "stage x failed")
    assert "the shell failed: FileNotFoundError: [Errno 2] gone" in out.getvalue()


def test_real_shell_spawn_waits_for_the_child(tmp_path: Path) -> None:
    done = tmp_path / "done"
    emergency._spawn("/bin/sh", ["sh", "-c", f"sleep 0.3; touch {done}"])
    assert done.exists()   # returned only once the child had finished


# -- import cost --------------------------------------------------------------------------------
def test_boot_imports_stay_light() -> None:
    # Every module the boot path imports, and none of the heavy stdlib ones:
    # each costs tens to hundreds of ms under QEMU TCG (bench/bootcost.py).
    heavy = ("typing", "logging", "json", "subprocess", "socket", "dataclasses", "inspect", "re",
             "enum", "threading", "random", "tempfile", "uuid", "hashlib")
    mods = ("boot", "contract", "cmdline", "discovery", "coldplug", "modload", "uevent", "blockdev",
            "rootfind", "fsprobe", "kmodindex", "stack", "handover", "emergency", "log", "record", "machine",
            "plain", "costs")
    code = ("import sys; " + "; ".join(f"import liveinit.{m}" for m in mods) + "; "
            f"print(' '.join(sorted(n for n in sys.modules if n in {heavy!r})))")
    repo = str(Path(__file__).parents[1])
    r = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {repo!r}); " + code],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == ""


# -- log ------------------------------------------------------------------------------------
def kernel_sysctl(tmp: Path, devkmsg: str, printk: str = "7 4 1 7") -> Path:
    d = tmp / "proc" / "sys" / "kernel"
    d.mkdir(parents=True, exist_ok=True)
    (d / "printk_devkmsg").write_text(devkmsg + "\n")
    (d / "printk").write_text(printk + "\n")
    return d


def test_log_to_kmsg_and_no_double_echo(tmp_path: Path) -> None:
    d = kernel_sysctl(tmp_path, "ratelimit")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    out = io.StringIO()
    log = Log(out=out)
    log.open_kmsg(str(kmsg), str(d))
    assert (d / "printk_devkmsg").read_text() == "on\n"     # no rate limit during the boot
    log.info("stage early 3 ms")
    log.debug("hidden")
    log.error("FAILED: x")
    log.close()
    assert (d / "printk_devkmsg").read_text() == "ratelimit\n"   # given back before init
    assert kmsg.read_text() == "<6>liveinit: stage early 3 ms\n<3>liveinit: FAILED: x\n"
    assert out.getvalue() == ""    # console loglevel 7: the kernel echoes both lines itself


def test_log_prints_what_the_kernel_will_not_echo(tmp_path: Path) -> None:
    d = kernel_sysctl(tmp_path, "on", "4 4 1 7")   # `quiet`: console loglevel 4
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    out = io.StringIO()
    log = Log(out=out)
    log.open_kmsg(str(kmsg), str(d))
    log.info("stage early 3 ms")
    log.error("FAILED: x")
    assert out.getvalue() == "liveinit: stage early 3 ms\n"


def test_log_prints_everything_when_kmsg_is_off(tmp_path: Path) -> None:
    d = kernel_sysctl(tmp_path, "off")
    kmsg = tmp_path / "kmsg"
    kmsg.write_text("")
    out = io.StringIO()
    log = Log(out=out, quiet=True)
    log.open_kmsg(str(kmsg), str(d))
    log.info("quiet line")
    log.error("FAILED: y")
    assert out.getvalue() == "liveinit: FAILED: y\n"


# -- the failure path under a real kernel ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.qemu
def test_forced_union_the_kernel_lacks_ends_in_the_emergency_shell(kernel, tmp_path: Path) -> None:
    """Debian's kernel has no aufs: union=aufs must fail in stage stack with
    the contract lines, and the shell must open (not a kernel panic)."""
    from packer import image
    from qemu.demoroot import build_demo_root
    from qemu import lab as qlab

    iso = image.build_image(build_demo_root(tmp_path / "root"), tmp_path / "demo.iso", kernel)
    res = qlab.boot("virtio-blk", image=iso.iso, cmdline="union=aufs", timeout=240)
    rep = res.report
    assert not res.success, res.console[-3000:]
    assert rep.failure == ("cannot stack a writable layer over the image: "
                           "aufs: not supported by this kernel"), res.console[-3000:]
    assert rep.hint is not None and "union=none" in rep.hint
    assert rep.emergency_shell
    assert "Kernel panic" not in res.console
    assert [s for s, _ in rep.timings.stages_ms] == ["imports", "early", "cmdline", "coldplug", "findroot"]


@pytest.fixture(scope="module")
def demo(kernel, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The demo ISO and an ext4 disk (label plainroot) holding the same root."""
    from packer import image
    from qemu.demoroot import build_demo_root

    work = tmp_path_factory.mktemp("boot-paths")
    root = build_demo_root(work / "root")
    iso = image.build_image(root, work / "demo.iso", kernel).iso
    disk = work / "plain.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "plainroot", "-d", str(root), str(disk), "64M"],
                   check=True)
    return iso, disk


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("cmdline, root, writable, line", [
    ("toram", "overlay", "yes", "toram: /run/liveinit/medium unmounted, the medium can be removed"),
    ("union=bind", "squashfs", "yes", "(squashfs) + tmpfs via bind"),
    ("union=none", "squashfs", "no", "(squashfs) read-only (union=none)"),
    ("root=LABEL=plainroot", "ext4", "no", "root: /dev/vdb (ext4) ro"),
    ("root=LABEL=plainroot liveinit.union=overlay", "overlay", "yes", "root: /dev/vdb (ext4) + tmpfs via overlay"),
])
def test_stacking_paths_under_a_real_kernel(demo, cmdline: str, root: str, writable: str,
                                            line: str) -> None:
    from qemu import lab as qlab

    iso, disk = demo
    res = qlab.boot("virtio-blk", image=iso, cmdline=cmdline, timeout=240,
                    disks=(disk,) if "plainroot" in cmdline else ())
    assert res.success, res.console[-3000:]
    assert (res.demo["root"], res.demo["writable"], res.demo["init"]) == (root, writable, "1")
    assert line in res.console


@pytest.mark.slow
@pytest.mark.qemu
def test_persistence_image_file_keeps_the_write(demo, tmp_path: Path) -> None:
    """liveinit.persistence=LABEL=store:/rw.img: an ext4 image file on an ext4
    filesystem, loop-mounted read-write; the second boot sees the first's write."""
    from qemu import lab as qlab

    iso, _ = demo
    store = tmp_path / "store"
    store.mkdir()
    subprocess.run(["mkfs.ext4", "-q", "-F", str(store / "rw.img"), "24M"], check=True)
    disk = tmp_path / "store.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "store", "-d", str(store), str(disk), "48M"],
                   check=True)
    arg = "liveinit.persistence=LABEL=store:/rw.img"
    first = qlab.boot("virtio-blk", image=iso, cmdline=arg, disks=(disk,), timeout=240)
    assert first.success, first.console[-3000:]
    assert "persistence: /rw.img (ext4) holds the writable layer" in first.console
    assert first.demo["persisted"] == "no"
    second = qlab.boot("virtio-blk", image=iso, cmdline=arg, disks=(disk,), timeout=240)
    assert second.success, second.console[-3000:]
    assert (second.demo["root"], second.demo["persisted"]) == ("overlay", "yes")


def _drive_console(iso: Path, cmdline: str, script: list[tuple[str, str]], until: str,
                   work: Path, timeout: float = 240) -> str:
    """Boot with the serial console on a socket; when `wait` text appears, type
    `send`; stop once `until` is seen after the script ran. Returns the console."""
    import socket
    import time

    from qemu import lab as qlab

    sock = work / "serial.sock"
    cmd = qlab.command(qlab.get_profile("virtio-blk"), iso, work, work / "unused.log",
                       cmdline=f"{qlab.LAB_CMDLINE} {qlab.DEMO_POWEROFF} {cmdline}")
    cmd[cmd.index("-serial") + 1] = f"unix:{sock},server=on,wait=on"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        s.settimeout(0.5)
        buf, steps, mark = b"", list(script), 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
            except socket.timeout:
                pass
            if steps and steps[0][0].encode() in buf[mark:]:
                mark = buf.index(steps[0][0].encode(), mark) + 1
                time.sleep(1.0)   # let the shell print its prompt
                s.sendall(steps.pop(0)[1].encode())
            if not steps and until.encode() in buf[mark:]:
                break
        s.close()
        return buf.decode(errors="replace")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.qemu
def test_break_point_shell_on_the_console_then_the_boot_goes_on(demo, tmp_path: Path) -> None:
    iso, _ = demo
    # The default image has no busybox (size budget): the shell is the Python prompt.
    out = _drive_console(iso, "rd.break=pre-mount",
                         [("Python prompt", "import os; print('SHELL-%d' % (6 * 7), sorted(os.listdir('/run/liveinit')))\n"
                                            "exit()\n")],
                         "LIVEINIT-DEMO-OK", tmp_path)
    assert "SHELL-42" in out and "medium" in out   # a real shell, before stack ran
    assert out.index("break before stack: shell") < out.index("liveinit: stage stack")
    assert "LIVEINIT-DEMO-OK" in out


@pytest.mark.slow
@pytest.mark.qemu
def test_leaving_the_emergency_shell_retries_the_stage(demo, tmp_path: Path) -> None:
    iso, _ = demo
    out = _drive_console(iso, "union=aufs", [("Python prompt", "print('IN-' + 'SHELL')\nexit()\n")],
                         "liveinit: emergency shell", tmp_path)
    assert "IN-SHELL" in out
    retry = out.index("liveinit: retrying stage stack")
    # the retry starts clean (the failed attempt's mounts are gone) and fails the same way
    assert "liveinit: FAILED: cannot stack a writable layer over the image: aufs" in out[retry:]
    assert "Device or resource busy" not in out
    assert "Kernel panic" not in out
