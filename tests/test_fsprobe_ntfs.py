"""NTFS in liveinit.fsprobe, compared key by key with `blkid -p -o export` on images made with
mkfs.ntfs (sector and cluster sizes, no/unicode/long labels), inside a partition table, and on
mutated boot sectors and $Volume records; an NTFS boot sector is not a DOS partition table."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from liveinit import fsprobe
from packer import cmd_probe

KEYS = ("TYPE", "USAGE", "UUID", "LABEL", "BLOCK_SIZE", "PTTYPE")


def blkid(path: Path, offset: int | None = None) -> dict[str, str]:
    cmd = ["blkid", "-p", "-o", "export"] + (["-O", str(offset)] if offset is not None else [])
    out = subprocess.run(cmd + [str(path)], capture_output=True).stdout.decode("utf-8", "surrogateescape")
    keys = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {k: v for k, v in keys.items() if k in KEYS}


def mine(path: Path, offset: int = 0) -> dict[str, str]:
    return {k: cmd_probe.export_value(v) for k, v in fsprobe.probe(str(path), offset).items() if k in KEYS}


def mkntfs(path: Path, *args: str, size: str = "32M") -> Path:
    path.unlink(missing_ok=True)
    subprocess.run(["truncate", "-s", size, str(path)], check=True)
    subprocess.run(["mkfs.ntfs", "-F", "-Q", *args, str(path)], check=True, capture_output=True)
    return path


@pytest.mark.parametrize("args", [
    (),
    ("-L", "DATA"),
    ("-L", "Données Windows ✓"),
    ("-L", "x" * 128),
    ("-s", "4096", "-L", "big sectors"),
    ("-c", "65536", "-L", "big clusters"),
    ("-s", "1024", "-c", "1024"),
])
def test_like_blkid(tmp_path: Path, args: tuple[str, ...]) -> None:
    img = mkntfs(tmp_path / "ntfs.img", *args)
    theirs = blkid(img)
    assert theirs["TYPE"] == "ntfs"
    assert mine(img) == theirs
    label = args[args.index("-L") + 1] if "-L" in args else None
    if label is not None and len(label) < 100:
        assert fsprobe.probe(str(img))["LABEL"] == label


def test_in_a_partition(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    subprocess.run(["truncate", "-s", "40M", str(disk)], check=True)
    subprocess.run(["sfdisk", "-q", str(disk)], input="start=2048, type=7\n", text=True, check=True)
    part = mkntfs(tmp_path / "part.img", "-L", "WINDOWS", size=f"{(40 << 20) - (2048 << 9)}")
    with disk.open("r+b") as f:
        f.seek(2048 * 512)
        f.write(part.read_bytes())
    table = fsprobe.read_partition_table(str(disk))
    assert table is not None and [p.type for p in table.partitions] == ["0x7"]
    assert mine(disk, 2048 * 512) == blkid(disk, 2048 * 512)
    assert fsprobe.probe(str(disk), 2048 * 512)["LABEL"] == "WINDOWS"


def test_a_ntfs_boot_sector_is_no_partition_table(tmp_path: Path) -> None:
    img = mkntfs(tmp_path / "n.img")
    assert "PTTYPE" not in fsprobe.probe(str(img)) and "PTTYPE" not in blkid(img)
    assert fsprobe.read_partition_table(str(img)) is None


def test_mutants_like_blkid(tmp_path: Path) -> None:
    base = mkntfs(tmp_path / "base.img", "-L", "MUTANT")
    data = bytearray(base.read_bytes())
    mft = int.from_bytes(data[48:56], "little") * 4096          # mkfs.ntfs' default 4 KiB clusters
    vol = mft + 3 * 1024
    rng = random.Random(10)
    spots = [*range(3, 90), *range(vol, vol + 0x100)]
    img = tmp_path / "mutant.img"
    for _ in range(120):
        m = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            m[rng.choice(spots)] = rng.randrange(256)
        img.write_bytes(m)
        assert mine(img) == blkid(img), m[:90].hex()
