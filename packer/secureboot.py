"""Secure Boot: the signed chain a live medium boots through when the firmware enforces it.

A PC with UEFI Secure Boot on runs only EFI binaries signed by a key in its
db, in practice Microsoft's UEFI CA. Distributions ship shim signed by that
CA; shim carries the distribution's own CA (its `.vendor_cert` section) and
checks the distribution's GRUB with it, and GRUB asks shim to check the
kernel. So the medium's ESP holds:

    EFI/BOOT/BOOTX64.EFI   shim (Microsoft-signed; the fallback path every firmware tries)
    EFI/BOOT/grubx64.efi   the distribution's signed GRUB (shim loads grubx64.efi beside itself)
    EFI/BOOT/mmx64.efi     MokManager, so a user can enrol a Machine Owner Key from the medium
    <prefix>/grub.cfg      the early config that finds the medium and reads its menu

fbx64.efi is left out on purpose: beside shim it would write boot entries
into the machine's NVRAM, which a live medium must never do.

A network boot tree (`liveinit netboot`) takes the same chain in another
`Layout`: shim is the file the DHCP answer names (bootnetx64.efi), shim
fetches grubx64.efi from the TFTP directory it came from, and that is the
distribution's network GRUB (grubnetx64.efi.signed), whose built-in prefix
(Debian's: `/grub`) is on the TFTP server.

The signed GRUB is one image with its modules built in (it cannot load
modules from disk under Secure Boot) and an embedded early config plus a
prefix (Debian's: `/EFI/debian`, on the device GRUB was loaded from). That
early config sources `$prefix/grub.cfg`, so the medium puts its own small
config there; the prefix is read out of the binary, not assumed.

Everything here reads files; nothing is signed (see docs/SECUREBOOT.md)."""
from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packer import tools
from packer.cachelock import locked
from packer.config import DEFAULT_CACHE
from packer.errors import CommandError

# Where Debian and Ubuntu install the signed binaries (Ubuntu's newest shim is `.latest`).
SHIM_PATHS = ("usr/lib/shim/shimx64.efi.signed.latest", "usr/lib/shim/shimx64.efi.signed")
GRUB_PATHS = ("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",)
GRUB_NET_PATHS = ("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",)   # its network build
MOK_MANAGER_PATHS = ("usr/lib/shim/mmx64.efi.signed",)
# The Debian packages that hold them, fetched into the cache when neither
# the root nor the host has them.
PACKAGES = ("shim-signed", "grub-efi-amd64-signed", "shim-helpers-amd64-signed")
CACHE_DIR = "secureboot"

ESP_BOOT = "EFI/BOOT/BOOTX64.EFI"         # the removable-media path every UEFI firmware tries
ESP_GRUB = "EFI/BOOT/grubx64.efi"
ESP_MOK_MANAGER = "EFI/BOOT/mmx64.efi"

WHAT_SECURE_BOOT_DOES = ("a PC with Secure Boot on will refuse to start it (the firmware says "
                         "\"Access Denied\" or \"Security Violation\" and boots nothing) until Secure "
                         "Boot is turned off in its firmware setup; BIOS and UEFI without Secure Boot "
                         "are unaffected")

_SECURITY_DIR = 4              # IMAGE_DIRECTORY_ENTRY_SECURITY
_WIN_CERT_REVISION = 0x0200
_WIN_CERT_PKCS_SIGNED_DATA = 0x0002
_GRUB_MODULES_MAGIC = 0x676D696D   # "mimg": grub_module_info64
_GRUB_OBJ_CONFIG, _GRUB_OBJ_PREFIX = 2, 3


class NotPE(ValueError):
    """The bytes are not a PE/COFF image."""


class NoSignedChain(CommandError):
    """The medium cannot get the signed chain; the message says which piece is missing."""


@dataclass(frozen=True)
class Section:
    name: str
    offset: int   # in the file
    size: int     # raw size in the file


@dataclass(frozen=True)
class PEImage:
    """The parts of a PE/COFF image this module reads."""

    sections: tuple[Section, ...]
    certificates: bytes   # the attribute certificate table (WIN_CERTIFICATE entries); b"" if unsigned

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)


def read_pe(data: bytes) -> PEImage:
    """Section table and certificate table of a PE image (an EFI binary, a bzImage with an EFI stub)."""
    try:
        if data[:2] != b"MZ":
            raise NotPE("no MZ header")
        pe = struct.unpack_from("<I", data, 0x3C)[0]
        if data[pe:pe + 4] != b"PE\0\0":
            raise NotPE("no PE signature")
        nsections, _, symtab, nsymbols, optsize = struct.unpack_from("<HIIIH", data, pe + 6)
        opt = pe + 24
        magic = struct.unpack_from("<H", data, opt)[0]
        if magic not in (0x10B, 0x20B):
            raise NotPE(f"unknown optional header magic {magic:#x}")
        dirs = opt + (96 if magic == 0x10B else 112)   # PE32 / PE32+
        ndirs = struct.unpack_from("<I", data, dirs - 4)[0]
        certs = b""
        if ndirs > _SECURITY_DIR:
            # The one data directory that holds a file offset, not an RVA.
            off, size = struct.unpack_from("<II", data, dirs + 8 * _SECURITY_DIR)
            if size and off + size <= len(data):
                certs = data[off:off + size]
        strtab = symtab + 18 * nsymbols
        sections = []
        for i in range(nsections):
            raw, _vsize, _va, rsize, roff = struct.unpack_from("<8sIIII", data, opt + optsize + 40 * i)
            name = raw.rstrip(b"\0").decode("ascii", "replace")
            if name.startswith("/") and name[1:].isdigit():   # long name: "/N" into the COFF string table
                start = strtab + int(name[1:])
                name = data[start:data.index(b"\0", start)].decode("ascii", "replace")
            sections.append(Section(name, roff, rsize))
    except (struct.error, ValueError) as e:
        if isinstance(e, NotPE):
            raise
        raise NotPE(f"truncated or malformed PE headers ({e})") from None
    return PEImage(tuple(sections), certs)


def authenticode_signed(pe: PEImage) -> bool:
    """Whether the image carries an Authenticode signature (a PKCS#7 WIN_CERTIFICATE).

    Presence only: whether the firmware or shim trusts the signer is
    `signed_by` (for shim's CA) or the firmware's db."""
    if len(pe.certificates) < 8:
        return False
    length, revision, ctype = struct.unpack_from("<IHH", pe.certificates, 0)
    return (8 < length <= len(pe.certificates) and revision == _WIN_CERT_REVISION
            and ctype == _WIN_CERT_PKCS_SIGNED_DATA)


def _der(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `pos`."""
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        n = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    if pos + n > len(data):
        raise ValueError("DER element runs past the end")
    return tag, pos, pos + n


def certificate_subject(cert: bytes) -> bytes:
    """The DER bytes of an X.509 certificate's subject Name."""
    _, body, _ = _der(cert, 0)               # Certificate
    _, pos, _ = _der(cert, body)             # tbsCertificate: walk its fields
    fields: list[tuple[int, int, int]] = []
    while len(fields) < 6:
        tag, _, end = _der(cert, pos)
        fields.append((tag, pos, end))
        pos = end
    if fields[0][0] == 0xA0:                 # [0] version is optional
        fields = fields[1:]
    _, s, e = fields[4]                      # serial, signature, issuer, validity, subject
    return cert[s:e]


def shim_vendor_certificate(shim: PEImage, data: bytes) -> bytes | None:
    """The DER certificate shim trusts besides the firmware's db (its `.vendor_cert`), if any."""
    sec = shim.section(".vendor_cert")
    if sec is None or sec.offset + 16 > len(data):
        return None
    size, _, offset, _ = struct.unpack_from("<IIII", data, sec.offset)
    cert = data[sec.offset + offset:sec.offset + offset + size]
    return cert if len(cert) == size and cert[:1] == b"\x30" else None


def signed_by(signed: PEImage, ca_certificate: bytes) -> bool:
    """Whether `signed`'s signature names the CA as an issuer (its signer
    certificate was issued by that CA). Names, not cryptography: this
    predicts what shim will say; shim itself checks the signature."""
    try:
        subject = certificate_subject(ca_certificate)
    except (IndexError, ValueError):
        return False
    return authenticode_signed(signed) and subject in signed.certificates


def grub_embedded(data: bytes, pe: PEImage) -> dict[int, bytes]:
    """GRUB's built-in objects other than modules: {type: bytes} (2 config, 3 prefix)."""
    sec = pe.section("mods")
    if sec is None or sec.offset + 24 > len(data):
        return {}
    magic, _, offset, size = struct.unpack_from("<IIQQ", data, sec.offset)
    if magic != _GRUB_MODULES_MAGIC:
        return {}
    out: dict[int, bytes] = {}
    pos, end = sec.offset + offset, min(sec.offset + min(size, sec.size), len(data))
    while pos + 8 <= end:
        kind, length = struct.unpack_from("<II", data, pos)
        if length < 8:
            break
        if kind in (_GRUB_OBJ_CONFIG, _GRUB_OBJ_PREFIX):
            out[kind] = data[pos + 8:pos + length].rstrip(b"\0")
        pos += length
    return out


def grub_prefix(data: bytes, pe: PEImage) -> str | None:
    """The prefix built into a GRUB EFI image (`/EFI/debian`), relative to the device it was loaded from."""
    prefix = grub_embedded(data, pe).get(_GRUB_OBJ_PREFIX)
    return prefix.decode("utf-8", "replace") if prefix else None


@dataclass(frozen=True)
class Layout:
    """Where a kind of boot medium puts the chain, and which signed GRUB build it takes."""

    boot: str                     # what the firmware starts: shim (or, as a fallback, the unsigned GRUB)
    grub: str                     # where shim looks for the second stage: grubx64.efi beside itself
    mok_manager: str
    grub_paths: tuple[str, ...]   # the signed GRUB for this medium, relative to a root
    grub_name: str                # for messages


# A disk or CD's EFI system partition, and a TFTP server's directory (the UEFI
# PXE boot file the DHCP server names, Debian's netboot name).
MEDIA = Layout(ESP_BOOT, ESP_GRUB, ESP_MOK_MANAGER, GRUB_PATHS, "signed GRUB")
NETWORK = Layout("bootnetx64.efi", "grubx64.efi", "mmx64.efi", GRUB_NET_PATHS, "signed network GRUB")


@dataclass(frozen=True)
class SignedChain:
    """shim, the signed GRUB it starts and MokManager, and where GRUB reads its config."""

    shim: Path
    grub: Path
    mok_manager: Path | None
    prefix: str                  # GRUB's built-in prefix, e.g. "/EFI/debian"
    origin: str                  # where the binaries came from, for messages
    note: str = ""               # a warning that does not stop the signed boot
    layout: Layout = MEDIA

    @property
    def config_path(self) -> str:
        """Where GRUB's config goes (no leading slash): on the ESP and on the ISO, or on the TFTP server."""
        return self.prefix.strip("/") + "/grub.cfg"

    def files(self) -> tuple[tuple[str, Path], ...]:
        """(path on the medium, source file) for the binaries, in the chain's layout."""
        out = [(self.layout.boot, self.shim), (self.layout.grub, self.grub)]
        if self.mok_manager is not None:
            out.append((self.layout.mok_manager, self.mok_manager))
        return tuple(out)

    def describe(self) -> str:
        return f"shim + {self.layout.grub_name} from {self.origin} (GRUB reads {'/' + self.config_path})"


def _first(base: Path, candidates: tuple[str, ...]) -> Path | None:
    return next((base / c for c in candidates if (base / c).is_file()), None)


def _fetch_debian_chain(cache: Path) -> Path:
    """Unpack Debian's signed shim, GRUB and MokManager packages into the cache; the unpacked root."""
    base = cache / CACHE_DIR
    root, stamp = base / "root", base / ".unpacked"
    with locked(base):   # two packs at once download it once
        if stamp.exists():
            return root
        debs = base / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        tools.run(["apt-get", "download", "-q", *PACKAGES], "download Debian's signed shim and GRUB",
                  cwd=debs)
        for deb in sorted(debs.glob("*.deb")):
            tools.run(["dpkg", "-x", str(deb), str(root)], f"unpack {deb.name}")
        stamp.touch()
    return root


def _chain_in(base: Path, origin: str, layout: Layout = MEDIA) -> SignedChain | str:
    """The chain under `base`, or why there is none."""
    shim, grub = _first(base, SHIM_PATHS), _first(base, layout.grub_paths)
    if shim is None or grub is None:
        missing = " or ".join(n for n, p in (("shim", shim), (layout.grub_name, grub)) if p is None)
        return f"{origin} has no {missing} ({', '.join('/' + p for p in (SHIM_PATHS + layout.grub_paths))})"
    data = grub.read_bytes()
    try:
        pe = read_pe(data)
        for path, image in ((shim, read_pe(shim.read_bytes())), (grub, pe)):
            if not authenticode_signed(image):
                return f"{path} is not signed"
    except NotPE as e:
        return f"{origin}'s signed loaders are not EFI binaries ({e})"
    prefix = grub_prefix(data, pe)
    if not prefix or not prefix.startswith("/"):
        return f"cannot tell where {grub} looks for its grub.cfg (no prefix built in)"
    return SignedChain(shim, grub, _first(base, MOK_MANAGER_PATHS), prefix, origin, layout=layout)


def signed_chain(kernel: Path, root: Path | None = None, cache: Path = DEFAULT_CACHE,
                 download: bool = True, host: Path = Path("/"), layout: Layout = MEDIA) -> SignedChain:
    """The signed chain for a medium that boots `kernel`, or NoSignedChain saying why not.

    Looked for in `root` (the tree being imaged: its distribution's loaders
    match its kernel), then on the host, then (`download`) in Debian's
    packages fetched into `cache`. The kernel must carry a signature; one
    not issued by shim's CA boots only where its key is enrolled (MOK), which
    `note` says."""
    try:
        kpe = read_pe(kernel.read_bytes())
    except (OSError, NotPE) as e:
        raise NoSignedChain(f"cannot read the kernel {kernel} as an EFI image ({e})",
                            hint="Secure Boot needs a kernel with an EFI stub (CONFIG_EFI_STUB)") from None
    if not authenticode_signed(kpe):
        raise NoSignedChain(f"the kernel {kernel} is not signed (no Authenticode signature)",
                            hint="use the distribution's signed kernel (Debian: linux-image-*-amd64, not "
                                 "-unsigned) or sign yours with sbsign and enrol the key "
                                 "(docs/SECUREBOOT.md)")
    tried: list[str] = []
    places = [(root, "the root")] if root is not None else []
    for base, origin in [*places, (host, "the host")]:
        found = _chain_in(base, origin, layout)
        if isinstance(found, SignedChain):
            return _with_trust(found, kpe, kernel)
        tried.append(found)
    if download:
        try:
            found = _chain_in(_fetch_debian_chain(cache), "Debian's packages (" + ", ".join(PACKAGES) + ")",
                              layout)
        except CommandError as e:
            found = f"cannot fetch Debian's signed packages: {e}"
        if isinstance(found, SignedChain):
            return _with_trust(found, kpe, kernel)
        tried.append(found)
    raise NoSignedChain("no signed shim and GRUB: " + "; ".join(tried),
                        hint="apt-get install shim-signed grub-efi-amd64-signed shim-helpers-amd64-signed "
                             "(in the root or on the host)")


def _with_trust(chain: SignedChain, kpe: PEImage, kernel: Path) -> SignedChain:
    shim_data = chain.shim.read_bytes()
    vendor = shim_vendor_certificate(read_pe(shim_data), shim_data)
    if vendor is not None and signed_by(kpe, vendor):
        return chain
    note = (f"the kernel {kernel} is signed, but not by the CA built into {chain.shim}: GRUB will refuse it "
            "(\"bad shim signature\") unless its key is enrolled as a Machine Owner Key (docs/SECUREBOOT.md)")
    return dataclasses.replace(chain, note=note)


def fallback_warning(reason: NoSignedChain) -> str:
    """The warning for a medium built with the unsigned GRUB instead."""
    hint = f" ({reason.hint})" if reason.hint else ""
    return f"no Secure Boot: {reason}{hint}; the medium gets the unsigned GRUB, and {WHAT_SECURE_BOOT_DOES}"


@dataclass(frozen=True)
class EfiLoader:
    """What a medium's EFI system partition holds: (path on the ESP, file) pairs
    (for a network boot tree: paths in its TFTP directory, `config` among them).

    The ISO's El Torito image, the hybrid's ESP and a stick's FAT all get
    these files; the ISO also needs `config` (when set) at the same path in its
    ISO 9660 tree, where a CD boot's GRUB looks (its prefix names the CD)."""

    files: tuple[tuple[str, Path], ...]
    signed: bool
    message: str                        # the chain used, or the fallback warning
    config: tuple[str, Path] | None = None   # the early grub.cfg: (path, file); signed chain only


def efi_loader(work: Path, kernel: Path, root: Path | None, early_config: str,
               unsigned: Callable[[], Path], secure_boot: bool = True,
               cache: Path = DEFAULT_CACHE, layout: Layout = MEDIA) -> EfiLoader:
    """The signed chain with `early_config` where its GRUB reads it, or, when
    there is none or `secure_boot` is off, the `unsigned` GRUB (a callable:
    built only when needed) where the firmware looks (EFI/BOOT/BOOTX64.EFI on a
    medium) with a warning. The network layout's `early_config` is the menu itself."""
    if secure_boot:
        try:
            chain = signed_chain(kernel, root, cache, layout=layout)
        except NoSignedChain as e:
            message = fallback_warning(e)
        else:
            cfg = work / "grub-early.cfg"
            cfg.write_text(early_config)
            config = (chain.config_path, cfg)
            return EfiLoader((*chain.files(), config), True, chain.note or chain.describe(), config)
    else:
        message = f"Secure Boot not asked for: the medium gets the unsigned GRUB, and {WHAT_SECURE_BOOT_DOES}"
    return EfiLoader(((layout.boot, unsigned()),), False, message)
