"""Block layers under the root: LUKS volumes are opened, LVM volume groups
activated and md arrays assembled as their devices appear.

The root search (rootfind) hands every device it scans to `Layers.visit`
with its identity; a LUKS container, an LVM physical volume or an md member
is acted on at once, and the device that results (/dev/dm-N, /dev/mdN)
shows up in the same search's next scan, where it may hold the root or
another layer (LVM on LUKS). The tools are the image's own: cryptsetup,
lvm and mdadm (packed by `liveinit pack --with luks,lvm,md`, packer/blocktools.py),
run with libdevmapper making its /dev/mapper nodes itself (no udev here).

A LUKS volume the image's crypttab names (contract.CRYPTTAB, baked by `pack`
from the root's /etc/crypttab, packer/crypttab.py) is opened with its name and
options, and with its key file when it has one. Otherwise, or when the key
does not open it, a passphrase is asked on the consoles (liveinit/passphrase.py),
three tries, and given to cryptsetup on a pipe (--key-file=-), then wiped. An md array
missing members is started degraded MD_DEGRADED_AFTER seconds after its
first member appeared, with a warning. What was opened, and how long it
took, goes to the boot record (`opened`); what was tried and failed to the
failure message (`tried`)."""
from __future__ import annotations

import os
import time

from liveinit import command, crypttab, layerprobe
from liveinit.cmdline import luks_uuid
from liveinit.contract import CRYPTTAB

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from collections.abc import Callable

    from liveinit.blockdev import BlockDevice
    from liveinit.cmdline import BootConfig
    from liveinit.discovery import Loader
    from liveinit.log import Log
    from liveinit.machine import Machine
    from liveinit.passphrase import Prompt

    Runner = Callable[..., command.Result]

LUKS, LVM, MD = "crypto_LUKS", "LVM2_member", "linux_raid_member"
TYPES = (LUKS, LVM, MD)
TOOLS = {LUKS: "cryptsetup", LVM: "lvm", MD: "mdadm"}
PACK_NAME = {LUKS: "luks", LVM: "lvm", MD: "md"}     # `liveinit pack --with NAME`
TRIES = 3
MD_DEGRADED_AFTER = 10.0    # seconds after an array's first member: start it without the rest
# Modules the kernel would ask modprobe for (no helper answers in the initramfs):
# device-mapper and the ciphers and hashes of LUKS' defaults (aes-xts-plain64, sha256,
# the AF_ALG socket cryptsetup decrypts keyslots through); md's personalities.
LUKS_MODULES = ("dm_mod", "dm_crypt", "crypto-xts", "crypto-aes", "crypto-sha256", "crypto-cbc",
                "crypto-essiv", "algif_skcipher", "algif_hash")
LVM_MODULES = ("dm_mod", "dm_snapshot", "dm_mirror")
MD_MODULES = {0: ("raid0",), 1: ("raid1",), 4: ("raid456",), 5: ("raid456",), 6: ("raid456",),
              10: ("raid10",), -1: ("linear",)}
# lvm without udev: libdevmapper makes the nodes and no devices file filters the scan.
LVM_CONFIG = ("activation{udev_sync=0 udev_rules=0 monitoring=0} "
              "devices{obtain_device_list_from_udev=0 use_devicesfile=0}")
WRONG_PASSPHRASE = 2        # cryptsetup's exit status for "No key available with this passphrase"
LUKS_OPTIONS = {"discard": "--allow-discards", "allow-discards": "--allow-discards",
                "readonly": "--readonly", "read-only": "--readonly",
                "no-read-workqueue": "--perf-no_read_workqueue",
                "no-write-workqueue": "--perf-no_write_workqueue",
                "same-cpu-crypt": "--perf-same_cpu_crypt",
                "submit-from-crypt-cpus": "--perf-submit_from_crypt_cpus"}
KEYFILE_OPTIONS = {"keyfile-offset": "--keyfile-offset", "keyfile-size": "--keyfile-size"}


def dm_name(m: Machine, name: str) -> str | None:
    """The device-mapper name of block device `name` (dm-N), or None."""
    return m.read(f"/sys/class/block/{name}/dm/name")


def aliases(m: Machine, name: str) -> set[str]:
    """Other /dev paths of a dm or md device: /dev/mapper/NAME, /dev/VG/LV, /dev/md/NAME."""
    out: set[str] = set()
    dm = dm_name(m, name)
    if dm:
        out.add("/dev/mapper/" + dm)
        if (m.read(f"/sys/class/block/{name}/dm/uuid") or "").startswith("LVM-"):
            vg, lv = _split_lvm(dm)
            if vg and lv:
                out.add(f"/dev/{vg}/{lv}")
    if name.startswith("md"):
        for link in m.listdir("/dev/md"):
            if os.path.basename(m.readlink("/dev/md/" + link) or "") == name:
                out.add("/dev/md/" + link)
    return out


def _split_lvm(dm: str) -> tuple[str, str]:
    """"vg--a-root" -> ("vg-a", "root"): lvm doubles the dashes inside VG and LV names."""
    i = 0
    while i < len(dm):
        if dm[i] == "-":
            if dm[i + 1:i + 2] == "-":
                i += 2
                continue
            return dm[:i].replace("--", "-"), dm[i + 1:].replace("--", "-")
        i += 1
    return "", ""


def luks_options(text: str) -> tuple[list[str], int, float | None, list[str]]:
    """crypttab-style options -> (cryptsetup flags, tries, prompt timeout s, ignored words)."""
    flags: list[str] = []
    tries, timeout = TRIES, None
    ignored: list[str] = []
    for word in text.split(","):
        key, _, value = word.strip().partition("=")
        if not key:
            continue
        if key in LUKS_OPTIONS:
            if LUKS_OPTIONS[key] not in flags:
                flags.append(LUKS_OPTIONS[key])
        elif key == "tries" and value.isdigit():
            tries = int(value) or TRIES
        elif key == "timeout" and value.rstrip("s").isdigit():
            timeout = float(value.rstrip("s")) or None
        elif key in crypttab.QUIET or (key in KEYFILE_OPTIONS and value.isdigit()):
            pass        # for the packer or the installed system; key file flags: keyfile_flags
        else:
            ignored.append(word)
    return flags, tries, timeout, ignored


def keyfile_flags(text: str) -> list[str]:
    """crypttab-style options -> the cryptsetup flags that apply to a key file only."""
    out = []
    for word in text.split(","):
        key, _, value = word.strip().partition("=")
        if key in KEYFILE_OPTIONS and value.isdigit():
            out.append(f"{KEYFILE_OPTIONS[key]}={value}")
    return out


class Layers:
    """The layers of one boot. `for_root`: the root search may open any LUKS volume
    (a device root); else (a live search) only the volumes rd.luks.uuid= names."""

    def __init__(self, m: Machine, cfg: BootConfig, loader: Loader, log: Log, prompt: Prompt | None,
                 for_root: bool = True, run: Runner | None = None) -> None:
        self.m = m
        self.cfg = cfg
        self.loader = loader
        self.log = log
        self.prompt = prompt
        self.for_root = for_root
        self.run = run or command.run
        self.tools = {kind: command.find(m.root, tool) for kind, tool in TOOLS.items()}
        self.seen: set[tuple[str, int, int]] = set()
        self.opened: list[dict[str, object]] = []   # the boot record's "layers"
        self.tried: list[str] = []                   # for the failure message
        self.refused: str | None = None              # a LUKS volume whose passphrase was never given
        self.asked = 0.0                             # seconds spent waiting at a prompt
        self.md_waiting: dict[str, float] = {}       # array UUID -> when its first member appeared
        self.md_started: set[str] = set()
        self.crypttab = self._crypttab()

    def _crypttab(self) -> list[crypttab.Entry]:
        text = self.m.read(CRYPTTAB)
        if not text:
            return []
        entries, errors = crypttab.parse(text)
        for e in errors:
            self.log.warn(f"luks: {CRYPTTAB}: {e}")
        return entries

    # -- the root search's hook --------------------------------------------------
    def visit(self, devs: list[BlockDevice], identify: Callable[[BlockDevice], dict[str, str]]) -> bool:
        """Act on the layers among `devs` not seen before (and start degraded arrays whose
        time is up); True when a new device may have appeared."""
        changed = False
        for d in devs:
            key = (d.name, d.major, d.minor)
            if key in self.seen:
                continue
            info = identify(d)
            if not info:
                continue    # not readable yet: looked at again on the next scan
            self.seen.add(key)
            kind = info.get("TYPE", "")
            if kind in TYPES:
                changed = self.offer("/dev/" + d.name, info) or changed
        return self.tick() or changed

    def offer(self, node: str, info: dict[str, str]) -> bool:
        """Open, activate or assemble what `node` holds; True when something was done."""
        kind = info.get("TYPE", "")
        what = _describe(node, info)
        if not getattr(self.cfg, PACK_NAME[kind]):
            self.tried.append(f"{what}: skipped (rd.{PACK_NAME[kind]}=0)")
            return False
        if self.tools[kind] is None:
            self.tried.append(f"{what}: {TOOLS[kind]} is not in the image "
                              f"(pack with `liveinit pack --with {PACK_NAME[kind]}`)")
            return False
        if kind == LUKS:
            return self._luks_root(node, info, what)
        if kind == LVM:
            return self._lvm(node, what)
        return self._md(node, info, what)

    def tick(self) -> bool:
        """Start the md arrays that have waited MD_DEGRADED_AFTER s for their missing members."""
        now = time.monotonic()
        late = [u for u, since in self.md_waiting.items() if now - since >= MD_DEGRADED_AFTER]
        if not late:
            return False
        for u in late:
            del self.md_waiting[u]
        mdadm = self.tools[MD]
        assert mdadm is not None
        begun = time.monotonic()
        r = self.run([mdadm, "--incremental", "--run", "--scan"])
        for u in late:
            self.log.warn(f"md: array {u} is incomplete after {MD_DEGRADED_AFTER:g} s: "
                          f"started degraded ({r.out or 'mdadm said nothing'})")
            self.opened.append({"kind": "md", "array": u, "degraded": True,
                                "ms": round((time.monotonic() - begun) * 1000, 1)})
            self.tried.append(f"md array {u}: started degraded after {MD_DEGRADED_AFTER:g} s")
        return True

    # -- LUKS -------------------------------------------------------------------
    def _luks_root(self, node: str, info: dict[str, str], what: str) -> bool:
        uuid = luks_uuid(info.get("UUID", ""))
        wanted = self.cfg.luks_uuids
        if wanted and uuid not in wanted:
            self.tried.append(f"{what}: not opened (rd.luks.uuid= names {', '.join(wanted)})")
            return False
        entry = crypttab.find(self.crypttab, node, info)
        if not wanted and not self.for_root and entry is None:
            return False
        name = self.cfg.luks_names.get(uuid) or (entry.name if entry else "luks-" + uuid)
        return self.open_luks(node, info, name, entry) is not None

    def open_luks(self, node: str, info: dict[str, str], name: str,
                  entry: crypttab.Entry | None = None) -> str | None:
        """Open `node` as /dev/mapper/`name`, with `entry`'s key file if it has one, else
        (or when that key does not open it) with the passphrase asked on the consoles;
        the mapper path, or None after TRIES wrong (or unanswered) passphrases, or
        when cryptsetup fails."""
        cryptsetup = self.tools[LUKS]
        what = _describe(node, info)
        if cryptsetup is None:
            self.tried.append(f"{what}: cryptsetup is not in the image "
                              "(pack with `liveinit pack --with luks`)")
            return None
        if self.m.exists("/dev/mapper/" + name):
            return "/dev/mapper/" + name
        uuid = luks_uuid(info.get("UUID", ""))
        # the command line's options for this volume, else crypttab's, else the command line's for all
        opts = self.cfg.luks_options.get(uuid) or (entry.options if entry else "") \
            or self.cfg.luks_options.get("", "")
        flags, tries, timeout, ignored = luks_options(opts)
        if ignored:
            self.log.warn(f"luks: options not supported, ignored: {','.join(ignored)}")
        for mod in LUKS_MODULES:
            self.loader.load(mod, f"{mod} for LUKS {node}")
        self.m.makedirs("/run/cryptsetup")
        label = info.get("LABEL")
        described = f"LUKS UUID={info.get('UUID', '?')}" + (f" LABEL={label}" if label else "")
        if entry is not None and entry.keyfile:
            done = self._with_key(node, info, name, entry, [*keyfile_flags(opts), *flags], described)
            if done is not None:
                return done
        last = ""
        wrong = unanswered = 0
        for attempt in range(1, tries + 1):
            if self.prompt is None:
                last = "no console to ask for the passphrase on"
                break
            waited = time.monotonic()
            secret = self.prompt.ask(node, described, timeout)
            self.asked += time.monotonic() - waited
            if secret is None:
                unanswered += 1
                last = _tally(wrong, unanswered)
                self.log.warn(f"luks: {node}: no passphrase typed in time (try {attempt} of {tries})")
                continue
            begun = time.monotonic()
            try:
                r = self.run([cryptsetup, "open", "--type", "luks", "--key-file=-", *flags,
                              self.m.path(node), name], stdin=bytes(secret))
            finally:
                from liveinit.passphrase import wipe
                wipe(secret)
            ms = (time.monotonic() - begun) * 1000
            if r.rc == 0 or (r.rc is None and self.m.exists("/dev/mapper/" + name)):
                self.log.info(f"luks: {node} ({described}) opened as /dev/mapper/{name} in {ms:.0f} ms")
                self.opened.append({"kind": "luks", "device": node, "uuid": info.get("UUID", ""),
                                    "name": name, "ms": round(ms, 1), "tries": attempt, "key": "passphrase"})
                return "/dev/mapper/" + name
            if r.rc != WRONG_PASSPHRASE:
                # A crash (a missing library, a signal) is not the user's typing: say so, do not ask again.
                last = (f"cryptsetup failed (exit {r.rc}): {r.out}" if r.rc is not None
                        else f"cryptsetup did not finish: {r.out or 'no output'}")
                self.log.error(f"luks: {node}: {last}")
                break
            wrong += 1
            last = _tally(wrong, unanswered)
            self.log.warn(f"luks: wrong passphrase for {node} (try {attempt} of {tries})")
        self.tried.append(f"{what}: not opened: {last}")
        self.refused = f"{what}: {last}"
        return None

    def _with_key(self, node: str, info: dict[str, str], name: str, entry: crypttab.Entry,
                  flags: list[str], described: str) -> str | None:
        """Open `node` with `entry`'s key file; the mapper path, or None (then the prompt asks)."""
        cryptsetup = self.tools[LUKS]
        assert cryptsetup is not None
        key = entry.keyfile
        if not self.m.exists(key):
            self.log.warn(f"luks: {node}: key file {key} (crypttab {entry.name}) is not in the image: "
                          "asking for the passphrase")
            self.tried.append(f"{_describe(node, info)}: key file {key} is not in the image")
            return None
        r = self.run([cryptsetup, "open", "--type", "luks", f"--key-file={self.m.path(key)}", *flags,
                      self.m.path(node), name])
        if r.rc == 0 or (r.rc is None and self.m.exists("/dev/mapper/" + name)):
            self.log.info(f"luks: {node} ({described}) opened as /dev/mapper/{name} with key file {key} "
                          f"in {r.seconds * 1000:.0f} ms")
            self.opened.append({"kind": "luks", "device": node, "uuid": info.get("UUID", ""), "name": name,
                                "ms": round(r.seconds * 1000, 1), "tries": 0, "key": key})
            return "/dev/mapper/" + name
        why = "it is not a key of this volume" if r.rc == WRONG_PASSPHRASE else f"exit {r.rc}: {r.out}"
        self.log.warn(f"luks: {node}: key file {key} does not open it ({why}): asking for the passphrase")
        self.tried.append(f"{_describe(node, info)}: key file {key} did not open it ({why})")
        return None

    # -- LVM --------------------------------------------------------------------
    def _lvm(self, node: str, what: str) -> bool:
        lvm = self.tools[LVM]
        assert lvm is not None
        for mod in LVM_MODULES:
            self.loader.load(mod, f"{mod} for LVM {node}")
        self.m.makedirs("/run/lock/lvm")
        self.m.makedirs("/run/lvm")
        lvs, vgs = self.cfg.lvm_lvs, self.cfg.lvm_vgs
        argv = [lvm, "lvchange" if lvs else "vgchange", "-ay", "--sysinit", "--config", LVM_CONFIG,
                *(lvs or vgs)]
        r = self.run(argv)
        ms = r.seconds * 1000
        if r.rc not in (0, None):
            self.log.warn(f"lvm: {' '.join(argv[1:3])} for {node} failed (exit {r.rc}): {r.out}")
            self.tried.append(f"{what}: `lvm {' '.join(argv[1:3])} {' '.join(lvs or vgs)}` "
                              f"failed: {r.out}")
            return True      # an LV may still have come up
        active = [line.strip() for line in r.out.splitlines() if "now active" in line]
        self.log.info(f"lvm: {node}: {'; '.join(active) or r.out or 'activated'} ({ms:.0f} ms)")
        self.opened.append({"kind": "lvm", "device": node, "what": "; ".join(active) or r.out,
                            "ms": round(ms, 1)})
        self.tried.append(f"{what}: {'; '.join(active) or r.out or 'activated'}")
        return True

    # -- md ---------------------------------------------------------------------
    def _md(self, node: str, info: dict[str, str], what: str) -> bool:
        mdadm = self.tools[MD]
        assert mdadm is not None
        array = info.get("UUID", "")
        wanted = [layerprobe.norm_uuid(u) for u in self.cfg.md_uuids]
        if wanted and layerprobe.norm_uuid(array) not in wanted:
            self.tried.append(f"{what}: not assembled (rd.md.uuid= names {', '.join(self.cfg.md_uuids)})")
            return False
        self.loader.load("md_mod", f"md_mod for {node}")
        level = layerprobe.md_level(self.m.path(node))
        for mod in MD_MODULES.get(level if level is not None else 1, ("raid1",)):
            self.loader.load(mod, f"{mod} for md array {array}")
        self.m.makedirs("/run/mdadm")
        r = self.run([mdadm, "--incremental", self.m.path(node)])
        self.log.info(f"md: {node}: {r.out or 'added'} ({r.seconds * 1000:.0f} ms)")
        if "started" in r.out:
            self.md_waiting.pop(array, None)
            self.md_started.add(array)
            self.opened.append({"kind": "md", "array": array, "device": node, "degraded": False,
                                "ms": round(r.seconds * 1000, 1)})
            self.tried.append(f"{what}: array started")
        elif array not in self.md_started:
            self.md_waiting.setdefault(array, time.monotonic())
            self.tried.append(f"{what}: {r.out or 'added'} (waiting for the other members)")
        return True

    # -- for the failure message ------------------------------------------------
    def report(self) -> list[str]:
        """Lines saying what the layers did (for the failure message)."""
        lines = [f"  {t}" for t in self.tried]
        for u in self.cfg.md_uuids:
            if not any(layerprobe.norm_uuid(u) == layerprobe.norm_uuid(a) for a in
                       list(self.md_waiting) + list(self.md_started)):
                lines.append(f"  md array {u} (rd.md.uuid=): no member appeared")
        for u in self.cfg.luks_uuids:
            if not any(u in t for t in self.tried) and not any(o.get("uuid") == u for o in self.opened):
                lines.append(f"  LUKS volume {u} (rd.luks.uuid=): no such device appeared")
        for e in self.crypttab:
            if not any(o.get("name") == e.name for o in self.opened) and not (
                    e.uuid() and any(e.uuid() in t.lower() for t in self.tried)):
                lines.append(f"  LUKS volume {e.name} ({CRYPTTAB}: {e.source}): no such device appeared")
        return (["layers tried:"] + lines) if lines else []


def _tally(wrong: int, unanswered: int) -> str:
    parts = [f"{wrong} wrong passphrase{'s' if wrong != 1 else ''}"] if wrong else []
    if unanswered:
        parts.append(f"{unanswered} prompt{'s' if unanswered != 1 else ''} not answered in time")
    return ", ".join(parts)


def _describe(node: str, info: dict[str, str]) -> str:
    kind = {LUKS: "LUKS", LVM: "LVM PV", MD: "md member"}.get(info.get("TYPE", ""), info.get("TYPE", "?"))
    label = f" LABEL={info['LABEL']}" if info.get("LABEL") else ""
    return f"{kind} {node} (UUID={info.get('UUID', '?')}{label})"


HINT = ("LUKS: type the passphrase on the console (rd.luks.uuid= picks the volumes, rd.luks=0 opens "
        "none); LVM: root=/dev/VG/LV or /dev/mapper/VG-LV must name an LV listed above (rd.lvm.lv=VG/LV); "
        "md: rd.md.uuid= names the array, a degraded one starts after "
        f"{MD_DEGRADED_AFTER:g} s (raise rootdelay= if it needs longer)")
