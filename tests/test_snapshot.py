"""packer.snapshot: what a live copy of a root takes (checked against what mksquashfs really
packs), the live clean-up in the copy and never on the host, the root's own kernel, files
changed while packing, the progress line; and `liveinit image TREE` end to end (no boot)."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from packer import snapshot
from packer.errors import CommandError
from packer.kernel import KernelTree

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw shared:2 - proc proc rw
24 22 8:2 / /home rw shared:3 - ext4 /dev/sda2 rw
25 22 8:3 / /boot rw shared:4 - ext4 /dev/sda3 rw
26 22 0:40 / /media/My\\040Stick rw - vfat /dev/sdb1 rw
27 22 0:41 / /srv/nfs rw - nfs4 host:/x rw
28 22 8:1 / /other/tree rw - ext4 /dev/sda1 rw
"""
SWAPS = """\
Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority
/swapfile                               file\t\t1048572\t\t0\t\t-2
/dev/sda5                               partition\t999420\t\t0\t\t-3
"""


def test_mounts_below_the_root_with_escapes() -> None:
    assert snapshot.mounts_below(Path("/"), MOUNTINFO) == [
        Path("/boot"), Path("/home"), Path("/media/My Stick"), Path("/other/tree"), Path("/proc"),
        Path("/srv/nfs")]
    assert snapshot.mounts_below(Path("/other"), MOUNTINFO) == [Path("/other/tree")]
    assert snapshot.swap_files(SWAPS) == [Path("/swapfile")]


def test_excludes_one_file_system_swap_outputs_and_the_users() -> None:
    pats = snapshot.excludes(Path("/"), outputs=(Path("/srv/out.iso"), Path("/elsewhere/../tmp/w")),
                             include_mounts=(Path("/home"),), extra=("/var/log/*.gz", "... *.pyc"),
                             mountinfo=MOUNTINFO, swaps=SWAPS)
    for p in ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "var/tmp/*", "var/cache/apt/archives/*.deb",
              "... lost+found", "boot/*", "media/My Stick/*", "srv/nfs/*", "swapfile", "srv/out.iso",
              "tmp/w", "var/log/*.gz", "... *.pyc"):
        assert p in pats
    assert "home/*" not in pats                   # --include-mount
    assert len(pats) == len(set(pats))


def test_read_patterns(tmp_path: Path) -> None:
    f = tmp_path / "ex"
    f.write_text("# caches\n/var/cache/*\n\n  home/*/.cache  \n... *.tmp\n")
    assert snapshot.read_patterns(f) == ["var/cache/*", "home/*/.cache", "... *.tmp"]
    with pytest.raises(CommandError, match="cannot read --exclude-from"):
        snapshot.read_patterns(tmp_path / "missing")


def _tree(root: Path) -> Path:
    for d in ("etc/ssh", "proc/1", "tmp/x", "tmp/.X11-unix", "var/tmp", "var/log", "home/u/.cache",
              "a/lost+found", "lost+found", "var/cache/apt/archives", "deep/er/dir"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("etc/hostname", "proc/1/status", "tmp/x/y", "var/log/syslog", "var/log/old.gz",
              "home/u/.cache/c", "home/u/keep", "a/lost+found/f", "var/cache/apt/archives/p.deb",
              "var/cache/apt/archives/lock", "deep/er/dir/m.pyc", "deep/er/dir/m.py",
              "etc/ssh/ssh_host_rsa_key", "etc/ssh/sshd_config", "weird [name]*", "tmp/.lock",
              "deep/.hidden.pyc", "etc/.pwd.lock"):
        (root / f).write_text(f + "\n")
    (root / "sbin").mkdir()
    (root / "sbin" / "init").write_text("#!/bin/sh\n")
    return root


def _packed(sfs: Path) -> set[str]:
    out = subprocess.run(["unsquashfs", "-l", "-d", "", str(sfs)], check=True, capture_output=True,
                         text=True).stdout
    return {line.lstrip("/") for line in out.splitlines() if line.strip("/ ")}


def test_walk_takes_what_mksquashfs_packs(tmp_path: Path) -> None:
    # the exclude matcher (for the counts and the changed-file report) agrees with mksquashfs
    root = _tree(tmp_path / "root")
    pats = (*snapshot.DEFAULT_EXCLUDES, "var/log/*.gz", "home/*/.cache", "... *.pyc",
            snapshot._glob_escape("weird [name]*"))
    sfs = tmp_path / "o.sfs"
    subprocess.run(["mksquashfs", str(root), str(sfs), "-noappend", "-quiet", "-no-progress", "-wildcards",
                    "-e", *pats], check=True)
    walked = {rel for rel, _st in snapshot.walk(root, pats)}
    assert walked == _packed(sfs)
    assert "home/u/keep" in walked and "var/log/syslog" in walked and "var/cache/apt/archives/lock" in walked
    assert not {"var/log/old.gz", "deep/er/dir/m.pyc", "a/lost+found/f", "weird [name]*", "tmp/.lock",
                "tmp/.X11-unix"} & walked
    assert {"deep/.hidden.pyc", "etc/.pwd.lock", "tmp", "proc"} <= walked   # '*' skips dot files, as fnmatch


def test_live_fstab_disables_the_hosts_disks_and_shares() -> None:
    text = ("# <file system> <mount point> <type>\n"
            "UUID=1234 / ext4 errors=remount-ro 0 1\n"
            "/dev/sda2 none swap sw 0 0\n"
            "LABEL=data /data xfs defaults 0 2\n"
            "server:/export /mnt/nfs nfs defaults 0 0\n"
            "tmpfs /tmp tmpfs defaults 0 0\n"
            "proc /proc proc defaults 0 0\n")
    new, n = snapshot.live_fstab(text)
    assert n == 4
    kept = [ln for ln in new.splitlines() if not ln.startswith("#")]
    assert kept == ["tmpfs /tmp tmpfs defaults 0 0", "proc /proc proc defaults 0 0"]
    assert snapshot.DISABLED + "UUID=1234 / ext4 errors=remount-ro 0 1" in new


def _unsquash_cat(sfs: Path, rel: str) -> str:
    return subprocess.run(["unsquashfs", "-cat", str(sfs), rel], check=True, capture_output=True,
                          text=True).stdout


def test_the_clean_up_changes_the_copy_never_the_host(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    (root / "etc" / "fstab").write_text("UUID=1 / ext4 defaults 0 1\ntmpfs /tmp tmpfs defaults 0 0\n")
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(root / "etc" / "machine-id", 0o444)
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\tmybox\n")
    (root / "var" / "lib" / "dbus").mkdir(parents=True)
    (root / "var" / "lib" / "dbus" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    work = tmp_path / "work"
    work.mkdir()
    plan = snapshot.plan(root, work, hostname="livebox")
    assert plan.cleanup == ("/etc/fstab: 1 host disk or network entries disabled", "/etc/machine-id emptied",
                            "/var/lib/dbus/machine-id left out", "1 ssh host key files left out",
                            "hostname livebox")
    from packer.image import build_squashfs
    sfs = build_squashfs(root, tmp_path / "o.sfs", excludes=plan.excludes, pseudo_file=plan.pseudo_file,
                         epoch=0)
    assert _unsquash_cat(sfs, "etc/fstab").startswith(snapshot.DISABLED + "UUID=1 /")
    assert _unsquash_cat(sfs, "etc/machine-id") == ""
    assert _unsquash_cat(sfs, "etc/hostname") == "livebox\n"
    assert "127.0.1.1\tlivebox" in _unsquash_cat(sfs, "etc/hosts")
    listing = subprocess.run(["unsquashfs", "-lls", str(sfs)], check=True, capture_output=True,
                             text=True).stdout
    assert "ssh_host_rsa_key" not in listing and "sshd_config" in listing
    assert "var/lib/dbus/machine-id" not in listing and "var/lib/dbus" in listing
    assert any(ln.startswith("-r--r--r--") and ln.endswith("/etc/machine-id") for ln in listing.splitlines())
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before    # the host untouched
    kept = snapshot.plan(root, work, keep_identity=True)
    assert kept.cleanup == () and kept.pseudo_file is None


def test_bad_hostname_and_mount_outside(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    with pytest.raises(CommandError, match="bad --hostname"):
        snapshot.plan(root, tmp_path, hostname="no_underscores")
    with pytest.raises(CommandError, match="is not below"):
        snapshot.plan(root, tmp_path, include_mounts=(tmp_path / "elsewhere",))


def _kernel(root: Path, kver: str, modules: bool = True) -> None:
    (root / "boot").mkdir(parents=True, exist_ok=True)
    (root / "boot" / f"vmlinuz-{kver}").write_bytes(b"kernel")
    if modules:
        (root / "lib" / "modules" / kver).mkdir(parents=True)


def test_root_kernel_is_the_newest_with_its_modules(tmp_path: Path) -> None:
    _kernel(tmp_path, "6.1.0-9-amd64")
    _kernel(tmp_path, "6.1.0-13-amd64")
    _kernel(tmp_path, "6.5.0-1-amd64", modules=False)     # removed package: image left, no modules
    assert snapshot.root_kernel(tmp_path) == KernelTree("6.1.0-13-amd64", tmp_path)
    assert snapshot.root_kernel(tmp_path, "6.1.0-9-amd64").version == "6.1.0-9-amd64"
    with pytest.raises(CommandError, match="kernels there: 6.1.0-9-amd64, 6.1.0-13-amd64") as e:
        snapshot.root_kernel(tmp_path, "6.5.0-1-amd64")
    assert "--kernel-root" in (e.value.hint or "") and "--kver" in (e.value.hint or "")


def test_no_kernel_names_the_flags(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="holds no kernel") as e:
        snapshot.root_kernel(tmp_path)
    assert "--kernel-root" in (e.value.hint or "") and "--kver" in (e.value.hint or "")


def test_changed_while_packing(tmp_path: Path) -> None:
    root = _tree(tmp_path / "root")
    old = time.time() - 100
    for p in root.rglob("*"):
        os.utime(p, (old, old), follow_symlinks=False)
    start = time.time_ns()
    time.sleep(0.01)
    (root / "var" / "log" / "syslog").write_text("more\n")
    (root / "tmp" / "x" / "y").write_text("excluded: not reported\n")
    os.chmod(root / "etc" / "hostname", 0o600)
    changed = snapshot.changed_since(root, snapshot.DEFAULT_EXCLUDES, start)
    assert {(c.path, c.why) for c in changed} == {("/var/log/syslog", "modified while packing"),
                                                  ("/etc/hostname", "attributes changed while packing")}


def test_progress_line() -> None:
    drawn: list[str] = []
    p = snapshot.ProgressLine(1000 << 20, drawn.append)
    p.start -= 10          # ten seconds in
    p.feed(b"\r[=====          ] 250/1000  25%")
    assert drawn and "25%" in drawn[-1] and "250.0 MiB of 1000.0 MiB" in drawn[-1]
    assert "25.0 MiB/s" in drawn[-1] and "ETA 0:30" in drawn[-1]
    p.end()
    assert drawn[-1].strip() == ""


@pytest.fixture
def fake_initrd(tmp_path: Path) -> Path:
    p = tmp_path / "initrd.img"
    p.write_bytes(b"070701 not a real initramfs, only its place on the medium matters here\n")
    return p


@pytest.mark.slow
def test_cli_image_of_a_tree_is_its_live_copy(tmp_path: Path, fake_initrd: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from packer import image
    from packer.cli import main
    root = _tree(tmp_path / "root")
    (root / "etc" / "fstab").write_text("UUID=1 / ext4 defaults 0 1\n")
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    _kernel(root, "6.1.0-9-amd64")
    _kernel(root, "6.1.0-13-amd64")
    (root / "boot" / "vmlinuz-6.1.0-13-amd64").write_bytes(b"the root's own newest kernel")
    toml = tmp_path / "image.toml"
    toml.write_text('hostname = "livebox"\nexclude = ["home/*/.cache", "var/log/*.gz"]\n'
                    'menu-entry = ["Safe graphics=nomodeset"]\n')
    (tmp_path / "ex").write_text("# compiled\ndeep/er/dir/*.pyc\n")
    iso = tmp_path / "out" / "live.iso"
    assert main(["image", str(root), "-o", str(iso), "--initrd", str(fake_initrd), "--identity", "snap-1",
                 "--config", str(toml), "--exclude-from", str(tmp_path / "ex"), "--no-secure-boot"]) == 0
    out = capsys.readouterr().out
    assert "live copy: /etc/fstab: 1 host disk or network entries disabled" in out
    assert "live copy: hostname livebox" in out
    assert "kernel=6.1.0-13-amd64" in out and "files," in out and "squashfs" in out
    kernel = image.extract(iso, image.KERNEL_PATH, tmp_path / "k")
    assert kernel.read_bytes() == b"the root's own newest kernel"
    assert "Safe graphics" in image.extract(iso, "isolinux/isolinux.cfg", tmp_path / "cfg").read_text()
    sfs = image.extract(iso, image.SQUASHFS_PATH, tmp_path / "fs.sfs")
    packed = _packed(sfs)
    assert "home/u/keep" in packed and "home/u/.cache" not in packed and "var/log/old.gz" not in packed
    assert "deep/er/dir/m.py" in packed and "deep/er/dir/m.pyc" not in packed
    assert "etc/ssh/ssh_host_rsa_key" not in packed and "tmp/x" not in packed
    assert _unsquash_cat(sfs, "etc/hostname") == "livebox\n"
    assert _unsquash_cat(sfs, "etc/machine-id") == ""
    assert (root / "etc" / "hostname").read_text() == "etc/hostname\n"       # the host's, untouched


def test_cli_image_without_a_kernel_names_the_flags(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from packer.cli import main
    root = _tree(tmp_path / "root")
    assert main(["image", str(root), "-o", str(tmp_path / "x.iso")]) == 1
    err = capsys.readouterr().err
    assert "holds no kernel" in err and "--kernel-root" in err and "--kver" in err
    assert not (tmp_path / "x.iso").exists()
