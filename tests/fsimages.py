"""Small filesystem and partition-table images made by the real tools (mkfs.*,
xorriso, sfdisk, cryptsetup) on regular files, without root: the oracle
images of test_fsprobe.py and the seeds of scripts/fuzz.py."""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

ISOHDPFX = "/usr/lib/ISOLINUX/isohdpfx.bin"
ISOLINUX = "/usr/lib/ISOLINUX/isolinux.bin"
FIXED_UUID = "0badcafe-1234-4321-8765-0123456789ab"

# name -> (size of the sparse file or None when the tool creates it, commands; {f} is the image,
# {d} a small tree with an isolinux/ directory)
IMAGES: dict[str, tuple[str | None, list[str]]] = {
    "ext2": ("8M", [f"mkfs.ext2 -q -L e2lab -U {FIXED_UUID} {{f}}"]),
    "ext2-nolabel": ("8M", ["mkfs.ext2 -q {f}"]),
    "ext3": ("16M", ["mkfs.ext3 -q -L e3lab {f}"]),
    "ext4": ("32M", [f"mkfs.ext4 -q -L 'ext4 label' -U {FIXED_UUID} {{f}}"]),
    "ext4-4k-nocsum": ("32M", ["mkfs.ext4 -q -b 4096 -O ^metadata_csum -L nocsum {f}"]),
    "ext4-odd-label": ("8M", ["mkfs.ext4 -q -L \"$(printf 'x\\tyé$\\\\')\" {f}"]),
    "jbd": ("8M", ["mkfs.ext4 -q -O journal_dev -L jlab {f}"]),
    "vfat12": ("4M", ["mkfs.vfat -F 12 -n F12LAB {f}"]),
    "vfat12-nolabel": ("4M", ["mkfs.vfat -F 12 {f}"]),
    "vfat16": ("20M", ["mkfs.vfat -F 16 -n 'MY DISK' -i 1234abcd {f}"]),
    "vfat16-nolabel": ("20M", ["mkfs.vfat -F 16 {f}"]),
    "vfat32": ("40M", ["mkfs.vfat -F 32 -n F32LAB {f}"]),
    "vfat32-nolabel": ("40M", ["mkfs.vfat -F 32 {f}"]),
    "vfat16-relabel": ("20M", ["mkfs.vfat -F 16 -n OLDLAB {f}", "mlabel -i {f} ::NEWLAB"]),
    "vfat32-relabel": ("40M", ["mkfs.vfat -F 32 -n OLDLAB {f}", "mlabel -i {f} ::NEWLAB"]),
    "exfat": ("8M", ["mkfs.exfat -L exlab {f}"]),
    "exfat-nolabel": ("8M", ["mkfs.exfat {f}"]),
    "ntfs": ("8M", ["mkfs.ntfs -q -F -f -L ntlab {f}"]),
    "squashfs": (None, ["mksquashfs {d} {f} -noappend -quiet"]),
    "erofs": (None, [f"mkfs.erofs -U {FIXED_UUID} {{f}} {{d}}"]),
    "btrfs": ("128M", ["mkfs.btrfs -q -L btlab {f}"]),
    "xfs": ("300M", ["mkfs.xfs -q -L xflab {f}"]),
    "f2fs": ("64M", ["mkfs.f2fs -q -l f2lab {f}"]),
    "f2fs-csum": ("64M", ["mkfs.f2fs -q -O sb_checksum -l 'f2 lab' {f}"]),
    "swap": ("8M", [f"mkswap -L swlab -U {FIXED_UUID} {{f}}"]),
    "swap-nolabel": ("8M", ["mkswap {f}"]),
    "udf": ("8M", ["mkudffs --label=udflab {f}"]),
    "udf-2048": ("8M", ["mkudffs --blocksize=2048 --label=Ünïcode --vsid=SetId {f}"]),
    "iso": (None, ["xorriso -as mkisofs -quiet -V ISOLAB -o {f} {d}"]),
    "iso-joliet": (None, ["xorriso -as mkisofs -quiet -V 'Long Mixed Case Label' -J -o {f} {d}"]),
    "iso-rockridge": (None, ["xorriso -as mkisofs -quiet -V RRLAB -R -publisher 'Pub Lisher' "
                             "-A 'an app' -sysid LINUX -volset vset -o {f} {d}"]),
    "iso-joliet-rr": (None, ["xorriso -as mkisofs -quiet -V jrlab -J -R -publisher pub -o {f} {d}"]),
    "iso-hybrid": (None, [f"xorriso -as mkisofs -quiet -V HYBLAB -J -R -b isolinux/isolinux.bin "
                          f"-c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "
                          f"-isohybrid-mbr {ISOHDPFX} -o {{f}} {{d}}"]),
    "iso-hybrid-big": (None, ["head -c 3000000 /dev/urandom > {d}/big.bin",
                              f"xorriso -as mkisofs -quiet -V BIGHYB -b isolinux/isolinux.bin "
                              f"-c isolinux/boot.cat -no-emul-boot -boot-load-size 4 "
                              f"-isohybrid-mbr {ISOHDPFX} -o {{f}} {{d}}", "rm {d}/big.bin"]),
    "iso-hybrid-gpt": (None, [f"xorriso -as mkisofs -quiet -V HYBLAB -b isolinux/isolinux.bin "
                              f"-c isolinux/boot.cat -no-emul-boot -boot-load-size 4 -boot-info-table "
                              f"-isohybrid-mbr {ISOHDPFX} -isohybrid-gpt-basdat -o {{f}} {{d}}"]),
    "dos-disk": ("64M", ["printf 'label: dos\\nlabel-id: 0x12345678\\nsize=8MiB, type=83, bootable\\n"
                         "size=8MiB, type=c\\ntype=5\\nsize=8MiB, type=83\\nsize=8MiB, type=82\\n'"
                         " | sfdisk -q {f}"]),
    "gpt-disk": ("64M", ["printf 'label: gpt\\nsize=16MiB, type=L, name=root, "
                         "attrs=\"RequiredPartition LegacyBIOSBootable\"\\n"
                         "size=16MiB, type=U, name=\"EFI sys\"\\ntype=L\\n' | sfdisk -q {f}",
                         "mkfs.ext4 -q -L inpart -E offset=1048576 {f} 16M",
                         "mkfs.vfat -F 16 -n ESP --offset 34816 {f} 16384"]),
    "empty": ("1M", []),
    "zeros": ("20M", []),
}

# Signatures fsprobe does not read (it must neither crash on them nor call them
# anything): made only when the tool is installed.
_LUKS = "cryptsetup luksFormat -q --type {t} --pbkdf pbkdf2 --pbkdf-force-iterations 1000 {{f}} -"
FOREIGN: dict[str, tuple[str, str | None, list[str]]] = {
    "luks1": ("cryptsetup", "8M", ["printf pass | " + _LUKS.format(t="luks1")]),
    "luks2": ("cryptsetup", "20M", ["printf pass | " + _LUKS.format(t="luks2")]),
}


def _run(cmd: str, cwd: Path) -> None:
    subprocess.run(["sh", "-ec", cmd], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_images(base: Path, foreign: bool = False) -> dict[str, Path]:
    """Every image of IMAGES (and of FOREIGN whose tool exists) under `base`."""
    tree = base / "tree"
    (tree / "isolinux").mkdir(parents=True, exist_ok=True)
    (tree / "hello.txt").write_text("hello\n")
    (tree / "isolinux" / "isolinux.bin").write_bytes(Path(ISOLINUX).read_bytes())
    todo = dict(IMAGES)
    if foreign:
        todo.update({n: (size, cmds) for n, (tool, size, cmds) in FOREIGN.items() if shutil.which(tool)})
    out = {}
    for name, (size, cmds) in todo.items():
        f = base / f"{name}.img"
        f.unlink(missing_ok=True)
        if size:
            _run(f"truncate -s {size} {f}", base)
        for cmd in cmds:
            _run(cmd.format(f=shlex.quote(str(f)), d=shlex.quote(str(tree))), base)
        out[name] = f
    return out
