"""A real distribution: a Debian bookworm minbase root with systemd, made into
a live ISO and booted in the lab to systemd's multi-user target (a getty
login prompt on ttyS0). The debootstrap tree is cached under
/var/cache/liveinit/debian-root/ (the first run needs the Debian mirror)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from packer import image
from packer.cachelock import locked
from packer.config import DEFAULT_CACHE
from packer.kernel import KernelTree
from qemu import lab

pytestmark = [pytest.mark.slow, pytest.mark.qemu]

SUITE = "bookworm"
MIRROR = os.environ.get("LIVEINIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
ROOT_CACHE = DEFAULT_CACHE / "debian-root"
COMPLETE = ".liveinit-complete"
# A login prompt on the serial console: getty started, the multi-user target is reached.
LOGIN_PROMPT = r"(?m)^\S+ login: *$"
MULTI_USER = re.compile(r"Reached target .*Multi-User System")
BOOT_TIMEOUT_S = 600


def debian_root(cache: Path = ROOT_CACHE) -> Path:
    """debootstrap --variant=minbase --include=systemd-sysv,udev, once; later runs reuse the tree."""
    root = cache / SUITE
    with locked(root):   # other test workers use the same tree
        if (root / COMPLETE).exists():
            return root
        partial = cache / f"{SUITE}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["debootstrap", "--variant=minbase", "--include=systemd-sysv,udev", SUITE,
                        str(partial), MIRROR], check=True, stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
        (root / COMPLETE).touch()
    return root


def test_debian_live_reaches_multi_user(kernel: KernelTree, tmp_path: Path) -> None:
    root = debian_root()
    assert (root / "sbin" / "init").readlink().name == "systemd"
    res_img = image.build_image(root, tmp_path / "debian-live.iso", kernel, label="DEBIAN_LIVE")
    # Owners are kept by default: unsquashfs -lln as the oracle, the tree itself as the reference.
    sqfs = image.extract(res_img.iso, image.SQUASHFS_PATH, tmp_path / "root.sqfs")
    listing = subprocess.run(["unsquashfs", "-lln", "-d", "", str(sqfs), "/usr/bin/chage", "/usr/sbin/unix_chkpwd",
                              "/var/mail", "/var/log/journal"], capture_output=True, text=True, check=True).stdout
    owners = {ln.split()[-1]: (ln.split()[0], ln.split()[1]) for ln in listing.splitlines() if ln[:1] in "d-"}
    for path in ("/usr/bin/chage", "/usr/sbin/unix_chkpwd", "/var/mail", "/var/log/journal"):
        st = (root / path.lstrip("/")).stat()
        assert owners[path][1] == f"{st.st_uid}/{st.st_gid}", (path, owners[path])
    assert owners["/usr/bin/chage"] == ("-rwxr-sr-x", "0/42")   # setgid shadow, not setgid root
    res = lab.boot("virtio-blk", image=res_img.iso, timeout=BOOT_TIMEOUT_S, success=LOGIN_PROMPT,
                   poweroff=False, memory=1024)
    assert res.success, f"{res.reason}\n{res.console[-5000:]}"
    assert res.report.init == "/sbin/init"
    console = res.console
    assert MULTI_USER.search(console), "no 'Reached target Multi-User System' before the login prompt"
    assert "Welcome to" in console and "Debian GNU/Linux 12" in console
    assert res.report.failure is None
    assert res.timings.handover_ms is not None
