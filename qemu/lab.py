"""The boot lab: run QEMU on a profile, watch the serial console, report.

Success is the real init's line (`LIVEINIT-DEMO-OK` by default), failure the
runtime's `liveinit: FAILED` / `emergency shell` lines, a kernel panic, QEMU
exiting, or the timeout. Every QEMU process started here is killed on the
way out, whatever happens (psutil, the whole process tree)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import psutil

from liveinit.contract import DEMO_OK, DEMO_POWEROFF
from packer.config import DEFAULT_CACHE
from packer.kernel import KernelTree
from qemu import console
from qemu.profiles import OVMF_VARS, Firmware, Profile
from qemu.profiles import profile as get_profile

QEMU = "qemu-system-x86_64"
DEFAULT_SUCCESS = re.escape(DEMO_OK)
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MEMORY_MIB = 1024
LAB_CMDLINE = "console=ttyS0,115200 panic=-1"
ACCEL_CACHE = DEFAULT_CACHE / "lab" / "accel.json"
KVM_PROBE_TIMEOUT_S = 10.0
POLL_S = 0.05
AFTER_FAILURE_S = 2.0   # keep reading after FAILED: the hint and the shell line follow
AFTER_SUCCESS_S = 5.0   # let a powering-off guest exit by itself (disk caches flushed)


@dataclass(frozen=True)
class Timings:
    """Times read from the console (seconds since kernel start unless _ms)."""

    run_init: float | None = None            # printk time of "Run /init as init process"
    stages_ms: tuple[tuple[str, float], ...] = ()   # `liveinit: stage NAME MS ms`, in order
    handover_ms: float | None = None         # `liveinit: starting INIT after MS ms`
    init_started: float | None = None        # printk time of the demo init's kmsg mark
    uptime: float | None = None              # the demo line's uptime=

    @property
    def stages(self) -> dict[str, float]:
        return dict(self.stages_ms)

    @property
    def in_initramfs(self) -> float | None:
        """Seconds from the kernel handing over to /init to the real init running."""
        end = self.init_started if self.init_started is not None else self.uptime
        if self.run_init is None or end is None:
            return None
        return round(end - self.run_init, 3)


@dataclass(frozen=True)
class ConsoleReport:
    """What a console log says, parsed once."""

    success: bool
    failure: str | None          # the FAILED message, the panic, or None
    hint: str | None
    emergency_shell: bool
    init: str | None             # the init liveinit started
    demo: dict[str, str] = field(default_factory=dict)   # key=value pairs of the demo line
    timings: Timings = Timings()
    # The demo init's LIVEINIT-DEMO-MODULES line: the modules loaded when the
    # real init started (sorted), and whether /run/liveinit/boot.json was there.
    modules: tuple[str, ...] | None = None
    boot_record: bool | None = None


def parse_console(text: str, success: str | re.Pattern[str] = DEFAULT_SUCCESS) -> ConsoleReport:
    """Parse a serial console log. Lines written both to the console and
    /dev/kmsg appear twice; the first occurrence of each stage counts."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    succ = re.compile(success) if isinstance(success, str) else success
    stages: dict[str, float] = {}
    for m in console.STAGE.finditer(text):
        stages.setdefault(m["name"], float(m["ms"]))
    run_init = console.RUN_INIT.search(text)
    starting = console.STARTING.search(text)
    kmsg = console.DEMO_KMSG.search(text)
    demo_m = console.DEMO_OK.search(text)
    demo: dict[str, str] = {}
    if demo_m:
        for kv in demo_m["fields"].split():
            k, _, v = kv.partition("=")
            demo[k] = v
    uptime = None
    with contextlib.suppress(ValueError):
        uptime = float(demo["uptime"]) if "uptime" in demo else None
    failed, hint = console.FAILED.search(text), console.HINT.search(text)
    panic = console.PANIC.search(text)
    failure = (failed["message"].strip() if failed
               else f"kernel panic: {panic['message'].strip()}" if panic else None)
    timings = Timings(
        run_init=float(run_init["time"]) if run_init else None,
        stages_ms=tuple(stages.items()),
        handover_ms=float(starting["ms"]) if starting else None,
        init_started=float(kmsg["time"]) if kmsg else None,
        uptime=uptime,
    )
    mods = console.DEMO_MODULES.search(text)
    return ConsoleReport(success=bool(succ.search(text)), failure=failure,
                         hint=hint["hint"].strip() if hint else None,
                         emergency_shell=bool(console.SHELL.search(text)),
                         init=starting["init"] if starting else None, demo=demo, timings=timings,
                         modules=tuple(filter(None, mods["modules"].split(","))) if mods else None,
                         boot_record=(mods["record"] == "yes") if mods else None)


@dataclass(frozen=True)
class BootResult:
    """The outcome of one boot."""

    profile: str
    success: bool
    # "success line seen", "FAILED: ...", "timeout after 120 s", "qemu exited (rc 0)"
    reason: str
    log_path: Path | None        # the console log when one was asked for (log_path=), else None
    wall_s: float
    accel: str
    command: tuple[str, ...]
    report: ConsoleReport
    console: str = ""            # the whole serial console, as read at the end

    @property
    def timings(self) -> Timings:
        return self.report.timings

    @property
    def demo(self) -> dict[str, str]:
        return self.report.demo

    def summary(self) -> str:
        """One line: verdict, profile, times."""
        t = self.timings
        parts = [("OK" if self.success else "FAIL"), self.profile, f"wall={self.wall_s:.1f}s"]
        if t.run_init is not None:
            parts.append(f"run_init={t.run_init:.2f}s")
        if t.in_initramfs is not None:
            parts.append(f"in_initramfs={t.in_initramfs:.2f}s")
        if t.handover_ms is not None:
            parts.append(f"handover={t.handover_ms:.0f}ms")
        parts += [f"{k}={v}" for k, v in self.demo.items() if k in ("root", "writable", "persisted")]
        if not self.success:
            parts.append(f"reason={self.reason!r}")
        return "boot: " + " ".join(parts)


def kill_tree(pid: int) -> None:
    """Kill a process and all its descendants, and reap them."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = parent.children(recursive=True) + [parent]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=5)


def _qemu_version() -> str:
    out = subprocess.run([QEMU, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else "unknown"


def kvm_works(vmlinuz: Path | None = None, timeout: float = KVM_PROBE_TIMEOUT_S) -> bool:
    """Boot the kernel under KVM with no root until it panics (panic=-1 makes
    QEMU exit): only a kernel that got that far proves KVM works. A boot
    sector alone is not enough: on some hosts it runs while a kernel hangs,
    or `-cpu max` trips an assertion in QEMU's KVM code."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if vmlinuz is None:
        from qemu.testkernel import fetch_kernel
        vmlinuz = fetch_kernel().vmlinuz
    with tempfile.TemporaryDirectory(prefix="liveinit-kvm-") as tmp:
        log = Path(tmp) / "console.log"
        proc = subprocess.Popen([QEMU, "-accel", "kvm", "-cpu", "max", "-nodefaults", "-no-reboot",
                                 "-display", "none", "-monitor", "none", "-m", "256",
                                 "-serial", f"file:{log}", "-kernel", str(vmlinuz),
                                 "-append", "console=ttyS0 panic=-1 loglevel=4"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        finally:
            kill_tree(proc.pid)
        return "Kernel panic" in log.read_text(errors="replace")


def accel(cache: Path = ACCEL_CACHE) -> list[str]:
    """QEMU accelerator arguments: KVM when a probe boot proved it works, else TCG.

    $LIVEINIT_ACCEL=tcg|kvm skips the probe; the verdict is cached per QEMU
    version and host kernel."""
    forced = os.environ.get("LIVEINIT_ACCEL", "")
    if forced in ("tcg", "kvm"):
        use_kvm = forced == "kvm"
    else:
        key = f"{_qemu_version()} / {os.uname().release}"
        verdict = None
        try:
            data = json.loads(cache.read_text())
            if data.get("key") == key:
                verdict = bool(data["kvm"])
        except (OSError, ValueError, KeyError):
            pass
        if verdict is None:
            verdict = kvm_works()
            try:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps({"key": key, "kvm": verdict}))
            except OSError:
                pass
        use_kvm = verdict
    return ["-accel", "kvm", "-cpu", "max"] if use_kvm else ["-accel", "tcg", "-cpu", "max"]


def _prepare_image(prof: Profile, image: Path, work: Path) -> Path:
    """The file QEMU attaches: the image itself, or for SD cards a copy padded
    to a power of two (QEMU refuses other sizes)."""
    if not prof.storage.power_of_two:
        return image
    copy = work / ("medium" + image.suffix)
    shutil.copyfile(image, copy)
    os.truncate(copy, 1 << max(copy.stat().st_size - 1, 1).bit_length())
    return copy


def _kernel_and_initrd(kernel: KernelTree | Path | None, initrd: Path | None, image: Path | None,
                       work: Path) -> tuple[Path, Path]:
    from packer.image import INITRD_PATH, KERNEL_PATH, extract
    if kernel is None:
        if image is None:
            raise ValueError("direct kernel boot needs a kernel or an image to take it from")
        vmlinuz = extract(image, KERNEL_PATH, work / "vmlinuz")
    else:
        vmlinuz = kernel.vmlinuz if isinstance(kernel, KernelTree) else Path(kernel)
    if initrd is None:
        if image is None:
            raise ValueError("direct kernel boot needs an initrd or an image to take it from")
        initrd = extract(image, INITRD_PATH, work / "initrd.img")
    return vmlinuz, initrd


def command(prof: Profile, image: Path | None, work: Path, log: Path | None,
            kernel: KernelTree | Path | None = None,
            initrd: Path | None = None, cmdline: str = "", memory: int = DEFAULT_MEMORY_MIB,
            disks: tuple[Path, ...] = (), accel_args: list[str] | None = None,
            interactive: bool = False, extra_args: tuple[str, ...] = ()) -> list[str]:
    """The full QEMU command line for one boot (files it needs are made in `work`);
    `extra_args` go before the console's (a NIC and its -netdev, for network boots)."""
    cmd = [QEMU, "-nodefaults", "-no-reboot", "-m", str(memory), "-smp", "1"]
    cmd += accel_args if accel_args is not None else ["-accel", "tcg", "-cpu", "max"]
    vars_copy = None
    if prof.firmware is Firmware.UEFI:
        vars_copy = work / "OVMF_VARS.fd"
        shutil.copyfile(OVMF_VARS, vars_copy)
    if image is not None:
        cmd += prof.args(_prepare_image(prof, image, work), vars_copy)
    else:
        machine = prof.storage.machine + prof.firmware.machine_options   # a network boot: no medium
        cmd += ["-machine", machine] + prof.firmware.args(vars_copy)
    for i, disk in enumerate(disks):
        cmd += ["-drive", f"file={disk},if=none,id=extra{i},format=raw",
                "-device", f"virtio-blk-pci,drive=extra{i}"]
    cmd += ["-device", "virtio-rng-pci", *extra_args]
    if prof.direct:
        vmlinuz, rd = _kernel_and_initrd(kernel, initrd, image, work)
        cmd += ["-kernel", str(vmlinuz), "-initrd", str(rd), "-append", cmdline]
    if interactive:
        chardev = "stdio,id=con0,mux=on,signal=off" + (f",logfile={log}" if log else "")
        cmd += ["-nographic", "-chardev", chardev, "-serial", "chardev:con0", "-mon", "chardev=con0"]
    else:
        cmd += ["-display", "none", "-monitor", "none", "-serial", f"file:{log}"]
    return cmd


def _watch(proc: subprocess.Popen[bytes], log: Path, succ: re.Pattern[str], timeout: float,
           echo: TextIO | None, wait_exit: bool) -> str:
    """Follow the log until success, failure, QEMU's exit or the timeout; return the reason."""
    deadline = time.monotonic() + timeout
    pos, buf, text = 0, b"", ""
    settle_until: float | None = None
    reason = ""
    while True:
        time.sleep(POLL_S)
        if log.exists():
            with log.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
            pos += len(chunk)
            if chunk:
                buf += chunk
                lines = buf.split(b"\n")
                buf = lines.pop()
                new = "".join(line.decode(errors="replace").rstrip("\r") + "\n" for line in lines)
                text += new
                if echo is not None:
                    echo.write(new)
                    echo.flush()
                # A prompt ("login: ") has no newline yet: look at the partial line too.
                partial = buf.decode(errors="replace")
                if not reason:
                    if succ.search(new) or succ.search(text[-4096:] + partial):
                        reason = "success line seen"
                        settle_until = time.monotonic() + (AFTER_SUCCESS_S if wait_exit else 0.2)
                    elif any(p.search(new) for p in (console.FAILED, console.SHELL, console.PANIC)):
                        m = console.FAILED.search(text) or console.PANIC.search(text)
                        reason = "FAILED: " + (m["message"] if m else "emergency shell")
                        settle_until = time.monotonic() + AFTER_FAILURE_S
        if proc.poll() is not None:
            return reason or f"qemu exited (rc {proc.returncode}) before the success line"
        now = time.monotonic()
        if settle_until is not None and now >= settle_until:
            return reason
        if now >= deadline:
            return reason or f"timeout after {timeout:.0f} s"


def boot(profile: str, kernel: KernelTree | Path | None = None, initrd: Path | None = None,
         image: Path | None = None, cmdline: str = "", timeout: float = DEFAULT_TIMEOUT_S, *,
         success: str | re.Pattern[str] = DEFAULT_SUCCESS, poweroff: bool = True,
         disks: tuple[Path, ...] = (), memory: int = DEFAULT_MEMORY_MIB, log_path: Path | None = None,
         echo: TextIO | None = None, interactive: bool = False,
         lab_cmdline: str = LAB_CMDLINE, extra_args: tuple[str, ...] = ()) -> BootResult:
    """Boot `image` (and/or `kernel`+`initrd`) on `profile` and report.

    Direct boots use `lab_cmdline` + `liveinit.demo=poweroff` (unless
    `poweroff` is False) + `cmdline`; firmware boots use the image's own
    boot menu default. `disks` are extra writable virtio disks (persistence).
    The console is kept in `log_path` when given; the scratch directory
    (extracted kernel, OVMF vars, SD copy, the log otherwise) is always removed:
    `BootResult.console` holds the text."""
    prof = get_profile(profile)
    succ = re.compile(success) if isinstance(success, str) else success
    work = Path(tempfile.mkdtemp(prefix=f"liveinit-boot-{prof.name.replace('+', '-')}-"))
    try:
        log = Path(log_path) if log_path else work / "console.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        full_cmdline = " ".join(filter(None, (lab_cmdline, DEMO_POWEROFF if poweroff else "", cmdline)))
        acc = accel()
        cmd = command(prof, image, work, log, kernel=kernel, initrd=initrd, cmdline=full_cmdline,
                      memory=memory, disks=disks, accel_args=acc, interactive=interactive,
                      extra_args=extra_args)
        start = time.monotonic()
        proc: subprocess.Popen[bytes] | None = None
        try:
            if interactive:
                proc = subprocess.Popen(cmd)
                proc.wait()
                reason = f"qemu exited (rc {proc.returncode})"
            else:
                with (work / "qemu.stderr").open("wb") as stderr:
                    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=stderr, start_new_session=True)
                reason = _watch(proc, log, succ, timeout, echo, wait_exit=poweroff and prof.direct)
                if (proc.poll() is not None and proc.returncode not in (0, None)
                        and not reason.startswith("success")):
                    err = (work / "qemu.stderr").read_text(errors="replace").strip()
                    if err:
                        reason += f": {err.splitlines()[-1]}"
        finally:
            if proc is not None:
                kill_tree(proc.pid)
        wall = time.monotonic() - start
        text = log.read_text(errors="replace") if log.exists() else ""
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = parse_console(text, succ)
    ok = report.success and report.failure is None
    if report.success and interactive:
        reason = "success line seen"
    return BootResult(profile=prof.name, success=ok, reason=reason,
                      log_path=Path(log_path) if log_path else None,
                      wall_s=round(wall, 2), accel=acc[1], command=tuple(cmd), report=report, console=text)
