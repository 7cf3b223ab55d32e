"""The tools and modules of the block layers a root may sit on: LUKS
(cryptsetup), LVM (lvm) and md RAID (mdadm), for `liveinit pack --with
luks,lvm,md`, and the layers under the running root for `--host-only`.

The binaries go in with their ELF closure (packer/elf.py), the modules by
name with their dependency closure (packer/kmod.py). The module lists hold
what the kernel would otherwise ask modprobe for at run time (there is no
modprobe helper in the initramfs): dm-crypt's default ciphers and hashes,
the AF_ALG sockets cryptsetup decrypts keyslots through, md's personalities.

The universal image does not carry them (see `measure`): cryptsetup's closure
alone is ~4 MiB uncompressed (libcrypto, libargon2, libjson-c, libdevmapper),
against the universal image's budget of a third of initramfs-tools' 9.5 MiB."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from packer.errors import CommandError

TOOL_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


class Layer(StrEnum):
    """A block layer under the root."""

    LUKS = "luks"
    LVM = "lvm"
    MD = "md"


@dataclass(frozen=True)
class LayerKit:
    """What the initramfs needs for one layer: tools (by name) and modules (names, missing ones skipped)."""

    tools: tuple[str, ...]
    modules: tuple[str, ...]
    package: str            # the Debian package with the tool, for the hint


KITS: dict[Layer, LayerKit] = {
    Layer.LUKS: LayerKit(("cryptsetup",),
                         ("dm_mod", "dm_crypt", "xts", "ecb", "cbc", "essiv", "aesni_intel", "aes_generic",
                          "sha256_ssse3", "sha256_generic", "sha512_ssse3", "af_alg", "algif_skcipher",
                          "algif_hash"), "cryptsetup-bin"),
    Layer.LVM: LayerKit(("lvm",), ("dm_mod", "dm_snapshot", "dm_mirror", "dm_zero"), "lvm2"),
    Layer.MD: LayerKit(("mdadm",), ("md_mod", "linear", "raid0", "raid1", "raid10", "raid456"), "mdadm"),
}

# Libraries a kit's tools dlopen, so not in their ELF closure: glibc loads libgcc_s.so.1 when
# a thread exits, and cryptsetup's argon2id runs one thread per CPU of the host that made the
# keyslot (up to 4); without it, opening a LUKS2 volume formatted on a multi-core host aborts
# ("libgcc_s.so.1 must be installed for pthread_exit to work").
DLOPENED: dict[Layer, tuple[str, ...]] = {Layer.LUKS: ("libgcc_s.so.1",)}
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib")


def parse_layers(names: tuple[str, ...] | list[str]) -> set[Layer]:
    """--with values -> layers; raises CommandError naming a wrong one."""
    out: set[Layer] = set()
    for n in names:
        try:
            out.add(Layer(n.strip().lower()))
        except ValueError:
            raise CommandError(f"--with {n}: not a block layer",
                               hint=f"choose among {', '.join(Layer)}, comma-separated") from None
    return out


def tool_path(name: str) -> Path:
    """The host's `name` (in an sbin or bin directory); raises CommandError naming the package."""
    for d in TOOL_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
    found = shutil.which(name)
    if found:
        return Path(found)
    pkg = next((k.package for k in KITS.values() if name in k.tools), name)
    raise CommandError(f"{name} is not installed on this host: it cannot be packed",
                       hint=f"apt-get install {pkg}")


TOOLS_OF = {layer: ", ".join(kit.tools) for layer, kit in KITS.items()}


def binaries(layers: set[Layer]) -> list[Path]:
    """The tools of `layers` and the libraries they dlopen (DLOPENED), as host paths."""
    out = [tool_path(t) for layer in sorted(layers) for t in KITS[layer].tools]
    for layer in sorted(layers):
        for lib in DLOPENED.get(layer, ()):
            found = next((Path(d) / lib for d in LIB_DIRS if (Path(d) / lib).is_file()), None)
            if found is None:
                raise CommandError(f"{lib} is not on this host: {TOOLS_OF[layer]} needs it in the image",
                                   hint="apt-get install libgcc-s1")
            out.append(found)
    return out


def modules(tree: object, layers: set[Layer]) -> set[str]:
    """The module names of `layers` that `tree` (a packer.kmod.ModuleTree) has as modules."""
    have = tree.modules  # type: ignore[attr-defined]
    return {m for layer in layers for m in KITS[layer].modules if m in have}


def _below(name: str, sys_root: Path) -> list[Path]:
    """/sys/class/block/N of block device `name` and of every device under it (its
    slaves in /sys/block/N/slaves, followed down)."""
    out: list[Path] = []
    seen: set[str] = set()
    todo = [name]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        base = sys_root / "class" / "block" / n
        out.append(base)
        slaves = base / "slaves"
        if slaves.is_dir():
            todo.extend(sorted(p.name for p in slaves.iterdir()))
    return out


def layers_below(name: str, sys_root: Path = Path("/sys")) -> set[Layer]:
    """The layers under block device `name` (dm-0, md127, sda2). A dm device is LUKS
    when its dm/uuid starts with CRYPT-LUKS, LVM with LVM-; an md device is md."""
    out: set[Layer] = set()
    for base in _below(name, sys_root):
        uuid = _read(base / "dm" / "uuid")
        if uuid.startswith("CRYPT-LUKS"):
            out.add(Layer.LUKS)
        elif uuid.startswith("LVM-"):
            out.add(Layer.LVM)
        if base.name.startswith("md") and (base / "md").is_dir():
            out.add(Layer.MD)
    return out


def crypt_names_below(name: str, sys_root: Path = Path("/sys")) -> set[str]:
    """The /dev/mapper names of the LUKS volumes under block device `name`."""
    return {_read(base / "dm" / "name") for base in _below(name, sys_root)
            if _read(base / "dm" / "uuid").startswith("CRYPT-LUKS")}


def _read(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def device_name(node: str) -> str:
    """The kernel name of a device node (/dev/mapper/root -> dm-0)."""
    return os.path.basename(os.path.realpath(node))


def measure(layers: set[Layer], baseline: tuple[Path, ...] = ()) -> dict[Layer, int]:
    """Bytes each layer's tools add (the binaries and the libraries not already in
    `baseline`'s closure, e.g. the embedded Python's), uncompressed."""
    from packer.elf import path_chain, resolve
    base = set(resolve(baseline).files) if baseline else set()
    out: dict[Layer, int] = {}
    for layer in sorted(layers):
        bins = [tool_path(t) for t in KITS[layer].tools]
        files = {p for b in bins for p in path_chain(b)} | set(resolve(bins).files)
        out[layer] = sum(p.stat().st_size for p in files - base if p.is_file() and not p.is_symlink())
    return out
