"""`liveinit bench`: liveinit and the generators people use today, side by side.

Everything is measured in one run, on the same kernel, the same QEMU VM and
the same machine, and reported as ratios, because absolute numbers on a
shared 2-core host mean little. The peers are prepared by the shell recipe in
bench/peers/ (the one the reference measurements used), cached outside the
repository; liveinit images are packed by this checkout's `liveinit pack`.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from liveinit import contract
from qemu import console

PEERS = Path(__file__).resolve().parent / "peers"
WORK = Path(os.environ.get("PEERS_WORK", "/var/cache/liveinit/peers"))
DISK_CMDLINE = "console=ttyS0 root=/dev/vda rw panic=-1"
LIVE_CMDLINES = {
    "baseline-live": "console=ttyS0 panic=-1",
    "liveboot-most": "console=ttyS0 boot=live panic=-1",
    "dracutlive-live": "console=ttyS0 root=live:CDLABEL=PEERSLIVE rd.live.image rd.live.overlay.overlayfs=1 "
                       "panic=-1",
    # The same root= hint dracut gets (the medium's label)...
    "liveinit-live": "console=ttyS0 root=live:CDLABEL=PEERSLIVE panic=-1",
    # ...and none, like live-boot: every device is searched. The bench ISO is
    # the peers' and carries no liveinit identity, so the search waits until
    # every device is probed before it settles for an unidentified medium.
    "liveinit-live-search": "console=ttyS0 panic=-1",
}
# Peer generator configs as named by bench/peers/build.sh.
PEER_BUILDS = ("tiny", "itools-dep-hostsys", "itools-most", "dracut-generic", "dracutlive-live",
               "liveboot-most")
DISK_IMAGES = ("baseline", "tiny", "itools-dep-hostsys", "itools-most", "dracut-generic",
               "liveinit", "liveinit-hostonly")
LIVE_IMAGES = ("baseline-live", "liveboot-most", "dracutlive-live", "liveinit-live", "liveinit-live-search")
# The Debian live system: a debootstrap root with systemd on an ISO (bench/peers/mkdebian.sh),
# booted to the serial console's login prompt by liveinit and by the peers' live initramfs.
DEBIAN_LABEL = "PEERSDEB"
DEBIAN_CMDLINES = {
    "liveinit-debian": f"console=ttyS0 root=live:CDLABEL={DEBIAN_LABEL} panic=-1",
    "liveboot-debian": "console=ttyS0 boot=live panic=-1",
    "dracutlive-debian": f"console=ttyS0 root=live:CDLABEL={DEBIAN_LABEL} rd.live.image "
                         "rd.live.overlay.overlayfs=1 panic=-1",
}
DEBIAN_IMAGES = {"liveinit-debian": "liveinit", "liveboot-debian": "liveboot-most",
                 "dracutlive-debian": "dracutlive-live"}     # which initramfs each boots
LOGIN_ENV = {"MARKER": "PEERS-LOGIN", "NEED": "login:", "BOOT_TIMEOUT": "480"}
SAME_IMAGE = ("liveinit-live", "liveinit-live-search")   # the universal image, booted on the ISO
KERNEL_TIME = re.compile(console.KERNEL_TIME)
COSTS = console.runtime_line(contract.COSTS_LINE)
# One item of the costs line's summary (liveinit.costs.Costs.summary): "module loads 402 ms (11)".
COSTS_ITEM = re.compile(r"([a-z][a-z ]*?) ([0-9.]+) ms \((\d+)\)")
INTERPRETER = "interpreter start"
TOTAL = "total (runtime)"
SUM = "sum: "             # costs rows: summed over threads, they overlap


@dataclass
class Run:
    """One benchmark run: where its files go and what it measured."""

    out: Path
    gen: dict[str, list[float]] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)
    kernel_env: dict[str, str] = field(default_factory=dict)   # KVER, KROOT for the peer scripts


def sh(run: Run, script: str, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
    """Run one of the peer recipe scripts on the run's kernel, failing loudly with its log."""
    full_env = dict(os.environ, **run.kernel_env, **(env or {}))
    with open(log or os.devnull, "w") as f:
        r = subprocess.run(["bash", str(PEERS / script), *args], env=full_env, stdout=f,
                           stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"bench: {script} failed (exit {r.returncode}); see {log}")


def prepare(run: Run) -> None:
    """Chroots with the peers, the test root, the hand-made lower bounds, the live ISO."""
    logs = run.out / "logs"
    sh(run, "chroots.sh", log=logs / "chroots.log")
    if not (WORK / "root.ext4").exists():
        sh(run, "mkroot.sh", log=logs / "mkroot.log")
    if not (images_dir(run) / "baseline.cpio.zst").exists():
        sh(run, "baseline.sh", log=logs / "baseline.log")
    if not (WORK / "live.iso").exists() or not (images_dir(run) / "baseline-live.cpio.zst").exists():
        sh(run, "mklive.sh", log=logs / "mklive.log")
    if not (WORK / "debian.iso").exists():
        sh(run, "mkdebian.sh", log=logs / "mkdebian.log")
    run.images["baseline"] = images_dir(run) / "baseline.cpio.zst"
    run.images["baseline-live"] = images_dir(run) / "baseline-live.cpio.zst"


def images_dir(run: Run) -> Path:
    """Where the peer scripts put images for the run's kernel (common.sh: IMG)."""
    return WORK / "images" / run.kernel_env["KVER"]


def pack_liveinit(run: Run, runs: int) -> None:
    """Time `liveinit pack` (universal and host-only), warm: one untimed pack first."""
    exe = Path(sys.executable).with_name("liveinit")
    for name, extra in (("liveinit", []), ("liveinit-hostonly", ["--host-only"])):
        out = run.out / "images" / f"{name}.img"
        out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(exe), "-q", "pack", "--output", str(out), *extra]
        subprocess.run(cmd, check=True)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            times.append(time.perf_counter() - t0)
        run.gen[name] = times
        run.images[name] = out
    for name in SAME_IMAGE:
        run.images[name] = run.images["liveinit"]
    run.images["liveinit-debian"] = run.images["liveinit"]


def pack_peers(run: Run, runs: int) -> None:
    """Peer generators in their chroots, via the recipe's build.sh."""
    env = {"PEERS_RESULTS": str(run.out / "raw")}
    sh(run, "build.sh", str(runs), *PEER_BUILDS, env=env, log=run.out / "logs" / "build.log")
    for row in read_tsv(run.out / "raw" / "gen.tsv"):
        if row["rc"] == "0":
            run.gen.setdefault(row["config"], []).append(float(row["seconds"]))
    for name in PEER_BUILDS:
        img = images_dir(run) / f"{name}.img"
        if img.exists():
            dest = run.out / "images" / f"{name}.img"
            shutil.copy(img, dest)
            run.images[name] = dest


def read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def sizes(run: Run) -> dict[str, dict[str, str]]:
    """Compressed/uncompressed size, files and modules of every image (analyze.py)."""
    args = [f"{k}={v}" for k, v in sorted(run.images.items())
            if v.exists() and k not in SAME_IMAGE and k not in DEBIAN_IMAGES]
    out = subprocess.run([sys.executable, str(PEERS / "analyze.py"), *args], capture_output=True, text=True,
                         check=True).stdout
    (run.out / "raw" / "images.tsv").write_text(out)
    return {r["name"]: r for r in csv.DictReader(out.splitlines(), delimiter="\t")}


def boot_all(run: Run, rounds: int) -> None:
    """Boot every image round-robin (spreads load noise evenly), via boot.sh."""
    for r in range(1, rounds + 1):
        env = {"PEERS_RESULTS": str(run.out / "raw"), "BOOT_TIMEOUT": "240",
               "PEERS_LOGS": str(run.out / "bootlogs" / f"round{r}")}
        for name in DISK_IMAGES:
            if name in run.images:
                sh(run, "boot.sh", "-n", "1", name, str(run.images[name]), DISK_CMDLINE, env=env,
                   log=run.out / "logs" / f"boot-{name}.log")
        for name in LIVE_IMAGES:
            if name in run.images:
                sh(run, "boot.sh", "-n", "1", "-m", "cdrom-ide", name, str(run.images[name]),
                   LIVE_CMDLINES[name], str(WORK / "live.iso"), env=env,
                   log=run.out / "logs" / f"boot-{name}.log")
        for name, initrd in DEBIAN_IMAGES.items():
            if initrd in run.images:
                sh(run, "boot.sh", "-n", "1", "-m", "cdrom-ide", name, str(run.images[initrd]),
                   DEBIAN_CMDLINES[name], str(WORK / "debian.iso"), env={**env, **LOGIN_ENV},
                   log=run.out / "logs" / f"boot-{name}.log")


def stage_breakdown(logdir: Path, name: str) -> dict[str, float]:
    """Median ms per part of liveinit's boots, from its console lines: the
    stages, the interpreter's start and the costs' sums by kind of work.

    `interpreter start` is the time from the kernel's "Run /init" to /init's
    first line: the first runtime line on /dev/kmsg (the end of stage early)
    minus the two stages before it, all printk timestamps."""
    per: dict[str, list[float]] = {}
    for log in sorted(logdir.glob(f"round*/{name}.boot*.log")):
        text = log.read_text(errors="replace")
        stages = {m["name"]: float(m["ms"]) for m in console.STAGE.finditer(text)}
        for k, v in stages.items():
            per.setdefault(k, []).append(v)
        run_init = first_line_ts(text, "Run /init as init process")
        first = first_line_ts(text, "liveinit:")
        if run_init is not None and first is not None:
            per.setdefault(INTERPRETER, []).append(
                (first - run_init) * 1000 - stages.get("imports", 0.0) - stages.get("early", 0.0))
        for m in console.STARTING.finditer(text):
            per.setdefault(TOTAL, []).append(float(m["ms"]))
        costs = COSTS.search(text)
        if costs:
            for kind, ms, _n in COSTS_ITEM.findall(costs["summary"]):
                per.setdefault(SUM + kind, []).append(float(ms))
    return {k: statistics.median(v) for k, v in per.items()}


def first_line_ts(text: str, needle: str) -> float | None:
    for line in text.splitlines():
        if needle in line:
            m = KERNEL_TIME.match(line)
            if m:
                return float(m["time"])
    return None


def main_bench(args: argparse.Namespace) -> int:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from qemu.testkernel import fetch_kernel
    kernel = fetch_kernel()     # the lab's kernel, fetched on a fresh machine: the peers use it too
    run = Run(out=WORK / "runs" / stamp, kernel_env={"KVER": kernel.version, "KROOT": str(kernel.root)})
    for d in ("logs", "raw", "images"):
        (run.out / d).mkdir(parents=True, exist_ok=True)
    print(f"bench: run directory {run.out}")
    prepare(run)
    pack_liveinit(run, args.runs)
    if not args.skip_peers:
        pack_peers(run, args.runs)
    else:
        for name in PEER_BUILDS:
            img = images_dir(run) / f"{name}.img"
            if img.exists():
                run.images[name] = img
    image_rows = sizes(run)
    boot_all(run, args.rounds)
    scale_rows = scale(args.scale)
    from bench.bootcost import measure as bootcost
    costs = bootcost(kernel.vmlinuz, run.out)
    from bench.report import write_report
    report = write_report(run, image_rows, read_tsv(run.out / "raw" / "boots.tsv"),
                          stage_breakdown(run.out / "bootlogs", "liveinit"),
                          stage_breakdown(run.out / "bootlogs", "liveinit-live"),
                          stage_breakdown(run.out / "bootlogs", "liveinit-live-search"), scale_rows, costs,
                          machine_facts())
    Path(args.report).write_text(report)
    print(report)
    return 0


def machine_facts() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.split("\n")[0]
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} vCPU {cpu}, {mem} GiB; "
            f"{qemu}; QEMU TCG, 1 vCPU guest, 1 GiB; load average at the end {' '.join(load)}")


def scale(sizes_: list[int]) -> list[dict[str, float]]:
    from bench.scale import measure
    return [measure(n) for n in sizes_]


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--runs", type=int, default=3, help="timed packs per generator (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="boots per image, round-robin (default 3)")
    parser.add_argument("--skip-peers", action="store_true",
                        help="reuse the peers' last images instead of packing them again "
                             "(pack times omitted)")
    parser.add_argument("--scale", type=int, nargs="*", default=[10, 100, 1000],
                        help="simulated device counts for the probing scale test")
    parser.add_argument("--report", default="BENCHMARKS.md", help="where to write the markdown report")


def run(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        from packer.errors import CommandError
        raise CommandError("the benchmark needs root (chroots, bind mounts)", hint="run it with sudo")
    return main_bench(args)
