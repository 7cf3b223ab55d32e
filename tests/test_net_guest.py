"""The network building blocks on a real kernel: the Debian kernel in QEMU
loads the NIC driver (virtio_net, e1000) with finit_module, brings eth0 up
with liveinit.net + liveinit.dhcp against QEMU's user-mode DHCP server, and
downloads a file with liveinit.httpget from an HTTP server on the host's
127.0.0.1, reached only through a guestfwd rule (restrict=on: nothing else
is reachable). The guest prints the file's SHA-256, which must match.

The image is `liveinit pack` with the two NIC drivers and no module groups,
plus a second, uncompressed cpio segment whose /init (the kernel unpacks
segments in order, the last one wins) runs the test script below on the
packed interpreter and runtime, then powers off."""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from httpfake import FakeHttp

from packer import initramfs
from packer.config import PackConfig
from packer.cpio import ArchiveBuilder, flatten, read_archive
from packer.kernel import KernelTree
from qemu import lab
from qemu.profiles import profile

BOOT_TIMEOUT_S = 300
PAYLOAD_MIB = 24
GUEST_SERVER = "10.0.2.100"
MARK = "NETTEST"

GUEST_SCRIPT = r'''
import time
T0 = time.monotonic()
import os
import sys
sys.path.insert(0, "/usr/lib/liveinit")


def say(text):
    print("NETTEST " + text, flush=True)


try:
    from liveinit.syscalls import Linux
    sysc = Linux()
    for src, dst, fs in (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"),
                         ("devtmpfs", "/dev", "devtmpfs")):
        sysc.mount(src, dst, fs)
    from liveinit.cmdline import parse
    from liveinit.kmodindex import ModuleIndex
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.modload import ModuleLoader
    log = Log()
    m = Machine()
    moddir = "/lib/modules/" + os.uname().release
    loader = ModuleLoader(m, ModuleIndex.load(moddir + "/liveinit.index"), moddir, parse(""), log)
    t = time.monotonic()
    for name in ("virtio_pci", "virtio_net", "e1000"):
        loader.load(name, "nettest")
    say("modules %s in %.0f ms" % (",".join(sorted(loader.loaded)), (time.monotonic() - t) * 1000))
    costs = []
    for mod in ("netcfg", "dhcp", "net", "dns", "httpget"):
        t = time.monotonic()
        __import__("liveinit." + mod)
        costs.append("%s=%.1f" % (mod, (time.monotonic() - t) * 1000))
    say("imports_ms " + " ".join(costs))
    from liveinit import httpget, net, netcfg
    t = time.monotonic()
    lease = net.bring_up(m, netcfg.parse_ip("dhcp"), log)
    say("lease %s %s/%d router=%s dns=%s server=%s bring_up_ms=%.0f" % (
        lease.interface, lease.address, lease.prefix, lease.router, ",".join(lease.dns), lease.server,
        (time.monotonic() - t) * 1000))
    got = httpget.download(m, "http://10.0.2.100/payload.bin", "/payload.bin", log)
    say("download size=%d seconds=%.3f mib_s=%.1f sha256=%s" % (
        got.size, got.seconds, got.size / got.seconds / 1048576, got.sha256))
    block = bytes(8 << 20)
    rates = []
    for name in ("_sha256",):
        t = time.monotonic()
        h = __import__(name).sha256()
        imp = (time.monotonic() - t) * 1000
        t = time.monotonic()
        h.update(block)
        rates.append("%s=%.1fMiB/s(import %.0f ms)" % (name, 8 / (time.monotonic() - t), imp))
    say("sha256 " + " ".join(rates))
except BaseException as e:
    import traceback
    traceback.print_exc()
    say("FAILED %s: %s" % (type(e).__name__, e))
finally:
    say("done after %.0f ms" % ((time.monotonic() - T0) * 1000))
    sys.stdout.flush()
    try:
        Linux().reboot()
    except BaseException:
        os._exit(1)
'''


@pytest.fixture(scope="module")
def nettest_initrd(tmp_path_factory: pytest.TempPathFactory, kernel: KernelTree) -> Path:
    out = tmp_path_factory.mktemp("nettest") / "initrd.img"
    initramfs.build(PackConfig(output=out, moddir=kernel.moddir, kver=kernel.version, groups=(),
                               modules=("virtio_pci", "virtio_net", "e1000"), microcode=False))
    packed_init = flatten(read_archive(out.read_bytes()))["init"].data
    shebang = packed_init.split(b"\n", 1)[0]
    extra = ArchiveBuilder()
    extra.add_file("init", data=shebang + b"\n" + GUEST_SCRIPT.encode(), mode=0o755)
    buf = io.BytesIO()
    extra.write(buf)
    with out.open("ab") as f:
        # The kernel looks for an uncompressed segment's magic only at a 4-byte
        # boundary (zeros before it are skipped).
        f.write(bytes(-out.stat().st_size % 4) + buf.getvalue())
    return out


def _boot(kernel: KernelTree, initrd: Path, nic: str, port: int, work: Path) -> str:
    log = work / f"console-{nic}.log"
    cmd = lab.command(profile("virtio-blk"), None, work, log, kernel=kernel, initrd=initrd,
                      cmdline=f"{lab.LAB_CMDLINE} loglevel=4", accel_args=lab.accel())
    cmd += ["-netdev", f"user,id=n0,restrict=on,guestfwd=tcp:{GUEST_SERVER}:80-tcp:127.0.0.1:{port}",
            "-device", f"{nic},netdev=n0"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and f"{MARK} done" in log.read_text(errors="replace"):
                proc.wait(timeout=30)
                break
            time.sleep(0.2)
    finally:
        lab.kill_tree(proc.pid)
    return log.read_text(errors="replace") if log.exists() else ""


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("nic, driver", [("virtio-net-pci", "virtio_net"), ("e1000", "e1000")])
def test_dhcp_and_download_in_the_guest(kernel: KernelTree, nettest_initrd: Path, tmp_path: Path,
                                        nic: str, driver: str) -> None:
    payload = os.urandom(PAYLOAD_MIB << 20)
    want = hashlib.sha256(payload).hexdigest()
    with FakeHttp({"/payload.bin": payload}) as srv:
        console = _boot(kernel, nettest_initrd, nic, srv.port, tmp_path)
        requests = list(srv.requests)
    lines = [ln for ln in console.splitlines() if ln.startswith(MARK)]
    report = "\n".join(lines) + "\n" + console[-3000:]
    assert f"{MARK} done" in console, report
    assert not any("FAILED" in ln for ln in lines), report
    lease = re.search(rf"{MARK} lease eth0 (\S+)/(\d+) router=(\S*) dns=(\S*) server=(\S*)", console)
    assert lease, report
    # QEMU's user network gives 10.0.2.15/24 from 10.0.2.2; with restrict=on it
    # offers no router and no DNS server (there is nothing beyond the guestfwd).
    assert lease.groups() == ("10.0.2.15", "24", "", "", "10.0.2.2"), report
    assert "network: eth0 " in console and f", {driver})" in console, report
    got = re.search(rf"{MARK} download size=(\d+) seconds=\S+ mib_s=\S+ sha256=([0-9a-f]{{64}})", console)
    assert got and int(got.group(1)) == len(payload) and got.group(2) == want, report
    assert requests == [("/payload.bin", "")]
    print("\n".join(lines))
