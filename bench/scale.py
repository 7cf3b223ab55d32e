"""How the runtime's probing and root search grow with the machine.

Simulated sysfs trees (qemu/fakesysfs.py) with N devices, a tenth of
them disks with a partition; the real coldplug walk + match and the real
block-device scan + superblock identification run against them natively,
best of several repeats. A linear cost shows as a flat ms-per-device."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path


def measure(n: int, repeat: int = 5) -> dict[str, float]:
    """Coldplug and root-search cost for a tree of `n` devices (ms, best of `repeat`)."""
    from liveinit import blockdev
    from liveinit.cmdline import parse
    from liveinit.coldplug import Coldplug
    from liveinit.modload import ModuleLoader
    from packer.config import DEFAULT_CACHE
    from packer.modindex import from_moddir
    from qemu.fakesysfs import SysfsBuilder, machine, populate, quiet_log
    from qemu.testkernel import fetch_kernel

    kernel = fetch_kernel()
    moddir = DEFAULT_CACHE / "depmod" / kernel.version / "lib" / "modules" / kernel.version
    if not (moddir / "modules.dep").exists():
        moddir.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(kernel.moddir), str(moddir)], check=True)
        subprocess.run(["depmod", "-b", str(DEFAULT_CACHE / "depmod" / kernel.version), kernel.version],
                       check=True)
    index = from_moddir(str(moddir))

    class MatchOnly(ModuleLoader):
        """Matches like the real loader but inserts nothing."""

        def load_matches(self, names: tuple[str, ...] | list[str], reason: str, alias: str = "") -> list[str]:
            return []

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        populate(SysfsBuilder(root), n)
        # Every block device gets a /dev node backed by a small file: empty
        # ones (nothing to identify) and, last, one real ext4 filesystem.
        (root / "dev").mkdir(exist_ok=True)
        names = sorted(p.name for p in (root / "sys" / "class" / "block").iterdir())
        for name in names:
            with open(root / "dev" / name, "wb") as f:
                f.truncate(1 << 20)
        if names:
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "TARGET", str(root / "dev" / names[-1]), "1M"],
                           check=True, capture_output=True)
        best_cp = best_rs = float("inf")
        for _ in range(repeat):
            m, _sysc = machine(root)
            loader = MatchOnly(m, index, str(moddir), parse(""), quiet_log())
            cp = Coldplug(m, loader, quiet_log())
            t = time.perf_counter()
            cp.walk()
            best_cp = min(best_cp, time.perf_counter() - t)
            t = time.perf_counter()
            devs = blockdev.scan(m)
            found = [d for d in devs if blockdev.identify(m, d).get("LABEL") == "TARGET"]
            best_rs = min(best_rs, time.perf_counter() - t)
        assert found, "the simulated root was not found"
    return {"devices": float(n), "blockdevs": float(len(names)), "coldplug_ms": best_cp * 1000,
            "rootsearch_ms": best_rs * 1000}


if __name__ == "__main__":
    for count in (10, 100, 1000):
        print(measure(count))
