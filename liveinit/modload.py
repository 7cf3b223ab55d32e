"""Load kernel modules with their dependencies, the way modprobe would.

`ModuleLoader.load(name)` loads a module asked for by name (cmdline
rd.driver.pre=, the boot code); `load_alias(alias)` resolves a device
modalias or a `fs-TYPE` alias through the module index. Dependencies and
pre-softdeps come first (`index.load_order`). Blacklisted modules are never
loaded by alias, only when named explicitly, as modprobe does. A module that
fails is recorded in `failed` and logged; it never stops the boot."""
from __future__ import annotations

import _thread
import os
import time

from liveinit.costs import DECOMPRESS

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.cmdline import BootConfig
    from liveinit.kmodindex import ModuleIndex
    from liveinit.log import Log
    from liveinit.machine import Machine

EEXIST = 17
SYSMODULE = "/sys/module/"
CPU_MODALIAS = "/sys/devices/system/cpu/modalias"

# What finit_module/init_module fail with when the kernel's module signature check
# refuses a module: EPERM under lockdown (Secure Boot), EKEYREJECTED with
# module.sig_enforce=1, ENOKEY and EBADMSG for an unknown key or a bad signature.
SIGNATURE_ERRNOS = (1, 129, 126, 74)
# Failures that may pass (EINTR, EAGAIN, ENOMEM, EBUSY, ETIMEDOUT): the module is tried again
# when asked again, after RETRY_BACKOFF s doubling, at most MAX_TRIES times in all. Anything
# else (ENOENT, ENOEXEC, EINVAL, signature refusals) would fail the same way again.
TRANSIENT_ERRNOS = (4, 11, 12, 16, 110)
MAX_TRIES = 3
RETRY_BACKOFF = 0.5
EPERM = 1
KERNEL_BLACKLIST = "module_blacklist"   # the kernel's own: load_module refuses these with EPERM
SIGNATURE_REFUSED = ("refused by the kernel's module signature check: unsigned, or signed by a key the "
                     "kernel does not trust (Secure Boot lockdown or module.sig_enforce=1 enforce "
                     "signatures; see docs/SECUREBOOT.md)")


def normalize(name: str) -> str:
    """Module names use '_' and '-' interchangeably; the kernel uses '_'."""
    return name.replace("-", "_")


class ModuleLoader:
    """Loads modules through `m.sys`, remembering why and what failed."""

    def __init__(self, m: Machine, index: ModuleIndex, moddir: str, cfg: BootConfig, log: Log) -> None:
        self.m = m
        self.index = index
        self.moddir = moddir.rstrip("/")
        self.log = log
        self.loaded: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.present: set[str] = set()   # built in or loaded before us
        self.skipped: dict[str, str] = {}  # blacklisted module -> the alias it was asked for
        self.unfit: dict[str, str] = {}    # CPU-gated module this CPU cannot run -> asked for by
        self._cpu: str | None = None
        self.cmdline_options = {normalize(k): v for k, v in cfg.module_options.items()}
        self.cmdline_blacklist = {normalize(n) for n in cfg.blacklist}
        self.blacklist = set(self.cmdline_blacklist)
        self.blacklist.update(index.blacklist)  # modprobe.d of the image
        self._alias_cache: dict[str, list[str]] = {}
        self._pci_cache: dict[tuple[int, int, int, int, int], list[str]] = {}
        # Threads may load at once (coldplug.start): the dicts above are only ever
        # updated by single operations, and a module being inserted by one thread
        # is waited for, not inserted again, by the others (`_inflight`).
        self._inflight: dict[str, _thread.LockType] = {}  # module -> lock held while inserting it
        # Retries (TRANSIENT_ERRNOS): tries so far, when the next may start, and for a module that
        # failed because a dependency did, that dependency (its loading later allows a retry).
        self.tries: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._waits_for: dict[str, str] = {}
        self.now = time.monotonic

    # -- public -------------------------------------------------------------

    def load(self, name: str, reason: str) -> bool:
        """Load a module by name (or, failing that, as an alias); True if it is in the kernel."""
        mod = normalize(name)
        if self._known(mod):
            return self._load_with_deps(mod, reason)
        return bool(self.load_alias(name, reason))

    def load_alias(self, alias: str, reason: str) -> list[str]:
        """Load every module matching `alias`; return those now in the kernel."""
        return self.load_matches(self.match(alias), reason, alias)

    def match(self, alias: str) -> list[str]:
        """The module names the index gives for an alias (memoised)."""
        names = self._alias_cache.get(alias)
        if names is None:
            names = [normalize(n) for n in self.index.match(alias)]
            self._alias_cache[alias] = names
        return names

    def match_pci(self, ids: tuple[int, int, int, int, int]) -> list[str]:
        """The index's modules for PCI ids (vendor, device, subvendor, subdevice, class), memoised."""
        names = self._pci_cache.get(ids)
        if names is None:
            names = [normalize(n) for n in self.index.match_pci(*ids)]
            self._pci_cache[ids] = names
        return names

    def load_matches(self, names: tuple[str, ...] | list[str], reason: str, alias: str = "") -> list[str]:
        """Load modules found by matching a device or alias, minus blacklisted ones."""
        done = []
        for mod in names:
            if mod in self.blacklist:
                if mod not in self.skipped:
                    self.skipped[mod] = alias or reason
                    self.log.info(f"module {mod} blacklisted, not loaded for {alias or reason}")
                continue
            if not self._cpu_fits(mod, alias or reason):
                continue
            if self._load_with_deps(mod, reason):
                done.append(mod)
        return done

    def is_present(self, mod: str) -> bool:
        """Built in, loaded by us, or already in the kernel."""
        mod = normalize(mod)
        if mod in self.loaded or mod in self.present:
            return True
        if self.index.is_builtin(mod) or os.path.isdir(self.m.path(SYSMODULE + mod)):
            # /sys/module/NAME also exists for built-ins with parameters: either way it is there.
            self.present.add(mod)
            return True
        return False

    # -- internals ----------------------------------------------------------

    def _cpu_fits(self, mod: str, wanted_by: str) -> bool:
        """False for a module bound to CPU features this CPU lacks (it would
        only fail with ENODEV, after the kernel has read and linked it)."""
        if mod not in self.index.cpu_gated:
            return True
        if self._cpu is None:
            self._cpu = self.m.read(CPU_MODALIAS) or ""
        if self.index.cpu_fits(mod, self._cpu):
            return True
        if mod not in self.unfit:
            self.unfit[mod] = wanted_by
            self.log.info(f"module {mod} not loaded for {wanted_by}: this CPU lacks the features it needs")
        return False

    def _known(self, mod: str) -> bool:
        return self.index.is_builtin(mod) or self._relpath(mod) is not None

    def _relpath(self, mod: str) -> str | None:
        return self.index.path(mod)

    def _load_with_deps(self, mod: str, reason: str) -> bool:
        if self.is_present(mod):
            return True
        if mod in self.failed and not self._may_retry(mod):
            return False
        # kmod's order: each dependency (with its softdeps), pre-softdeps, the module, post-softdeps.
        order = [normalize(n) for n in self.index.load_order(mod)] or [mod]
        if mod not in order:
            order.append(mod)
        hard = set(self.index.deps(mod))
        ok = False
        after = False
        for name in order:
            if name == mod:
                ok = self._load_one(mod, reason)
                after = True
                if not ok:
                    break  # post-softdeps are pointless without the module
            elif name not in hard and not self._cpu_fits(name, f"softdep of {mod}"):
                continue   # one of several providers (crc32c_intel beside crc32c_generic)
            else:
                why = f"dep of {mod}" if name in hard and not after else f"softdep of {mod}"
                if not self._load_one(name, why) and name in hard:
                    # Its symbols are missing: inserting it would only fail less clearly.
                    self._waits_for[mod] = name
                    return self._fail(mod, f"needs {name}, which failed to load")
        return ok

    def _options(self, mod: str) -> str:
        parts = []
        image = self.index.options(mod)
        if image:
            parts.append(image)
        given = self.cmdline_options.get(mod)
        if given:
            parts.append(given)  # after the image's, so the cmdline wins
        return " ".join(parts)

    def _load_one(self, mod: str, reason: str) -> bool:
        if self.is_present(mod):
            return True
        if mod in self.failed and not self._may_retry(mod):
            return False
        mine = _thread.allocate_lock()
        with mine:
            held = self._inflight.setdefault(mod, mine)   # atomic: one thread wins
            if held is not mine:
                with held:     # another thread is inserting it: wait for its result
                    pass
                return mod in self.loaded or mod in self.present
            try:
                if mod in self.loaded or mod in self.present:
                    return True      # finished by another thread just before we got here
                if mod in self.failed:
                    return False
                return self._insert(mod, reason)
            finally:
                del self._inflight[mod]

    def _insert(self, mod: str, reason: str) -> bool:
        rel = self._relpath(mod)
        if rel is None:
            return self._fail(mod, "not in the image's module index")
        path = rel if rel.startswith("/") else self.moddir + "/" + rel
        params = self._options(mod)
        try:
            if path.endswith(".ko"):
                fd = os.open(self.m.path(path), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    fresh = self.m.sys.finit_module(fd, params)
                finally:
                    os.close(fd)
            else:
                # The image keeps rarely loaded modules compressed (packer/modstore.py) and the
                # kernel cannot decompress them: the ELF bytes go to init_module, unchanged, so
                # an appended signature still verifies.
                begun = self.m.costs.begin(DECOMPRESS)
                try:
                    data = _decompressed(self.m.path(path))
                except Exception as e:  # LZMAError, zlib.error, zstd: a bad file must not stop the boot
                    return self._fail(mod, f"cannot decompress {path}: {e}")
                finally:
                    self.m.costs.end(DECOMPRESS, begun)
                fresh = self.m.sys.init_module(data, params)
            if fresh is False:  # EEXIST: someone loaded it first
                self.present.add(mod)
                return True
        except OSError as e:
            if e.errno == EEXIST:
                self.present.add(mod)
                return True
            if e.errno == EPERM and mod in self._kernel_blacklist():
                return self._fail(mod, f"blacklisted on the kernel command line ({KERNEL_BLACKLIST}="
                                       f"{','.join(sorted(self._kernel_blacklist()))}; {path})")
            if e.errno in TRANSIENT_ERRNOS:
                return self._fail(mod, f"{e.strerror or e} ({path})", transient=True)
            if e.errno in SIGNATURE_ERRNOS:
                return self._fail(mod, f"{SIGNATURE_REFUSED} ({e.strerror or e}; {path})")
            return self._fail(mod, f"{e.strerror or e} ({path})")
        self.loaded[mod] = reason
        self.failed.pop(mod, None)   # an earlier try's
        self.log.info(f"loaded {mod}{' ' + params if params else ''}: {reason}")
        return True

    def _fail(self, mod: str, error: str, transient: bool = False) -> bool:
        if transient:
            tries = self.tries[mod] = self.tries.get(mod, 0) + 1
            if tries < MAX_TRIES:
                self._retry_at[mod] = self.now() + RETRY_BACKOFF * 2 ** (tries - 1)
                error += f"; try {tries} of {MAX_TRIES}, tried again when asked again"
            else:
                error += f"; gave up after {tries} tries"
        self.failed[mod] = error
        self.log.warn(f"module {mod} not loaded: {error}")
        return False

    def _may_retry(self, mod: str) -> bool:
        """True (once per retry: the failure is forgotten) when `mod` failed transiently and its
        back-off is over, or failed because a dependency did that is now in the kernel."""
        dep = self._waits_for.get(mod)
        if dep is not None and self.is_present(dep):
            if self._waits_for.pop(mod, None) is None:
                return False          # another thread took this retry
        else:
            at = self._retry_at.get(mod)
            if dep is not None and at is None:
                at = self._retry_at.get(dep)   # ready when its dependency may be tried again
            if at is None or self.now() < at:
                return False
            if self._retry_at.pop(mod, None) is None and self._waits_for.pop(mod, None) is None:
                return False
        self.failed.pop(mod, None)
        return True

    def _kernel_blacklist(self) -> set[str]:
        """The modules module_blacklist= names on /proc/cmdline (the kernel refuses them)."""
        from liveinit.cmdline import split
        names: set[str] = set()
        for word in split(self.m.read("/proc/cmdline") or ""):
            key, _, value = word.partition("=")
            if key == KERNEL_BLACKLIST:
                names.update(normalize(n) for n in value.split(",") if n)
        return names


def _decompressed(path: str) -> bytes:
    # Imported here: a boot that loads only plain .ko files never pays for it.
    from liveinit.modfile import read_module
    return read_module(path)
