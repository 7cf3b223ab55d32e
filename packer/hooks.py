"""Kernel hooks: pack a kernel's liveinit initramfs when its package is installed.

Three small shell scripts call the installed `liveinit` entry point with the
settings of /etc/liveinit/pack.toml:
- /etc/kernel/postinst.d/liveinit and /etc/kernel/postrm.d/liveinit, which
  Debian's kernel packages run (`run-parts --exit-on-error`, in lexical order,
  with VERSION [IMAGE-PATH] and $DEB_MAINT_PARAMS);
- /etc/kernel/install.d/50-liveinit.install, a kernel-install(8) plugin.

Living with another generator (initramfs-tools, dracut). The hooks decide at
each run which file they own, so the two never write the same file:
- another generator is active (its postinst.d hook is executable and its tool
  installed): liveinit writes /boot/liveinit.img-KVER next to its
  /boot/initrd.img-KVER and never touches the latter;
- no other generator is active: liveinit writes /boot/initrd.img-KVER.
So "which runs last wins" cannot happen: the hook name sorts after dracut and
initramfs-tools and before zz-update-grub / zz-systemd-boot (which must see the
final image), but only one of them writes initrd.img.

`install-hooks --replace` makes liveinit the generator, reversibly, with
dpkg-divert (the administrator's documented tool for setting a package's file
aside, and it holds for packages installed later): the other generators'
kernel hooks are diverted to NAME.liveinit-disabled (a name run-parts
skips), and initramfs-tools' update-initramfs.conf is diverted and replaced
by one with update_initramfs=no, so its dpkg trigger (`update-initramfs -u`,
run when e.g. firmware is installed) no longer rewrites liveinit's images.
Where kernel-install is the entry point (no Debian 85-initrd.install to stage
/boot/initrd.img-KVER), it also sets initrd_generator=liveinit in
/etc/kernel/install.conf, the switch kernel-install and dracut's plugin read.
`--restore` undoes all of that; `--remove` restores, then removes the hooks.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from packer import tools
from packer.errors import CommandError

MARKER = "# liveinit kernel hook"          # second line of every hook: ours, ours to replace
CONFIG = PurePosixPath("/etc/liveinit/pack.toml")
LOG_DIR = PurePosixPath("/var/log/liveinit")
SIDE_IMAGE = "liveinit.img-"               # our image's name while another generator owns initrd.img-
DEBIAN_IMAGE = "initrd.img-"
DISABLED_SUFFIX = ".liveinit-disabled"
INSTALL_CONF = PurePosixPath("/etc/kernel/install.conf")
GENERATOR_LINE = "initrd_generator=liveinit"
DEBIAN_STAGER = PurePosixPath("/usr/lib/kernel/install.d/85-initrd.install")
KERNEL_INSTALL_DIR = PurePosixPath("/usr/lib/kernel/install.d")


@dataclass(frozen=True)
class Generator:
    """Another initramfs generator: its tool and the files --replace sets aside."""

    name: str
    tool: str                                # present on PATH when the generator is installed
    hooks: tuple[PurePosixPath, ...]         # kernel hooks (postinst.d first)
    config: PurePosixPath | None = None      # diverted and replaced by `replacement`
    replacement: str = ""


OTHER_GENERATORS: tuple[Generator, ...] = (
    Generator("initramfs-tools", "update-initramfs",
              (PurePosixPath("/etc/kernel/postinst.d/initramfs-tools"),
               PurePosixPath("/etc/kernel/postrm.d/initramfs-tools")),
              PurePosixPath("/etc/initramfs-tools/update-initramfs.conf"),
              "# Written by `liveinit install-hooks --replace`; the package's own file is set\n"
              "# aside as update-initramfs.conf" + DISABLED_SUFFIX + " (`liveinit install-hooks\n"
              "# --restore` brings it back). liveinit writes /boot/initrd.img-* now, so\n"
              "# update-initramfs -u (its dpkg trigger) must not rewrite them.\n"
              "update_initramfs=no\nbackup_initramfs=no\n"),
    Generator("dracut", "dracut",
              (PurePosixPath("/etc/kernel/postinst.d/dracut"), PurePosixPath("/etc/kernel/postrm.d/dracut"))),
)

DEFAULT_CONFIG = """\
# liveinit: the initramfs packed for each installed kernel by the kernel hooks
# (/etc/kernel/postinst.d/liveinit, `liveinit install-hooks`). Keys are the
# flags of `liveinit pack --help` without "--"; the hooks set kver, moddir and
# output themselves. Every key left out keeps its default: the universal image,
# which boots on other hardware too.
#
# host-only = true     # only this machine's drivers and root device chain (LUKS/LVM/md under it,
#                      # and /etc/crypttab's entries for it: docs/INSTALLED.md)
# with = ["luks", "lvm", "md"]   # the block layers' tools in any case
# crypttab = "/etc/crypttab"     # bake its `initramfs` entries and key files (the image is then 0600)
# keymap = ["de-latin1"]         # console keymaps for typing a passphrase
# modules = ["nvme*"]  # extra modules, names or globs
# cmdline = ""         # default kernel command line baked into /init
# compress = "auto"
"""

# The one pack step of the postinst hook and the plugin: full output in a log,
# the image written beside its target and renamed, so a failure never leaves a
# half image; on failure the kernel, the image and the log are named and the
# status is non-zero, which stops the kernel package's configuration (run-parts
# --exit-on-error), as initramfs-tools' and dracut's hooks do.
_PACK_FUNCTION = f"""\
config={CONFIG}
logdir={LOG_DIR}

liveinit_pack() {{  # VERSION IMAGE
    version="$1" image="$2" log="$logdir/initramfs-$1.log"
    set --
    if [ -r "$config" ]; then set -- --config "$config"; fi
    mkdir -p "$logdir" "$(dirname "$image")"
    echo "liveinit: packing $image for kernel $version" >&2
    if liveinit pack "$@" --kver "$version" --moddir "/lib/modules/$version" \\
            --output "$image.liveinit-new" >"$log" 2>&1; then
        mv -f "$image.liveinit-new" "$image"
        return 0
    else
        status=$?
    fi
    rm -f "$image.liveinit-new"
    echo "liveinit: failed to pack the initramfs of kernel $version into $image (exit status $status):" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
    echo "liveinit: the whole log is $log; fix $config, or see: liveinit pack --kver $version" >&2
    return "$status"
}}
"""


def _generator_function() -> str:
    """Shell: print the name of the other active generator, fail when there is none."""
    checks = "\n".join(f"    if [ -x {g.hooks[0]} ] && command -v {g.tool} >/dev/null 2>&1; then\n"
                       f"        echo {g.name}; return 0\n    fi" for g in OTHER_GENERATORS)
    return f"other_generator() {{\n{checks}\n    return 1\n}}\n"


_DEBIAN_PREAMBLE = """\
version="$1"
bootdir=/boot

command -v liveinit >/dev/null 2>&1 || exit 0     # package removed, its conffiles left
if [ -z "$version" ]; then
    echo "W: liveinit: ${DPKG_MAINTSCRIPT_PACKAGE:-the kernel package} passed no kernel version" >&2
    exit %(no_version)d
fi
[ "${INITRD:-}" = No ] && exit 0                  # a kernel built without initramfs support
[ -n "${2:-}" ] && bootdir=$(dirname "$2")        # the image's own directory
if [ -n "${DEB_MAINT_PARAMS:-}" ]; then           # run once: on %(action)s only
    eval set -- "$DEB_MAINT_PARAMS"
    [ "${1:-}" = %(action)s ] || exit 0
fi
"""


def _script(purpose: str, body: str) -> str:
    return (f"#!/bin/sh\n{MARKER}: {purpose}\n"
            f"# Written by `liveinit install-hooks`; see packer/hooks.py.\nset -e\n\n{body}")


def postinst_hook() -> str:
    return _script(
        "pack the initramfs of a newly installed kernel (Debian /etc/kernel/postinst.d).",
        _DEBIAN_PREAMBLE % {"no_version": 2, "action": "configure"} + "\n" + _generator_function() + "\n"
        + _PACK_FUNCTION + f"""
if other=$(other_generator); then
    echo "liveinit: $other makes $bootdir/{DEBIAN_IMAGE}$version; liveinit's image goes beside it" >&2
    liveinit_pack "$version" "$bootdir/{SIDE_IMAGE}$version"
else
    liveinit_pack "$version" "$bootdir/{DEBIAN_IMAGE}$version"
fi
""")


def postrm_hook() -> str:
    return _script(
        "delete the initramfs of a removed kernel (Debian /etc/kernel/postrm.d).",
        _DEBIAN_PREAMBLE % {"no_version": 0, "action": "remove"} + "\n" + _generator_function() + f"""
rm -f "$bootdir/{SIDE_IMAGE}$version" "{LOG_DIR}/initramfs-$version.log"
if ! other_generator >/dev/null; then
    rm -f "$bootdir/{DEBIAN_IMAGE}$version"       # ours: no other generator made it
fi
""")


def install_plugin() -> str:
    return _script(
        "pack the initrd of a kernel-install(8) entry.",
        """\
# kernel-install add VERSION ENTRY-DIR KERNEL-IMAGE [INITRD...]. Only when
# liveinit is the chosen generator (initrd_generator=liveinit in install.conf),
# and not when initrds were given. On remove kernel-install deletes the entry
# directory, and the initrd in it: nothing to do.
command="$1" version="$2" entry_dir="$3"
[ "$command" = add ] || exit 0
[ "${KERNEL_INSTALL_INITRD_GENERATOR:-}" = liveinit ] || exit 0
[ "$#" -le 4 ] || exit 0
[ "${KERNEL_INSTALL_IMAGE_TYPE:-}" != uki ] || exit 0
if ! command -v liveinit >/dev/null 2>&1; then
    echo "liveinit: initrd_generator=liveinit but liveinit is not installed" >&2
    exit 1
fi

""" + _PACK_FUNCTION + """
liveinit_pack "$version" "${KERNEL_INSTALL_STAGING_AREA:-$entry_dir}/initrd"
""")


@dataclass(frozen=True)
class HookFile:
    """One file install-hooks writes: its absolute path in the target and text."""

    path: PurePosixPath
    text: str
    mode: int = 0o755


def hook_files() -> tuple[HookFile, ...]:
    """The three hooks (the Debian package ships exactly these as conffiles)."""
    return (HookFile(PurePosixPath("/etc/kernel/postinst.d/liveinit"), postinst_hook()),
            HookFile(PurePosixPath("/etc/kernel/postrm.d/liveinit"), postrm_hook()),
            HookFile(PurePosixPath("/etc/kernel/install.d/50-liveinit.install"), install_plugin()))


def config_file() -> HookFile:
    return HookFile(CONFIG, DEFAULT_CONFIG, 0o644)


def _in(root: Path, path: PurePosixPath) -> Path:
    return root / str(path).lstrip("/")


def _ours(p: Path) -> bool:
    try:
        with p.open(errors="replace") as f:
            f.readline()
            return f.readline().startswith(MARKER)
    except OSError:
        return False


def _write(p: Path, text: str, mode: int) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".liveinit-new")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, p)


def install(root: Path) -> list[str]:
    """Write the hooks (and the default config when there is none); return what changed.

    Idempotent. A file at a hook's path that liveinit did not write is refused."""
    done: list[str] = []
    for h in hook_files():
        p = _in(root, h.path)
        if p.is_symlink() or (p.exists() and not _ours(p)):
            raise CommandError(f"{p} exists and was not written by liveinit",
                               hint="move it aside if it is not needed, then run install-hooks again")
        if p.exists() and p.read_text() == h.text and (p.stat().st_mode & 0o777) == h.mode:
            continue
        _write(p, h.text, h.mode)
        done.append(f"installed {h.path}")
    conf = config_file()
    p = _in(root, conf.path)
    if not p.exists() and not p.is_symlink():
        _write(p, conf.text, conf.mode)
        done.append(f"wrote the default {conf.path}")
    return done


def remove(root: Path) -> list[str]:
    """Undo --replace, then delete the hooks liveinit wrote (the config stays)."""
    done = restore(root)
    for h in hook_files():
        p = _in(root, h.path)
        if p.is_symlink() or not p.exists():
            continue
        if not _ours(p):
            raise CommandError(f"{p} was not written by liveinit; left in place",
                               hint="remove it by hand if it should go")
        p.unlink()
        done.append(f"removed {h.path}")
    return done


def installed(root: Path) -> bool:
    return all(_ours(_in(root, h.path)) for h in hook_files())


# --replace / --restore: dpkg-divert for the Debian generators, install.conf for kernel-install.

def _divert_argv(root: Path) -> list[str]:
    return ["dpkg-divert", "--root", str(root.resolve())] if root.resolve() != Path("/") else ["dpkg-divert"]


def diverted_to(root: Path, path: PurePosixPath) -> str | None:
    """Where `path` is diverted to in `root`, None when it is not diverted."""
    out = tools.run([*_divert_argv(root), "--truename", str(path)],
                    f"ask dpkg where {path} is diverted", text=True).stdout.strip()
    return None if out == str(path) else out


def _divert(root: Path, path: PurePosixPath) -> str | None:
    target = f"{path}{DISABLED_SUFFIX}"
    now = diverted_to(root, path)
    if now == target:
        return None
    if now is not None:
        raise CommandError(f"{path} is already diverted to {now}, not by liveinit",
                           hint="see `dpkg-divert --list`; remove that diversion first")
    tools.run([*_divert_argv(root), "--local", "--rename", "--divert", target, "--add", str(path)],
              f"set {path} aside")
    return f"set {path} aside as {target}"


def _undivert(root: Path, path: PurePosixPath) -> str | None:
    if diverted_to(root, path) != f"{path}{DISABLED_SUFFIX}":
        return None
    tools.run([*_divert_argv(root), "--local", "--rename", "--remove", str(path)], f"restore {path}")
    return f"restored {path}"


def _uses_install_conf(root: Path) -> bool:
    """kernel-install is the entry point: its plugins exist, Debian's stager does not."""
    return _in(root, KERNEL_INSTALL_DIR).is_dir() and not _in(root, DEBIAN_STAGER).exists()


def replace(root: Path) -> list[str]:
    """Make liveinit the generator (see the module docstring); idempotent."""
    if not installed(root):
        raise CommandError("the liveinit hooks are not installed: replacing the generator would leave none",
                           hint="run `liveinit install-hooks` first (or together: --replace does both)")
    if shutil.which("dpkg-divert") is None:
        raise CommandError("dpkg-divert is not installed: --replace sets Debian generators aside with it",
                           hint="on Debian it is in dpkg; elsewhere set initrd_generator=liveinit "
                                "in /etc/kernel/install.conf")
    _in(root, PurePosixPath("/var/lib/dpkg")).mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    for g in OTHER_GENERATORS:
        for path in (*g.hooks, *([g.config] if g.config else [])):
            step = _divert(root, path)
            if step:
                done.append(step)
        if g.config:
            p = _in(root, g.config)
            if not p.exists():
                _write(p, g.replacement, 0o644)
                done.append(f"wrote {g.config} ({g.name} disabled)")
    if _uses_install_conf(root):
        done += _set_install_conf(root)
    return done


def restore(root: Path) -> list[str]:
    """Undo replace(): the other generators get their files back; idempotent."""
    done: list[str] = []
    divert_ok = shutil.which("dpkg-divert") is not None
    for g in OTHER_GENERATORS:
        if g.config:
            p = _in(root, g.config)
            if p.is_file() and not p.is_symlink() and p.read_text() == g.replacement:
                p.unlink()
                done.append(f"removed liveinit's {g.config}")
        if divert_ok:
            for path in (*g.hooks, *([g.config] if g.config else [])):
                step = _undivert(root, path)
                if step:
                    done.append(step)
    done += _unset_install_conf(root)
    return done


def other_generator(root: Path) -> str | None:
    """The other active generator in `root`, as the hooks' other_generator() sees it."""
    bins = ("usr/sbin", "usr/bin", "sbin", "bin")
    for g in OTHER_GENERATORS:
        hook = _in(root, g.hooks[0])
        if os.access(hook, os.X_OK) and any(os.access(root / d / g.tool, os.X_OK) for d in bins):
            return g.name
    return None


def replaced(root: Path) -> bool:
    g = OTHER_GENERATORS[0]
    return shutil.which("dpkg-divert") is not None and diverted_to(root, g.hooks[0]) == \
        f"{g.hooks[0]}{DISABLED_SUFFIX}"


def _set_install_conf(root: Path) -> list[str]:
    p = _in(root, INSTALL_CONF)
    lines = p.read_text().splitlines() if p.exists() else []
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() == "initrd_generator":
            if value.strip() == "liveinit":
                return []
            raise CommandError(f"{INSTALL_CONF} already chooses {line.strip()!r}",
                               hint=f"change that line to {GENERATOR_LINE} to make liveinit the generator")
    _write(p, "".join(f"{line}\n" for line in lines) + GENERATOR_LINE + "\n", 0o644)
    return [f"set {GENERATOR_LINE} in {INSTALL_CONF}"]


def _unset_install_conf(root: Path) -> list[str]:
    p = _in(root, INSTALL_CONF)
    if not p.is_file():
        return []
    lines = p.read_text().splitlines()
    if GENERATOR_LINE not in lines:
        return []
    kept = [line for line in lines if line != GENERATOR_LINE]
    if kept:
        _write(p, "".join(f"{line}\n" for line in kept), 0o644)
    else:
        p.unlink()
    return [f"removed {GENERATOR_LINE} from {INSTALL_CONF}"]
