"""ModuleLoader: load order against kmod's modprobe on the real Debian tree,
options (modprobe.d + cmdline), blacklist semantics, built-in and already
loaded modules, compressed modules, failures that do not stop the boot."""
from __future__ import annotations

import errno
import gzip
import lzma
import os
import subprocess
from pathlib import Path

import pytest

from liveinit.cmdline import parse
from liveinit.kmodindex import ModuleIndex
from liveinit.modload import ModuleLoader
from packer.modindex import dumps, from_moddir
from qemu.fakesysfs import (
    KMOD_DIR,
    SysfsBuilder,
    link_kernel_modules,
    log_text,
    machine,
    quiet_log,
    write_moddir,
)

DEPS = {"ext4": ["jbd2", "mbcache", "crc16"], "jbd2": [], "mbcache": [], "crc16": [],
        "crc32c_generic": [], "isofs": [], "e1000e": [], "snd": [], "loop": []}
ALIASES = [("fs-ext4", "ext4"), ("crypto-crc32c", "crc32c_generic"), ("fs-iso9660", "isofs"),
           ("pci:v00008086d000010D3sv*sd*bc*sc*i*", "e1000e"), ("sound-card", "snd")]


def setup(tmp_path: Path, cmdline: str = "", **kw):
    fail = kw.pop("fail", {})
    moddir = write_moddir(tmp_path, kw.pop("deps", DEPS), kw.pop("aliases", ALIASES), **kw)
    index = from_moddir(str(moddir), (str(tmp_path / "etc" / "modprobe.d"),))
    SysfsBuilder(tmp_path)
    m, sysc = machine(tmp_path, fail=fail)
    log = quiet_log()
    return ModuleLoader(m, index, KMOD_DIR, parse(cmdline), log), sysc, log


def inserted(sysc) -> list[str]:
    return [c[1] for c in sysc.of("finit_module")]


def test_deps_and_pre_softdeps_first(tmp_path):
    loader, sysc, _ = setup(tmp_path, softdeps="softdep ext4 pre: crypto-crc32c\n")
    assert loader.load_alias("fs-ext4", "fs-ext4 for sda1") == ["ext4"]
    order = inserted(sysc)
    assert order[-1] == "ext4" and set(order[:-1]) == {"jbd2", "mbcache", "crc16", "crc32c_generic"}
    assert loader.loaded["ext4"] == "fs-ext4 for sda1"
    assert loader.loaded["jbd2"] == "dep of ext4"
    assert loader.m.costs.totals()["module loads"][0] == len(order)   # timed by the seam
    # Asking again inserts nothing.
    assert loader.load("ext4", "again")
    assert len(inserted(sysc)) == len(order)


def test_options_from_modprobe_d_then_cmdline(tmp_path):
    loader, sysc, _ = setup(tmp_path, "e1000e.IntMode=1 e1000e.debug=2",
                            modprobe_d="options e1000e InterruptThrottleRate=3000\n")
    loader.load("e1000e", "cmdline")
    assert sysc.of("finit_module") == [("finit_module", "e1000e",
                                        "InterruptThrottleRate=3000 IntMode=1 debug=2")]


def test_blacklist_stops_alias_but_not_an_explicit_name(tmp_path):
    loader, sysc, _ = setup(tmp_path, "modprobe.blacklist=e1000e", modprobe_d="blacklist snd\n")
    assert loader.load_alias("pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00", "pci") == []
    assert loader.load_alias("sound-card", "x") == []
    assert inserted(sysc) == []
    assert set(loader.skipped) == {"e1000e", "snd"}
    # rd.driver.pre=e1000e names it: modprobe loads a blacklisted module asked for by name.
    assert loader.load("e1000e", "cmdline")
    assert inserted(sysc) == ["e1000e"]


def test_builtin_and_already_loaded_are_not_inserted(tmp_path):
    loader, sysc, _ = setup(tmp_path, builtin=["loop"])
    (tmp_path / "sys" / "module" / "isofs").mkdir(parents=True)
    assert loader.load("loop", "findiso")
    assert loader.load_alias("fs-iso9660", "fs-iso9660") == ["isofs"]
    assert inserted(sysc) == []
    assert loader.loaded == {}


def test_eexist_counts_as_loaded(tmp_path):
    loader, sysc, _ = setup(tmp_path)
    sysc.modules.append("crc16")  # someone else loaded it (FakeSyscalls answers EEXIST)
    assert loader.load("crc16", "x")
    assert "crc16" not in loader.loaded and "crc16" not in loader.failed


def test_failure_is_recorded_and_boot_goes_on(tmp_path):
    loader, sysc, log = setup(tmp_path, fail={"finit_module:jbd2": errno.ENOEXEC})
    assert not loader.load("ext4", "fs")
    assert "jbd2" in loader.failed and "Exec format error" in loader.failed["jbd2"]
    assert loader.failed["ext4"] == "needs jbd2, which failed to load"
    assert "ext4" not in inserted(sysc)
    assert loader.load("isofs", "fs")  # the next module still loads
    assert "module jbd2 not loaded" in log.out.getvalue()


def test_unknown_name_fails_clearly(tmp_path):
    loader, sysc, _ = setup(tmp_path)
    assert not loader.load("nosuchmod", "cmdline")
    assert loader.load_alias("fs-nosuchfs", "x") == []
    assert inserted(sysc) == []


@pytest.mark.parametrize("suffix,pack", [(".ko.xz", lambda b: lzma.compress(b, check=lzma.CHECK_CRC32)),
                                         (".ko.gz", gzip.compress)])
def test_compressed_modules_go_through_init_module(tmp_path, suffix, pack):
    loader, sysc, _ = setup(tmp_path, deps={"isofs": []}, aliases=[], suffix=suffix)
    ko = tmp_path / KMOD_DIR.lstrip("/") / f"kernel/isofs{suffix}"
    elf = b"\x7fELF fake module" + b"~Module signature appended~\n"
    ko.write_bytes(pack(elf))
    images: list[bytes] = []
    real = sysc.init_module
    sysc.init_module = lambda image, params="": images.append(image) or real(image, params)
    assert loader.load("isofs", "fs")
    assert sysc.of("init_module") == [("init_module", "")]
    assert images == [elf]                 # the .ko's bytes, signature and all
    assert loader.loaded["isofs"] == "fs"
    totals = loader.m.costs.totals()
    assert totals["module decompression"][0] == 1 and totals["module loads"][0] == 1


def test_zstd_module_is_reported_unsupported(tmp_path):
    loader, sysc, log = setup(tmp_path, deps={"isofs": []}, aliases=[], suffix=".ko.zst")
    assert not loader.load("isofs", "fs")
    assert "zstd" in loader.failed["isofs"]
    assert "zstd-compressed modules cannot be loaded at boot" in log.out.getvalue()


CPU_SSE42 = "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0093,0094,0095"
CPU_NO_SSE42 = "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0093,0095"


def cpu_setup(tmp_path: Path, cpu: str | None):
    """ext4 with `pre: crypto-crc32c`, provided by crc32c_intel (SSE4.2 only,
    feature 0x94, as the real module declares) and crc32c_generic."""
    deps = dict(DEPS, crc32c_intel=[])
    aliases = ALIASES + [("crypto-crc32c", "crc32c_intel"),
                         ("cpu:type:x86,ven*fam*mod*:feature:*0094*", "crc32c_intel")]
    loader, sysc, log = setup(tmp_path, deps=deps, aliases=aliases,
                              softdeps="softdep ext4 pre: crypto-crc32c\n")
    if cpu is not None:
        p = tmp_path / "sys" / "devices" / "system" / "cpu"
        p.mkdir(parents=True, exist_ok=True)
        (p / "modalias").write_text(cpu + "\n")
    return loader, sysc, log


def test_cpu_gated_provider_is_not_tried_on_a_cpu_without_its_features(tmp_path):
    loader, sysc, log = cpu_setup(tmp_path, CPU_NO_SSE42)
    assert loader.load_alias("fs-ext4", "fs-ext4 for vda") == ["ext4"]
    assert "crc32c_intel" not in inserted(sysc)
    assert "crc32c_generic" in inserted(sysc)
    assert loader.unfit == {"crc32c_intel": "softdep of ext4"}
    assert loader.failed == {}            # no ENODEV warning: it was never inserted
    assert "crc32c_intel not loaded for softdep of ext4: this CPU lacks the features" in log_text(log)
    # Matched by alias it is skipped the same way; named explicitly it is tried (modprobe would).
    assert loader.load_alias("crypto-crc32c", "x") == ["crc32c_generic"]
    assert loader.load("crc32c_intel", "cmdline")
    assert inserted(sysc)[-1] == "crc32c_intel"


@pytest.mark.parametrize("cpu", [CPU_SSE42, None, ""])
def test_cpu_gated_provider_is_tried_when_the_cpu_fits_or_is_unknown(tmp_path, cpu):
    loader, sysc, _ = cpu_setup(tmp_path, cpu)
    loader.load_alias("fs-ext4", "fs-ext4 for vda")
    assert {"crc32c_intel", "crc32c_generic"} <= set(inserted(sysc))
    assert loader.unfit == {}


def test_cpu_gating_on_the_debian_tree(depmod_root, kernel):
    """The real crc32c_intel is gated on SSE4.2 and crc32c_generic is not: a
    captured QEMU `-cpu max` guest fits it, the same CPU without SSE4.2 does not."""
    moddir = depmod_root / "lib" / "modules" / kernel.version
    index = from_moddir(str(moddir))
    assert "crc32c_intel" in index.cpu_gated and "crc32c_generic" not in index.cpu_gated
    assert "aesni_intel" in index.cpu_gated and "ext4" not in index.cpu_gated
    capture = Path(__file__).parent / "data" / "sysfs" / "virtio-blk" / "sys" / "devices" / "system" / "cpu"
    cpu = (capture / "modalias").read_text().strip()
    assert ",0094," in cpu
    assert index.cpu_fits("crc32c_intel", cpu)
    assert not index.cpu_fits("crc32c_intel", cpu.replace(",0094,", ","))
    assert index.cpu_fits("crc32c_generic", cpu.replace(",0094,", ","))
    assert index.cpu_fits("crc32c_intel", "")   # unknown CPU: try it
    assert ModuleIndex.loads(dumps(index)).cpu_gated == index.cpu_gated


def modprobe_order(depmod_root: Path, kver: str, name: str, tmp_path: Path) -> list[str]:
    empty = tmp_path / "empty.d"
    empty.mkdir(exist_ok=True)
    out = subprocess.run(["modprobe", "-d", str(depmod_root), "-S", kver, "-C", str(empty),
                          "--show-depends", name], capture_output=True, text=True, check=True).stdout
    names = [os.path.basename(line.split()[1]).split(".ko")[0].replace("-", "_")
             for line in out.splitlines() if line.startswith("insmod ")]
    # --show-depends repeats modules reached twice; modprobe inserts each once (the first).
    return list(dict.fromkeys(names))


@pytest.mark.parametrize("name", ["ext4", "sd_mod", "sr_mod", "usb_storage", "uas", "virtio_blk",
                                  "nvme", "isofs", "squashfs", "overlay", "xhci_pci", "btrfs"])
def test_order_matches_kmod_on_the_debian_tree(name, tmp_path, depmod_root, kernel):
    moddir = depmod_root / "lib" / "modules" / kernel.version
    index = from_moddir(str(moddir))
    SysfsBuilder(tmp_path)
    kdir = link_kernel_modules(tmp_path, moddir, kernel.version)
    m, sysc = machine(tmp_path)
    loader = ModuleLoader(m, index, kdir, parse(""), quiet_log())
    assert loader.load(name, "test")
    assert inserted(sysc) == modprobe_order(depmod_root, kernel.version, name, tmp_path)


@pytest.mark.parametrize("err", [errno.EPERM, errno.EKEYREJECTED, errno.ENOKEY, errno.EBADMSG])
@pytest.mark.parametrize("suffix", [".ko", ".ko.xz"])
def test_a_module_refused_by_signature_checking_says_so(tmp_path, err, suffix):
    loader, sysc, log = setup(tmp_path, deps={"loop": [], "isofs": []}, aliases=[], suffix=suffix,
                              fail={"finit_module:loop": err, "init_module": err})
    if suffix == ".ko.xz":
        (tmp_path / KMOD_DIR.lstrip("/") / "kernel/loop.ko.xz").write_bytes(lzma.compress(b"\x7fELF loop"))
    assert not loader.load("loop", "loop device")
    why = loader.failed["loop"]
    assert why.startswith("refused by the kernel's module signature check: unsigned, or signed by a key")
    assert "module.sig_enforce=1" in why and "docs/SECUREBOOT.md" in why
    assert os.strerror(err) in why and f"loop{suffix}" in why
    assert f"module loop not loaded: {why}" in log_text(log)


def test_other_insert_errors_are_not_called_signature_refusals(tmp_path):
    loader, _, _ = setup(tmp_path, fail={"finit_module:loop": errno.ENOEXEC})
    assert not loader.load("loop", "loop device")
    assert "signature" not in loader.failed["loop"] and "Exec format error" in loader.failed["loop"]


# -- retries (issue 12) -----------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def retry_setup(tmp_path: Path, fail: dict, cmdline: str = ""):
    loader, sysc, log = setup(tmp_path, cmdline, fail=fail)
    loader.now = clock = Clock()
    return loader, sysc, log, clock


@pytest.mark.parametrize("err", [errno.EBUSY, errno.EAGAIN, errno.ENOMEM, errno.ETIMEDOUT, errno.EINTR])
def test_a_transient_failure_is_retried_after_its_back_off(tmp_path, err):
    loader, sysc, log, clock = retry_setup(tmp_path, {"finit_module:loop": [err, 0]})
    assert not loader.load("loop", "loop device")
    assert "try 1 of 3, tried again when asked again" in loader.failed["loop"]
    assert os.strerror(err) in loader.failed["loop"]
    assert not loader.load("loop", "loop device")          # asked again before the back-off ends
    assert inserted(sysc) == ["loop"]
    clock.t += 0.5
    assert loader.load("loop", "loop device")               # asked again after it: inserted
    assert inserted(sysc) == ["loop", "loop"]
    assert loader.loaded == {"loop": "loop device"} and loader.failed == {}


def test_retries_are_bounded_and_back_off_doubles(tmp_path):
    loader, sysc, log, clock = retry_setup(tmp_path, {"finit_module:loop": errno.EBUSY})
    assert not loader.load("loop", "x")
    clock.t += 0.5
    assert not loader.load("loop", "x")                     # second try
    clock.t += 0.9
    assert not loader.load("loop", "x")                     # 1 s back-off now: not yet
    assert inserted(sysc) == ["loop", "loop"]
    clock.t += 0.1
    assert not loader.load("loop", "x")                     # third and last try
    assert loader.failed["loop"].endswith("; gave up after 3 tries")
    clock.t += 3600
    assert not loader.load("loop", "x")
    assert inserted(sysc) == ["loop", "loop", "loop"]
    assert log_text(log).count("module loop not loaded") == 3


@pytest.mark.parametrize("err", [errno.ENOENT, errno.ENOEXEC, errno.EINVAL, errno.EPERM, errno.EKEYREJECTED,
                                 errno.ENOKEY, errno.EBADMSG])
def test_a_permanent_failure_is_not_retried(tmp_path, err):
    loader, sysc, _, clock = retry_setup(tmp_path, {"finit_module:loop": [err, 0]})
    assert not loader.load("loop", "x")
    clock.t += 3600
    assert not loader.load("loop", "x")
    assert not loader.load_alias("loop", "x")
    assert inserted(sysc) == ["loop"]
    assert "try 1 of" not in loader.failed["loop"]


def test_a_module_whose_dependency_failed_transiently_is_retried_with_it(tmp_path):
    loader, sysc, _, clock = retry_setup(tmp_path, {"finit_module:jbd2": [errno.EAGAIN, 0]})
    assert loader.load_alias("fs-ext4", "fs-ext4 for vda") == []
    assert loader.failed["ext4"] == "needs jbd2, which failed to load"
    assert "ext4" not in inserted(sysc)
    assert loader.load_alias("fs-ext4", "fs-ext4 for vda") == []   # jbd2's back-off is not over
    clock.t += 0.5
    assert loader.load_alias("fs-ext4", "fs-ext4 for vda") == ["ext4"]
    assert inserted(sysc).count("jbd2") == 2 and inserted(sysc)[-1] == "ext4"
    assert loader.failed == {}


def test_a_module_whose_dependency_loaded_later_is_retried(tmp_path):
    loader, sysc, _, clock = retry_setup(tmp_path, {"finit_module:jbd2": errno.ENOEXEC})
    assert not loader.load("ext4", "fs")
    assert "jbd2" in loader.failed and "ext4" in loader.failed
    (tmp_path / "sys" / "module" / "jbd2").mkdir(parents=True)   # loaded by someone else since
    assert loader.load("ext4", "fs")
    assert inserted(sysc)[-1] == "ext4" and "ext4" not in loader.failed


# -- module_blacklist= on the kernel command line -----------------------------------------
def test_a_module_the_kernel_refuses_as_blacklisted_is_not_called_unsigned(tmp_path):
    loader, _, log, _ = retry_setup(tmp_path, {"finit_module:loop": errno.EPERM})
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "cmdline").write_text("console=ttyS0 module_blacklist=overlay,loop quiet\n")
    assert not loader.load("loop", "loop device")          # named: tried, and the kernel refuses it
    why = loader.failed["loop"]
    assert why.startswith("blacklisted on the kernel command line (module_blacklist=loop,overlay; ")
    assert "signature" not in why
    assert f"module loop not loaded: {why}" in log_text(log)


def test_eperm_for_a_module_not_in_module_blacklist_is_still_a_signature_refusal(tmp_path):
    loader, _, _, _ = retry_setup(tmp_path, {"finit_module:loop": errno.EPERM})
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc" / "cmdline").write_text("module_blacklist=overlay modprobe.blacklist=loop\n")
    assert not loader.load("loop", "loop device")
    assert loader.failed["loop"].startswith("refused by the kernel's module signature check")
