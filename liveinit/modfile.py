"""Kernel module files: their names and their ELF bytes, shared by the packer
and PID 1's loader.

A module ships as `NAME.ko` or compressed: `.ko.xz` and `.ko.gz` are
decompressed with the standard library (lzma; zlib with the gzip wrapper, so
`gzip` is never imported), `.ko.zst` cannot be (the stdlib has no zstd): it
is reported, with what to do. Stdlib only; the codecs are imported only when
a compressed module is actually read."""
from __future__ import annotations

SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
ZSTD_HINT = ("zstd-compressed modules cannot be loaded at boot (no zstd in the Python stdlib): "
             "pack with uncompressed or xz modules")


class ModuleFileError(ValueError):
    """A module file that cannot be turned into ELF bytes here (the message
    says why; the caller names the file)."""


def uncompressed_name(path: str) -> str:
    """A module path with its compression suffix dropped (`a/b.ko.zst` -> `a/b.ko`)."""
    for suffix in SUFFIXES[1:]:
        if path.endswith(suffix):
            return path[:-len(suffix)] + ".ko"
    return path


def decompress(name: str, data: bytes) -> bytes:
    """The ELF bytes of a module file's content, by the suffix of its `name`."""
    if name.endswith(".ko"):
        return data
    try:
        if name.endswith(".ko.xz"):
            import lzma
            return lzma.decompress(data)
        if name.endswith(".ko.gz"):
            import zlib
            return zlib.decompress(data, 31)  # 31: the gzip wrapper
    except Exception as e:  # lzma.LZMAError, zlib.error: caught without importing both codecs
        raise ModuleFileError(str(e)) from None
    if name.endswith(".ko.zst"):
        raise ModuleFileError(ZSTD_HINT)
    raise ModuleFileError(f"not a kernel module file name (one of {', '.join(SUFFIXES)})")


def read_module(path: str) -> bytes:
    """The ELF bytes of a module file (OSError if unreadable, ModuleFileError if undecodable)."""
    with open(path, "rb") as f:
        return decompress(path, f.read())
