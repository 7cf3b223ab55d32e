"""Console keymaps compiled at pack time from the host's keymap data.

A name is looked up in kbd's keymaps (`loadkeys -b NAME`: console-data's and
kbd's trees, e.g. de, de-latin1-nodeadkeys, fr, us) and, failing that, taken
as an XKB layout[-variant] ("de", "ch-fr") compiled by console-setup's
`ckbcomp` and then `loadkeys -b`. The binary is checked with the runtime's own
parser (liveinit.keymap.parse) and packed as KEYMAP_DIR/NAME.bmap; the first
name is the image's default, baked into its command line as vconsole.keymap=.

Why no loadkeys at boot: the compiled table (2-3 KiB) is loaded by the
runtime with KDSKBENT ioctls (about 1,300 of them), whereas loadkeys would add
its binary and libkeymap and parse the text keymap on every boot."""
from __future__ import annotations

import shutil

from liveinit.contract import KEYMAP_DIR, KEYMAP_SUFFIX
from liveinit.keymap import KeymapError, parse
from packer import tools
from packer.errors import CommandError

DEFAULT_WORD = "vconsole.keymap"


def compile_keymap(name: str) -> bytes:
    """The `loadkeys -b` binary of keymap `name` (kbd name, else XKB layout[-variant])."""
    if not name or "/" in name or name.startswith("-"):
        raise CommandError(f"--keymap {name!r} is not a keymap name", hint="e.g. --keymap de or fr,us")
    loadkeys = shutil.which("loadkeys")
    if loadkeys is None:
        raise CommandError("loadkeys is not installed: cannot compile console keymaps",
                           hint="apt-get install kbd console-data (or console-setup for XKB layouts)")
    try:
        data = tools.run([loadkeys, "-q", "-b", name], f"compile the keymap {name}").stdout
    except CommandError as kbd_error:
        ckbcomp = shutil.which("ckbcomp")
        if ckbcomp is None:
            raise CommandError(f"no console keymap named {name} ({kbd_error.args[0]})",
                               hint="list kbd's keymaps with `find /usr/share/keymaps -name '*.kmap.gz'`; "
                                    "install console-setup to compile XKB layouts too") from None
        layout, _, variant = name.partition("-")
        text = tools.run([ckbcomp, layout, *([variant] if variant else [])],
                         f"compile the XKB layout {name} with ckbcomp").stdout
        data = tools.run([loadkeys, "-q", "-b", "-"], f"compile the keymap {name}", input=text).stdout
    try:
        parse(data)
    except KeymapError as e:
        raise CommandError(f"loadkeys -b {name} gave no binary keymap: {e}") from None
    return data


def keymap_files(names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(image path without the leading '/', binary) for each keymap."""
    return [(f"{KEYMAP_DIR}/{n}{KEYMAP_SUFFIX}".lstrip("/"), compile_keymap(n)) for n in names]


def with_default(cmdline: str, names: tuple[str, ...]) -> str:
    """The baked command line with the first keymap as its default (unless it names one)."""
    if not names or any(w.split("=", 1)[0] in (DEFAULT_WORD, "rd." + DEFAULT_WORD, "keyboard-layouts")
                        for w in cmdline.split()):
        return cmdline
    return f"{DEFAULT_WORD}={names[0]} {cmdline}".strip()
