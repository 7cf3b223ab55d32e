"""packer.kmod and `liveinit modalias` against kmod itself: depmod's files for
the real Debian kernel and `modprobe -R` / `--show-depends` as oracles."""
from __future__ import annotations

import gzip
import lzma
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from liveinit import kmodindex as K
from liveinit import modfile
from liveinit.kmodindex import ModuleIndex
from packer import modindex as C
from packer.cli import main
from packer.errors import CommandError
from packer.kernel import KernelTree
from packer.kmod import GROUPS, ModuleTree, read_modinfo

SYSFS_DATA = Path(__file__).parent / "data" / "sysfs"
QEMU_MODALIASES = [
    "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",  # q35 AHCI
    "pci:v00008086d00007010sv00001AF4sd00001100bc01sc01i80",  # piix IDE
    "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",  # virtio-blk (legacy)
    "pci:v00001AF4d00001042sv00001AF4sd00001100bc01sc00i00",  # virtio-blk (modern)
    "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00",  # virtio-scsi
    "pci:v00001AF4d00001005sv00001AF4sd00000004bc00scFFi00",  # virtio-rng
    "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30",  # qemu xhci
    "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",  # qemu nvme
    "pci:v00008086d00002934sv00001AF4sd00001100bc0Csc03i00",  # ich9 uhci
    "pci:v00008086d0000293Asv00001AF4sd00001100bc0Csc03i20",  # ich9 ehci
    "pci:v00001B36d00000007sv00001AF4sd00001100bc08sc05i01",  # sdhci-pci
    "pci:v00001000d00000012sv00000000sd00000000bc01sc00i00",  # lsi53c895a
    "pci:v00001000d00000079sv00001000sd00009272bc01sc04i00",  # megasas
    "pci:v00001000d00000054sv00000000sd00000000bc01sc00i00",  # mptsas1068
    "virtio:d00000002v00001AF4", "virtio:d00000008v00001AF4", "virtio:d00000004v00001AF4",
    "virtio:d00000001v00001AF4", "virtio:d00000012v00001AF4",
    "scsi:t-0x05", "scsi:t-0x00", "scsi:t-0x01",
    "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip01in00",  # usb-kbd
    "usb:v0627p0001d0000dc00dsc00dp00ic03isc01ip02in00",  # usb-mouse
    "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00",  # usb-storage
    "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip62in00",  # uas
    "usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00",
    "hid:b0003g0001v00000627p00000001", "hid:b0003g0000v0000046Dp0000C52B",
    "acpi:PNP0303:", "acpi:PNP0F13:", "acpi:QEMU0002:", "acpi:PNP0A08:PNP0A03:", "acpi:PNP0C0F:",
    "platform:i8042", "platform:pcspkr", "serio:ty01pr00id00ex00", "serio:ty06pr00id00ex00",
    "fs-ext4", "fs-vfat", "fs-iso9660", "fs-squashfs", "fs-overlay", "crypto-crc32c", "crc32c",
    "crypto-hmac", "sha256", "block-major-7-0", "char-major-10-237", "devname:loop-control",
    "mmc:block", "sdio:c00v02D0d4324", "cpu:type:x86,ven0000fam0006mod0055:feature:,0000,0001",
]
SHOW_DEPENDS = ("ext4", "ahci", "virtio_blk", "sr_mod", "usb_storage", "uas", "nvme", "overlay", "isofs",
                "btrfs", "xfs", "virtio_scsi", "sdhci_pci", "usbhid")


# -------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def kmod_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kmodcache")


@pytest.fixture(scope="session")
def computed(kernel: KernelTree, kmod_cache: Path) -> ModuleTree:
    """The unpacked kernel without depmod's files: everything from .modinfo."""
    assert not (kernel.moddir / "modules.dep").exists()
    tree = ModuleTree(kernel.moddir, cache=kmod_cache)
    assert tree.source == "modinfo"
    return tree


@pytest.fixture(scope="session")
def depmod_dir(depmod_root: Path, kernel: KernelTree) -> Path:
    return depmod_root / "lib" / "modules" / kernel.version


@pytest.fixture(scope="session")
def modaliases(depmod_dir: Path) -> list[str]:
    """QEMU's modaliases, captured sysfs trees, and instantiated modules.alias patterns."""
    out = list(QEMU_MODALIASES)
    for f in sorted(SYSFS_DATA.rglob("modalias")):
        out.append(f.read_text().strip())
    rng = random.Random(20240611)
    pats = [a.pattern for a in C.parse_alias((depmod_dir / "modules.alias").read_text())]
    by_bus: dict[str, list[str]] = {}
    for p in pats:
        by_bus.setdefault(p.split(":", 1)[0], []).append(p)
    for bus in sorted(by_bus):
        group = by_bus[bus]
        for p in rng.sample(group, min(len(group), {"pci": 60, "usb": 40}.get(bus, 8))):
            out.append(instantiate(p, rng))
            if rng.random() < 0.3:
                s = instantiate(p, rng)
                i = rng.randrange(len(s))
                out.append(s[:i] + rng.choice("0F_a-") + s[i + 1:])  # near misses
    # builtin modules and their aliases (modules.builtin, modules.builtin.modinfo)
    out += C.parse_builtin((depmod_dir / "modules.builtin").read_text())
    out += [e.value for e in C.parse_builtin_modinfo((depmod_dir / "modules.builtin.modinfo").read_bytes())
            if e.key == "alias"]
    for _ in range(40):  # well-formed PCI functions of every class
        out.append(K.pci_modalias(rng.choice([0x8086, 0x1AF4, 0x1000, 0x10DE, 0x1B36, 0x1022]),
                                  rng.randrange(0x10000), rng.choice([0x1AF4, 0x8086, 0]),
                                  rng.randrange(0x10000), rng.choice([0x010601, 0x010802, 0x0C0330,
                                                                      0x0C0320, 0x020000, 0x030000])))
    # (modprobe would read a leading dash as an option)
    return list(dict.fromkeys(a for a in out if a and not a.startswith("-")))


def instantiate(pattern: str, rng: random.Random) -> str:
    """A concrete string for an alias pattern: wildcards filled with plausible values."""
    if pattern.startswith("pci:"):
        e = C.pci_entry(pattern)
        if e is not None:
            ids = [rng.randrange(0x10000) if v == K.PCI_ANY else v
                   for v in (e.vendor, e.device, e.subvendor, e.subdevice)]
            cls = (e.class_ & e.class_mask) | (rng.randrange(1 << 24) & ~e.class_mask)
            return K.pci_modalias(*ids, cls)
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("".join(rng.choice("0123456789ABCDEF") for _ in range(rng.choice([0, 2, 4, 8]))))
        elif c == "?":
            out.append(rng.choice("0123456789ABCDEF"))
        elif c == "[":
            j = pattern.find("]", i + 2)
            body = pattern[i + 1:j]
            members = [ch for ch in "0123456789ABCDEFabcdef" if K.fnmatch("[" + body + "]", ch)]
            out.append(rng.choice(members or ["0"]))
            i = j
        else:
            out.append(c)
        i += 1
    return "".join(out)


def modprobe(depmod_root: Path, kver: str, args: list[str], items: list[str]) -> list[list[str]]:
    """`modprobe -C /dev/null -d BASE -S KVER ARGS ITEM` per item, in one shell (host config ignored)."""
    script = ('while IFS= read -r a; do modprobe -C /dev/null -d "$0" -S "$1" ' + " ".join(args)
              + ' "$a" 2>/dev/null; echo @@END; done')
    out = subprocess.run(["sh", "-c", script, str(depmod_root), kver], input="\n".join(items) + "\n",
                         capture_output=True, text=True, check=True).stdout
    chunks = out.split("@@END\n")[:-1]
    assert len(chunks) == len(items)
    return [c.split("\n")[:-1] for c in chunks]


# -------------------------------------------------------------- depmod equivalence

def _depmod_files(moddir: Path) -> tuple[dict, dict, dict]:
    lines = (moddir / "modules.dep").read_text().splitlines()
    deps = {K.modname(p): {K.modname(d) for d in rest.split()}
            for p, _, rest in (line.partition(":") for line in lines)}
    aliases: dict[str, set[str]] = {}
    for line in (moddir / "modules.alias").read_text().splitlines():
        if line.startswith("alias "):
            _, pat, mod = line.split()
            aliases.setdefault(mod, set()).add(pat)
    soft: dict[str, set[str]] = {}
    for line in (moddir / "modules.softdep").read_text().splitlines():
        if line.startswith("softdep "):
            _, mod, rest = line.split(None, 2)
            soft.setdefault(mod, set()).add(rest)
    return deps, aliases, soft


@pytest.mark.slow
def test_modinfo_index_equals_depmod(computed: ModuleTree, depmod_dir: Path) -> None:
    deps, aliases, soft = _depmod_files(depmod_dir)
    assert set(computed.modules) == set(deps)
    assert len(deps) > 3000
    for name, m in computed.modules.items():
        assert set(m.depends) == deps[name], name
        assert set(m.aliases) == aliases.get(name, set()), name
        assert set(m.softdeps) == soft.get(name, set()), name
    # depmod's topological order: every module loads after its dependencies
    for name, m in computed.modules.items():
        for i, d in enumerate(m.depends):
            assert not set(computed.modules[d].depends) & set(m.depends[:i + 1]), (name, d)


@pytest.mark.slow
def test_depmod_files_read_like_modinfo(computed: ModuleTree, depmod_dir: Path, kmod_cache: Path) -> None:
    tree = ModuleTree(depmod_dir, cache=kmod_cache)
    assert tree.source == "depmod"
    assert {n: (m.path, set(m.depends), set(m.aliases), set(m.softdeps), m.firmware)
            for n, m in tree.modules.items()} == \
           {n: (m.path, set(m.depends), set(m.aliases), set(m.softdeps), m.firmware)
            for n, m in computed.modules.items()}
    assert tree.builtin == computed.builtin and len(tree.builtin) > 100


# -------------------------------------------------------------- modprobe -R oracle

@pytest.mark.slow
def test_lookup_equals_modprobe_R(computed: ModuleTree, depmod_root: Path, depmod_dir: Path,
                                  kernel: KernelTree, modaliases: list[str]) -> None:
    assert len(modaliases) >= 300
    expected = modprobe(depmod_root, kernel.version, ["-R"], modaliases)
    from_text = C.from_moddir(depmod_dir)
    from_modinfo = computed.index()
    found = 0
    for alias, exp in zip(modaliases, expected, strict=True):
        want = set(exp)
        assert set(from_text.lookup(alias)) == want, alias
        assert set(from_modinfo.lookup(alias)) == want, alias
        found += bool(want)
    assert found >= 200  # the oracle is not just agreeing on misses


@pytest.mark.slow
def test_load_order_equals_modprobe_show_depends(computed: ModuleTree, depmod_root: Path, depmod_dir: Path,
                                                 kernel: KernelTree) -> None:
    expected = modprobe(depmod_root, kernel.version, ["--show-depends"], list(SHOW_DEPENDS))
    from_text = C.from_moddir(depmod_dir)
    for name, lines in zip(SHOW_DEPENDS, expected, strict=True):
        insmods = [K.modname(line.split()[1]) for line in lines if line.startswith("insmod ")]
        want = list(dict.fromkeys(insmods))  # a dry run prints a module twice when two routes reach it
        assert name in want
        assert from_text.load_order(name) == want, name
        # .modinfo-computed dependency lists may order independent modules differently
        got = computed.index().load_order(name)
        assert set(got) == set(want), name
        pos = {m: i for i, m in enumerate(got)}
        for m in got:
            assert all(pos[d] < pos[m] for d in computed.modules[m].depends), (name, m)


@pytest.mark.slow
def test_pcimap_agrees_with_alias_matching(computed: ModuleTree, depmod_root: Path, kernel: KernelTree,
                                           modaliases: list[str], tmp_path: Path) -> None:
    report = computed.write_index(tmp_path, computed.modules)
    entries = C.parse_pcimap((tmp_path / "modules.pcimap").read_text())
    assert len(entries) == report.pcimap_entries > 8000
    pci = [a for a in modaliases if K.parse_pci_modalias(a)]
    assert len(pci) >= 100
    expected = modprobe(depmod_root, kernel.version, ["-R"], pci)
    index = ModuleIndex.load(str(tmp_path / K.INDEX_NAME))
    for alias, exp in zip(pci, expected, strict=True):
        ids = K.parse_pci_modalias(alias)
        from_map = {e.module for e in entries if K.pci_match_entry(e.ids, *ids)}
        from_map |= {a.module for a in report.unrepresentable
                     if K.fnmatch(K.normalize_alias(a.pattern) or "", alias)}
        assert from_map == set(exp), alias
        assert set(index.match_pci(*ids)) == set(exp) == set(index.match(alias)), alias


# -------------------------------------------------------------- selection, closure, firmware

def test_groups_cover_the_machines_we_boot(computed: ModuleTree) -> None:
    got = computed.select(groups=tuple(GROUPS))
    for name in ("ahci", "ata_piix", "pata_amd", "sata_sil24", "libata", "sd_mod", "sr_mod", "mptsas",
                 "megaraid_sas", "mpt3sas", "virtio_scsi", "nvme", "virtio_pci", "virtio_blk", "virtio_mmio",
                 "virtio_rng", "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "usb_storage", "uas",
                 "sdhci_pci", "mmc_block", "cdrom", "isofs", "udf", "vfat", "nls_cp437", "nls_iso8859_1",
                 "nls_utf8", "exfat", "ext4", "btrfs", "xfs", "squashfs", "erofs", "overlay", "loop",
                 "usbhid", "hid_generic"):
        assert name in got, name
    assert not got & computed.builtin  # i8042/atkbd are built into the Debian kernel


def test_select_by_glob_and_errors(computed: ModuleTree) -> None:
    ata = computed.select(globs=("kernel/drivers/ata/*",))
    assert {"ahci", "ata_piix", "libata"} <= ata
    assert all(computed.modules[n].path.startswith("kernel/drivers/ata/") for n in ata)
    assert computed.select(globs=("virtio_*",)) >= {"virtio_blk", "virtio_scsi"}
    assert computed.select(names=("crc32c-intel", "fs-ext4", "hmac")) == {"crc32c_intel", "ext4"}
    for kw in ({"names": ("no_such_module",)}, {"globs": ("kernel/nothing/*",)}, {"groups": ("nope",)}):
        with pytest.raises(CommandError):
            computed.select(**kw)


def test_closure_pulls_deps_and_softdep_providers(computed: ModuleTree) -> None:
    c = computed.closure({"ext4"})
    assert {"ext4", "jbd2", "mbcache", "crc16", "crc32c_generic", "crc32c_intel"} <= c
    b = computed.closure({"btrfs"})
    assert {"xxhash_generic", "blake2b_generic", "libcrc32c", "crc32c_generic"} <= b
    assert "ipmi_devintf" in computed.closure({"ipmi_msghandler"})  # post softdep


def test_closure_with_modprobe_d_softdep(computed: ModuleTree, tmp_path: Path) -> None:
    (tmp_path / "x.conf").write_text("softdep loop pre: nls-utf8 post: fs-iso9660\n")
    assert computed.closure({"loop"}) == {"loop"}
    with_conf = computed.closure({"loop"}, config_dirs=[tmp_path])
    assert with_conf == {"loop", "nls_utf8"} | computed.closure({"isofs"})


def test_firmware_files(computed: ModuleTree, tmp_path: Path) -> None:
    name, m = next((n, m) for n, m in computed.modules.items() if len(m.firmware) >= 2)
    (tmp_path / m.firmware[0]).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / m.firmware[0]).write_bytes(b"fw")
    (tmp_path / (m.firmware[1] + ".xz")).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / (m.firmware[1] + ".xz")).write_bytes(b"fw")
    got = computed.firmware([name, "ext4"], fw_root=tmp_path)
    assert got == sorted([tmp_path / m.firmware[0], tmp_path / (m.firmware[1] + ".xz")])


# -------------------------------------------------------------- write_index and the boot index

@pytest.fixture(scope="session")
def packed(computed: ModuleTree, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    names = computed.closure(computed.select(groups=tuple(GROUPS)))
    dest = tmp_path_factory.mktemp("packed")
    computed.write_index(dest, names)
    return dest, names


def test_write_index_holds_exactly_the_packed_modules(computed: ModuleTree, packed: tuple[Path, set[str]],
                                                      tmp_path: Path) -> None:
    dest, names = packed
    deps = C.parse_dep((dest / "modules.dep").read_text())
    assert {d.name for d in deps} == names
    assert {a.module for a in C.parse_alias((dest / "modules.alias").read_text())} <= names
    assert len(C.parse_builtin((dest / "modules.builtin").read_text())) == len(computed.builtin)
    header = (dest / "modules.pcimap").read_text().splitlines()[0]
    assert header.split() == ["#", "pci", "module", "vendor", "device", "subvendor", "subdevice", "class",
                              "class_mask", "driver_data"]
    index = ModuleIndex.load(str(dest / K.INDEX_NAME))
    text = _text_index(dest)
    for alias in QEMU_MODALIASES:
        assert index.lookup(alias) == text.lookup(alias), alias
    for n in names:
        assert index.load_order(n) == text.load_order(n), n
    # reproducible: a second write gives identical bytes
    computed.write_index(tmp_path, names)
    for f in dest.iterdir():
        assert (tmp_path / f.name).read_bytes() == f.read_bytes(), f.name
    with pytest.raises(CommandError):
        computed.write_index(tmp_path, {"ext4"})  # its dependencies are missing


def _text_index(dest: Path) -> ModuleIndex:
    """The same directory read through the text files only."""
    blob = dest / K.INDEX_NAME
    saved = blob.read_bytes()
    blob.unlink()
    try:
        return C.from_moddir(dest)
    finally:
        blob.write_bytes(saved)


def test_packed_softdeps_are_merged_so_all_load(packed: tuple[Path, set[str]]) -> None:
    dest, _names = packed
    index = ModuleIndex.load(str(dest / K.INDEX_NAME))
    order = index.load_order("btrfs")
    assert {"xxhash_generic", "blake2b_generic", "crc32c_generic"} <= set(order) and order[-1] == "btrfs"


def test_boot_index_load_and_match_is_fast(packed: tuple[Path, set[str]], modaliases: list[str]) -> None:
    dest, _names = packed
    aliases = (QEMU_MODALIASES + modaliases)[:200]
    blob = (dest / K.INDEX_NAME).read_bytes()
    best = 1.0
    for _ in range(5):
        t = time.perf_counter()
        index = ModuleIndex.loads(blob)
        for a in aliases:
            index.match(a)
        index.load_order("ext4")
        best = min(best, time.perf_counter() - t)
    print(f"\nboot index: {len(blob)} bytes, load + match {len(aliases)} modaliases: {best * 1000:.2f} ms")
    assert best < 0.05


# -------------------------------------------------------------- compressed modules and the cache

EXT4_ORDER = ["crc32c_intel", "crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"]
SMALL = ("ext4", "jbd2", "mbcache", "crc16", "crc32c_intel", "crc32c_generic", "libahci", "ahci", "libata",
         "scsi_mod", "scsi_common")


@pytest.fixture
def small_tree(computed: ModuleTree, kernel: KernelTree, tmp_path: Path) -> Path:
    """A module tree of a few real modules, compressed in every supported way."""
    moddir = tmp_path / "lib" / "modules" / kernel.version
    order = []
    for i, name in enumerate(SMALL):
        rel = computed.modules[name].path
        src = kernel.moddir / rel
        dst = moddir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        kind = i % 4
        if kind == 0:
            shutil.copy(src, dst)
        elif kind == 1:
            dst = dst.with_name(dst.name + ".xz")
            dst.write_bytes(lzma.compress(src.read_bytes(), check=lzma.CHECK_CRC32))
        elif kind == 2:
            dst = dst.with_name(dst.name + ".gz")
            dst.write_bytes(gzip.compress(src.read_bytes()))
        else:
            dst = dst.with_name(dst.name + ".zst")
            subprocess.run(["zstd", "-q", "-o", str(dst), str(src)], check=True)
        order.append(str(dst.relative_to(moddir)))
    (moddir / "modules.order").write_text("\n".join(order) + "\n")
    return moddir


def test_compressed_modules_read_like_uncompressed(computed: ModuleTree, small_tree: Path,
                                                   tmp_path: Path) -> None:
    tree = ModuleTree(small_tree, cache=tmp_path / "c")
    assert set(tree.modules) == set(SMALL)
    suffixes = {p.name.partition(".ko")[2] for p in small_tree.rglob("*.ko*")}
    assert suffixes == {"", ".xz", ".gz", ".zst"}
    for name, m in tree.modules.items():
        ref = computed.modules[name]
        assert (set(m.depends), m.aliases, m.softdeps, m.firmware) == \
               (set(ref.depends), ref.aliases, ref.softdeps, ref.firmware), name
        assert read_modinfo(small_tree / m.path) == read_modinfo(computed.moddir / ref.path)
    assert tree.index().load_order("ext4") == EXT4_ORDER


def test_cache_is_warm_fast_and_invalidated(small_tree: Path, tmp_path: Path, computed: ModuleTree,
                                            kmod_cache: Path) -> None:
    cache = tmp_path / "c"
    ModuleTree(small_tree, cache=cache)
    assert len(list(cache.iterdir())) == 1
    t = time.perf_counter()
    ModuleTree(computed.moddir, cache=kmod_cache)  # the whole kernel, warm
    assert time.perf_counter() - t < 0.3
    order = small_tree / "modules.order"
    order.write_text(order.read_text())  # a rebuilt tree: new mtime
    ext4 = next(small_tree.rglob("ext4.ko*"))
    ext4.unlink()
    tree = ModuleTree(small_tree, cache=cache)
    assert "ext4" not in tree.modules and len(list(cache.iterdir())) == 2


def test_not_a_module_tree(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="not a kernel module directory"):
        ModuleTree(tmp_path)
    (tmp_path / "kernel").mkdir()
    with pytest.raises(CommandError, match="no kernel modules"):
        ModuleTree(tmp_path, cache=tmp_path / "c")


# -------------------------------------------------------------- the command

def test_cli_modalias_names_and_show_depends(depmod_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["modalias", "--moddir", str(depmod_dir), QEMU_MODALIASES[0]]) == 0
    assert capsys.readouterr().out == "ahci\n"
    assert main(["modalias", "--moddir", str(depmod_dir), "--show-depends", "fs-ext4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [K.modname(line.split()[1]) for line in lines] == ["crc32c_intel", "crc32c_generic", "jbd2",
                                                              "mbcache", "crc16", "ext4"]
    assert all(Path(line.split()[1]).is_file() for line in lines)
    assert main(["modalias", "--moddir", str(depmod_dir), "no:such:alias"]) == 1


def test_cli_on_index_only_dir_and_ko_only_tree(packed: tuple[Path, set[str]], small_tree: Path,
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    dest, _ = packed
    assert main(["modalias", "--moddir", str(dest), "virtio:d00000002v00001AF4", "scsi:t-0x05"]) == 0
    assert capsys.readouterr().out == "# virtio:d00000002v00001AF4\nvirtio_blk\n# scsi:t-0x05\nsr_mod\n"
    assert main(["modalias", "--moddir", str(small_tree), "--cache", str(tmp_path),
                 "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"]) == 0
    assert capsys.readouterr().out == "ahci\n"


def test_cli_pcimap(packed: tuple[Path, set[str]], capsys: pytest.CaptureFixture[str]) -> None:
    dest, _ = packed
    pcimap = str(dest / "modules.pcimap")
    assert main(["modalias", "--pcimap", pcimap, QEMU_MODALIASES[0]]) == 0
    assert capsys.readouterr().out == "ahci\n"
    assert main(["modalias", "--pcimap", pcimap, "usb:v0627p0001d0000"]) == 1
    assert "not a PCI modalias" in capsys.readouterr().err
    assert main(["modalias", "usb:x"]) == 1
    assert "--moddir" in capsys.readouterr().err


def test_cli_modprobe_d_config(depmod_dir: Path, small_tree: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "modprobe.d"
    conf.mkdir()
    (conf / "local.conf").write_text("alias my-disk ahci\noptions ahci mobile_lpm_policy=1\n")
    for moddir in (depmod_dir, small_tree):
        assert main(["modalias", "--moddir", str(moddir), "--config", str(conf),
                     "--cache", str(tmp_path / "c"), "--show-depends", "my-disk"]) == 0
        last = capsys.readouterr().out.splitlines()[-1]
        assert last.startswith("insmod /") and "/ahci.ko" in last, last
        assert last.endswith(" mobile_lpm_policy=1"), last
    assert main(["modalias", "--moddir", str(tmp_path / "nowhere"), "x"]) == 1
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_load_order_of_every_packed_module_equals_modprobe(packed: tuple[Path, set[str]], depmod_root: Path,
                                                          depmod_dir: Path, kernel: KernelTree) -> None:
    names = sorted(packed[1])
    expected = modprobe(depmod_root, kernel.version, ["--show-depends"], names)
    from_text = C.from_moddir(depmod_dir)
    for name, lines in zip(names, expected, strict=True):
        want = list(dict.fromkeys(K.modname(line.split()[1]) for line in lines if line.startswith("insmod ")))
        assert from_text.load_order(name) == want, name


def test_cli_corrupt_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / K.INDEX_NAME).write_bytes(b"not marshal")
    assert main(["modalias", "--moddir", str(tmp_path), "fs-ext4"]) == 1
    assert "not a readable module index" in capsys.readouterr().err


def test_uncompressed_modules_decompresses_every_kind_in_few_zstd_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from packer import kmod, tools
    payloads = {}
    files = []
    # Same file name in two directories: they cannot share one --output-dir-flat run.
    for i, rel in enumerate(("a/dup.ko.zst", "b/dup.ko.zst", "c/one.ko.zst", "d/x.ko.xz", "e/y.ko.gz")):
        raw = f"module {i} ".encode() * 500
        p = tmp_path / rel
        p.parent.mkdir(parents=True)
        if rel.endswith(".zst"):
            subprocess.run(["zstd", "-q", "-o", str(p), "-"], input=raw, check=True)
        elif rel.endswith(".xz"):
            p.write_bytes(lzma.compress(raw, check=lzma.CHECK_CRC32))
        else:
            p.write_bytes(gzip.compress(raw))
        payloads[p] = raw
        files.append(p)
    ko = tmp_path / "f" / "z.ko"
    ko.parent.mkdir()
    ko.write_bytes(b"uncompressed")
    runs = []
    real_run = tools.run
    monkeypatch.setattr(tools, "run",
                        lambda argv, what, **kw: runs.append(argv) or real_run(argv, what, **kw))
    out = kmod.uncompressed_modules([*files, ko])
    assert out == payloads                                   # .ko files are read where they are
    assert len(runs) == 2                                    # dup.ko.zst twice: two zstd runs, not three
    assert modfile.uncompressed_name("kernel/fs/ext4/ext4.ko.zst") == "kernel/fs/ext4/ext4.ko"
    assert modfile.uncompressed_name("a/b.ko.xz") == "a/b.ko"
    assert modfile.uncompressed_name("a/b.ko") == "a/b.ko"
    bad = tmp_path / "bad.ko.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(CommandError, match=r"zstd failed to decompress 1 zstd-compressed kernel module"):
        kmod.uncompressed_modules([bad])


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=4096))
def test_modfile_decompresses_what_xz_and_gzip_wrote(data: bytes) -> None:
    """liveinit.modfile, the one decompressor of PID 1 and the packer: xz and gzip round trip."""
    assert modfile.decompress("a/m.ko", data) == data
    assert modfile.decompress("a/m.ko.xz", lzma.compress(data, check=lzma.CHECK_CRC32)) == data
    assert modfile.decompress("a/m.ko.gz", gzip.compress(data)) == data


def test_modfile_reports_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(modfile.ModuleFileError, match="zstd-compressed modules cannot be loaded at boot"):
        modfile.decompress("m.ko.zst", b"\x28\xb5\x2f\xfd")
    with pytest.raises(modfile.ModuleFileError, match="not a kernel module file name"):
        modfile.decompress("m.o", b"")
    truncated = tmp_path / "m.ko.xz"
    truncated.write_bytes(lzma.compress(b"x" * 1000)[:-8])
    with pytest.raises(modfile.ModuleFileError, match="end-of-stream"):
        modfile.read_module(str(truncated))
    (tmp_path / "m.ko.gz").write_bytes(b"not gzip")
    with pytest.raises(CommandError, match=r"cannot read the module .*m\.ko\.gz"):
        from packer import kmod
        kmod.module_bytes(tmp_path / "m.ko.gz")
