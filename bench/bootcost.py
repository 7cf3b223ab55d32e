"""What Python costs at boot, measured inside the benchmark VM.

Packs the universal image with psutil and pyudev added, boots it under QEMU
TCG with a break-point shell before coldplug (proc, sys, dev are mounted by
then), and times with busybox `time` what the runtime does and what it
chose not to do: the interpreter alone, the runtime's imports, json,
psutil, pyudev's Context and kernel-uevent Monitor, and the stdlib netlink
listener the runtime uses instead. Each command runs `REPEAT` times; the
minimum is reported.

Those commands all run after the runtime itself, so the interpreter's code
is already translated by TCG: they are warm. The first interpreter of a boot
pays that translation too, and that is the one PID 1 is. `measure_cold`
boots the same image with `rdinit=` pointing at a busybox script that starts
the interpreter twice and stamps /dev/kmsg around each: the first is the
cold start /init pays, the second the warm one. The cold start is the floor
under any CPython PID 1 on this VM."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = "env PYTHONHASHSEED=0 /usr/bin/python3.11 -S -s -c"
PRE = "import sys; sys.path.insert(0, '/usr/lib/liveinit'); "
PROBES: tuple[tuple[str, str], ...] = (
    ("interpreter start (-c pass)", "pass"),
    ("runtime imports (liveinit.boot)", PRE + "import liveinit.boot"),
    ("runtime discovery modules", PRE + "import liveinit.coldplug, liveinit.rootfind, liveinit.stack"),
    ("dataclasses", "import dataclasses"),
    ("json", "import json"),
    ("stdlib netlink uevent listener", PRE + "from liveinit.uevent import UeventListener; "
     "from liveinit.machine import Machine; UeventListener(Machine('/'))"),
    ("psutil import + virtual_memory()", PRE + "import psutil; psutil.virtual_memory()"),
    ("pyudev import", PRE + "import pyudev"),
    ("pyudev Context + kernel Monitor", PRE + "import pyudev; c = pyudev.Context(); "
                                             "pyudev.Monitor.from_netlink(c, source='kernel')"),
)
REPEAT = 3
COLD_BOOTS = 3
COLD_SCRIPT = f"""#!/bin/sh
mount -t devtmpfs dev /dev 2>/dev/null
k() {{ echo "COLDSTART $1" > /dev/kmsg; }}
k begin
{PY} pass
k first
{PY} pass
k second
poweroff -f
"""
COLD = "interpreter start, cold (the first of a boot, as /init)"
WARM = "interpreter start, warm (the second of that boot)"
KMSG_RE = re.compile(r"^\[\s*([0-9.]+)\] COLDSTART (\w+)", re.M)


def pack(work: Path) -> Path:
    """The universal image plus psutil, pyudev, busybox and the probe scripts."""
    script = ["set +e"]
    for i, (_name, code) in enumerate(PROBES):
        for _ in range(REPEAT):
            # A probe that fails (say, a module missing from the image) must not
            # pass for a fast one: its status is printed and checked.
            script.append(f"echo 'COST {i}'; time {PY} \"{code}\" >/dev/null; echo \"STATUS $?\"")
    script.append("echo COST-''DONE; poweroff -f")
    (work / "bootcost.sh").write_text("\n".join(script) + "\n")
    cold = work / "coldstart.sh"
    cold.write_text(COLD_SCRIPT)
    cold.chmod(0o755)
    img = work / "cost.img"
    subprocess.run([str(Path(sys.executable).with_name("liveinit")), "-q", "pack", "-o", str(img),
                    "--busybox", "--packages", "psutil,pyudev",
                    "--python-modules", "dataclasses,json", "--files", f"{work / 'bootcost.sh'}:/bootcost.sh",
                    "--files", f"{cold}:/coldstart.sh"],
                   check=True)
    return img


def _qemu(vmlinuz: Path, img: Path, extra: str) -> list[str]:
    """The benchmark's VM (bench/peers/boot.sh: TCG, 1 GiB, serial console) booting `img`."""
    return ["qemu-system-x86_64", "-m", "1024", "-nographic", "-no-reboot", "-accel", "tcg",
            "-kernel", str(vmlinuz), "-initrd", str(img), "-append", "console=ttyS0 panic=-1 " + extra]


def cold_starts(log: str) -> tuple[float, float] | None:
    """(cold, warm) seconds from one boot's console, None if it did not get there."""
    ts = {m.group(2): float(m.group(1)) for m in KMSG_RE.finditer(log)}
    if not {"begin", "first", "second"} <= set(ts):
        return None
    return ts["first"] - ts["begin"], ts["second"] - ts["first"]


def measure_cold(vmlinuz: Path, img: Path, work: Path, timeout: float = 120) -> dict[str, float]:
    """Seconds of the first and second interpreter start of a boot (min of COLD_BOOTS boots)."""
    best: dict[str, float] = {}
    for n in range(COLD_BOOTS):
        r = subprocess.run(_qemu(vmlinuz, img, "rdinit=/coldstart.sh"), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=timeout)
        log = r.stdout.decode(errors="replace")
        (work / f"coldstart{n + 1}.log").write_text(log)
        got = cold_starts(log)
        if got is None:
            raise RuntimeError("bootcost: the cold-start boot did not finish; "
                               f"see {work / f'coldstart{n + 1}.log'}")
        best[COLD] = min(best.get(COLD, got[0]), got[0])
        best[WARM] = min(best.get(WARM, got[1]), got[1])
    return best


def measure(vmlinuz: Path, work: Path) -> dict[str, float]:
    """Seconds per probe: the warm ones after the runtime, then the cold start."""
    img = pack(work)
    costs = measure_warm(vmlinuz, img, work)
    try:
        costs.update(measure_cold(vmlinuz, img, work))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        # The rest of the run (every boot before this) must not be lost for it.
        print(f"bench: cold interpreter start not measured: {e}", file=sys.stderr)
    return costs


def measure_warm(vmlinuz: Path, img: Path, work: Path, timeout: float = 400) -> dict[str, float]:
    """Seconds per probe (min of REPEAT) inside a TCG guest, after the runtime ran."""
    # The probes run from a script packed into the image: typing them on the
    # console would interleave the shell's echo with their output.
    cmd = _qemu(vmlinuz, img, "rd.break=coldplug")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    try:
        assert proc.stdout is not None and proc.stdin is not None
        deadline = time.monotonic() + timeout
        sent = False
        import os
        import select
        fd = proc.stdout.fileno()
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.5)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out += chunk
            if not sent and b"break before coldplug" in out:
                time.sleep(2)
                proc.stdin.write(b"sh /bootcost.sh 2>&1\n")
                proc.stdin.flush()
                sent = True
            if b"COST-DONE" in out:
                break
    finally:
        proc.kill()
        proc.wait()
    (work / "bootcost.log").write_bytes(out)
    # busybox time prints "real\t0m 0.52s" on stderr, after the echo's prefix
    text = out.decode(errors="replace").replace("\r", "")
    best: dict[str, float] = {}
    for m in re.finditer(r"COST (\d+)\n(?:.*\n)*?real\s+(\d+)m\s*([\d.]+)s\n(?:.*\n)*?STATUS (\d+)", text):
        name = PROBES[int(m.group(1))][0]
        if m.group(4) != "0":
            raise RuntimeError(f"bootcost: probe {name!r} failed in the guest (exit {m.group(4)}); "
                               f"see {work / 'bootcost.log'}")
        secs = int(m.group(2)) * 60 + float(m.group(3))
        best[name] = min(best.get(name, secs), secs)
    return best


if __name__ == "__main__":
    from qemu.testkernel import fetch_kernel
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in measure(fetch_kernel().vmlinuz, Path(tmp)).items():
            print(f"{k:40} {v * 1000:8.0f} ms")
