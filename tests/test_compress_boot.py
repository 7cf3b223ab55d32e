"""Boot proof: the real Debian kernel unpacks our archives in every compression.

Each image is a tiny busybox initramfs written by ArchiveBuilder; its /init
prints a marker nobody else prints and powers off. One more image carries an
uncompressed early segment (fake microcode) before the compressed one: its
/init also checks that the early segment's file was unpacked. busybox is a
hard-linked pair whose data sits on the second link, as GNU cpio writes it."""
from __future__ import annotations

import re
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from packer.compress import Compression, microcode_entries
from packer.cpio import ArchiveBuilder, image_bytes
from packer.kernel import KernelTree
from qemu import lab
from qemu.lab import BootResult

METHODS = tuple(Compression)

BUSYBOX = Path("/bin/busybox")
BOOT_TIMEOUT = 120.0
MEMORY_MIB = 512
DIRECT_PROFILE = "virtio-blk"   # a storage profile boots directly (-kernel/-initrd); no medium attached
PARALLEL_BOOTS = 2  # two cores shared with everyone else
CASES = [*METHODS, "early+xz"]
EARLY_FILE = "kernel/x86/microcode/GenuineIntel.bin"


def make_image(case: str, marker: str, workdir: Path) -> Path:
    b = ArchiveBuilder()
    b.add_file("bin/busybox", src=BUSYBOX, mode=0o755)
    # Same source again: a hard link. Its data is stored on this later entry
    # only, so /bin/sh works only if the kernel links the two as we expect.
    b.add_file("usr/bin/busybox", src=BUSYBOX, mode=0o755)
    b.add_symlink("bin/sh", "busybox")
    b.add_device("dev/console", "c", 5, 1)
    b.add_dir("proc")
    check = f'[ -f /{EARLY_FILE} ] && echo "EARLY-{marker}"\n' if case.startswith("early") else ""
    b.add_file("init", data=f'#!/bin/sh\necho "{marker}"\n{check}exec /bin/busybox poweroff -f\n'.encode(),
               mode=0o755)
    early = None
    if case.startswith("early"):
        fake_root = workdir / f"host-{case}"
        (fake_root / "lib/firmware/intel-ucode").mkdir(parents=True)
        (fake_root / "lib/firmware/intel-ucode/06-8e-09").write_bytes(b"not really microcode" * 10)
        early = ArchiveBuilder()
        for name, blob in microcode_entries(fake_root):
            early.add_file(name, data=blob)
    image = image_bytes(b, case.split("+")[-1], early=early)
    path = workdir / f"initrd-{case}.img"
    path.write_bytes(image)
    return path


def boot(kernel: KernelTree, initrd: Path, case: str, marker: str) -> BootResult:
    """Direct kernel boot through the lab (its accelerator probe, console
    parsing and cleanup): success is the last line /init prints."""
    last = f"EARLY-{marker}" if case.startswith("early") else marker
    return lab.boot(DIRECT_PROFILE, kernel=kernel, initrd=initrd, timeout=BOOT_TIMEOUT, memory=MEMORY_MIB,
                    success=re.escape(last), poweroff=False)


@pytest.fixture(scope="module")
def boots(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, BootResult]]:
    assert shutil.which(lab.QEMU), "qemu-system-x86 is not installed (scripts/setup.sh)"
    workdir = tmp_path_factory.mktemp("compress-boot")
    jobs = []
    for case in CASES:
        marker = f"CPIO-BOOT-OK-{case}-{secrets.token_hex(6)}"
        jobs.append((case, make_image(case, marker, workdir), marker))
    with ThreadPoolExecutor(max_workers=PARALLEL_BOOTS) as pool:
        futures = {case: (marker, pool.submit(boot, kernel, img, case, marker)) for case, img, marker in jobs}
        return {case: (marker, f.result()) for case, (marker, f) in futures.items()}


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES)
def test_kernel_boots_our_archive(boots: dict[str, tuple[str, BootResult]], case: str) -> None:
    marker, result = boots[case]
    tail = result.console[-3000:]
    assert result.success, f"{result.reason}\n{tail}"          # the lab saw the line, no panic or failure
    assert "Initramfs unpacking failed" not in result.console, tail
    # A substring, not a whole line: kernel messages may interleave with the echo.
    # The marker is random and never on the command line, so only /init prints it.
    assert marker in result.console, tail
    if case.startswith("early"):
        assert f"EARLY-{marker}" in result.console, tail
