"""A network boot tree: what a DHCP/TFTP server and any HTTP server serve so
that a room full of machines boots the live system (`liveinit netboot`).

The tree is one directory, served whole by TFTP (the boot loaders, the
kernel and the initramfs) and by HTTP (the image, fetched by the runtime):

    pxelinux.0, ldlinux.c32, pxelinux.cfg/default   BIOS PXE (syslinux's pxelinux)
    bootnetx64.efi, grubx64.efi, mmx64.efi          UEFI PXE: shim, the signed network GRUB, MokManager
    grub/grub.cfg                                    GRUB's menu, at its built-in prefix on the server
    live/vmlinuz, live/initrd.img                    what the loaders fetch (TFTP)
    live/filesystem.squashfs, live/liveinit.id       what the runtime fetches (HTTP)
    live/SHA256SUMS                                   digests of the three live/ files
    README.md                                         dnsmasq and HTTP server snippets for this tree

The boot entries pass `root=live:URL/live/filesystem.squashfs ip=dhcp` and the
MAC the firmware booted from (BOOTIF=), so the runtime configures that NIC.

UEFI clients boot through the signed chain when the kernel is signed
(packer.secureboot's NETWORK layout), so machines with Secure Boot on boot
the tree too; otherwise bootnetx64.efi is an unsigned GRUB (grub-mkimage)
with the same prefix and menu, and a warning says what Secure Boot does.
It is made from an ISO that `liveinit image` made (its files reused as they
are); `liveinit netboot ROOT` makes that ISO first, as `liveinit image` does
(packer.cmd_image.pack_root: the same excludes and live clean-up)."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from liveinit import sha256sums
from liveinit.contract import CHECKSUMS_FILE, ID_FILE, INITRD_FILE, KERNEL_FILE, LIVE_IMAGE
from liveinit.netcfg import parse_url
from packer import image, secureboot, tools
from packer.config import check_cmdline, source_date_epoch
from packer.errors import CommandError

PXELINUX = Path("/usr/lib/PXELINUX/pxelinux.0")
LDLINUX = Path("/usr/lib/syslinux/modules/bios/ldlinux.c32")
PXELINUX_CFG = "pxelinux.cfg/default"
UEFI_BOOT = secureboot.NETWORK.boot   # the UEFI boot file the DHCP answer names: shim, or the unsigned GRUB
GRUB_NET_PREFIX = "/grub"      # on the TFTP server GRUB was loaded from: the signed network GRUB's (Debian)
GRUB_NET_CFG = GRUB_NET_PREFIX.lstrip("/") + "/grub.cfg"
GRUB_NET_MODULES = ("efinet", "net", "tftp", "http", "linux", "normal", "configfile", "echo", "test",
                    "all_video", "efi_gop", "gfxterm", "sleep", "halt", "reboot")
README = "README.md"
MARKER = "<!-- liveinit netboot tree -->"   # a directory holding this README may be rewritten
DEFAULT_CONSOLE = image.DEFAULT_CONSOLE
LIVE_FILES = (KERNEL_FILE, INITRD_FILE, LIVE_IMAGE)   # what SHA256SUMS lists


@dataclass(frozen=True)
class NetbootResult:
    """What `build` wrote."""

    outdir: Path
    image_url: str           # the URL the boot entries pass as root=live:
    cmdline: str             # the kernel command line of the boot entries
    identity: str
    image_size: int
    files: tuple[str, ...]   # relative to outdir
    secure_boot: bool        # UEFI PXE boots through the signed chain
    efi_loader: str          # the chain used, or the fallback warning


def image_url(base: str) -> str:
    """The image's URL under the HTTP base URL that serves the tree."""
    try:
        url = parse_url(base.rstrip("/") + LIVE_IMAGE)
    except ValueError as e:
        raise CommandError(f"--url {base}: {e}",
                           hint="give the URL the tree is served under, e.g. http://192.168.1.10/netboot"
                           ) from None
    return str(url)


def boot_cmdline(url: str, console: str = DEFAULT_CONSOLE, extra: str = "") -> str:
    cmdline = " ".join(filter(None, (console, f"root=live:{url}", "ip=dhcp", extra)))
    check_cmdline(cmdline, "the netboot command line:")
    return cmdline


def pxelinux_cfg(cmdline: str) -> str:
    """pxelinux's menu: one entry; IPAPPEND 2 adds BOOTIF=01-MAC (the NIC PXE used)."""
    return "\n".join((
        "SERIAL 0 115200", "DEFAULT live", "PROMPT 0", f"TIMEOUT {image.BOOT_MENU_TIMEOUT_S * 10}", "",
        "LABEL live", "  MENU LABEL liveinit live system (network)", f"  KERNEL {KERNEL_FILE.lstrip('/')}",
        f"  INITRD {INITRD_FILE.lstrip('/')}", f"  APPEND {cmdline}", "  IPAPPEND 2", ""))


def grub_net_cfg(cmdline: str) -> str:
    """GRUB's menu; root is the TFTP server GRUB came from, $net_default_mac the NIC it used."""
    return "\n".join((
        "set default=0", f"set timeout={image.BOOT_MENU_TIMEOUT_S}", "insmod all_video", "",
        'menuentry "liveinit live system (network)" {',
        f"  linux {KERNEL_FILE} {cmdline} BOOTIF=${{net_default_mac}}",
        f"  initrd {INITRD_FILE}", "}", ""))


def build_grub_net(out: Path, epoch: int) -> Path:
    """The unsigned GRUB for UEFI network boot: it reads its menu from the TFTP
    server it came from, at the prefix the signed one has."""
    tools.run(["grub-mkimage", "-O", "x86_64-efi", "-o", str(out), "-p", GRUB_NET_PREFIX, *GRUB_NET_MODULES],
              "build the GRUB EFI network image", env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    return out


def readme(base: str, url: str, outdir: Path) -> str:
    host = parse_url(url).host
    return f"""{MARKER}
# liveinit network boot tree

Serve this directory ({outdir}) twice: by TFTP (the boot loaders, the kernel and
the initramfs) and by HTTP under `{base}` (the image; the boot entries pass
`root=live:{url}`). Each client downloads the image into its RAM, checks
its SHA-256 against `live/SHA256SUMS` and boots it; nothing is written to
its disks. See docs/NETBOOT.md for what a server serves to N clients at once.

## DHCP + TFTP: dnsmasq

Beside an existing DHCP server (proxy DHCP: dnsmasq only adds the boot file):

```
# /etc/dnsmasq.d/liveinit-netboot.conf
port=0                                  # no DNS
dhcp-range=192.168.1.0,proxy            # your subnet
enable-tftp
tftp-root={outdir}
dhcp-match=set:efi64,option:client-arch,7
dhcp-match=set:efi64,option:client-arch,9
pxe-service=tag:!efi64,x86PC,"liveinit (BIOS)",pxelinux
pxe-service=tag:efi64,X86-64_EFI,"liveinit (UEFI)",{UEFI_BOOT}
```

As the only DHCP server, replace the proxy range with a real one and name the
boot files instead of the pxe-service lines:

```
dhcp-range=192.168.1.100,192.168.1.200,12h
dhcp-boot=tag:!efi64,pxelinux.0
dhcp-boot=tag:efi64,{UEFI_BOOT}
```

## HTTP: any server

nginx (`/etc/nginx/sites-enabled/liveinit-netboot`):

```
server {{
    listen 80;
    server_name {host};
    location {parse_url(base.rstrip('/') + '/').path} {{
        alias {outdir}/;
        sendfile on;            # the image goes from the page cache to the socket
        tcp_nopush on;
    }}
}}
```

Or, for a try: `cd {outdir} && python3 -m http.server 80` (then the base URL is
`http://{host}/`). Ranges (resume after a dropped connection) work with both.

## Checks

`cd {outdir} && sha256sum -c {CHECKSUMS_FILE.lstrip('/')}` checks the tree; a client
that finds a different image refuses it ("checksum mismatch") and opens a shell.
"""


def prepare(outdir: Path) -> None:
    """Make `outdir` ours (new, empty, or a tree we wrote), or refuse it."""
    if outdir.exists():
        if not outdir.is_dir():
            raise CommandError(f"{outdir} is not a directory", hint="give a new or empty directory")
        entries = list(outdir.iterdir())
        ours = (outdir / README).is_file() and MARKER in (outdir / README).read_text(errors="replace")
        if entries and not ours:
            raise CommandError(f"{outdir} is not empty and is not a liveinit netboot tree",
                               hint="give a new or empty directory (or one `liveinit netboot` wrote)")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / README).write_text(MARKER + "\n(being written by `liveinit netboot`)\n")   # ours from now on


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.resolve() != dest.resolve():
        shutil.copyfile(src, dest)


def write_tree(outdir: Path, vmlinuz: Path, initrd: Path, squashfs: Path, identity: str, base: str,
               console: str = DEFAULT_CONSOLE, extra: str = "", *, secure_boot: bool = True,
               root: Path | None = None) -> NetbootResult:
    """Lay out the tree at `outdir` from a kernel, an initramfs and an image.

    `secure_boot`: UEFI PXE through the signed chain when `vmlinuz` is signed
    and a chain is found (in `root`, the tree the image was made from, then
    as for the media); False: the unsigned GRUB."""
    url = image_url(base)
    cmdline = boot_cmdline(url, console, extra)
    for tool, path in (("pxelinux", PXELINUX), ("syslinux-common", LDLINUX)):
        if not path.exists():
            raise CommandError(f"{path} not found", hint=f"apt-get install {tool}")
    prepare(outdir)
    epoch = source_date_epoch()
    for src, dest in ((vmlinuz, KERNEL_FILE), (initrd, INITRD_FILE), (squashfs, LIVE_IMAGE)):
        _place(src, outdir / dest.lstrip("/"))
    (outdir / ID_FILE.lstrip("/")).write_text(identity + "\n")
    digests = {name.lstrip("/"): _sha256(outdir / name.lstrip("/")) for name in LIVE_FILES}
    (outdir / CHECKSUMS_FILE.lstrip("/")).write_text(sha256sums.render(digests))
    _place(PXELINUX, outdir / "pxelinux.0")
    _place(LDLINUX, outdir / "ldlinux.c32")
    (outdir / PXELINUX_CFG).parent.mkdir(parents=True, exist_ok=True)
    (outdir / PXELINUX_CFG).write_text(pxelinux_cfg(cmdline))
    with tempfile.TemporaryDirectory(prefix="liveinit-netboot-efi-") as tmp:
        work = Path(tmp)
        loader = secureboot.efi_loader(work, vmlinuz, root, grub_net_cfg(cmdline),
                                       lambda: build_grub_net(work / "grubnetx64.efi", epoch), secure_boot,
                                       layout=secureboot.NETWORK)
        for dest, src in loader.files:   # the signed chain's files include its menu (`config`)
            _place(src, outdir / dest)
    if loader.config is None:
        (outdir / GRUB_NET_CFG).parent.mkdir(parents=True, exist_ok=True)
        (outdir / GRUB_NET_CFG).write_text(grub_net_cfg(cmdline))
    (outdir / README).write_text(readme(base, url, outdir.resolve()))
    files = tuple(sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*") if p.is_file()))
    for p in outdir.rglob("*"):
        os.utime(p, (epoch, epoch), follow_symlinks=False)
    size = (outdir / LIVE_IMAGE.lstrip("/")).stat().st_size
    return NetbootResult(outdir, url, cmdline, identity, size, files, loader.signed, loader.message)


def from_iso(iso: Path, outdir: Path, base: str, *, console: str = DEFAULT_CONSOLE, extra: str = "",
             secure_boot: bool = True, root: Path | None = None) -> NetbootResult:
    """The tree for an ISO `liveinit image` made: its kernel, initramfs, image and
    identity. `root`: the tree the ISO was made from, where the signed chain is
    looked for first (see write_tree)."""
    if not Path(iso).is_file():
        raise CommandError(f"{iso} not found",
                           hint="pass an ISO made by `liveinit image`, or a root directory")
    with tempfile.TemporaryDirectory(prefix="liveinit-netboot-") as tmp:
        work = Path(tmp)
        got = {name: image.extract(iso, name.lstrip("/"), work / name.lstrip("/"))
               for name in (KERNEL_FILE, INITRD_FILE, LIVE_IMAGE, ID_FILE)}
        identity = got[ID_FILE].read_text().strip()
        return write_tree(outdir, got[KERNEL_FILE], got[INITRD_FILE], got[LIVE_IMAGE], identity, base,
                          console, extra, secure_boot=secure_boot, root=root)
