"""A kernel's module tree on the host: read depmod's index files or compute the
same data from every module's `.modinfo` (pyelftools), cache it per kernel,
select modules by name, path glob or group, close over dependencies and
softdeps, find firmware, and write the index of exactly the packed modules
(modules.dep/alias/softdep/builtin/pcimap and the boot-time `liveinit.index`,
compiled by packer.modindex)."""
from __future__ import annotations

import fnmatch
import hashlib
import io
import marshal
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, replace
from pathlib import Path

from liveinit import kmodindex
from liveinit.kmodindex import INDEX_NAME, MARSHAL_VERSION, ModuleIndex, modname
from liveinit.modfile import SUFFIXES as MODULE_SUFFIXES
from liveinit.modfile import ModuleFileError, read_module
from packer import tools
from packer.config import DEFAULT_CACHE
from packer.errors import CommandError
from packer.modindex import (
    Alias,
    Builtins,
    Command,
    Module,
    build_index,
    dumps,
    parse_config,
    parse_softdep_value,
    pcimap_lines,
    read_builtins,
    read_config_dirs,
    read_depmod_modules,
    softdep_text,
)

# 3: Module rows in field order, builtins as paths and (pattern, module) aliases.
CACHE_FORMAT = 3
DEFAULT_KMOD_CACHE = DEFAULT_CACHE / "kmod"
FIRMWARE_ROOT = Path("/lib/firmware")
FIRMWARE_SUFFIXES = ("", ".xz", ".zst")
INDEX_FILES = ("modules.dep", "modules.alias", "modules.softdep", "modules.builtin",
               "modules.builtin.modinfo", "modules.order")

# Named module groups: path globs (with "/", relative to the module directory)
# or module-name globs. A pattern that matches nothing in a kernel is fine:
# kernels differ in what they build as modules.
GROUPS: dict[str, tuple[str, ...]] = {
    "storage": (
        # libata: ahci, ata_piix, every pata_*/sata_* driver
        "kernel/drivers/ata/*",
        # SCSI upper layers and HBAs of PCs, servers and hypervisors
        "sd_mod", "sr_mod", "sg", "ses", "scsi_transport_sas", "scsi_transport_spi",
        "kernel/drivers/message/fusion/*", "kernel/drivers/scsi/megaraid/*", "megaraid",
        "kernel/drivers/scsi/mpt3sas/*", "kernel/drivers/scsi/aacraid/*",
        "kernel/drivers/scsi/aic7xxx/*", "kernel/drivers/scsi/aic94xx/*",
        "kernel/drivers/scsi/smartpqi/*", "kernel/drivers/scsi/mvsas/*", "kernel/drivers/scsi/isci/*",
        "kernel/drivers/scsi/pm8001/*", "kernel/drivers/scsi/arcmsr/*", "kernel/drivers/scsi/sym53c8xx_2/*",
        "kernel/drivers/scsi/mpi3mr/*", "kernel/drivers/scsi/esas2r/*",
        "hpsa", "3w_9xxx", "3w_sas", "3w_xxxx", "vmw_pvscsi", "hv_storvsc", "virtio_scsi", "BusLogic",
        "hptiop", "stex", "ipr", "initio", "dc395x", "am53c974", "qla1280", "ips", "myrb", "myrs",
        "advansys", "a100u2w", "atp870u", "mvumi", "pmcraid", "snic", "xen_blkfront", "xen_scsifront",
        # NVMe, virtio (transports, disks, and the rng that feeds early
        # entropy to CPython in a VM), MMC/SD
        "nvme", "nvme_core", "virtio_blk", "virtio_pci", "virtio_mmio", "virtio_rng",
        "mmc_block", "mmc_core", "sdhci", "sdhci_pci", "sdhci_acpi", "sdhci_pltfm", "cqhci",
        "rtsx_pci_sdmmc", "rtsx_usb_sdmmc", "via_sdmmc", "alcor", "toshsd", "vub300", "ushc",
        "loop",
    ),
    "virtio": ("virtio_pci", "virtio_blk", "virtio_scsi", "virtio_mmio", "virtio_rng", "virtio_console",
               "virtio_input"),
    "usb": ("xhci_pci", "xhci_hcd", "xhci_plat_hcd", "ehci_pci", "ehci_hcd", "ehci_platform",
            "ohci_pci", "ohci_hcd", "ohci_platform", "uhci_hcd", "usb_storage", "uas",
            "kernel/drivers/usb/storage/*", "usbhid", "hid_generic"),
    # Wired NICs of PCs, servers, hypervisors and clouds, and USB Ethernet
    # adapters: a network boot's drivers (root=live:http://...). Server NICs
    # whose drivers are megabytes (ice, mlx5_core, bnx2x, qede) are left to --modules.
    "net": ("virtio_net", "e1000", "e1000e", "igb", "igc", "ixgbe", "ixgbevf", "i40e", "r8169", "realtek",
            "tg3", "bnx2", "bnxt_en", "atlantic", "be2net", "vmxnet3", "hv_netvsc", "xen_netfront", "ena",
            "gve", "sky2", "atl1c", "alx", "forcedeth", "8139cp", "8139too", "pcnet32", "r8152", "cdc_ether",
            "cdc_ncm", "asix", "ax88179_178a", "virtio_pci"),
    "cdrom": ("sr_mod", "cdrom", "isofs", "udf"),
    "fs": ("isofs", "udf", "vfat", "fat", "msdos", "nls_cp437", "nls_iso8859_1", "nls_utf8", "nls_ascii",
           "exfat", "ntfs3", "ext4", "btrfs", "xfs", "squashfs", "erofs", "overlay", "loop", "f2fs"),
    "live": ("squashfs", "erofs", "overlay", "loop", "isofs", "udf", "vfat", "nls_cp437",
             "nls_iso8859_1", "nls_utf8"),
    "keyboard": ("atkbd", "i8042", "usbhid", "hid_generic", "hid", "hid_apple", "hid_microsoft",
                 "hid_logitech", "hid_logitech_dj", "hid_cherry", "hid_lenovo", "hyperv_keyboard",
                 "xhci_pci", "ehci_pci", "ohci_pci", "uhci_hcd", "virtio_input"),
}


@dataclass(frozen=True)
class IndexReport:
    """What `write_index` wrote."""

    modules: int
    aliases: int
    pcimap_entries: int
    unrepresentable: tuple[Alias, ...]  # pci aliases the map cannot hold: kept in the alias index only
    index_bytes: int


# ---------------------------------------------------------------- module files

def module_bytes(path: Path) -> bytes:
    """The ELF bytes of a module file (.ko, or .ko.xz/.ko.gz/.ko.zst decompressed)."""
    if path.name.endswith(".ko.zst"):  # the stdlib has no zstd: the host's zstd has
        return tools.run(["zstd", "-dcq", str(path)], f"decompress the module {path}").stdout
    try:
        return read_module(str(path))
    except (OSError, ModuleFileError) as e:
        raise CommandError(f"cannot read the module {path}: {e}",
                           hint="is the module tree complete and not corrupted?") from None


def uncompressed_modules(paths: Iterable[Path]) -> dict[Path, bytes]:
    """The ELF bytes of every compressed module in `paths` (uncompressed .ko
    files are left out: read them where they are). The .ko.zst files go
    through ONE zstd run per batch of distinct file names, not one each."""
    out: dict[Path, bytes] = {}
    batches: list[dict[str, Path]] = []
    for p in paths:
        if p.name.endswith(".ko"):
            continue
        if not p.name.endswith(".ko.zst"):
            out[p] = module_bytes(p)
            continue
        for batch in batches:
            if p.name not in batch:
                break
        else:
            batch = {}
            batches.append(batch)
        batch[p.name] = p
    for batch in batches:
        with tempfile.TemporaryDirectory(prefix="liveinit-ko-") as tmp:
            tools.run(["zstd", "-dqf", "--output-dir-flat", tmp, "--", *map(str, batch.values())],
                      f"decompress {len(batch)} zstd-compressed kernel module(s)")
            for name, p in batch.items():
                out[p] = (Path(tmp) / name.removesuffix(".zst")).read_bytes()
    return out


def read_modinfo(path: Path) -> list[tuple[str, str]]:
    """(key, value) pairs of a module's .modinfo section, in file order."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile
    try:
        if path.name.endswith(".ko"):
            with open(path, "rb") as f:  # uncompressed: read only the headers and the section
                sec = ELFFile(f).get_section_by_name(".modinfo")
                raw = sec.data() if sec is not None else b""
        else:
            sec = ELFFile(io.BytesIO(module_bytes(path))).get_section_by_name(".modinfo")
            raw = sec.data() if sec is not None else b""
    except (ELFError, OSError, ValueError) as e:
        raise CommandError(f"cannot read .modinfo of {path}: {e}",
                           hint="is the module tree complete and not corrupted?") from None
    out = []
    for item in raw.split(b"\0"):
        key, eq, value = item.decode("utf-8", "replace").partition("=")
        if eq:
            out.append((key, value))
    return out


def _depmod_order(mods: dict[str, list[str]], order: list[str]) -> dict[str, tuple[str, ...]]:
    """Every module's full dependency list in depmod's modules.dep order: a
    topological sort that emits modules without users first."""
    idx = {n: i for i, n in enumerate(order)}
    users = dict.fromkeys(order, 0)
    for n in order:
        for d in mods[n]:
            if d in users:
                users[d] += 1
    roots = [n for n in order if users[n] == 0]
    sort_idx: dict[str, int] = {}
    while roots:
        n = roots.pop()
        sort_idx[n] = len(sort_idx)
        for d in mods[n]:
            if d in users:
                users[d] -= 1
                if users[d] == 0:
                    roots.append(d)
    for n in order:  # dependency loops: depmod complains; keep them last
        sort_idx.setdefault(n, len(sort_idx))
    out = {}
    for n in order:
        seen: set[str] = set()
        stack = [d for d in mods[n] if d in idx]
        while stack:
            d = stack.pop()
            if d in seen or d == n:
                continue
            seen.add(d)
            stack.extend(x for x in mods[d] if x in idx)
        out[n] = tuple(sorted(seen, key=lambda d: sort_idx[d]))
    return out


# ---------------------------------------------------------------- the tree

class ModuleTree:
    """The modules of one kernel (`/lib/modules/KVER`), cached per kernel."""

    def __init__(self, moddir: Path, cache: Path | None = None) -> None:
        self.moddir = Path(moddir)
        if not (self.moddir / "kernel").is_dir() and not (self.moddir / "modules.dep").exists():
            raise CommandError(f"{self.moddir} is not a kernel module directory (no kernel/ or modules.dep)",
                               hint="pass /lib/modules/KVER of the kernel you pack")
        self.kver = self.moddir.name
        self.cache = DEFAULT_KMOD_CACHE if cache is None else Path(cache)
        data = self._load()
        self.source: str = data["source"]
        # The cache's rows are the Module fields in declaration order (astuple).
        self.modules: dict[str, Module] = {row[0]: Module(*row) for row in data["modules"]}
        self.builtins = Builtins(tuple(data["builtin_paths"]),
                                 tuple(Alias(*a) for a in data["builtin_aliases"]))
        self.builtin: frozenset[str] = self.builtins.names
        self.softdep_providers: dict[str, tuple[str, ...]] = data["softdep_providers"]
        self._index: ModuleIndex | None = None

    # -- reading and caching

    def _files(self) -> list[str]:
        out = []
        base = str(self.moddir)
        for d, dirs, files in os.walk(base):
            dirs.sort()
            rel = os.path.relpath(d, base)
            for f in sorted(files):
                if f.endswith(MODULE_SUFFIXES):
                    out.append(f if rel == "." else f"{rel}/{f}")
        return out

    def _fingerprint(self, files: list[str]) -> str:
        h = hashlib.sha256(f"{CACHE_FORMAT} {self.moddir.resolve()} {len(files)}".encode())
        for name in INDEX_FILES:
            try:
                st = (self.moddir / name).stat()
                h.update(f" {name} {st.st_size} {st.st_mtime_ns}".encode())
            except OSError:
                h.update(f" {name} -".encode())
        return h.hexdigest()[:16]

    def _load(self) -> dict:
        files = self._files()
        if not files:
            raise CommandError(f"{self.moddir} holds no kernel modules (.ko, .ko.xz, .ko.zst, .ko.gz)",
                               hint="is this the module directory of an unpacked kernel?")
        cache_file = self.cache / f"{self.kver}-{self._fingerprint(files)}.marshal"
        try:
            data = marshal.loads(cache_file.read_bytes())
            if data.get("format") == CACHE_FORMAT:
                return data
        except (OSError, ValueError, EOFError, TypeError):
            pass
        data = self._scan(files)
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(marshal.dumps(data, MARSHAL_VERSION))
            os.replace(tmp, cache_file)
        except OSError:
            pass  # a read-only cache only costs time
        return data

    def _scan(self, files: list[str]) -> dict:
        """The slow path: .modinfo of every module, and depmod's files when present."""
        infos = {modname(rel): (rel, read_modinfo(self.moddir / rel)) for rel in files}
        try:
            order_text = (self.moddir / "modules.order").read_text(errors="replace")
        except OSError:
            order_text = ""
        order = [n for n in dict.fromkeys(modname(p) for p in order_text.split()) if n in infos]
        order += sorted(set(infos) - set(order), key=lambda n: infos[n][0])
        if (self.moddir / "modules.dep").exists():
            source = "depmod"
            depmod = {m.name: m for m in read_depmod_modules(self.moddir)}
            modules = []
            for n in order:
                rel, kv = infos[n]
                dm = depmod.get(n, Module(n, rel))
                modules.append(Module(n, rel, dm.depends, dm.aliases, dm.softdeps,
                                      tuple(v for k, v in kv if k == "firmware")))
        else:
            source = "modinfo"
            direct = {n: [modname(d) for k, v in infos[n][1] if k == "depends" for d in v.split(",") if d]
                      for n in order}
            full = _depmod_order(direct, order)
            modules = []
            for n in order:
                rel, kv = infos[n]
                modules.append(Module(n, rel, full[n], tuple(v for k, v in kv if k == "alias"),
                                      tuple(v for k, v in kv if k == "softdep"),
                                      tuple(v for k, v in kv if k == "firmware")))
        builtins = read_builtins(self.moddir)
        return {"format": CACHE_FORMAT, "source": source, "modules": [astuple(m) for m in modules],
                "builtin_paths": builtins.paths, "builtin_aliases": [tuple(a) for a in builtins.aliases],
                "softdep_providers": _softdep_providers(build_index(self.kver, modules, builtins), modules)}

    # -- queries

    def index(self, config_dirs: Iterable[Path] = ()) -> ModuleIndex:
        """The kmod view of the whole tree (~0.2 s; kept when no modprobe.d
        directories are given)."""
        confs = read_config_dirs(config_dirs)
        if self._index is None or confs:
            index = build_index(self.kver, list(self.modules.values()), self.builtins, confs)
            if confs:
                return index
            self._index = index
        return self._index

    def match(self, modalias: str) -> list[str]:
        """Module names `modprobe -R modalias` gives for this tree."""
        return self.index().lookup(modalias)

    def path(self, name: str) -> Path:
        """The module file."""
        m = self.modules.get(modname(name))
        if m is None:
            if modname(name) in self.builtin:
                raise CommandError(f"{name} is built into kernel {self.kver}: there is no module file",
                                   hint="built-in drivers need no packing")
            raise CommandError(f"module {name} is not in {self.moddir}",
                               hint="`liveinit modalias --moddir DIR NAME` shows what a name resolves to")
        return self.moddir / m.path

    def select(self, names: Iterable[str] = (), globs: Iterable[str] = (),
               groups: Iterable[str] = ()) -> set[str]:
        """Module names chosen by name (or alias), glob (`kernel/drivers/ata/*`
        on paths, `virtio*` on names) and group; builtins are left out."""
        out: set[str] = set()
        for name in names:
            n = modname(name)
            if n in self.modules:
                out.add(n)
            elif n in self.builtin:
                continue
            else:
                found = [m for m in self.match(name) if m in self.modules]
                builtin = [m for m in self.match(name) if m in self.builtin]
                if not found and not builtin:
                    raise CommandError(f"no module named {name} in {self.moddir}",
                                       hint="module names look like ahci or virtio_blk; "
                                            "`liveinit modalias --moddir DIR NAME` shows what matches")
                out.update(found)
        for g in globs:
            got = self._glob(g)
            if not got:
                raise CommandError(f"module glob {g} matches nothing in {self.moddir}",
                                   hint="path globs are relative to the module directory, "
                                        "e.g. kernel/drivers/ata/*")
            out |= got
        for group in groups:
            if group not in GROUPS:
                raise CommandError(f"unknown module group {group}",
                                   hint=f"known groups: {', '.join(sorted(GROUPS))}")
            for pat in GROUPS[group]:
                out |= self._glob(pat)
        return out

    def _glob(self, pattern: str) -> set[str]:
        if "/" in pattern:
            return {n for n, m in self.modules.items() if fnmatch.fnmatchcase(m.path, pattern)}
        pat = modname(pattern) if not any(c in pattern for c in "*?[") else pattern.replace("-", "_")
        if pat in self.modules:
            return {pat}
        return {n for n in self.modules if fnmatch.fnmatchcase(n, pat)}

    def closure(self, names: Iterable[str], config_dirs: Iterable[Path] = ()) -> set[str]:
        """`names` plus every dependency and softdep provider, transitively
        (softdeps from modprobe.d files in `config_dirs` too)."""
        extra: list[tuple[str, tuple[str, ...]]] = []   # (module name pattern, providers)
        confs = read_config_dirs(config_dirs)
        if confs:
            idx = self.index()
            for conf in confs:
                for d in parse_config(conf.text):
                    if d.command is Command.SOFTDEP:
                        pre, post = parse_softdep_value(d.value)
                        extra.append((d.name, tuple(x for t in pre + post for x in idx.lookup(t))))
        todo = [modname(n) for n in names]
        out: set[str] = set()
        while todo:
            n = todo.pop()
            if n in out or n not in self.modules:
                continue
            out.add(n)
            todo.extend(self.modules[n].depends)
            todo.extend(self.softdep_providers.get(n, ()))
            for pattern, providers in extra:
                if kmodindex.fnmatch(pattern, n):   # kmod matches softdep names as fnmatch(3) globs
                    todo.extend(providers)
        return out

    def firmware(self, names: Iterable[str], fw_root: Path = FIRMWARE_ROOT) -> list[Path]:
        """Firmware files (or their .xz/.zst variants) the modules name that exist under `fw_root`."""
        found: set[Path] = set()
        for n in names:
            m = self.modules.get(modname(n))
            if m is None:
                continue
            for fw in m.firmware:
                for suffix in FIRMWARE_SUFFIXES:
                    p = fw_root / (fw + suffix)
                    if any(c in fw for c in "*?["):
                        found.update(q for q in fw_root.glob(fw + suffix) if q.is_file())
                    elif p.is_file():
                        found.add(p)
        return sorted(found)


    # -- writing

    def write_index(self, dest_moddir: Path, names: Iterable[str],
                    config_dirs: Iterable[Path] = (), paths: Mapping[str, str] | None = None) -> IndexReport:
        """Write modules.{dep,alias,softdep,builtin,builtin.modinfo,order,pcimap}
        and `liveinit.index` for exactly `names` (which must hold their own
        dependencies), with the modprobe.d files of `config_dirs` baked in.

        `paths`: module name -> its file relative to the module directory as
        stored in the image (`kernel/fs/ext4/ext4.ko`, `kernel/fs/udf/udf.ko.xz`),
        when the packer stores a module other than the tree does."""
        wanted = {modname(n) for n in names} - self.builtin
        unknown = sorted(n for n in wanted if n not in self.modules)
        if unknown:
            raise CommandError(f"not modules of {self.moddir}: {', '.join(unknown)}")
        mods = [_merged_softdeps(m) for n, m in self.modules.items() if n in wanted]
        if paths:
            mods = [replace(m, path=paths.get(m.name, m.path)) for m in mods]
        missing = sorted({d for m in mods for d in m.depends if d not in wanted})
        if missing:
            raise CommandError(f"the module set lacks dependencies: {', '.join(missing)}",
                               hint="pass ModuleTree.closure(names) to write_index")
        dest = Path(dest_moddir)
        dest.mkdir(parents=True, exist_ok=True)
        path_of = {m.name: m.path for m in mods}
        aliases = [Alias(a, m.name) for m in mods for a in m.aliases]
        pcimap, unrepresentable = pcimap_lines(aliases)
        files = {
            "modules.dep": "".join(f"{m.path}: {' '.join(path_of[d] for d in m.depends)}".rstrip() + "\n"
                                   for m in mods),
            "modules.alias": "# Aliases extracted from modules themselves.\n"
                             + "".join(f"alias {a.pattern} {a.module}\n" for a in aliases),
            "modules.softdep": softdep_text(mods),
            "modules.builtin": "".join(p + "\n" for p in self.builtins.paths),
            "modules.order": "".join(m.path + "\n" for m in mods),
            "modules.pcimap": "".join(pcimap),
        }
        for name, text in files.items():
            (dest / name).write_text(text)
        (dest / "modules.builtin.modinfo").write_bytes(
            b"".join(f"{a.module}.alias={a.pattern}".encode() + b"\0" for a in self.builtins.aliases))
        blob = dumps(build_index(self.kver, mods, self.builtins, read_config_dirs(config_dirs)))
        (dest / INDEX_NAME).write_bytes(blob)
        return IndexReport(len(mods), len(aliases), len(pcimap) - 1, tuple(unrepresentable), len(blob))


def _merged_softdeps(m: Module) -> Module:
    """The module with its softdep values merged into one: kmod honours only
    the first matching softdep line, and a packed module needs all its
    softdeps at boot."""
    pre: list[str] = []
    post: list[str] = []
    for value in m.softdeps:
        p, q = parse_softdep_value(value)
        pre += [x for x in p if x not in pre]
        post += [x for x in q if x not in post]
    if not pre and not post:
        return replace(m, softdeps=())
    body = " ".join((["pre:", *pre] if pre else []) + (["post:", *post] if post else []))
    return replace(m, softdeps=(body,))


def _softdep_providers(index: ModuleIndex, modules: Iterable[Module]) -> dict[str, tuple[str, ...]]:
    """Every module's softdep targets (all lines, pre and post) resolved
    through kmod's lookup to module names (aliases give all providers)."""
    out = {}
    for m in modules:
        names: list[str] = []
        for value in m.softdeps:
            pre, post = parse_softdep_value(value)
            for target in pre + post:
                names.extend(x for x in index.lookup(target) if x not in names)
        if names:
            out[m.name] = tuple(names)
    return out
