"""Stage `handover`: find the init in the new root, move /dev /proc /sys /run
into it, and become it: switch_root from an initramfs (rootfs cannot be
pivoted: delete its files, mount the new root over /, chroot), pivot_root from
an old-style initrd (a real block device as /)."""
from __future__ import annotations

import os
import stat

from liveinit.contract import OLD_ROOT, SYSROOT
from liveinit.costs import CLEANUP
from liveinit.emergency import BootFailure
from liveinit.plain import Plain
from liveinit.syscalls import MNT_DETACH, MS_MOVE

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.cmdline import BootConfig
    from liveinit.log import Log
    from liveinit.machine import Machine

INITS = ("/sbin/init", "/etc/init", "/bin/init", "/bin/sh")
MOVED = ("/dev", "/proc", "/sys", "/run")
RAM_ROOTS = ("rootfs", "ramfs", "tmpfs")
INSIDE = "chroot"                     # the last step of `enter`: we are in the new root
MAX_LINKS = 40                        # the kernel's own symlink limit
CONSOLE = "/dev/console"


class Plan(Plain):
    """init: its path inside the new root; argv; method: "switch_root" |
    "pivot_root"; newroot: where the new root is mounted."""

    __slots__ = ("init", "argv", "method", "newroot")
    init: str
    argv: tuple[str, ...]
    method: str
    newroot: str


def resolve_in(root: str, path: str) -> str | None:
    """Real path of `path` inside the tree at `root`, following every symlink
    (absolute targets relative to `root`, never escaping it); None if missing."""
    parts = [p for p in path.split("/") if p]
    cur: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == ".":
            continue
        if name == "..":
            if cur:
                cur.pop()
            continue
        real = root + "/" + "/".join(cur + [name])
        try:
            st = os.lstat(real)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            if hops > MAX_LINKS:
                return None
            target = os.readlink(real)
            if target.startswith("/"):
                cur = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        cur.append(name)
    return root + "/" + "/".join(cur)


def _executable(real: str) -> bool:
    try:
        st = os.stat(real)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def find_init(m: Machine, cfg: BootConfig, newroot: str = SYSROOT) -> str:
    """The init to exec, as a path inside the new root; raises BootFailure."""
    root = m.path(newroot).rstrip("/")
    tried = []
    if cfg.init:
        # init= is a wish, not a hint: another init silently would boot a different system
        # (the kernel, too, panics rather than fall back when its init= fails).
        real = resolve_in(root, cfg.init)
        if real is not None and _executable(real):
            return cfg.init
        why = "is not in the new root" if real is None else "is not an executable file"
        others = [c for c in INITS if (r := resolve_in(root, c)) is not None and _executable(r)]
        raise BootFailure(
            f"init={cfg.init} {why}",
            "fix init= (a path inside the new root), or remove it to start "
            + (f"{others[0]}, the first of {', '.join(INITS)} the root has" if others
               else f"the first of {', '.join(INITS)} (none is in this root)"))
    cands = INITS
    for cand in cands:
        real = resolve_in(root, cand)
        if real is not None and _executable(real):
            return cand
        tried.append(cand if real is None else f"{cand} (not an executable file)")
    top = ", ".join(sorted(os.listdir(root))[:12]) if os.path.isdir(root) else "nothing"
    raise BootFailure(
        f"no init in the new root: tried {', '.join(tried)}",
        f"the new root holds: {top or 'nothing (empty)'}; pass init=/path/to/init, or check "
        "that root= / liveinit.image= name the right filesystem")


def from_rootfs(m: Machine) -> bool:
    """True when / is the initramfs (rootfs/ramfs/tmpfs), False for an initrd block device."""
    fstype = None
    for line in (m.read("/proc/mounts") or "").splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[1] == "/":
            fstype = fields[2]   # the last mount on / is the one in effect
    return fstype is None or fstype in RAM_ROOTS


def prepare(m: Machine, cfg: BootConfig, newroot: str = SYSROOT) -> Plan:
    """Everything that can fail before anything is destroyed."""
    init = find_init(m, cfg, newroot)
    method = "switch_root" if from_rootfs(m) else "pivot_root"
    return Plan(init, (init,) + tuple(cfg.init_args), method, newroot)


def move_mounts(m: Machine, newroot: str, log: Log) -> None:
    """MS_MOVE /dev /proc /sys /run into the new root."""
    for d in MOVED:
        target = m.path(newroot + d)
        if not os.path.isdir(target):
            try:
                os.makedirs(target, 0o755)
            except OSError:
                pass
        try:
            m.sys.mount(m.path(d), target, None, MS_MOVE)
        except OSError as e:
            log.warn(f"cannot move {d} into the new root ({e}); detaching it")
            try:
                m.sys.umount2(m.path(d), MNT_DETACH)
            except OSError:
                pass


def delete_tree(m: Machine, path: str, dev: int, keep: str | None = None) -> int:
    """Delete everything under `path` that is on device `dev`, not crossing
    mount points (mounted directories and all below them are kept) and
    skipping `keep`. Returns the number of entries removed."""
    removed = 0
    try:
        with os.scandir(path) as it:
            entries = list(it)
    except OSError:
        return 0
    for e in entries:
        p = e.path
        if p == keep:
            continue
        try:
            # d_type tells directories apart without a stat per file; only a
            # directory can hold a mount (a bind-mounted file refuses unlink).
            if e.is_dir(follow_symlinks=False):
                if m.sys.st_dev(p) != dev:
                    continue
                removed += delete_tree(m, p, dev, keep)
                os.rmdir(p)
            else:
                os.unlink(p)
            removed += 1
        except OSError:
            pass   # a directory still holding a mount point stays
    return removed


def delete_initramfs(m: Machine, newroot: str) -> int:
    """Free the initramfs's memory: its files are useless once we leave it."""
    begun = m.costs.begin(CLEANUP)
    root = m.path("/")
    removed = delete_tree(m, root, m.sys.st_dev(root), m.path(newroot))
    m.costs.end(CLEANUP, begun)
    return removed


def enter(m: Machine, plan: Plan, log: Log, done: set[str]) -> None:
    """Leave the initramfs/initrd for the new root: move the mounts, delete the
    initramfs (switch_root) or pivot (pivot_root), chroot.

    `done` collects the steps taken, so that a retry after a failure (the
    emergency shell) resumes where the switch stopped: the mounts have moved
    and the root may already be / by then. `INSIDE in done` once in the new root."""
    newroot = plan.newroot

    def step(name: str, fn: Callable[[], object]) -> None:
        if name not in done:
            fn()
            done.add(name)

    step("move", lambda: move_mounts(m, newroot, log))
    if plan.method == "switch_root":
        step("delete", lambda: delete_initramfs(m, newroot))
        step("enter", lambda: (m.sys.chdir(m.path(newroot)),
                               m.sys.mount(m.path(newroot), m.path("/"), None, MS_MOVE)))
        step(INSIDE, lambda: (m.sys.chroot("."), m.sys.chdir("/")))
    else:
        old = m.path(newroot + OLD_ROOT)

        def pivot() -> None:
            os.makedirs(old, exist_ok=True)
            m.sys.chdir(m.path(newroot))
            m.sys.pivot_root(m.path(newroot), old)

        step("enter", pivot)
        step(INSIDE, lambda: (m.sys.chroot("."), m.sys.chdir("/")))
        try:
            m.sys.umount2(OLD_ROOT, MNT_DETACH)
        except OSError as e:
            log.warn(f"cannot unmount the old initrd root at {OLD_ROOT}: {e}")
    try:
        m.sys.console(CONSOLE)
    except OSError:
        pass


def exec_init(m: Machine, plan: Plan) -> None:
    """Become init (from inside the new root). Returns only if exec did (a fake)."""
    try:
        m.sys.execv(plan.init, list(plan.argv))
    except OSError as e:
        raise BootFailure(f"cannot start {plan.init}: {e}",
                          "the init exists but the kernel refused to run it (wrong "
                          "architecture, missing interpreter or libraries); pass init=") from e
