"""packer.tools.run: one wrapper for every external program the packer runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from packer import tools
from packer.errors import CommandError


def test_a_missing_tool_names_its_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))            # nothing on it
    with pytest.raises(tools.ToolMissing) as e:
        tools.run(["mksquashfs", "root", "out.sqfs"], "build the squashfs of root")
    assert str(e.value) == "mksquashfs is not installed (needed to build the squashfs of root)"
    assert e.value.hint == "apt-get install squashfs-tools"
    assert isinstance(e.value, CommandError)
    with pytest.raises(CommandError, match="frobnicate is not installed") as e:
        tools.run(["frobnicate"], "frobnicate")
    assert "frobnicate" in e.value.hint                   # no package known: say how to find it
    with pytest.raises(CommandError, match=r"/nonexistent/zstd is not installed") as e:
        tools.run(["/nonexistent/zstd", "-d"], "decompress x")
    assert e.value.hint == "apt-get install zstd"


def test_a_failing_tool_gives_status_what_and_the_end_of_stderr() -> None:
    script = "for i in 1 2 3 4 5 6 7; do echo line$i >&2; done; exit 3"
    with pytest.raises(CommandError) as e:
        tools.run(["sh", "-c", script], "run a test script")
    msg = str(e.value)
    assert msg.startswith("sh failed to run a test script (exit status 3):")
    assert "line7" in msg and "line3" in msg and "line2" not in msg   # the last 5 lines only
    assert "sh -c" in e.value.hint                         # how to run it by hand


def test_killed_tool_and_output() -> None:
    with pytest.raises(CommandError, match=r"killed by SIGKILL"):
        tools.run(["sh", "-c", "kill -9 $$"], "be killed")
    assert tools.run(["sh", "-c", "cat; echo err >&2"], "echo", input=b"abc").stdout == b"abc"
    proc = tools.run(["sh", "-c", "cat"], "echo text", input="é", text=True)
    assert proc.stdout == "é"
    assert tools.run(["pwd"], "print the directory", cwd="/tmp", text=True).stdout.strip() == "/tmp"
    assert tools.run(["echo", "dropped"], "echo", capture=False).stdout is None


def test_a_failure_without_stderr_still_says_what_happened() -> None:
    with pytest.raises(CommandError, match=r"^false failed to fail quietly \(exit status 1\)$"):
        tools.run(["false"], "fail quietly")
