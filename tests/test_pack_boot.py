"""Boot what `liveinit pack` makes on the real Debian kernel in QEMU: the
interpreter, the stdlib pycs, the /dev nodes and the runtime must all work
for PID 1 to print its stage lines."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from packer import initramfs
from packer.config import PackConfig
from packer.kernel import KernelTree
from qemu import lab

BOOT_TIMEOUT_S = 180
ROOT_MARK = "PACK-ROOT-OK"


@pytest.fixture(scope="module")
def universal(tmp_path_factory: pytest.TempPathFactory, kernel: KernelTree) -> Path:
    out = tmp_path_factory.mktemp("packboot") / "initrd.img"
    initramfs.build(PackConfig(output=out, moddir=kernel.moddir, kver=kernel.version))
    return out


@pytest.mark.qemu
@pytest.mark.slow
def test_no_disk_reaches_the_emergency_shell(kernel: KernelTree, universal: Path) -> None:
    # The Python prompt's banner is the last thing printed: wait for it, not
    # for "emergency shell", after which the lab stops reading almost at once.
    res = lab.boot("virtio-blk", kernel=kernel, initrd=universal, cmdline="rootdelay=5",
                   timeout=BOOT_TIMEOUT_S, poweroff=False, success=r"Python prompt: no shell in the image")
    text = res.console
    # The lab counts a FAILED line as failure; here it is the expected outcome.
    assert res.report.success, res.summary() + "\n" + text[-3000:]
    assert "Run /init as init process" in text
    stages = dict(res.timings.stages_ms)
    assert {"early", "cmdline", "coldplug"} <= set(stages), stages
    assert res.report.failure and "no block device" in res.report.failure
    assert res.report.hint
    assert "Fatal Python error" not in text and "Kernel panic" not in text
    # busybox is off by default (size budget): the shell is the runtime's Python prompt.
    assert "Python prompt: no shell in the image" in text


def _ext4_root(tmp: Path, report: str = "") -> Path:
    """A tiny ext4 root: static busybox and an init that reports (plus `report`,
    shell lines) and powers off."""
    tree = tmp / "tree"
    for d in ("bin", "sbin", "proc", "sys", "dev", "run", "tmp"):
        (tree / d).mkdir(parents=True)
    (tree / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (tree / "bin" / "busybox").chmod(0o755)
    os.symlink("busybox", tree / "bin" / "sh")
    init = tree / "sbin" / "init"
    init.write_text("#!/bin/sh\n"
                    "/bin/busybox mount -t proc proc /proc 2>/dev/null\n"
                    "fs=$(/bin/busybox awk '$2 == \"/\" {print $3}' /proc/mounts | /bin/busybox tail -n1)\n"
                    f"{report}"
                    f"echo \"{ROOT_MARK} pid=$$ root=$fs\"\n"
                    "/bin/busybox poweroff -f\n")
    init.chmod(0o755)
    img = tmp / "root.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "packroot", "-E", "root_owner=0:0", "-d", str(tree),
                    str(img), "16M"], check=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                       "E2FSPROGS_FAKE_TIME": "1"})
    return img


@pytest.mark.qemu
@pytest.mark.slow
def test_boots_a_real_ext4_root_on_virtio(kernel: KernelTree, universal: Path, tmp_path: Path) -> None:
    disk = _ext4_root(tmp_path)
    res = lab.boot("virtio-blk", kernel=kernel, initrd=universal, cmdline="root=/dev/vda rootdelay=60",
                   timeout=BOOT_TIMEOUT_S, poweroff=False, success=rf"{ROOT_MARK} pid=1 root=ext4",
                   disks=(disk,))
    assert res.success, res.summary() + "\n" + res.console[-3000:]
    assert "liveinit: starting /sbin/init" in res.console
    stages = dict(res.timings.stages_ms)
    assert [name for name, _ms in res.timings.stages_ms] == \
        ["imports", "early", "cmdline", "coldplug", "findroot", "stack", "handover"], stages


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("method", ["none", "gzip", "xz", "zstd", "lz4"])
def test_every_compression_boots_the_real_image(method: str, kernel: KernelTree, tmp_path: Path) -> None:
    """The issue: each compression the packer offers boots. Here the whole
    liveinit image (every segment in `method`) reaches a real init."""
    from packer.compress import detect
    from packer.cpio import read_archive

    out = tmp_path / f"initrd-{method}.img"
    initramfs.build(PackConfig(output=out, moddir=kernel.moddir, kver=kernel.version, compress=method))
    data = out.read_bytes()
    segs = read_archive(data)
    # The stored modules segment (.ko.xz files) first, then every other segment in `method`.
    assert detect(data) == "none" and segs[0].compression == "none"
    assert all(e.name.endswith(".ko.xz") for e in segs[0].entries if e.kind == "file")
    assert {seg.compression for seg in segs[1:]} == {method}
    disk = _ext4_root(tmp_path)
    res = lab.boot("virtio-blk", kernel=kernel, initrd=out, cmdline="root=/dev/vda rootdelay=60",
                   timeout=BOOT_TIMEOUT_S, poweroff=False, success=rf"{ROOT_MARK} pid=1 root=ext4",
                   disks=(disk,))
    assert res.success, res.summary() + "\n" + res.console[-3000:]
    assert "Initramfs unpacking failed" not in res.console


@pytest.mark.qemu
@pytest.mark.slow
def test_a_compressed_module_is_decompressed_and_loaded_at_boot(kernel: KernelTree, universal: Path,
                                                                tmp_path: Path) -> None:
    """udf (and its dependency crc_itu_t) is packed just in case, so stored as .ko.xz: asked
    for on the command line, PID 1 decompresses it and the kernel takes it (a Debian module
    is signed: the bytes it gets are the .ko's)."""
    from packer.cpio import read_archive
    base = f"usr/lib/modules/{kernel.version}/"
    stored = {e.name.removeprefix(base) for e in read_archive(universal.read_bytes())[0].entries}
    assert "kernel/fs/udf/udf.ko.xz" in stored and "kernel/lib/crc-itu-t.ko.xz" in stored
    disk = _ext4_root(tmp_path, report="echo \"ROOT-MODULES $(/bin/busybox cut -d' ' -f1 /proc/modules "
                                        "| /bin/busybox tr '\\n' ,)\"\n")
    res = lab.boot("virtio-blk", kernel=kernel, initrd=universal,
                   cmdline="root=/dev/vda rootdelay=60 rd.driver.pre=udf",
                   timeout=BOOT_TIMEOUT_S, poweroff=False, success=rf"{ROOT_MARK} pid=1 root=ext4",
                   disks=(disk,))
    assert res.success, res.summary() + "\n" + res.console[-3000:]
    line = next(ln for ln in res.console.splitlines() if "ROOT-MODULES " in ln)
    loaded = set(line.split("ROOT-MODULES ", 1)[1].strip().split(","))
    assert {"udf", "crc_itu_t", "ext4", "virtio_blk"} <= loaded, line     # xz ones and plain ones
    assert "liveinit: loaded udf" in res.console
    assert "module udf not loaded" not in res.console
    assert re.search(r"module decompression [0-9.]+ ms \(2\)", res.console), res.console[-3000:]
