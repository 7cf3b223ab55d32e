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
- `groups`: the universal set, every storage, usb, cdrom, fs, live, keyboard and
  net (wired NICs, for root=live:http://...: +1.7 MiB xz) driver; `--host-only`
  replaces it by the running machine's drivers.
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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from packer.compress import Compression
from packer.errors import CommandError

# The cache of compiled pycs, module info, compressed segments and the lab's test kernel.
DEFAULT_CACHE = Path(os.environ.get("LIVEINIT_CACHE", "/var/cache/liveinit"))
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SKELETON = REPO_ROOT / "rootfs-skel"
DEFAULT_PYTHON = Path("/usr/bin/python3")
DEFAULT_OUTPUT = Path("initrd.img")
AUTO = "auto"    # --compress: a codec per segment (packer.segments.AUTO_CODECS)
UNIVERSAL_GROUPS = ("storage", "usb", "cdrom", "fs", "live", "keyboard", "net")
DEFAULT_PACKAGES: tuple[str, ...] = ()   # + whatever the runtime imports (see pyruntime)


class Kind(StrEnum):
    """What a setting's value is: its argparse action/type and its TOML type."""

    STR = "str"
    PATH = "path"
    INT = "int"
    BOOL = "bool"        # --name / --no-name
    LIST = "list"        # comma-separated or repeated
    CHOICE = "choice"    # one of Setting.choices


@dataclass(frozen=True)
class Setting:
    """One pack setting: its flag `--name`, its TOML key `name`, its field."""

    name: str                      # flag without "--" and TOML key
    kind: Kind
    default: Any
    help: str
    short: str | None = None
    choices: tuple[str, ...] = ()
    metavar: str | None = None
    dest: str | None = None        # the field's name when the flag's is a Python keyword (--with)

    @property
    def field(self) -> str:
        return self.dest or self.name.replace("-", "_")


def source_date_epoch() -> int:
    """$SOURCE_DATE_EPOCH as an int, 0 when unset or empty: the one reading of
    it (pack and image), so an initramfs and its medium never disagree."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "0") or "0"
    try:
        return int(raw)
    except ValueError:
        raise CommandError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer",
                           hint="set it to seconds since 1970, e.g. $(git log -1 --format=%ct)") from None


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
    Setting("output", Kind.PATH, DEFAULT_OUTPUT, "where to write the initramfs", short="-o", metavar="FILE"),
    Setting("kver", Kind.STR, None, "kernel version whose modules to pack (default: running kernel "
            "if /lib/modules/$(uname -r) exists, else the fetched test kernel)", metavar="VERSION"),
    Setting("moddir", Kind.PATH, None, "module directory lib/modules/KVER to pack from "
            "(default: /lib/modules/KVER or the fetched test kernel's)", metavar="DIR"),
    Setting("compress", Kind.CHOICE, AUTO, "compression of every segment; auto: xz -9 for the kernel "
            "and python segments (cached), zstd -19 for the runtime one", choices=(AUTO, *Compression)),
    Setting("compress-level", Kind.INT, None, "compressor level for an explicit --compress method "
            "(default: the method's own)", metavar="N"),
    Setting("groups", Kind.LIST, UNIVERSAL_GROUPS, "module groups to pack (comma-separated; "
            "ignored with --host-only)", metavar="GROUP,..."),
    Setting("modules", Kind.LIST, (), "extra modules: names or globs (e.g. 'nvme*', "
            "'kernel/drivers/md/*'), comma-separated or repeated", metavar="MOD,..."),
    Setting("firmware", Kind.BOOL, True, "pack the firmware files the packed modules declare"),
    Setting("files", Kind.LIST, (), "extra files SRC[:DEST] (DEST defaults to SRC)", metavar="SRC[:DEST]"),
    Setting("binaries", Kind.LIST, (), "extra executables, packed with their ELF closure", metavar="PATH"),
    Setting("skeleton", Kind.PATH, DEFAULT_SKELETON, "directory copied as the image's static skeleton",
            metavar="DIR"),
    Setting("busybox", Kind.BOOL, False, "pack the host's static /bin/busybox for the emergency shell "
            "(when present; adds ~0.5 MiB)"),
    Setting("cmdline", Kind.STR, "", "default kernel command line baked into /init "
            "(the boot loader's cmdline overrides it)", metavar="TEXT"),
    Setting("identity", Kind.STR, None, "identity string of the live medium (default: derived from "
            "the build inputs)", metavar="ID"),
    Setting("python", Kind.PATH, DEFAULT_PYTHON, "interpreter to embed (resolved through symlinks)",
            metavar="PATH"),
    Setting("packages", Kind.LIST, DEFAULT_PACKAGES, "third-party packages to embed, e.g. psutil,pyudev "
            "(from --site-packages, the packer's venv, then the interpreter's; the ones the runtime "
            "imports are always embedded)", metavar="PKG,..."),
    Setting("site-packages", Kind.LIST, (), "extra directories searched first for --packages",
            metavar="DIR"),
    Setting("python-modules", Kind.LIST, (), "extra stdlib modules to embed beyond the traced ones",
            metavar="MOD,..."),
    Setting("host-only", Kind.BOOL, False, "pack only the drivers of the running machine "
            "(its modaliases, root device chain and root filesystem)"),
    Setting("with", Kind.LIST, (), "block layers the root may sit on, whose tools and modules to pack: "
            "luks (cryptsetup), lvm, md (mdadm); --host-only adds those under the running root",
            metavar="LAYER,...", dest="layers"),
    Setting("keymap", Kind.LIST, (), "console keymaps to pack for typing a passphrase (kbd names such as "
            "de-latin1, or XKB layouts with console-setup); the first is the default "
            "(vconsole.keymap= on the boot command line picks another)", metavar="NAME,..."),
    Setting("crypttab", Kind.PATH, None, "crypttab whose entries marked `initramfs` (and, with --host-only, "
            "those under the root) are baked with their key files (default with --host-only: "
            "/etc/crypttab); an image holding a key file is written mode 0600", metavar="FILE"),
    Setting("microcode", Kind.BOOL, True, "prepend the host's CPU microcode as an early segment"),
    Setting("shell-password-hash", Kind.STR, None, "gate the emergency shell with a password: its crypt(3) "
            "SHA-512 hash ($6$..., from `openssl passwd -6` or `mkpasswd -m sha-512`); default: an "
            "open shell (rd.shell=0 on the command line disables it)", metavar="HASH"),
    Setting("source-date-epoch", Kind.INT, None, "clamp every mtime to this (default: "
            "$SOURCE_DATE_EPOCH, else 0)", metavar="SECONDS"),
    Setting("cache", Kind.PATH, None, "cache directory for compiled pycs, module info and compressed "
            "segments "
            "(default: $LIVEINIT_CACHE or /var/cache/liveinit)", metavar="DIR"),
)


@dataclass(frozen=True)
class PackConfig:
    """Everything a pack depends on; fields mirror SETTINGS one to one."""

    output: Path = DEFAULT_OUTPUT
    kver: str | None = None
    moddir: Path | None = None
    compress: str = AUTO
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
    layers: tuple[str, ...] = ()
    keymap: tuple[str, ...] = ()
    crypttab: Path | None = None
    microcode: bool = True
    shell_password_hash: str | None = None
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


def add_arguments(parser: argparse.ArgumentParser, table: tuple[Setting, ...] = SETTINGS) -> None:
    """Add one flag per setting of `table` (defaults are None: unset flags don't override TOML)."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML file whose keys are the flags' names (flags override it)")
    for s in table:
        names = [f"--{s.name}"] + ([s.short] if s.short else [])
        kw: dict[str, Any] = {"dest": s.field, "default": None, "help": s.help}
        if s.kind is Kind.BOOL:
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] += f" (default: {'on' if s.default else 'off'})"
        elif s.kind is Kind.LIST:
            kw["action"] = "append"
            kw["metavar"] = s.metavar
        else:
            kw["metavar"] = s.metavar
            kw["type"] = {Kind.INT: int, Kind.PATH: Path}.get(s.kind, str)
            if s.choices:
                kw["choices"] = s.choices
                kw["metavar"] = None
                kw["help"] += f" (default: {s.default})"
        parser.add_argument(*names, **kw)


_CONVERT: dict[Kind, Callable[[Any], Any]] = {
    Kind.STR: str, Kind.PATH: Path, Kind.INT: int, Kind.BOOL: bool, Kind.CHOICE: str,
    Kind.LIST: lambda v: _split_list([v] if isinstance(v, str) else list(v)),
}
_TOML_TYPES: dict[Kind, tuple[type, ...]] = {
    Kind.STR: (str,), Kind.PATH: (str,), Kind.INT: (int,), Kind.BOOL: (bool,), Kind.CHOICE: (str,),
    Kind.LIST: (str, list),
}


def load_toml(path: Path, table: tuple[Setting, ...] = SETTINGS) -> dict[str, Any]:
    """Read a config file into {field: value}; unknown keys and wrong types are errors."""
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise CommandError(f"cannot read config file {path}: {e.strerror}", hint="check --config") from None
    except tomllib.TOMLDecodeError as e:
        raise CommandError(f"config file {path} is not valid TOML: {e}") from None
    by_name = {s.name: s for s in table}
    out: dict[str, Any] = {}
    for key, value in data.items():
        s = by_name.get(key)
        if s is None:
            raise CommandError(f"config file {path}: unknown key {key!r}",
                               hint="keys are the command's flag names without '--': "
                               + ", ".join(sorted(by_name)))
        if not isinstance(value, _TOML_TYPES[s.kind]) or (s.kind is Kind.INT and isinstance(value, bool)):
            raise CommandError(f"config file {path}: key {key!r} has the wrong type "
                               f"({type(value).__name__})", hint=f"expected {s.kind}")
        if s.choices and value not in s.choices:
            raise CommandError(f"config file {path}: {key} = {value!r} is not one of {', '.join(s.choices)}")
        out[s.field] = _CONVERT[s.kind](value)
        if s.kind is Kind.PATH and key == "skeleton" and not out[s.field].is_absolute():
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


def values(args: argparse.Namespace, table: tuple[Setting, ...]) -> dict[str, Any]:
    """{field: value} for every setting of `table`: its default < the --config file < the flag."""
    out: dict[str, Any] = {s.field: s.default for s in table}
    if getattr(args, "config", None):
        out.update(load_toml(args.config, table))
    for s in table:
        v = getattr(args, s.field, None)
        if v is not None:
            out[s.field] = _CONVERT[s.kind](v)
    return out
