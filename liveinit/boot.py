"""PID 1: the boot, top to bottom.

    early     proc, sysfs, devtmpfs, /run; console as stdio; kmsg
    cmdline   the image's baked command line, then /proc/cmdline
    coldplug  early modules from the command line, then every device's driver
              (started in the background: module loads run in parallel)
    findroot  the root device or live medium, taken as soon as it appears
              (keeps listening to uevents); joins coldplug before it ends
    stack     loop + squashfs/erofs + writable layer + union at /sysroot
    handover  move mounts, switch_root / pivot_root, exec init

Each stage is timed (`liveinit: stage <name> <ms> ms`). A failure prints
FAILED/hint, opens the emergency shell and retries the stage when the shell
exits. Nothing escapes `main`: an exiting PID 1 panics the kernel.

The discovery and stacking modules are imported inside their stages so that
a broken module becomes an emergency shell, not a kernel panic."""
from __future__ import annotations

import os
import time

from liveinit import cmdline, emergency
from liveinit.emergency import BootFailure
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.record import Record

# As in syscalls.py, which is not imported here: a broken ctypes/libffi must
# surface as a failed stage and an emergency shell, not as /init failing to import.
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
EARLY_MOUNTS = (
    ("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
    ("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
    ("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755"),
    ("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"),
)
CONSOLE = "/dev/console"
KMSG = "/dev/kmsg"
EBUSY = 16


class GiveUp(Exception):
    """A stage failed `max_attempts` times (a test setting; at boot: unlimited)."""


class NullLoader:
    """Stands in for ModuleLoader when the module index cannot be read."""

    def __init__(self) -> None:
        self.loaded: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    def load(self, name: str, reason: str) -> bool:
        return False

    def load_alias(self, alias: str, reason: str) -> list[str]:
        return []


class NullListener:
    """Stands in for UeventListener when netlink is unavailable: polls by sleeping."""

    def fileno(self) -> int:
        return -1

    def poll(self, timeout: float) -> list[dict[str, str]]:
        time.sleep(min(max(timeout, 0.0), 0.25))
        return []

    def close(self) -> None:
        pass


def mounts(m) -> dict[str, str]:
    """Mount point -> fstype from /proc/mounts (empty before /proc is up)."""
    out: dict[str, str] = {}
    for line in (m.read("/proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) >= 3:
            out[f[1]] = f[2]
    return out


def early_mounts(m, log) -> list[str]:
    """Mount proc, sysfs, devtmpfs, /run unless already there; returns what was mounted."""
    done = []
    for source, target, fstype, flags, data in EARLY_MOUNTS:
        if mounts(m).get(target) == fstype:
            log.debug(f"{target} already mounted ({fstype})")
            continue
        m.makedirs(target)
        try:
            m.sys.mount(source, m.path(target), fstype, flags, data)
            done.append(target)
        except OSError as e:
            if e.errno == EBUSY:
                continue
            if target == "/dev":   # no devtmpfs: nodes are made on demand with mknod
                log.warn(f"cannot mount devtmpfs on /dev ({e}); using the image's /dev")
                continue
            raise BootFailure(f"cannot mount {fstype} on {target}: {e}",
                              f"the kernel lacks {fstype} support, which liveinit needs")
    return done


def union_given(text: str, defaults: str) -> bool:
    """Whether union=/liveinit.union= was written (a plain root is then stacked too)."""
    words = cmdline.split(defaults) + cmdline.split(text)
    return any(w.partition("=")[0] in ("union", "liveinit.union") for w in words)


class Boot:
    """One boot: the stages, their state and their record."""

    def __init__(self, m: Machine, settings: dict, t0: float | None = None,
                 log: Log | None = None) -> None:
        self.m = m
        self.settings = settings
        self.t0 = time.monotonic() if t0 is None else t0
        self.log = log or Log()
        self.record = Record()
        self.defaults = settings.get("cmdline", "") or ""
        self.cfg = cmdline.parse("", self.defaults)   # until /proc/cmdline is read
        self.log.quiet = self.log.quiet or self.cfg.quiet
        self.log.verbose = self.log.verbose or self.cfg.debug
        self.text = ""
        self.max_attempts = int(settings.get("max_attempts", 0) or 0)
        self.loader = None
        self.listener = None
        self.found = None
        self.stacked = None
        self.plan = None
        self.switched = False
        self.switch_done: set[str] = set()   # steps of the switch already taken
        self.broken: set[str] = set()

    def ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000

    # -- the sequence -----------------------------------------------------
    def run(self) -> None:
        """All stages; returns only if exec returned (tests) or raises GiveUp."""
        self.record.set("identity", self.settings.get("identity"))
        self.record.set("kver", self.settings.get("kver"))
        self.stage("early", self.early)
        self.stage("cmdline", self.read_cmdline)
        self.stage("coldplug", self.coldplug)
        self.stage("findroot", self.findroot)
        self.stage("stack", self.stack, resume=self.root_ready)
        self.stage("handover", self.handover, timed_inside=True)

    def stage(self, name: str, fn, resume=None, timed_inside: bool = False) -> None:
        """Run one stage: break point, timing, failure -> shell -> retry."""
        if name in self.cfg.break_at and name not in self.broken:
            self.breakpoint(name)
        attempts = 0
        while True:
            start = time.monotonic()
            try:
                fn()
                break
            except BootFailure as f:
                failure = f
            except BaseException as e:   # noqa: BLE001 - PID 1 must survive anything
                failure = emergency.unexpected(name, e)
                if self.cfg.debug:
                    self.traceback(e)
            attempts += 1
            self.fail(name, failure)
            emergency.shell(self.m, self.log, f"stage {name} failed")
            if resume is not None and resume():
                self.log.info(f"the new root is ready: continuing after stage {name}")
                break
            if self.max_attempts and attempts >= self.max_attempts:
                raise GiveUp(f"stage {name} failed {attempts} times: {failure.message}")
            self.log.info(f"retrying stage {name}")
        if not timed_inside:
            self.timed(name, start)

    def timed(self, name: str, start: float) -> None:
        ms = (time.monotonic() - start) * 1000
        self.log.stage(name, ms)
        self.record.stage(name, ms)

    def breakpoint(self, name: str) -> None:
        self.broken.add(name)
        self.log.info(f"break point before stage {name} (command line)")
        emergency.shell(self.m, self.log, f"break before {name}")

    def fail(self, name: str, failure: BootFailure) -> None:
        emergency.report(self.log, failure)
        if self.cfg.errors:
            self.log.error("hint: the command line had problems: " + "; ".join(self.cfg.errors))
        self.record.error(f"{name}: {failure.message}")

    def traceback(self, e: BaseException) -> None:
        try:
            import traceback
            self.log.error("".join(traceback.format_exception(e)).rstrip())
        except BaseException:
            pass

    # -- stages -----------------------------------------------------------
    def early(self) -> None:
        done = early_mounts(self.m, self.log)
        try:
            self.m.sys.console(self.m.path(CONSOLE))
        except OSError as e:
            self.log.warn(f"cannot open {CONSOLE}: {e}")
        self.log.open_kmsg(self.m.path(KMSG), self.m.path("/proc/sys/kernel"))
        self.record.set("early_mounts", done)

    def read_cmdline(self) -> None:
        self.text = self.m.read("/proc/cmdline") or ""
        self.cfg = cfg = cmdline.parse(self.text, self.defaults, self.settings.get("argv"))
        self.log.quiet = cfg.quiet
        self.log.verbose = cfg.debug
        for err in cfg.errors:
            self.log.warn(f"command line: {err}")
        self.record.set("cmdline", self.text)
        self.record.set("cmdline_defaults", self.defaults)
        self.record.set("config", {
            "root": f"{cfg.root.kind}:{cfg.root.value}" + (" (live)" if cfg.root.live else ""),
            "rootfstype": cfg.rootfstype, "rootflags": cfg.rootflags, "readonly": cfg.readonly,
            "rootdelay": cfg.rootdelay, "init": cfg.init, "image": cfg.live_image,
            "union": cfg.union, "toram": cfg.toram, "findiso": cfg.findiso,
            "persistence": cfg.persistence, "break": cfg.break_at})
        for e in cfg.errors:
            self.record.error(f"cmdline: {e}")
        for early in ("early", "cmdline"):   # these stages ran before the cmdline was known
            if early in cfg.break_at and early not in self.broken:
                self.breakpoint(early)

    def coldplug(self) -> None:
        m, log, cfg, s = self.m, self.log, self.cfg, self.settings
        if self.loader is None:
            kver = s.get("kver") or os.uname().release
            moddir = s.get("moddir") or f"/lib/modules/{kver}"
            index_path = s.get("index") or moddir + "/liveinit.index"
            try:
                from liveinit.kmodindex import ModuleIndex
                from liveinit.modload import ModuleLoader
                index = ModuleIndex.load(m.path(index_path))
                self.loader = ModuleLoader(m, index, moddir, cfg, log)
            except Exception as e:
                log.error(f"cannot read the module index {index_path} ({type(e).__name__}: {e}); "
                          "only built-in drivers are available")
                self.record.error(f"module index: {e}")
                self.loader = NullLoader()
        if self.listener is None:
            try:
                from liveinit.uevent import UeventListener
                self.listener = UeventListener(m)
            except Exception as e:
                log.warn(f"no uevent listener ({e}); polling for devices instead")
                self.listener = NullListener()
        for name in cfg.modules_early:
            self.loader.load(name, "cmdline (rd.driver.pre/liveinit.modules)")
        if not isinstance(self.loader, NullLoader):
            # In the background: findroot takes the root the moment its device
            # appears, while other drivers still load, and joins coldplug before
            # it returns (`coldplug: ... modules loaded in N ms` says how long it took).
            from liveinit import coldplug
            coldplug.start(m, self.loader, log, root=cfg.root)

    def findroot(self) -> None:
        from liveinit.rootfind import find_root
        self.found = f = find_root(self.m, self.cfg, self.settings, self.loader,
                                   self.listener, self.log)
        self.log.info(f"root: {f.device} ({f.fstype}) by {f.how}")
        self.record.set("root", {"device": f.device, "fstype": f.fstype, "how": f.how,
                                 "identity": f.identity, "medium": f.medium, "image": f.image})

    def stack(self) -> None:
        from liveinit import stack
        self.stacked = st = stack.stack(self.m, self.cfg, self.found, self.loader, self.log,
                                        union_given(self.text, self.defaults))
        self.record.set("union", {"method": st.union, "writable": st.writable,
                                  "image_fstype": st.image_fstype, "loop": st.loop,
                                  "toram": st.toram, "failed": list(st.tried)})

    def root_ready(self) -> bool:
        """After a failed stack: did the user mount a usable root at /sysroot by hand?"""
        try:
            from liveinit import handover
            if "/sysroot" not in mounts(self.m):
                return False
            handover.find_init(self.m, self.cfg)
        except Exception:
            return False
        self.record.set("union", {"method": "manual (emergency shell)"})
        return True

    def handover(self) -> None:
        from liveinit import handover
        m, log = self.m, self.log
        start = time.monotonic()
        if self.switched:   # exec failed after we left the initramfs: try again as is
            m.sys.execv(self.plan.init, list(self.plan.argv))
            return
        if self.plan is None or not self.switch_done:
            self.plan = handover.prepare(m, self.cfg)
        plan = self.plan
        self.record.set("init", {"path": plan.init, "argv": plan.argv, "method": plan.method})
        self.record_devices()
        if self.listener is not None:
            self.listener.close()

        def before_exec() -> None:
            # Only now are we inside the new root: a failure before this point
            # must redo the whole switch, one after it only the exec.
            self.switched = True
            self.timed("handover", start)
            ms = self.ms()
            self.record.set("total_ms", round(ms, 1))
            totals = m.profile.totals()
            self.record.set("profile", {k: {"calls": n, "ms": round(t, 1)} for k, (n, t) in totals.items()})
            if totals:
                log.info("profile: " + m.profile.line())
            self.record.set("warnings", list(log.warnings))
            try:
                self.record.write(m)
            except OSError as e:
                log.warn(f"cannot write the boot record: {e}")
            log.starting(plan.init, ms)
            log.close()

        handover.switch(m, plan, log, before_exec, self.switch_done)

    def record_devices(self) -> None:
        loader = self.loader
        if loader is not None:
            if getattr(loader, "background", None) is not None:   # findroot did not join it
                from liveinit import coldplug
                coldplug.finish(loader, self.log)
            self.record.set("modules", dict(loader.loaded))
            self.record.set("modules_failed", dict(loader.failed))
            self.record.set("modules_left", list(getattr(loader, "left", ())))
            self.record.set("modules_unfit", dict(getattr(loader, "unfit", {})))
        try:
            from liveinit import blockdev
            self.record.set("devices", [
                {"name": d.name, "size": d.size, "removable": d.removable}
                for d in blockdev.scan(self.m)])
        except Exception as e:
            self.record.set("devices", f"unavailable: {e}")


def _reap(signum: int, frame: object) -> None:
    """SIGCHLD: PID 1 inherits every orphan; collect them."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except OSError:
            return
        if pid == 0:
            return


def _shell_machine() -> Machine:
    """A Machine for the last-resort shell, even when the syscalls module
    (ctypes, libffi) is what broke: the shell itself needs only fork/exec."""
    try:
        return Machine("/")
    except BaseException:
        return Machine("/", sys=False)


def _forever() -> None:
    """PID 1 must never exit (the kernel would panic): wait for ever."""
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass


def main(settings: dict) -> None:
    """The initramfs's /init calls this. Never returns when running as PID 1.

    settings: "cmdline" (the baked default command line), "identity" (the
    medium identity), "kver", "moddir" ("/lib/modules/KVER"), "index" (path of
    liveinit.index); optional "max_attempts" (tries per stage before giving up,
    0 = for ever, the default)."""
    now = time.monotonic()
    # /init takes "t0" on its first line: interpreter start-up and the
    # runtime's imports then count in the "starting init after" total.
    t0 = float(settings.get("t0") or now)
    log = Log()
    pid1 = os.getpid() == 1
    try:
        if pid1:
            import sys
            # /init's argv: what the kernel passes on to init (see cmdline.parse).
            settings = dict(settings, argv=tuple(sys.argv[1:]))
            import _signal   # not signal: signal.py imports enum (~70 ms under TCG)
            _signal.signal(_signal.SIGCHLD, _reap)
        if now > t0:
            log.stage("imports", (now - t0) * 1000)
        Boot(Machine("/"), settings, t0, log).run()
    except BaseException as e:   # noqa: BLE001
        try:
            failure = e if isinstance(e, BootFailure) else emergency.unexpected("boot", e)
            emergency.report(log, failure)
        except BaseException:
            pass
        while pid1:
            try:
                emergency.shell(_shell_machine(), log, "boot failed")
            except BaseException:
                time.sleep(1)
    if pid1:
        _forever()
