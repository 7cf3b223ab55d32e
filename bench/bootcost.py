"""What Python costs at boot, measured inside the benchmark VM.

Packs the universal image with psutil and pyudev added, boots it under QEMU
TCG with a break-point shell before coldplug (proc, sys, dev are mounted by
then), and times with busybox `time` what the runtime does and what it
chose not to do: the interpreter alone, the runtime's imports, json,
psutil, pyudev's Context and kernel-uevent Monitor, and the stdlib netlink
listener the runtime uses instead. Each command runs `REPEAT` times; the
minimum is reported."""
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


def measure(vmlinuz: Path, work: Path, timeout: float = 400) -> dict[str, float]:
    """Seconds per probe (min of REPEAT) inside a TCG guest."""
    # The probes run from a script packed into the image: typing them on the
    # console would interleave the shell's echo with their output.
    script = ["set +e"]
    for i, (_name, code) in enumerate(PROBES):
        for _ in range(REPEAT):
            # A probe that fails (say, a module missing from the image) must not
            # pass for a fast one: its status is printed and checked.
            script.append(f"echo 'COST {i}'; time {PY} \"{code}\" >/dev/null; echo \"STATUS $?\"")
    script.append("echo COST-''DONE; poweroff -f")
    (work / "bootcost.sh").write_text("\n".join(script) + "\n")
    img = work / "cost.img"
    subprocess.run([str(Path(sys.executable).with_name("liveinit")), "-q", "pack", "-o", str(img),
                    "--busybox", "--packages", "psutil,pyudev",
                    "--python-modules", "dataclasses,json", "--files", f"{work / 'bootcost.sh'}:/bootcost.sh"],
                   check=True)
    cmd = ["qemu-system-x86_64", "-m", "1024", "-nographic", "-no-reboot", "-accel", "tcg",
           "-kernel", str(vmlinuz), "-initrd", str(img),
           "-append", "console=ttyS0 panic=-1 rd.break=coldplug"]
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
    from packer.kernelpkg import fetch_kernel
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in measure(fetch_kernel().vmlinuz, Path(tmp)).items():
            print(f"{k:40} {v * 1000:8.0f} ms")
