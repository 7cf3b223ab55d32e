"""Boot proof: the real Debian kernel unpacks our archives in every compression.

Each image is a tiny busybox initramfs written by ArchiveBuilder; its /init
prints a marker nobody else prints and powers off. One more image carries an
uncompressed early segment (fake microcode) before the compressed one: its
/init also checks that the early segment's file was unpacked. busybox is a
hard-linked pair whose data sits on the second link, as GNU cpio writes it."""
from __future__ import annotations

import secrets
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from packer.compress import METHODS, microcode_entries
from packer.cpio import ArchiveBuilder, image_bytes
from packer.kernelpkg import KernelTree

BUSYBOX = Path("/bin/busybox")
BOOT_TIMEOUT = 120.0
PARALLEL_BOOTS = 2  # two cores shared with everyone else
CASES = [*METHODS, "early+xz"]
EARLY_FILE = "kernel/x86/microcode/GenuineIntel.bin"


@dataclass(frozen=True)
class Boot:
    marker: str
    console: str
    timed_out: bool
    returncode: int | None


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


def boot(kernel: KernelTree, initrd: Path, marker: str, log: Path) -> Boot:
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "512", "-nographic", "-no-reboot",
           "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", "console=ttyS0 panic=-1"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        try:
            rc: int | None = proc.wait(timeout=BOOT_TIMEOUT)
            timed_out = False
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc, timed_out = None, True
    return Boot(marker, log.read_text(errors="replace"), timed_out, rc)


@pytest.fixture(scope="module")
def boots(kernel: KernelTree, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Boot]:
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86 is not installed (scripts/setup.sh)"
    workdir = tmp_path_factory.mktemp("compress-boot")
    jobs = []
    for case in CASES:
        marker = f"CPIO-BOOT-OK-{case}-{secrets.token_hex(6)}"
        jobs.append((case, make_image(case, marker, workdir), marker))
    with ThreadPoolExecutor(max_workers=PARALLEL_BOOTS) as pool:
        futures = {case: pool.submit(boot, kernel, img, marker, workdir / f"console-{case}.log")
                   for case, img, marker in jobs}
        return {case: f.result() for case, f in futures.items()}


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("case", CASES)
def test_kernel_boots_our_archive(boots: dict[str, Boot], case: str) -> None:
    result = boots[case]
    tail = result.console[-3000:]
    assert not result.timed_out, f"QEMU did not power off within {BOOT_TIMEOUT} s:\n{tail}"
    assert "Initramfs unpacking failed" not in result.console, tail
    # A substring, not a whole line: kernel messages may interleave with the echo.
    # The marker is random and never on the command line, so only /init prints it.
    assert result.marker in result.console, tail
    if case.startswith("early"):
        assert f"EARLY-{result.marker}" in result.console, tail
    assert "Kernel panic" not in result.console, tail
