"""PID 1: the boot, top to bottom.

    early     proc, sysfs, devtmpfs, /run; console as stdio; kmsg
    cmdline   the image's baked command line, then /proc/cmdline -> BootConfig
    coldplug  the module loader and the uevent listener; early modules from the
              command line, then every device's driver in the background
              (module loads run in parallel) -> Discovery
    findroot  the root device or live medium, taken as soon as it appears
              (keeps listening to uevents); joins coldplug before it ends -> Found
    stack     loop + squashfs/erofs + writable layer + union at /sysroot -> Stacked
    handover  move mounts, switch_root / pivot_root; the timing, the boot record
              and the log are finished; exec init

Each stage is timed (`liveinit: stage <name> <ms> ms`) by its own work: the
coldplug line comes when its background run ends (joined in findroot), and
the time another stage spends waiting for that run is not counted as its own.
A failure prints FAILED/hint, opens the emergency shell and retries the stage
when the shell exits. Nothing escapes `main`: an exiting PID 1 panics the kernel.

The discovery and stacking modules are imported inside their stages so that
a broken module becomes an emergency shell, not a kernel panic."""
from __future__ import annotations

import os
import time

from liveinit import cmdline, emergency
from liveinit.contract import HINT_LINE, SYSROOT, Settings, index_for, moddir_for
from liveinit.emergency import BootFailure, MediumLost, ShellPolicy
from liveinit.log import Log
from liveinit.machine import Machine
from liveinit.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable
    from typing import TypeVar

    from liveinit.cmdline import BootConfig
    from liveinit.discovery import Discovery, Listener
    from liveinit.handover import Plan
    from liveinit.modload import ModuleLoader
    from liveinit.rootfind import Found
    from liveinit.stack import Stacked

    T = TypeVar("T")

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


def mounts(m: Machine) -> dict[str, str]:
    """Mount point -> fstype from /proc/mounts (empty before /proc is up)."""
    out: dict[str, str] = {}
    for line in (m.read("/proc/mounts") or "").splitlines():
        f = line.split()
        if len(f) >= 3:
            out[f[1]] = f[2]
    return out


def early_mounts(m: Machine, log: Log) -> list[str]:
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
                              f"the kernel lacks {fstype} support, which liveinit needs") from e
    return done


class Boot:
    """One boot: the stages in order, each taking its inputs and returning its outputs."""

    def __init__(self, m: Machine, settings: Settings, log: Log | None = None) -> None:
        self.m = m
        self.settings = settings
        self.t0 = time.monotonic() if settings.t0 is None else settings.t0
        self.log = log or Log()
        self.record = Record()
        # The command line in effect (break points, debug): the image's until stage cmdline.
        self.cfg = cmdline.parse("", settings.cmdline)
        self.policy = self.shell_policy(self.cfg)
        self.log.quiet = self.log.quiet or self.cfg.quiet
        self.log.verbose = self.log.verbose or self.cfg.debug
        self.broken: set[str] = set()           # break points already taken
        self.begun = (0.0, 0.0)                  # the running stage: its start, `waited()` then
        self.discovery: Discovery | None = None  # from stage coldplug on (its retries keep it)
        self.plan: Plan | None = None            # the hand-over's plan and the steps taken:
        self.steps: set[str] = set()             # a retry resumes the switch where it stopped
        self.lost_since: float | None = None     # when the medium first went away after it was found

    def ms(self) -> float:
        return (time.monotonic() - self.t0) * 1000

    # -- the sequence -----------------------------------------------------
    def run(self) -> None:
        """All stages; returns only if exec returned (tests) or raises GiveUp."""
        self.record.set("identity", self.settings.identity)
        self.record.set("kver", self.settings.kver)
        self.stage("early", self.early)
        cfg = self.stage("cmdline", self.read_cmdline)
        # Its stage line comes when the background run ends (Discovery.finish).
        discovery = self.stage("coldplug", lambda: self.coldplug(cfg), timed=False)
        found = self.stage("findroot", lambda: self.findroot(cfg, discovery))
        self.stage("stack", lambda: self.stack(cfg, found, discovery), resume=lambda: self.root_ready(cfg))
        # Timed inside: its line is printed before exec, which does not return.
        self.stage("handover", lambda: self.handover(cfg, discovery), timed=False)

    def stage(self, name: str, fn: Callable[[], T], resume: Callable[[], T | None] | None = None,
              timed: bool = True) -> T:
        """Run one stage: break point, timing, failure -> shell -> retry; returns its output.

        resume: after a failure and the shell, the stage's output if the user
        made it by hand (then the stage is not retried), else None."""
        if name in self.cfg.break_at and name not in self.broken:
            self.breakpoint(name)
        attempts = 0
        while True:
            self.begun = (time.monotonic(), self.waited())
            try:
                out = fn()
                break
            except BootFailure as f:
                failure = f
            except BaseException as e:   # noqa: BLE001 - PID 1 must survive anything
                failure = emergency.unexpected(name, e)
                if self.cfg.debug:
                    self.traceback(e)
            attempts += 1
            self.fail(name, failure)
            emergency.shell(self.m, self.log, f"stage {name} failed", self.policy)
            made = resume() if resume is not None else None
            if made is not None:
                self.log.info(f"the new root is ready: continuing after stage {name}")
                out = made
                break
            if self.max_attempts and attempts >= self.max_attempts:
                raise GiveUp(f"stage {name} failed {attempts} times: {failure.message}")
            self.log.info(f"retrying stage {name}")
        if timed:
            self.timed(name)
        return out

    @property
    def max_attempts(self) -> int:
        return self.settings.max_attempts

    def waited(self) -> float:
        """Seconds spent so far waiting for the background coldplug (its time, not the waiter's)."""
        return self.discovery.waited if self.discovery is not None else 0.0

    def timed(self, name: str) -> None:
        """Print and record the running stage's own time: since it began, less
        its waits for coldplug's background run."""
        start, waited = self.begun
        ms = (time.monotonic() - start - (self.waited() - waited)) * 1000
        self.log.stage(name, ms)
        self.record.stage(name, ms)

    def shell_policy(self, cfg: BootConfig) -> ShellPolicy:
        """Who may have the emergency shell: rd.shell=, rd.emergency=, the baked password."""
        return ShellPolicy(cfg.shell, cfg.emergency, self.settings.shell_password_hash)

    def breakpoint(self, name: str) -> None:
        self.broken.add(name)
        if not self.policy.shell:
            self.log.warn(f"break point before stage {name} ignored: the shell is disabled (rd.shell=0)")
            return
        if self.discovery is not None:
            # The shell is for looking at this machine's devices: let every
            # driver load first, as udev settles before dracut's break points.
            from liveinit.discovery import COLDPLUG_JOIN
            self.discovery.finish(COLDPLUG_JOIN)
        self.log.info(f"break point before stage {name} (command line)")
        emergency.shell(self.m, self.log, f"break before {name}", self.policy)

    def fail(self, name: str, failure: BootFailure) -> None:
        emergency.report(self.log, failure)
        if self.cfg.errors:
            problems = "; ".join(self.cfg.errors)
            self.log.error(HINT_LINE.format(hint="the command line had problems: " + problems))
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

    def read_cmdline(self) -> BootConfig:
        text = self.m.read("/proc/cmdline") or ""
        defaults = self.settings.cmdline
        self.cfg = cfg = cmdline.parse(text, defaults, self.settings.argv)
        self.policy = self.shell_policy(cfg)
        self.log.quiet = cfg.quiet
        self.log.verbose = cfg.debug
        for err in cfg.errors:
            self.log.warn(f"command line: {err}")
        if cfg.ignored:
            self.log.warn("command line: ignored (liveinit does not implement them): "
                          + ", ".join(cfg.ignored))
            self.record.set("cmdline_ignored", list(cfg.ignored))
        self.record.set("cmdline", text)
        self.record.set("cmdline_defaults", defaults)
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
        return cfg

    def coldplug(self, cfg: BootConfig) -> Discovery:
        from liveinit.discovery import Discovery, NullLoader
        if self.discovery is None:   # a retry keeps the loader and the listener
            loader = self.module_loader(cfg)
            self.discovery = Discovery(self.m, loader or NullLoader(), self.uevent_listener(), self.log,
                                       walk=loader is not None)
        discovery = self.discovery
        for name in cfg.modules_early:
            discovery.loader.load(name, "cmdline (rd.driver.pre/liveinit.modules)")
        # In the background: findroot takes the root the moment its device
        # appears, while other drivers still load, and joins coldplug before it returns.
        discovery.start(cfg, since=self.begun[0])
        return discovery

    def module_loader(self, cfg: BootConfig) -> ModuleLoader | None:
        """The loader over the image's module index; None (built-in drivers only) without one."""
        s = self.settings
        kver = s.kver or os.uname().release
        moddir = s.moddir or moddir_for(kver)
        index_path = s.index or index_for(kver)
        try:
            from liveinit.kmodindex import ModuleIndex
            from liveinit.modload import ModuleLoader
            return ModuleLoader(self.m, ModuleIndex.load(self.m.path(index_path)), moddir, cfg, self.log)
        except Exception as e:
            self.log.error(f"cannot read the module index {index_path} ({type(e).__name__}: {e}); "
                           "only built-in drivers are available")
            self.record.error(f"module index: {e}")
            return None

    def uevent_listener(self) -> Listener:
        from liveinit.discovery import NullListener
        try:
            from liveinit.uevent import UeventListener
            return UeventListener(self.m)
        except Exception as e:
            self.log.warn(f"no uevent listener ({e}); polling for devices instead")
            return NullListener()

    def findroot(self, cfg: BootConfig, discovery: Discovery) -> Found:
        """The root search; with liveinit.check the medium's checksums are verified
        (a medium that goes away meanwhile is searched for again, up to the delay)."""
        from liveinit.rootfind import find_root
        f = find_root(self.m, cfg, self.settings.identity, discovery, self.log)
        if cfg.check and f.medium is not None:
            from liveinit import verify
            while True:
                try:
                    verify.check_medium(self.m, f, self.log)
                    break
                except MediumLost as lost:
                    f = self.search_again(cfg, discovery, f, lost)
        self.log.info(f"root: {f.device} ({f.fstype}) by {f.how}")
        self.record.set("root", {"device": f.device, "fstype": f.fstype, "how": f.how,
                                 "identity": f.identity, "medium": f.medium, "image": f.image,
                                 "layers": list(f.layers)})
        return f

    def search_again(self, cfg: BootConfig, discovery: Discovery, found: Found, lost: MediumLost) -> Found:
        """The medium went away after it was found: say so and search again
        (the user may re-insert it) for up to rootdelay= seconds."""
        from liveinit import medium
        from liveinit.rootfind import find_root
        self.log.error(lost.message)
        self.record.error(f"medium lost: {lost.message}")
        medium.forget(self.m, found, self.log)
        now = time.monotonic()
        if self.lost_since is None:
            self.lost_since = now
        elif now - self.lost_since > cfg.rootdelay:   # found again and lost again: a failing medium
            raise BootFailure(lost.message + f" (it kept failing for {cfg.rootdelay:g} s)",
                              "the medium is failing: write it again, or try another drive or port")
        self.log.info(f"searching for the live medium again for up to {cfg.rootdelay:g} s "
                      "(re-insert it, or set rootdelay=)")
        return find_root(self.m, cfg, self.settings.identity, discovery, self.log)

    def stack(self, cfg: BootConfig, found: Found, discovery: Discovery) -> Stacked:
        from liveinit import stack
        while True:
            try:
                st = stack.stack(self.m, cfg, found, discovery, self.log)
                break
            except MediumLost as lost:
                found = self.search_again(cfg, discovery, found, lost)
                self.record.set("root", {"device": found.device, "fstype": found.fstype, "how": found.how,
                                         "medium": found.medium, "image": found.image, "again": True})
        self.record.set("union", {"method": st.union, "writable": st.writable,
                                  "image_fstype": st.image_fstype, "loop": st.loop,
                                  "toram": st.toram, "failed": list(st.tried)})
        return st

    def root_ready(self, cfg: BootConfig) -> Stacked | None:
        """After a failed stack: the root the user mounted at /sysroot by hand, if usable."""
        try:
            from liveinit import handover
            from liveinit.stack import Stacked
            if SYSROOT not in mounts(self.m):
                return None
            handover.find_init(self.m, cfg)
        except Exception:
            return None
        method = "manual (emergency shell)"
        self.record.set("union", {"method": method})
        return Stacked(SYSROOT, method, mounts(self.m)[SYSROOT], None, "unknown", False, ())

    def handover(self, cfg: BootConfig, discovery: Discovery) -> None:
        """Into the new root; the boot's last words (timing, record, log); exec init."""
        from liveinit import handover
        m = self.m
        if not self.steps:   # nothing of the switch done yet: (re)plan it
            self.plan = handover.prepare(m, cfg)
        plan = self.plan
        assert plan is not None
        if handover.INSIDE not in self.steps:   # else only the exec failed: try it again
            discovery.finish()   # coldplug's loads belong to this boot (findroot normally joined it)
            discovery.close()
            self.record.set("init", {"path": plan.init, "argv": plan.argv, "method": plan.method})
            self.record_devices(discovery)
            handover.enter(m, plan, self.log, self.steps)
            self.last_words(plan, discovery)
        handover.exec_init(m, plan)

    def record_devices(self, discovery: Discovery) -> None:
        loader = discovery.loader
        self.record.set("modules", dict(loader.loaded))
        self.record.set("modules_failed", dict(loader.failed))
        self.record.set("modules_left", list(discovery.left))
        self.record.set("modules_unfit", dict(loader.unfit))
        try:
            from liveinit import blockdev
            self.record.set("devices", [
                {"name": d.name, "size": d.size, "removable": d.removable}
                for d in blockdev.scan(self.m)])
        except Exception as e:
            self.record.set("devices", f"unavailable: {e}")

    def last_words(self, plan: Plan, discovery: Discovery) -> None:
        """Inside the new root, before exec: the hand-over's time, the costs line,
        the boot record, the starting line; the log is closed."""
        m, log = self.m, self.log
        self.timed("handover")
        if discovery.ms is not None:
            self.record.stage("coldplug", discovery.ms)
        ms = self.ms()
        self.record.set("total_ms", round(ms, 1))
        totals = m.costs.totals()
        self.record.set("costs", {k: {"calls": n, "ms": round(t, 1)} for k, (n, t) in totals.items()})
        if totals:
            log.costs(m.costs.summary())
        self.record.set("warnings", list(log.warnings))
        try:
            self.record.write(m)
        except OSError as e:
            log.warn(f"cannot write the boot record: {e}")
        log.starting(plan.init, ms)
        log.close()


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


def _proc_cmdline() -> str:
    try:
        with open("/proc/cmdline") as f:
            return f.read()
    except OSError:
        return ""


def _forever() -> None:
    """PID 1 must never exit (the kernel would panic): wait for ever."""
    while True:
        try:
            time.sleep(3600)
        except BaseException:
            pass


def main(settings: Settings | dict[str, object]) -> None:
    """The initramfs's /init calls this (`main(Settings(t0=T0, **SETTINGS))`).
    Never returns when running as PID 1. A dict is taken as Settings' fields
    (an /init packed before the record)."""
    now = time.monotonic()
    log = Log()
    pid1 = os.getpid() == 1
    try:
        if isinstance(settings, dict):
            settings = Settings(**settings)
        # /init takes t0 on its first line: interpreter start-up and the
        # runtime's imports then count in the "starting init after" total.
        t0 = now if settings.t0 is None else settings.t0
        settings = settings.replace(t0=t0)
        if pid1:
            import sys
            # /init's argv: what the kernel passes on to init (see cmdline.parse).
            settings = settings.replace(argv=tuple(sys.argv[1:]))
            import _signal  # not signal: signal.py imports enum (~70 ms under TCG)
            _signal.signal(_signal.SIGCHLD, _reap)
        if now > t0:
            log.stage("imports", (now - t0) * 1000)
        Boot(Machine("/"), settings, log).run()
    except BaseException as e:   # noqa: BLE001
        try:
            failure = e if isinstance(e, BootFailure) else emergency.unexpected("boot", e)
            emergency.report(log, failure)
        except BaseException:
            pass
        policy = emergency.OPEN
        try:
            if isinstance(settings, Settings):   # the baked lock holds even when the boot broke
                cfg = cmdline.parse(_proc_cmdline(), settings.cmdline)
                policy = ShellPolicy(cfg.shell, cfg.emergency, settings.shell_password_hash)
        except BaseException:
            policy = ShellPolicy(False, "", "")   # fail closed: the lock's state is unknown
        while pid1:
            try:
                emergency.shell(_shell_machine(), log, "boot failed", policy)
            except BaseException:
                time.sleep(1)
    if pid1:
        _forever()
