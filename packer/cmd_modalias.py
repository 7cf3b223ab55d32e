"""`liveinit modalias --moddir DIR [--show-depends] MODALIAS...`: the modules
kmod's `modprobe -R` resolves for each modalias (or module name, or alias
such as fs-ext4), and with --show-depends the insmod order of
`modprobe --show-depends`. DIR may hold only index files (liveinit.index or
modules.dep/alias/...) or only .ko files (the index is then computed and
cached). `--pcimap FILE` matches PCI modaliases against a modules.pcimap.
With several MODALIAS arguments each answer follows a `# MODALIAS` line.
Exit status 1 when some modalias matched nothing."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from liveinit.kmodindex import INDEX_NAME, ModuleIndex, parse_pci_modalias, pci_match_entry
from packer.errors import CommandError
from packer.modindex import PcimapEntry, from_moddir, parse_pcimap


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("--moddir", type=Path,
                        help="module directory (default /lib/modules/$(uname -r); or a packed copy)")
    parser.add_argument("--show-depends", action="store_true",
                        help="print the insmod lines of the load order instead of the names")
    parser.add_argument("--pcimap", type=Path, metavar="FILE",
                        help="match PCI modaliases against this modules.pcimap instead")
    parser.add_argument("--config", type=Path, action="append", default=[], metavar="DIR",
                        help="modprobe.d directory whose aliases/softdeps apply (repeatable)")
    parser.add_argument("--cache", type=Path, default=None, help="module tree cache directory")
    parser.add_argument("modalias", nargs="+", help="modaliases, module names or aliases")


def open_index(moddir: Path, config: list[Path] | None = None, cache: Path | None = None) -> ModuleIndex:
    """The ModuleIndex of a directory: its liveinit.index, its depmod files, or
    computed from its .ko files."""
    if not moddir.is_dir():
        raise CommandError(f"{moddir} is not a directory", hint="pass --moddir /lib/modules/KVER")
    if (moddir / "modules.dep").is_file() or ((moddir / INDEX_NAME).is_file() and not config):
        try:
            return from_moddir(moddir, config or ())
        except (ValueError, EOFError, TypeError, KeyError) as e:
            raise CommandError(
                f"{moddir / INDEX_NAME} is not a readable module index: {e}",
                hint="rebuild it with `liveinit pack`, or delete it to use modules.dep") from None
    from packer.kmod import ModuleTree
    return ModuleTree(moddir, cache=cache).index(config or ())


def _pcimap_matches(entries: list[PcimapEntry], modalias: str) -> list[str]:
    ids = parse_pci_modalias(modalias)
    if ids is None:
        raise CommandError(f"{modalias} is not a PCI modalias",
                           hint="expected pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc%02Xi%02X, "
                                "as in /sys/bus/pci/devices/*/modalias")
    out: list[str] = []
    for e in entries:
        if e.module not in out and pci_match_entry(e.ids, *ids):
            out.append(e.module)
    return out


def run(args: argparse.Namespace) -> int:
    if args.pcimap is not None:
        try:
            entries = parse_pcimap(args.pcimap.read_text())
        except OSError as e:
            raise CommandError(f"cannot read {args.pcimap}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise CommandError(f"{args.pcimap} is not a text file, so not a modules.pcimap",
                               hint="pass the modules.pcimap that `liveinit pack` writes") from None
        if not entries:
            raise CommandError(f"{args.pcimap} holds no pcimap entry (module vendor device subvendor "
                               "subdevice class class_mask driver_data)",
                               hint="pass the modules.pcimap that `liveinit pack` writes")
        if args.show_depends:
            raise CommandError("--show-depends needs the module index, not a pcimap",
                               hint="use --moddir DIR with --show-depends")
        results = {a: _pcimap_matches(entries, a) for a in args.modalias}
        index = None
    else:
        if args.moddir is None:
            running = Path("/lib/modules") / os.uname().release
            if not running.is_dir():
                raise CommandError(f"no module directory given and {running} does not exist",
                                   hint="pass --moddir DIR or --pcimap FILE")
            args.moddir = running
        index = open_index(args.moddir, args.config, args.cache)
        results = {a: index.lookup(a) for a in args.modalias}
    status = 0
    for alias, names in results.items():
        if len(args.modalias) > 1:
            print(f"# {alias}")
        if not names:
            print(f"liveinit modalias: no module matches {alias}", file=sys.stderr)
            status = 1
        for name in names:
            if args.show_depends and index is not None:
                _show_depends(index, args.moddir, name)
            else:
                print(name)
    return status


def _show_depends(index: ModuleIndex, moddir: Path, name: str) -> None:
    if index.is_builtin(name) and name not in index:
        print(f"builtin {name}")
        return
    for mod in index.load_order(name):
        rel = index.path(mod) or ""
        path = rel if rel.startswith("/") else f"{moddir.resolve()}/{rel}"
        print(f"insmod {path} {index.options(mod)}".rstrip())
