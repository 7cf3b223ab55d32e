"""The host's static busybox: packed by `liveinit pack --busybox` for a real
emergency shell, and the whole userland of the lab's demo root."""
from __future__ import annotations

from pathlib import Path

from packer import tools

BUSYBOX = Path("/bin/busybox")   # busybox-static on Debian


def applets(busybox: Path = BUSYBOX) -> list[str]:
    """Paths (relative, e.g. 'bin/ls') of every applet the busybox binary offers."""
    out = tools.run([str(busybox), "--list-full"], "list its applets", text=True).stdout
    return [line.strip().lstrip("/") for line in out.splitlines() if line.strip()]
