"""Build liveinit_VERSION_all.deb from the tree with dpkg-deb (run by debian/build-deb).

Layout: the four Python packages and rootfs-skel in the private directory
/usr/lib/liveinit (packer finds its skeleton beside itself), /usr/bin/liveinit,
the kernel hooks and /etc/liveinit/pack.toml as conffiles, rendered by
packer/hooks.py so the package and `liveinit install-hooks` ship the same bytes.

Why dpkg-deb and not debhelper: the package is pure Python in a private
directory with three maintainer scripts; dpkg-deb is in every Debian system
(essential dpkg) and builds it in a second, where a source package would need
debhelper and dh-python installed and a debian/rules to say the same.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from packer import hooks  # noqa: E402  (the tree, not an installed liveinit)

PACKAGE = "liveinit"
PRIVATE = Path("usr/lib/liveinit")
PYTHON_PACKAGES = ("liveinit", "packer", "qemu", "bench")
MAINTAINER = "liveinit developers <liveinit@localhost>"

# What the package runs, and why (packer/tools.py names each tool's package).
DEPENDS = (
    "python3 (>= 3.11)",      # runs liveinit (tomllib) and is the interpreter every image embeds
    "python3-pyelftools",     # ELF closure of packed binaries, .modinfo of kernel modules
    "python3-psutil",         # --host-only: the mounted root and its device
    "python3-pyudev",         # --host-only: the root's device chain and the machine's modaliases
    "zstd",                   # the runtime segment (zstd -19) and zstd-compressed kernel modules
)
RECOMMENDS = (
    "squashfs-tools",         # liveinit image: the root's squashfs
    "xorriso",                # liveinit image: the hybrid ISO
)
SUGGESTS = (
    "busybox-static",         # pack --busybox: a real emergency shell
    "isolinux", "syslinux-common",          # liveinit image: BIOS boot
    "grub-common", "grub-efi-amd64-bin",    # liveinit image: UEFI boot
    "mtools", "dosfstools",                 # liveinit image: the EFI system partition image
    "lz4",                    # pack --compress lz4
    "erofs-utils",            # liveinit image with an erofs root
    "qemu-system-x86",        # liveinit boot: the boot lab
)
DESCRIPTION = """\
initramfs generator with a Python PID 1, and live image builder
 liveinit packs an initramfs whose /init is a small Python runtime: it loads
 the drivers of the machine it boots on, finds the root (a disk, or a live
 medium) and hands over to its init. It also builds live ISO/USB images.
 .
 Kernel hooks pack each installed kernel's image with the settings of
 /etc/liveinit/pack.toml. While initramfs-tools or dracut is active liveinit
 writes /boot/liveinit.img-VERSION beside their initrd.img-VERSION;
 `liveinit install-hooks --replace` makes liveinit the generator (reversibly).
"""

WRAPPER = f"""#!/usr/bin/python3
import sys
sys.path.insert(0, "/{PRIVATE}")
from packer.cli import main
sys.exit(main())
"""


def version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else 0: the same tree gives the same .deb."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True,
                             text=True, check=True).stdout.strip()
        return int(out or 0)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def put(root: Path, rel: Path | str, data: bytes | str, mode: int = 0o644) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(mode)


def copy_tree(src: Path, dest: Path) -> None:
    for path in sorted(src.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc" or not path.is_file():
            continue
        put(dest, path.relative_to(src), path.read_bytes(), 0o755 if os.access(path, os.X_OK) else 0o644)


def control(ver: str, installed_kib: int) -> str:
    return (f"Package: {PACKAGE}\nVersion: {ver}\nArchitecture: all\nMaintainer: {MAINTAINER}\n"
            f"Installed-Size: {installed_kib}\nDepends: {', '.join(DEPENDS)}\n"
            f"Recommends: {', '.join(RECOMMENDS)}\nSuggests: {', '.join(SUGGESTS)}\n"
            f"Section: admin\nPriority: optional\nHomepage: https://github.com/liveinit/liveinit\n"
            f"Description: {DESCRIPTION}")


def stage(root: Path, ver: str) -> None:
    """Fill `root` with the package's files and its DEBIAN/ control directory."""
    for pkg in PYTHON_PACKAGES:
        copy_tree(REPO / pkg, root / PRIVATE / pkg)
    copy_tree(REPO / "rootfs-skel", root / PRIVATE / "rootfs-skel")
    put(root, "usr/bin/liveinit", WRAPPER, 0o755)
    conffiles = [*hooks.hook_files(), hooks.config_file()]
    for f in conffiles:
        put(root, str(f.path).lstrip("/"), f.text, f.mode)
    doc = Path("usr/share/doc") / PACKAGE
    put(root, doc / "copyright", (REPO / "debian" / "copyright").read_bytes())
    put(root, doc / "README.md.gz", gzip.compress((REPO / "README.md").read_bytes(), mtime=0))
    for d in sorted(p for p in root.rglob("*") if p.is_dir()):
        d.chmod(0o755)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    installed_kib = sum((p.stat().st_size + 1023) // 1024 for p in files) + len(files) // 4
    put(root, "DEBIAN/control", control(ver, installed_kib))
    put(root, "DEBIAN/conffiles", "".join(f"{f.path}\n" for f in conffiles))
    put(root, "DEBIAN/md5sums", "".join(f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.relative_to(root)}\n"
                                        for p in files))
    for script in ("postinst", "prerm", "postrm"):
        put(root, f"DEBIAN/{script}", (REPO / "debian" / script).read_bytes(), 0o755)


def build(outdir: Path) -> Path:
    ver = version()
    outdir.mkdir(parents=True, exist_ok=True)
    deb = outdir / f"{PACKAGE}_{ver}_all.deb"
    t = epoch()
    with tempfile.TemporaryDirectory(prefix="liveinit-deb-") as tmp:
        root = Path(tmp) / "root"
        stage(root, ver)
        for p in [root, *root.rglob("*")]:
            os.utime(p, (t, t), follow_symlinks=False)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(t)}
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    return deb


def main() -> int:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist"
    if shutil.which("dpkg-deb") is None:
        print("build_deb: dpkg-deb is missing: run debian/build-deb (it installs dpkg)", file=sys.stderr)
        return 1
    print(build(outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
