"""QEMU, end to end: `liveinit image TREE` (the path `liveinit image /` takes) of a Debian bookworm
root with its own kernel package boots that kernel to the login prompt on the serial console, and
the live system's own modprobe then loads a module that is not in the initramfs.

The debootstrap tree (minbase + systemd, udev, kmod, linux-image-amd64) is cached as a tarball
under /var/cache/liveinit/snapshot-e2e/, keyed by its recipe (the first run needs the mirror)."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from packer.config import DEFAULT_CACHE

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

SUITE = "bookworm"
MIRROR = os.environ.get("LIVEINIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd-sysv", "udev", "kmod", "linux-image-amd64")
TARBALLS = DEFAULT_CACHE / "snapshot-e2e"
MODULE = "snd_dummy"              # a leaf driver no initramfs group packs
MARK = "LIVEINIT-E2E-MODPROBE"
# The probe runs as the boot ends (systemd prints it on the console), beside the getty's prompt.
UNIT = f"""\
[Unit]
Description=liveinit e2e: load a module the initramfs does not have
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/bin/sh -c '(modprobe {MODULE} && grep -q "^{MODULE} " /proc/modules \\
  && echo "{MARK} ok $$(uname -r)" || echo "{MARK} failed") > /dev/console 2>&1'

[Install]
WantedBy=multi-user.target
"""
DONE = re.compile(rf"(?ms)(?:{MARK} \w+.*^\S+ login: *$|^\S+ login: .*{MARK} \w+)")
BOOT_TIMEOUT_S = 900


def root_tarball() -> Path:
    """The debootstrap tree as a tarball, built once per recipe."""
    recipe = f"debootstrap --variant=minbase --include={','.join(PACKAGES)} {SUITE}"
    tar = TARBALLS / f"{SUITE}-{hashlib.sha256(recipe.encode()).hexdigest()[:16]}.tar"
    if tar.exists():
        return tar
    TARBALLS.mkdir(parents=True, exist_ok=True)
    work = TARBALLS / (tar.stem + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    try:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE,
                        str(work), MIRROR], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-C", str(work), "-cf", f"{tar}.partial", "."], check=True)
        os.replace(f"{tar}.partial", tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tar


@pytest.fixture(scope="module")
def debian_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.fail("needs root and debootstrap (apt-get install debootstrap)")
    root = tmp_path_factory.mktemp("snapshot-e2e") / "root"
    root.mkdir()
    subprocess.run(["tar", "-C", str(root), "-xf", str(root_tarball())], check=True)
    # the test's copy only: the probe service, enabled
    unit = root / "etc/systemd/system/liveinit-e2e.service"
    unit.write_text(UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / unit.name).symlink_to(f"/etc/systemd/system/{unit.name}")
    return root


def test_snapshot_boots_its_own_kernel_and_loads_a_module_after_boot(
        debian_tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from packer import image, snapshot
    from packer.cli import main
    from packer.cpio import read_archive
    from qemu import lab
    own = snapshot.root_kernel(debian_tree)
    iso = tmp_path / "snapshot.iso"
    assert main(["image", str(debian_tree), "-o", str(iso), "--hostname", "liveinit-e2e"]) == 0
    out = capsys.readouterr().out
    assert f"kernel={own.version}" in out and "live copy: hostname liveinit-e2e" in out
    # the medium carries the tree's kernel, and an initramfs of its modules without MODULE
    kernel = image.extract(iso, image.KERNEL_PATH, tmp_path / "vmlinuz")
    assert kernel.read_bytes() == own.vmlinuz.read_bytes()
    initrd = image.extract(iso, image.INITRD_PATH, tmp_path / "initrd.img").read_bytes()
    paths = [e.name for seg in read_archive(initrd) for e in seg.entries]
    assert any(f"lib/modules/{own.version}/" in p for p in paths)
    assert not [p for p in paths if p.rsplit("/", 1)[-1].replace("-", "_").startswith(MODULE + ".ko")]

    res = lab.boot("virtio-blk", image=iso, timeout=BOOT_TIMEOUT_S, success=DONE, poweroff=False,
                   memory=1024)
    assert res.success, f"{res.reason}\n{res.console[-5000:]}"
    assert f"Linux version {own.version}" in res.console
    tail = res.console[-6000:]
    # the probe's line may follow the login prompt on the same line
    assert re.search(rf"{MARK} ok {re.escape(own.version)}$", res.console, re.M), tail
    assert re.search(r"(?m)^liveinit-e2e login: ", res.console), tail      # --hostname in the copy
    assert "Reached target" in res.console and "Login Prompts" in res.console, tail     # getty.target


WRAITH_MARK = "LIVEINIT-WRAITH-CHECK"
# Tries to write each path (a file is opened for appending, a directory gets a new file),
# prints what could be written, then runs the demo init.
CHECK_INIT = f"""#!/bin/sh
out=""
for p in /etc/hostname /var/lib/liveinit-demo /etc/passwd /etc /root /tmp; do
  if [ -d "$p" ]; then t="$p/.probe"; else t="$p"; fi
  if ( : >> "$t" ) 2>/dev/null; then out="$out $p=yes"; else out="$out $p=no"; fi
done
echo "{WRAITH_MARK}$out"
exec /sbin/init.demo
"""


def test_bind_boot_with_a_baked_list_makes_exactly_those_paths_writable(tmp_path: Path,
                                                                        kernel: object) -> None:
    from packer.cli import main
    from qemu import lab
    from qemu.demoroot import build_demo_root
    root = build_demo_root(tmp_path / "root")
    (root / "sbin" / "init").rename(root / "sbin" / "init.demo")
    (root / "sbin" / "init").write_text(CHECK_INIT)
    (root / "sbin" / "init").chmod(0o755)
    (root / "var" / "lib" / "liveinit-demo").mkdir(parents=True)
    written = tmp_path / "written.txt"
    written.write_text("# as `liveinit wraith` prints it\n/etc/hostname\n/var/lib/liveinit-demo\n")
    iso = tmp_path / "bind.iso"
    assert main(["image", str(root), "-o", str(iso), "--test-kernel", "--all-root", "--writable-from",
                 str(written)]) == 0
    res = lab.boot("virtio-blk", image=iso, cmdline="union=bind", timeout=BOOT_TIMEOUT_S)
    assert res.success, f"{res.reason}\n{res.console[-3000:]}"
    line = re.search(rf"(?m)^{WRAITH_MARK} (.*)$", res.console)
    assert line, res.console[-3000:]
    assert dict(w.split("=") for w in line.group(1).split()) == {
        "/etc/hostname": "yes", "/var/lib/liveinit-demo": "yes",       # the list
        "/etc/passwd": "no", "/etc": "no", "/root": "no", "/tmp": "no"}    # what the fixed set would open
    assert res.demo["writable"] == "yes"       # the demo's stamp under /var/lib/liveinit-demo
    assert "via bind" in res.console
