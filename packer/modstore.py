"""How each packed kernel module is stored in the image: plain, for the
kernel to unpack with the rest of its segment, or compressed on its own, for
PID 1 to decompress only if a boot loads it.

The Debian kernel has no CONFIG_MODULE_DECOMPRESS: a `.ko.xz` is read and
decompressed by the runtime (liveinit.modfile) and handed to init_module.
Measured under QEMU TCG (docs/PERFORMANCE-boot.md): the kernel unpacks a
zstd segment at ~10 ms per MiB, the guest's liblzma decompresses a module at
~185 ms per MiB, zlib at ~16-48. So:

- the modules a boot is likely to load (EXPECTED: the disks, filesystems and
  live stack of VMs and PCs, closed over their dependencies; every module of
  a host-only image; every module named with --modules) stay plain `.ko` in
  the compressed `kernel` segment: no decompression at load time;
- every other module (packed just in case: the long tail of HBAs, NICs,
  filesystems) is a `.ko.xz` file of its own (xz: a quarter smaller than
  gzip) in the `modules` segment, which is stored uncompressed: the kernel
  copies those bytes and never decompresses them twice.

Compressed modules are cached under `<cache>/modules/`, keyed by the SHA-256
of their ELF bytes and the codec, and compressed in parallel threads (lzma
releases the GIL): a warm pack reads them back."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from packer.compress import Compression, compress_module, module_suffix

CACHE_DIR = "modules"
CACHE_FORMAT = b"liveinit-module-1"
COMPRESSION = Compression.XZ
# Likely loaded by a boot (closed over dependencies by the caller): storage of
# VMs and PCs, USB sticks, the common root filesystems and the live stack, and
# what coldplug also binds on such machines while it searches (ata_generic
# beside ata_piix; the usual NICs of VMs and PCs): ~2 MiB of ELF that the
# kernel unpacks in ~20 ms, against ~0.2 s to decompress two of them at load.
EXPECTED = ("virtio_blk", "virtio_scsi", "virtio_pci", "ahci", "ata_piix", "ata_generic", "nvme", "sd_mod",
            "sr_mod", "usb_storage", "uas", "xhci_pci", "ehci_pci", "ext4", "vfat", "nls_cp437",
            "nls_iso8859_1", "isofs", "squashfs", "overlay", "loop",
            "e1000", "e1000e", "virtio_net", "r8169")


class ModuleStore:
    """Compressed module files, from a content-keyed cache when it has them."""

    def __init__(self, cache: Path | None, method: Compression = COMPRESSION) -> None:
        self.root = Path(cache) / CACHE_DIR if cache is not None else None
        self.method = method
        self.suffix = module_suffix(method)
        self.hits = 0

    def _path(self, data: bytes) -> Path | None:
        if self.root is None:
            return None
        h = hashlib.sha256(CACHE_FORMAT + self.method.encode() + b"\0")
        h.update(hashlib.sha256(data).digest())
        return self.root / f"{h.hexdigest()}.ko{self.suffix}"

    def _get(self, data: bytes) -> bytes | None:
        p = self._path(data)
        if p is None:
            return None
        try:
            blob = p.read_bytes()
        except OSError:
            return None
        self.hits += 1
        return blob

    def _put(self, data: bytes, blob: bytes) -> None:
        p = self._path(data)
        if p is None:
            return
        with contextlib.suppress(OSError):   # a read-only cache only costs time
            p.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.chmod(tmp, 0o644)
            os.replace(tmp, p)

    def compress_all(self, modules: Iterable[tuple[str, bytes]]) -> dict[str, bytes]:
        """name -> compressed file bytes, for (name, ELF bytes) pairs."""
        todo = list(modules)
        out: dict[str, bytes] = {}
        missing = []
        for name, data in todo:
            blob = self._get(data)
            if blob is None:
                missing.append((name, data))
            else:
                out[name] = blob
        missing.sort(key=lambda t: -len(t[1]))     # biggest first: the longest job starts at once
        with ThreadPoolExecutor(max_workers=max(1, min(len(missing), os.cpu_count() or 1))) as pool:
            for (name, data), blob in zip(missing, pool.map(lambda t: compress_module(t[1], self.method),
                                                            missing), strict=True):
                self._put(data, blob)
                out[name] = blob
        return out
