"""liveinit wraith: exactly the paths written after a time, grouped, and read back."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from packer import wraith
from packer.cli import main
from packer.cmd_wraith import parse_time
from packer.errors import CommandError

OLD = 1_600_000_000.0


def _tree(root: Path) -> float:
    """A tree whose files all carry OLD times; returns a `since` after its creation."""
    for d in ("etc/ssh", "var/log", "home/user/.cache", "usr/bin"):
        (root / d).mkdir(parents=True)
    for f in ("etc/hostname", "etc/ssh/sshd_config", "var/log/syslog", "usr/bin/tool", "home/user/notes"):
        (root / f).write_text("old\n")
    (root / "etc" / "link").symlink_to("hostname")
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (OLD, OLD), follow_symlinks=False)
    time.sleep(0.05)       # ctimes of the tree are now all before `since`
    since = time.time()
    time.sleep(0.05)
    return since


def test_lists_exactly_the_paths_written_after_since(tmp_path: Path) -> None:
    root = tmp_path / "root"
    since = _tree(root)
    (root / "etc" / "hostname").write_text("new name\n")              # content: mtime
    (root / "var" / "log" / "new.log").write_text("x" * 1000)          # new file: its dir changes too
    os.chmod(root / "usr" / "bin" / "tool", 0o700)                     # metadata only: ctime
    (root / "home" / "user" / ".cache" / "c").write_bytes(b"12345")
    (root / "top-file").write_text("at the top\n")
    groups = wraith.wraith(root, since)
    paths = [w.path for g in groups for w in g.paths]
    assert paths == ["/top-file", "/etc/hostname", "/home/user/.cache", "/home/user/.cache/c",
                     "/usr/bin/tool", "/var/log", "/var/log/new.log"]
    by_top = {g.top: g for g in groups}
    assert set(by_top) == {"/", "/etc", "/home", "/usr", "/var"}
    assert [w.path for w in by_top["/"].paths] == ["/top-file"]
    assert by_top["/var"].size == 1000
    assert by_top["/etc"].size == len("new name\n")
    # the top directory itself was not written (its entries were)
    assert "/" not in paths and "/etc" not in paths


def test_nothing_written_lists_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    since = _tree(root)
    assert wraith.wraith(root, since) == ()
    assert wraith.render(()) == ""


def test_render_groups_with_sizes_and_reads_back(tmp_path: Path) -> None:
    root = tmp_path / "root"
    since = _tree(root)
    (root / "etc" / "hostname").write_text("n" * 2048)
    (root / "var" / "log" / "syslog").write_text("s")
    text = wraith.render(wraith.wraith(root, since))
    assert text == ("# /etc: 1 path, 2.0 KiB\n/etc/hostname\n"
                    "# /var: 1 path, 1 B\n/var/log/syslog\n")
    assert wraith.read_list(text) == ("/etc/hostname", "/var/log/syslog")


def test_read_list_skips_comments_and_rejects_relative_paths() -> None:
    assert wraith.read_list("\n# c\n/etc/\n  /var/lib  \n") == ("/etc", "/var/lib")
    with pytest.raises(CommandError, match="line 2: 'etc/x' is not an absolute path"):
        wraith.read_list("/ok\netc/x\n", "the list")
    with pytest.raises(CommandError, match="not an absolute path"):
        wraith.read_list("/etc/../root\n")


def test_boot_time_reads_btime(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  1 2 3\nbtime 1733560000\nprocesses 5\n")
    assert wraith.boot_time(tmp_path) == 1733560000.0
    (tmp_path / "stat").write_text("cpu 1\n")
    with pytest.raises(CommandError, match="no btime"):
        wraith.boot_time(tmp_path)
    assert wraith.boot_time() <= time.time()


def test_parse_time() -> None:
    assert parse_time("1733560000") == 1733560000.0
    assert parse_time("@1733560000.5") == 1733560000.5
    assert parse_time("2026-12-07T08:00:00+00:00") == 1796630400.0
    with pytest.raises(CommandError, match="not a time"):
        parse_time("yesterday")


def test_other_file_systems_are_not_entered(tmp_path: Path) -> None:
    """A mount point below ROOT (here /proc under a bind of /) is skipped, with everything in it."""
    since = time.time() - 5
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "f").write_text("x")
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run the suite as root, as CI does")
    import subprocess
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root / "proc")], check=True)
    try:
        (root / "proc" / "inside").write_text("y")
        paths = [w.path for g in wraith.wraith(root, since) for w in g.paths]
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
    assert paths == ["/etc", "/etc/f"]


def test_cli_writes_the_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    since = _tree(root)
    (root / "etc" / "hostname").write_text("new\n")
    out = tmp_path / "wraith.list"
    assert main(["wraith", str(root), "--since", f"@{since}", "-o", str(out)]) == 0
    assert wraith.read_list(out.read_text()) == ("/etc/hostname",)
    assert "1 paths written in" in capsys.readouterr().err
    assert main(["wraith", str(root), "--since", "garbage"]) == 1
