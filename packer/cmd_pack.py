"""`liveinit pack`: build the initramfs (flags and TOML keys: packer/config.py)."""
from __future__ import annotations

import argparse

from packer import config
from packer.progress import Reporter, human

PHASES = ("modules", "python", "elf", "archive", "compress")


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    config.add_arguments(parser)
    # Also accepted after the command name (`liveinit pack -q`); the global
    # -q/-v before it are merged in run().
    parser.add_argument("-q", "--quiet", dest="pack_quiet", action="store_true", help="print errors only")
    parser.add_argument("-v", "--verbose", dest="pack_verbose", action="count", default=0,
                        help="say what each phase does")


def summary(result: object) -> str:
    """The short report printed after a pack."""
    from packer.initramfs import PackResult
    assert isinstance(result, PackResult)
    total = sum(result.times.get(p, 0.0) for p in PHASES)
    parts = ", ".join(f"{k} {human(v)}" for k, v in sorted(result.sizes.items(), key=lambda kv: -kv[1]))
    times = ", ".join(f"{p} {result.times.get(p, 0.0) * 1000:.0f}" for p in PHASES)
    segs = [f"  segment {s.name}: {human(s.compressed)} ({human(s.uncompressed)}, {s.entries} entries, "
            f"{s.codec}, {'cached' if s.cached else f'{s.seconds:.1f} s'})" for s in result.segments]
    if result.microcode:
        segs.insert(0, f"  segment microcode: {human(result.microcode)} (uncompressed)")
    return "\n".join([
        f"{result.output}: {human(result.compressed)} ({human(result.uncompressed)} uncompressed, "
        f"{result.entries} entries)",
        *segs,
        f"  kernel {result.kver}: {len(result.modules)} modules, {result.firmware} firmware files",
        f"  identity {result.identity}",
        f"  content: {parts}",
        f"  time: {total * 1000:.0f} ms ({times} ms)",
        *([f"  key files: {', '.join(result.key_files)} (crypttab): the image is mode 0600"]
          if result.key_files else []),
    ])


def run(args: argparse.Namespace) -> int:
    from packer.initramfs import build
    cfg = config.from_args(args)
    rep = Reporter(quiet=bool(args.quiet or args.pack_quiet), verbose=int(args.verbose + args.pack_verbose))
    result = build(cfg, rep)
    rep.info(summary(result))
    return 0
