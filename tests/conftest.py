"""Shared fixtures: the real Debian kernel (fetched once into the cache) and a
depmod-generated copy of its module tree, used as kmod's oracle."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from packer.cachelock import locked
from packer.config import DEFAULT_CACHE
from packer.kernel import KernelTree
from qemu.testkernel import fetch_kernel


@pytest.fixture(scope="session")
def kernel() -> KernelTree:
    """The unpacked Debian kernel package (no modules.dep in it, as shipped)."""
    return fetch_kernel(DEFAULT_CACHE)


@pytest.fixture(scope="session")
def depmod_root(kernel: KernelTree) -> Path:
    """A copy of the kernel's module tree with depmod run on it: kmod's view.

    Returns the base directory (`depmod -b BASE`), holding lib/modules/KVER."""
    base = DEFAULT_CACHE / "depmod" / kernel.version
    moddir = base / "lib" / "modules" / kernel.version
    with locked(base):   # test workers run in parallel
        if not (moddir / "modules.dep").exists():
            if moddir.exists():
                shutil.rmtree(moddir)
            moddir.parent.mkdir(parents=True, exist_ok=True)
            # Hard links: same files, no second copy of ~400 MiB.
            subprocess.run(["cp", "-al", str(kernel.moddir), str(moddir)], check=True)
            subprocess.run(["depmod", "-b", str(base), kernel.version], check=True)
    return base


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Boot tests are the slowest: run them last so fast failures show first.
    items.sort(key=lambda it: 1 if it.get_closest_marker("qemu") else 0)
