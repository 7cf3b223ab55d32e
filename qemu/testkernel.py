"""The boot lab's test kernel: the Debian kernel used by tests, the demo and the benchmark.

`linux-image-amd64` names the current `linux-image-<ver>-amd64`; that package
is fetched with `apt-get download` and unpacked with `dpkg -x` into a cache
outside the repository. Nothing here is ever committed."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from packer import tools
from packer.config import DEFAULT_CACHE
from packer.errors import CommandError
from packer.kernel import KernelTree

META_PACKAGE = "linux-image-amd64"


def _current_package() -> str:
    """The linux-image-<ver>-amd64 package that linux-image-amd64 depends on."""
    depends = ["apt-cache", "depends", META_PACKAGE]
    out = tools.run(depends, f"find the package {META_PACKAGE} depends on", text=True).stdout
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if not m:
        tools.run(["apt-get", "update", "-qq"], "update the package lists", capture=False)
        out = tools.run(depends, f"find the package {META_PACKAGE} depends on", text=True).stdout
        m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if not m:
        raise CommandError(f"cannot tell which kernel {META_PACKAGE} depends on",
                           hint="run `apt-get update` (Debian's package lists are needed once), "
                                "or pass an unpacked kernel (--kernel-root / --moddir)")
    return m.group(1)


def fetch_kernel(cache: Path = DEFAULT_CACHE, package: str | None = None) -> KernelTree:
    """Return the unpacked kernel, downloading and unpacking it on first use."""
    kdir = cache / "kernel"
    # Reuse whatever is unpacked already: offline runs must not need apt.
    if package is None:
        for done in sorted(kdir.glob("*/.unpacked")):
            return KernelTree(done.parent.name, done.parent / "root")
        package = _current_package()
    version = package.removeprefix("linux-image-")
    tree = KernelTree(version, kdir / version / "root")
    stamp = kdir / version / ".unpacked"
    if stamp.exists():
        return tree
    dl = kdir / version
    dl.mkdir(parents=True, exist_ok=True)
    debs = list(dl.glob(f"{package}_*.deb"))
    if not debs:
        tools.run(["apt-get", "download", "-q", package], f"download {package}", cwd=dl, capture=False)
        debs = list(dl.glob(f"{package}_*.deb"))
    tools.run(["dpkg", "-x", str(debs[0]), str(tree.root)], f"unpack {debs[0].name}", cwd=dl, capture=False)
    stamp.touch()
    return tree


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache directory")
    parser.add_argument("--package", help="kernel package name (default: what linux-image-amd64 depends on)")


def run(args: argparse.Namespace) -> int:
    tree = fetch_kernel(args.cache, args.package)
    print(f"{tree.version} {tree.vmlinuz} {tree.moddir}")
    return 0
