"""An unpacked kernel: its image and its module tree (what pack and image take).

The lab's test kernel (qemu.testkernel) and a distribution's kernel package
unpacked by hand both have this shape: ROOT/boot/vmlinuz-KVER and
ROOT/lib/modules/KVER."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel package: the kernel image and its module tree."""

    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def moddir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"
