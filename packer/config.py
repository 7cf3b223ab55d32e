"""`liveinit pack` settings: ONE table feeds argparse and the TOML config file.

Every row of `SETTINGS` is a flag (`--name`) and a TOML key (`name`) at once,
so the two cannot drift apart (tests/test_config.py proves it). Precedence:
built-in default < `--config FILE` < command-line flag.

Defaults, and why:
- `kver`/`moddir`: the running kernel when the host has /lib/modules/$(uname -r),
  else the Debian test kernel from `qemu.testkernel.fetch_kernel()` (CI hosts
  and containers often have no modules of their own).
- `compress`: auto, a codec per segment (packer/segments.py: xz -9 for the
  big stable kernel and python segments, cached; zstd -19 for the small
  runtime segment). Any other method applies to every segment.
- `groups`: the universal set, every storage, usb, cdrom, fs, live and keyboard
  driver; `--host-only` replaces it by the running machine's drivers.
- `python`: /usr/bin/python3 (resolved to e.g. python3.11, which the image embeds).
- `busybox`: off: the universal image must stay under a third of
  initramfs-tools' (9.5 MiB) and busybox costs 0.53 MiB of it; the emergency
  shell is then the runtime's Python REPL. `--busybox` packs the host's
  static /bin/busybox (busybox-static) for a real shell.
- `source-date-epoch`: $SOURCE_DATE_EPOCH, else 0: every mtime is clamped to it.
- `packages`: none; third-party packages the runtime imports are added anyway.

In a config file a relative `skeleton` is relative to the file's directory.
"""
from __future__ import annotations

import argparse
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from packer.errors import CommandError
from packer.compress import METHODS as COMPRESSIONS

# The cache of compiled pycs, module info, compressed segments and the lab's test kernel.
DEFAULT_CACHE = Path(os.environ.get("LIVEINIT_CACHE", "/var/cache/liveinit"))
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SKELETON = REPO_ROOT / "rootfs-skel"
DEFAULT_PYTHON = Path("/usr/bin/python3")
DEFAULT_OUTPUT = Path("initrd.img")
UNIVERSAL_GROUPS = ("storage", "usb", "cdrom", "fs", "live", "keyboard")
DEFAULT_PACKAGES: tuple[str, ...] = ()   # + whatever the runtime imports (see pyruntime)


@dataclass(frozen=True)
class Setting:
    """One pack setting: its flag `--name`, its TOML key `name`, its field."""

    name: str                      # flag without "--" and TOML key
    kind: str                      # "str" | "path" | "int" | "bool" | "list" | "choice"
    default: Any
    help: str
    short: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None

    @property
    def field(self) -> str:
        return self.name.replace("-", "_")


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH as an int, 0 when unset or empty: the one reading of
    it (pack and image), so an initramfs and its medium never disagree."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    try:
        return int(raw)
    except ValueError:
        raise CommandError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                           hint="set it to seconds since 1970, e.g. $(git log -1 --format=%ct)")


def check_cmdline(text: str, flag: str = "--cmdline") -> None:
    """Parse `text` with the runtime's own parser (liveinit.cmdline) and raise
    CommandError listing every problem: a typo in a baked command line
    would otherwise ship, silently ignored, in every image."""
    from liveinit.cmdline import parse
    errors = parse("", defaults=text).errors
    if errors:
        listed = "\n    ".join(errors)
        raise CommandError(f"{flag} {text!r} is not a valid kernel command line:\n    {listed}",
                           hint="fix or remove those parameters (docs/CMDLINE.md lists what liveinit reads)")


SETTINGS: tuple[Setting, ...] = (
    Setting("output", "path", DEFAULT_OUTPUT, "where to write the initramfs", short="-o", metavar="FILE"),
    Setting("kver", "str", None, "kernel version whose modules to pack (default: running kernel "
            "if /lib/modules/$(uname -r) exists, else the fetched test kernel)", metavar="VERSION"),
    Setting("moddir", "path", None, "module directory lib/modules/KVER to pack from "
            "(default: /lib/modules/KVER or the fetched test kernel's)", metavar="DIR"),
    Setting("compress", "choice", "auto", "compression of every segment; auto: xz -9 for the kernel "
            "and python segments (cached), zstd -19 for the runtime one", choices=("auto", *COMPRESSIONS)),
    Setting("compress-level", "int", None, "compressor level for an explicit --compress method "
            "(default: the method's own)", metavar="N"),
    Setting("groups", "list", UNIVERSAL_GROUPS, "module groups to pack (comma-separated; "
            "ignored with --host-only)", metavar="GROUP,..."),
    Setting("modules", "list", (), "extra modules: names or globs (e.g. 'nvme*', "
            "'kernel/drivers/md/*'), comma-separated or repeated", metavar="MOD,..."),
    Setting("firmware", "bool", True, "pack the firmware files the packed modules declare"),
    Setting("files", "list", (), "extra files SRC[:DEST] (DEST defaults to SRC)", metavar="SRC[:DEST]"),
    Setting("binaries", "list", (), "extra executables, packed with their ELF closure", metavar="PATH"),
    Setting("skeleton", "path", DEFAULT_SKELETON, "directory copied as the image's static skeleton",
            metavar="DIR"),
    Setting("busybox", "bool", False, "pack the host's static /bin/busybox for the emergency shell "
            "(when present; adds ~0.5 MiB)"),
    Setting("cmdline", "str", "", "default kernel command line baked into /init "
            "(the boot loader's cmdline overrides it)", metavar="TEXT"),
    Setting("identity", "str", None, "identity string of the live medium (default: derived from "
            "the build inputs)", metavar="ID"),
    Setting("python", "path", DEFAULT_PYTHON, "interpreter to embed (resolved through symlinks)",
            metavar="PATH"),
    Setting("packages", "list", DEFAULT_PACKAGES, "third-party packages to embed, e.g. psutil,pyudev "
            "(from --site-packages, the packer's venv, then the interpreter's; the ones the runtime "
            "imports are always embedded)", metavar="PKG,..."),
    Setting("site-packages", "list", (), "extra directories searched first for --packages",
            metavar="DIR"),
    Setting("python-modules", "list", (), "extra stdlib modules to embed beyond the traced ones",
            metavar="MOD,..."),
    Setting("host-only", "bool", False, "pack only the drivers of the running machine "
            "(its modaliases, root device chain and root filesystem)"),
    Setting("microcode", "bool", True, "prepend the host's CPU microcode as an early segment"),
    Setting("source-date-epoch", "int", None, "clamp every mtime to this (default: "
            "$SOURCE_DATE_EPOCH, else 0)", metavar="SECONDS"),
    Setting("cache", "path", None, "cache directory for compiled pycs, module info and compressed "
            "segments "
            "(default: $LIVEINIT_CACHE or /var/cache/liveinit)", metavar="DIR"),
)


@dataclass(frozen=True)
class PackConfig:
    """Everything a pack depends on; fields mirror SETTINGS one to one."""

    output: Path = DEFAULT_OUTPUT
    kver: str | None = None
    moddir: Path | None = None
    compress: str = "auto"
    compress_level: int | None = None
    groups: tuple[str, ...] = UNIVERSAL_GROUPS
    modules: tuple[str, ...] = ()
    firmware: bool = True
    files: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()
    skeleton: Path = DEFAULT_SKELETON
    busybox: bool = False
    cmdline: str = ""
    identity: str | None = None
    python: Path = DEFAULT_PYTHON
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    site_packages: tuple[str, ...] = ()
    python_modules: tuple[str, ...] = ()
    host_only: bool = False
    microcode: bool = True
    source_date_epoch: int | None = None
    cache: Path | None = None

    @property
    def epoch(self) -> int:
        """The mtime every archive entry gets."""
        return self.source_date_epoch if self.source_date_epoch is not None else source_date_epoch()

    def extra_files(self) -> list[tuple[Path, str]]:
        """`files` as (host source, image name without leading '/')."""
        out = []
        for spec in self.files:
            src, _, dest = spec.partition(":")
            out.append((Path(src), (dest or src).lstrip("/")))
        return out


def _split_list(values: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        out.extend(p.strip() for p in str(v).split(",") if p.strip())
    return tuple(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting (defaults are None: unset flags don't override TOML)."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML file whose keys are the flags' names (flags override it)")
    for s in SETTINGS:
        names = [f"--{s.name}"] + ([s.short] if s.short else [])
        kw: dict[str, Any] = {"dest": s.field, "default": None, "help": s.help}
        if s.kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] += f" (default: {'on' if s.default else 'off'})"
        elif s.kind == "list":
            kw["action"] = "append"
            kw["metavar"] = s.metavar
        else:
            kw["metavar"] = s.metavar
            kw["type"] = {"int": int, "path": Path}.get(s.kind, str)
            if s.choices:
                kw["choices"] = s.choices
                kw["metavar"] = None
                kw["help"] += f" (default: {s.default})"
        parser.add_argument(*names, **kw)


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "str": str, "path": Path, "int": int, "bool": bool, "choice": str,
    "list": lambda v: _split_list([v] if isinstance(v, str) else list(v)),
}
_TOML_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "path": (str,), "int": (int,), "bool": (bool,), "choice": (str,), "list": (str, list),
}


def load_toml(path: Path) -> dict[str, Any]:
    """Read a config file into {field: value}; unknown keys and wrong types are errors."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise CommandError(f"cannot read config file {path}: {e.strerror}", hint="check --config")
    except tomllib.TOMLDecodeError as e:
        raise CommandError(f"config file {path} is not valid TOML: {e}")
    by_name = {s.name: s for s in SETTINGS}
    out: dict[str, Any] = {}
    for key, value in data.items():
        s = by_name.get(key)
        if s is None:
            raise CommandError(f"config file {path}: unknown key {key!r}",
                               hint="keys are the flag names of `liveinit pack --help` without '--': "
                               + ", ".join(sorted(by_name)))
        if not isinstance(value, _TOML_TYPES[s.kind]) or (s.kind == "int" and isinstance(value, bool)):
            raise CommandError(f"config file {path}: key {key!r} has the wrong type "
                               f"({type(value).__name__})", hint=f"expected {s.kind}")
        if s.choices and value not in s.choices:
            raise CommandError(f"config file {path}: {key} = {value!r} is not one of {', '.join(s.choices)}")
        out[s.field] = _CONVERT[s.kind](value)
        if s.kind == "path" and key == "skeleton" and not out[s.field].is_absolute():
            out[s.field] = path.parent / out[s.field]
    return out


def from_args(args: argparse.Namespace) -> PackConfig:
    """Merge defaults, the --config file and the flags into a PackConfig."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_toml(args.config))
    for s in SETTINGS:
        v = getattr(args, s.field, None)
        if v is not None:
            values[s.field] = _CONVERT[s.kind](v)
    return PackConfig(**values)


def check_table() -> None:
    """Assert SETTINGS and PackConfig describe the same fields (used by tests)."""
    table = [s.field for s in SETTINGS]
    dc = [f.name for f in fields(PackConfig)]
    assert table == dc, (table, dc)
