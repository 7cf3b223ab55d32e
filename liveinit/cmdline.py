"""The kernel command line: splitting with the kernel's quoting rules and
parsing into a `BootConfig` (shared by the runtime and the packer).

Every liveinit parameter has a `liveinit.` name; the dracut, live-boot and
initramfs-tools spellings users already know are accepted too (docs/CMDLINE.md).
`parse` never raises: problems go into `BootConfig.errors` and a sensible
default is used, so a typo on the boot prompt still boots (and says so)."""
from __future__ import annotations

from liveinit.contract import LIVE_IMAGE, STAGES
from liveinit.plain import Plain

TYPE_CHECKING = False
if TYPE_CHECKING:   # mypy only: typing costs an import at boot
    from liveinit.netcfg import IpConfig

SPACE = " \t\n\v\f\r"          # the kernel's isspace()
DEFAULT_ROOTDELAY = 30.0        # seconds to wait for the root / live medium
ROOTWAIT_SECONDS = 24 * 3600.0  # `rootwait`: wait (practically) forever
DEFAULT_OVERLAY_SIZE = "50%"
UNIONS = ("overlay", "aufs", "unionfs", "unionfs-fuse", "bind", "none")
UNION_ALIASES = {"overlayfs": "overlay", "off": "none"}   # unionfs-fuse is FUSE, not unionfs

# Other initramfs generators' break points mapped onto our stages (break
# happens *before* the named stage).
BREAK_ALIASES = {
    # dracut rd.break=
    "pre-udev": "coldplug", "pre-trigger": "coldplug", "initqueue": "findroot",
    "pre-mount": "stack", "mount": "stack", "pre-pivot": "handover",
    "cleanup": "handover",
    # initramfs-tools break=
    "top": "cmdline", "modules": "coldplug", "premount": "findroot",
    "mountroot": "stack", "bottom": "handover", "init": "handover",
}
BREAK_BARE = {"rd.break": "handover", "break": "findroot", "liveinit.break": "handover"}

# Dotted names that are not `module.param` options.
NOT_MODULES = ("rd", "liveinit", "systemd", "udev", "plymouth", "vconsole",
               "locale", "modprobe", "iso-scan", "live", "boot", "luks")
# `liveinit.NAME` for the kernel's and the other generators' own names: the
# word is read as if written without the prefix.
LIVEINIT_PLAIN = ("root", "rootfstype", "rootflags", "rootdelay", "rootwait", "init", "ro", "rw",
                  "findiso", "quiet")
# `liveinit.NAME` parameters read under that full name below.
LIVEINIT_OWN = ("image", "union", "toram", "persistence", "overlay_size", "overlay-size",
                "modules", "blacklist", "break", "debug", "check", "shell", "emergency",
                "demo")   # read by the demo root's init, not by the runtime
ROOT_PREFIXES = (("UUID=", "uuid"), ("LABEL=", "label"), ("CDLABEL=", "label"),
                 ("PARTUUID=", "partuuid"), ("PARTLABEL=", "partlabel"))
EMERGENCY_ACTIONS = ("reboot", "poweroff", "halt")   # rd.emergency=: what a locked shell does
# Other tools' parameters liveinit does not implement: listed once on the console
# as ignored, so that nobody believes they took effect (docs/CMDLINE.md).
FOREIGN_IGNORED = {
    "rd.live.overlay.reset": "dracut", "rd.live.overlay.readonly": "dracut",
    "rd.live.overlay.overlayfs": "dracut", "rd.writable.fsimg": "dracut", "rd.live.overlay.thin": "dracut",
    "rd.fstab": "dracut", "rd.auto": "dracut", "rd.retry": "dracut", "rd.timeout": "dracut",
    "rd.neednet": "dracut", "rd.luks.key": "dracut", "rd.md.conf": "dracut", "rd.lvm.conf": "dracut",
    "rd.iscsi.initiator": "dracut", "netroot": "dracut", "nfsroot": "kernel/dracut",
    "resume": "kernel/initramfs-tools", "noresume": "initramfs-tools",
    "persistence-media": "live-boot", "persistence-read-only": "live-boot",
    "persistence-storage": "live-boot", "ignore_uuid": "live-boot", "live-media": "live-boot",
    "live-media-offset": "live-boot", "live-media-timeout": "live-boot", "module": "live-boot",
    "nopersistence": "live-boot", "plainroot": "live-boot", "todisk": "live-boot",
    "ramdisk-size": "live-boot", "httpfs": "live-boot", "ftpfs": "live-boot",
    "cdrom-detect/try-usb": "casper", "ignore_bootid": "casper", "showmounts": "casper",
}
# Read by the kernel, the real init or the desktop, not by an initramfs: not listed.
FOREIGN_HARMLESS = ("console", "loglevel", "panic", "nomodeset", "splash", "vga", "noapic", "acpi",
                    "mem", "noeject", "noprompt", "hostname", "username", "locales", "timezone",
                    "keyboard-model", "live-config", "components", "noautologin", "nottyautologin",
                    "rd.plymouth", "rd.udev.log_level", "rd.udev.log_priority", "rd.info",
                    "rd.dm", "rd.live.debug", "BOOT_IMAGE", "initrd", "rhgb",
                    "boot", "rd.driver.post", "apparmor", "security", "selinux", "enforcing")
TRUE = ("", "1", "y", "yes", "true", "on")
FALSE = ("0", "n", "no", "false", "off")


class RootSpec(Plain):
    """kind: "auto" | "path" | "uuid" | "label" | "partuuid" | "partlabel" | "devno" | "url" |
    "invalid" (root= that is none of these: the root search fails naming it);
    value: "" for auto, "/dev/sda1", the UUID, the label, "8:1"..., the image's http:// URL, the text;
    live: the device holds a live image."""

    __slots__ = ("kind", "value", "live")
    kind: str
    value: str
    live: bool


AUTO = RootSpec("auto", "", True)


class BootConfig(Plain):
    """Everything the command line says, defaults filled in (docs/CMDLINE.md)."""

    __slots__ = ("root", "rootfstype", "rootflags", "readonly", "rootdelay", "init", "init_args",
                 "live_image", "union", "union_given", "toram", "findiso", "persistence", "overlay_size",
                 "modules_early", "blacklist", "module_options", "break_at", "debug", "quiet", "ip", "bootif",
                 "errors", "luks", "luks_uuids", "luks_names", "luks_options", "lvm", "lvm_vgs", "lvm_lvs",
                 "md", "md_uuids", "keymap", "persistence_encryption", "check", "shell", "emergency",
                 "ignored")
    root: RootSpec
    rootfstype: str | None
    rootflags: str
    readonly: bool
    rootdelay: float
    init: str | None
    init_args: tuple[str, ...]
    live_image: str
    union: str
    union_given: bool   # union= was written: only that method, and a device root is stacked too
    toram: bool
    findiso: str | None
    persistence: str | None
    overlay_size: str
    modules_early: tuple[str, ...]
    blacklist: frozenset[str]
    module_options: dict[str, str]
    break_at: frozenset[str]
    debug: bool
    quiet: bool
    ip: IpConfig | None   # ip= (netcfg.parse_ip); None: DHCP on the first interface with a link
    bootif: str           # BOOTIF=: the MAC the PXE firmware booted from ("aa:bb:..."), or ""
    errors: tuple[str, ...]
    # Layers under the root (liveinit/layers.py): rd.luks=0 / rd.lvm=0 / rd.md=0 turn one off;
    # the lists restrict it to those UUIDs (lower case, no "luks-") / VGs / VG/LVs / arrays.
    luks: bool
    luks_uuids: tuple[str, ...]
    luks_names: dict[str, str]      # LUKS UUID -> /dev/mapper name (rd.luks.name=UUID=NAME)
    luks_options: dict[str, str]    # LUKS UUID ("" = every volume) -> crypttab-style options
    lvm: bool
    lvm_vgs: tuple[str, ...]
    lvm_lvs: tuple[str, ...]        # "VG/LV"
    md: bool
    md_uuids: tuple[str, ...]
    keymap: str | None              # console keymap (vconsole.keymap=, keyboard-layouts=)
    persistence_encryption: tuple[str, ...]   # live-boot's persistence-encryption= ("none", "luks")
    check: bool           # verify the medium against its SHA256SUMS before using it
    shell: bool           # rd.shell=0: no emergency shell, the `emergency` action instead
    emergency: str        # rd.emergency=: "" (the default: halt) | reboot | poweroff | halt
    ignored: tuple[str, ...]   # other tools' parameters liveinit does not implement, "word (tool)"
    _defaults = {
        "root": AUTO, "rootfstype": None, "rootflags": "", "readonly": True,
        "rootdelay": DEFAULT_ROOTDELAY, "init": None, "init_args": (), "live_image": LIVE_IMAGE,
        "union": "overlay", "union_given": False, "toram": False, "findiso": None, "persistence": None,
        "overlay_size": DEFAULT_OVERLAY_SIZE, "modules_early": (), "blacklist": frozenset(),
        "break_at": frozenset(), "debug": False, "quiet": False, "ip": None, "bootif": "", "errors": (),
        "luks": True, "luks_uuids": (), "lvm": True, "lvm_vgs": (), "lvm_lvs": (), "md": True,
        "md_uuids": (), "keymap": None, "persistence_encryption": (),
        "check": False, "shell": True, "emergency": "", "ignored": (),
    }
    _factories = {"module_options": dict, "luks_names": dict, "luks_options": dict}


def _split(text: str) -> tuple[list[str], bool]:
    """Words of `text` and whether a quote was left open.

    A double quote anywhere in a word starts or ends a quoted run in which
    whitespace does not split; the quotes themselves are dropped (the kernel
    only strips them around a whole word or value; dropping them everywhere
    gives the same result for every well-formed command line). An
    unterminated quote runs to the end of the text, as in the kernel."""
    words: list[str] = []
    cur: list[str] = []
    in_word = in_quote = False
    for ch in text:
        if ch == '"':
            in_quote = not in_quote
            in_word = True
        elif ch in SPACE and not in_quote:
            if in_word:
                words.append("".join(cur))
                cur = []
                in_word = False
        else:
            cur.append(ch)
            in_word = True
    if in_word:
        words.append("".join(cur))
    return words, in_quote


def split(text: str) -> list[str]:
    """Split a command line into words with the kernel's quoting rules."""
    return _split(text)[0]


def quote(word: str) -> str:
    """A word as it must be written so that `split` gives it back.

    Words containing a double quote cannot be written (the kernel has no escape)."""
    if word == "" or any(c in SPACE for c in word):
        return '"' + word + '"'
    return word


def parse_root(spec: str) -> RootSpec | None:
    """A root= value as a RootSpec, or None when it is not a device spec."""
    live = False
    if spec.startswith("live:"):
        live = True
        spec = spec[5:]
        if spec in ("", "auto"):
            return AUTO
    for prefix, kind in ROOT_PREFIXES:
        if spec.upper().startswith(prefix) and spec[len(prefix) - 1] == "=":
            value = spec[len(prefix):]
            if not value:
                return None
            if kind in ("uuid", "partuuid"):
                value = value.lower()
            return RootSpec(kind, value, live)
    if spec.startswith("/dev/") and len(spec) > 5 and not any(c in SPACE for c in spec):
        return RootSpec("path", spec, live)
    if ":" in spec:
        major, _, minor = spec.partition(":")
        if major.isdigit() and minor.isdigit():
            return RootSpec("devno", f"{int(major)}:{int(minor)}", live)
        return None
    if spec and all(c in "0123456789abcdefABCDEF" for c in spec):
        dev = int(spec, 16)  # the kernel's new_decode_dev
        devmajor = (dev & 0xFFF00) >> 8
        devminor = (dev & 0xFF) | ((dev >> 12) & 0xFFF00)
        return RootSpec("devno", f"{devmajor}:{devminor}", live)
    if spec and spec.replace("-", "").replace("_", "").isalnum():
        return RootSpec("path", "/dev/" + spec, live)
    return None


def _size(value: str) -> bool:
    num = value[:-1] if value[-1:].lower() in ("k", "m", "g", "%") else value
    return num.isdigit() and int(num) > 0


def _abs(path: str) -> str:
    return "/" + path.strip("/")


class _State:
    """Mutable accumulator while the words are read (defaults, then /proc/cmdline)."""

    def __init__(self) -> None:
        self.v: dict = {}
        self.live = False
        self.persist_on = False
        self.persist_label = "persistence"
        self.live_dir: str | None = None
        self.live_img: str | None = None
        self.modules: list[str] = []
        self.blacklist: set[str] = set()
        self.options: dict[str, list[str]] = {}
        self.breaks: set[str] = set()
        self.init_args: list[str] = []
        self.errors: list[str] = []
        self.lists: dict[str, list[str]] = {}      # luks_uuids, lvm_vgs, lvm_lvs, md_uuids
        self.luks_names: dict[str, str] = {}
        self.luks_options: dict[str, str] = {}
        self.ignored: list[str] = []


def _bool(st: _State, key: str, value: str | None) -> bool:
    if value is None or value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    st.errors.append(f"{key}={value}: expected 1/0 (yes/no); taken as on")
    return True


def _add_break(st: _State, key: str, value: str | None) -> None:
    if value is None:
        st.breaks.add(BREAK_BARE[key])
        return
    for name in value.split(","):
        name = name.strip().lower()
        stage = name if name in STAGES else BREAK_ALIASES.get(name)
        if stage is None:
            st.errors.append(f"{key}={name}: unknown break point (stages: {', '.join(STAGES)})")
        else:
            st.breaks.add(stage)


def luks_uuid(text: str) -> str:
    """A LUKS UUID as rd.luks.uuid= may spell it (upper case, "luks-" prefix) in canonical form."""
    text = text.strip().lower()
    return text[5:] if text.startswith("luks-") else text


def _append(st: _State, field: str, value: str) -> None:
    items = st.lists.setdefault(field, [])
    for v in value.split(","):
        if v and v not in items:
            items.append(v)


def _layer_word(st: _State, key: str, val: str | None) -> bool:
    """The LUKS, LVM, md and console keymap parameters; False when `key` is none of them."""
    v = st.v
    if key.startswith("rd."):
        key = key[3:]
    if key in ("luks", "lvm", "md") and val is not None:
        v[key] = _bool(st, key, val)
    elif key == "luks.uuid" and val:
        _append(st, "luks_uuids", ",".join(luks_uuid(u) for u in val.split(",")))
    elif key == "luks.name" and val:
        uuid, eq, name = val.partition("=")
        if not eq or not name or "/" in name:
            st.errors.append(f"{key}={val}: expected UUID=NAME; ignored")
        else:
            st.luks_names[luks_uuid(uuid)] = name
            _append(st, "luks_uuids", luks_uuid(uuid))
    elif key == "luks.options" and val is not None:
        uuid, eq, opts = val.partition("=")
        if eq and "," not in uuid and len(luks_uuid(uuid).replace("-", "")) == 32:
            st.luks_options[luks_uuid(uuid)] = opts
        else:
            st.luks_options[""] = val
    elif key == "lvm.vg" and val:
        _append(st, "lvm_vgs", val)
    elif key == "lvm.lv" and val:
        if all("/" in lv.strip("/") for lv in val.split(",")):
            _append(st, "lvm_lvs", ",".join(lv.strip("/") for lv in val.split(",")))
        else:
            st.errors.append(f"{key}={val}: expected VG/LV; ignored")
    elif key == "md.uuid" and val:
        _append(st, "md_uuids", val.lower())
    elif key in ("vconsole.keymap", "keyboard-layouts") and val:
        v["keymap"] = val.split(",")[0]
    elif key == "persistence-encryption" and val:
        kinds = tuple(k for k in val.lower().split(",") if k)
        bad = [k for k in kinds if k not in ("none", "luks")]
        if bad:
            st.errors.append(f"{key}={val}: {', '.join(bad)} unknown (use none, luks)")
        v["persistence_encryption"] = tuple(k for k in kinds if k in ("none", "luks"))
    else:
        return False
    return True


def _word(st: _State, word: str, source: str) -> None:
    key, eq, value = word.partition("=")
    val: str | None = value if eq else None
    if key.startswith("liveinit."):
        name = key[9:]
        if name in LIVEINIT_PLAIN:
            word, key = word[9:], name
        elif name not in LIVEINIT_OWN:
            # A typo here (liveinit.persistance=) must not silently drop a wish.
            st.errors.append(f"{key}: unknown liveinit parameter (see docs/CMDLINE.md); ignored")
            return
    v = st.v
    if (key == "root" and val is not None and val.startswith("live:") and "://" in val) or key == "fetch":
        _url_root(st, key, val or "")   # root=live:http://... (dracut), fetch=http://... (live-boot)
    elif key in ("ip", "BOOTIF") and val is not None:
        _net_word(st, key, val)
    elif key == "root" and val is not None:
        spec = parse_root(val)
        if spec is None:
            st.errors.append(f"root={val}: not a device spec (use /dev/NAME, UUID=, LABEL=, "
                             "PARTUUID=, PARTLABEL=, MAJ:MIN, live:... or live:auto)")
            spec = RootSpec("invalid", val, False)   # the root search fails on it, naming it
        v["root"] = spec
    elif key == "rootfstype" and val:
        v["rootfstype"] = val
    elif key == "rootflags" and val is not None:
        v["rootflags"] = val
    elif word == "ro":
        v["readonly"] = True
    elif word == "rw":
        v["readonly"] = False
    elif key == "rootdelay":
        try:
            delay = float(val or "")
            if not 0 <= delay < 1e9:
                raise ValueError
            v["rootdelay"] = delay
        except ValueError:
            st.errors.append(f"rootdelay={val}: not a number of seconds; "
                             f"using {DEFAULT_ROOTDELAY:g}")
    elif word == "rootwait":
        v["rootdelay"] = ROOTWAIT_SECONDS
    elif key == "init" and val is not None:
        if val.startswith("/"):
            v["init"] = val
        else:
            st.errors.append(f"init={val}: must be an absolute path; using the default search")
    elif key == "liveinit.image" and val:
        v["live_image"] = _abs(val)
        st.live = True
    elif key == "live-media-path" and val:
        v["live_image"] = _abs(val) + "/filesystem.squashfs"
        st.live = True
    elif key == "rd.live.dir" and val:
        st.live_dir = val
    elif key == "rd.live.squashimg" and val:
        st.live_img = val
    elif key in ("union", "liveinit.union") and val is not None:
        v["union_given"] = True
        u = UNION_ALIASES.get(val.lower(), val.lower())
        if u in UNIONS:
            v["union"] = u
        else:
            st.errors.append(f"{key}={val}: unknown union (use {', '.join(UNIONS)}); using overlay")
    elif word == "toram" or key == "liveinit.toram" or key == "rd.live.ram":
        v["toram"] = _bool(st, key, val)
    elif key in ("findiso", "iso-scan/filename") and val:
        v["findiso"] = _abs(val)
        st.live = True
    elif key == "liveinit.persistence" and val is not None:
        st.persist_on = False
        v["persistence"] = None if val.lower() in FALSE + ("", "none") else val
    elif key == "rd.live.overlay" and val:
        st.persist_on = False
        v["persistence"] = val
    elif word == "persistence":
        st.persist_on = True
    elif key == "persistence-label" and val:
        st.persist_label = val
    elif key in ("liveinit.overlay_size", "liveinit.overlay-size", "overlay-size") and val is not None:
        if _size(val):
            v["overlay_size"] = val
        else:
            st.errors.append(f"{key}={val}: not a size (e.g. 512m, 2g, 50%); "
                             f"using {DEFAULT_OVERLAY_SIZE}")
    elif key == "rd.live.overlay.size" and val is not None:
        if val.isdigit() and int(val) > 0:
            v["overlay_size"] = val + "m"
        else:
            st.errors.append(f"{key}={val}: not a size in MiB; using {DEFAULT_OVERLAY_SIZE}")
    elif key in ("rd.driver.pre", "liveinit.modules") and val:
        st.modules.extend(n for n in val.split(",") if n and n not in st.modules)
    elif key in ("modprobe.blacklist", "rd.driver.blacklist", "module_blacklist",
                 "liveinit.blacklist") and val:
        st.blacklist.update(n.replace("-", "_") for n in val.split(",") if n)
    elif key in ("rd.break", "break", "liveinit.break"):
        _add_break(st, key, val)
    elif word in ("debug", "rd.debug", "liveinit.debug"):
        v["debug"] = True
    elif word == "quiet":
        v["quiet"] = True
    elif word == "rd.live.image" or (key == "boot" and val == "live"):
        st.live = True
    elif key in ("liveinit.check", "rd.live.check", "verify-checksums"):
        v["check"] = _bool(st, key, val) if key != "verify-checksums" else True
    elif key in ("rd.shell", "liveinit.shell"):
        v["shell"] = _bool(st, key, val)
    elif key in ("rd.emergency", "liveinit.emergency") and val is not None:
        if val.lower() in EMERGENCY_ACTIONS:
            v["emergency"] = val.lower()
        else:
            st.errors.append(f"{key}={val}: use {', '.join(EMERGENCY_ACTIONS)}; using halt")
    elif key in FOREIGN_IGNORED:
        note = f"{word} ({FOREIGN_IGNORED[key]})"
        if note not in st.ignored:
            st.ignored.append(note)
    elif key in FOREIGN_HARMLESS and val is not None:
        pass   # a bare word (splash) still goes on to init below, as the kernel passes it
    elif _layer_word(st, key, val):
        pass
    elif "." in key and key.split(".", 1)[0] not in NOT_MODULES and key[0] != "/":
        mod, _, param = key.partition(".")
        if mod and param:
            st.options.setdefault(mod.replace("-", "_"), []).append(
                param if val is None else f"{param}={quote(val)}")
    elif val is None and source == "cmdline" and "/" not in word:
        st.init_args.append(word)


def _url_root(st: _State, key: str, value: str) -> None:
    """The live image on an HTTP server: the root is its URL."""
    from liveinit import netcfg  # only a network boot pays for this import
    try:
        url = netcfg.parse_url(value[5:] if key == "root" else value)
    except ValueError as e:
        st.errors.append(f"{key}={value}: {e}")
        return
    st.v["root"] = RootSpec("url", str(url), True)


def _net_word(st: _State, key: str, value: str) -> None:
    """ip= and BOOTIF=, checked here so that a typo is reported with the others."""
    from liveinit import netcfg
    try:
        if key == "ip":
            st.v["ip"] = netcfg.parse_ip(value)
        else:
            st.v["bootif"] = netcfg.parse_bootif(value)
    except ValueError as e:
        st.errors.append(str(e))


def parse(text: str, defaults: str = "", init_argv: list[str] | tuple[str, ...] | None = None) -> BootConfig:
    """A BootConfig from `defaults` (the image's baked cmdline) then `text`
    (/proc/cmdline), the later word winning. Never raises.

    `init_argv`: the arguments the kernel gave PID 1. The kernel passes init
    only the words it did not consume itself (and those after `--`), which
    no parser outside the kernel can tell apart from its own parameters
    (`nomodeset`, `noapic`): at boot that list wins over the guess made here."""
    st = _State()
    cmd_args: list[str] = []
    default_args: list[str] = []
    for source, line in (("defaults", defaults), ("cmdline", text)):
        try:
            words, open_quote = _split(line if isinstance(line, str) else str(line))
        except Exception as e:  # never reached for str input; belt and braces for PID 1
            st.errors.append(f"cannot split {source}: {e}")
            continue
        if open_quote:
            st.errors.append(f"{source}: unterminated double quote; it runs to the end of the line")
        if "--" in words:
            i = words.index("--")
            extra = words[i + 1:]
            words = words[:i]
        else:
            extra = []
        before = len(st.init_args)
        for w in words:
            if w:
                _word(st, w, "cmdline")
        bare = st.init_args[before:]
        del st.init_args[before:]
        (cmd_args if source == "cmdline" else default_args).extend(bare + extra)
    v = st.v
    if st.live_dir is not None or st.live_img is not None:
        v["live_image"] = (_abs(st.live_dir or "LiveOS").rstrip("/") + "/"
                           + (st.live_img or "squashfs.img").strip("/"))
        st.live = True
    if st.persist_on and "persistence" not in v:
        v["persistence"] = "LABEL=" + st.persist_label
    root: RootSpec = v.get("root", AUTO)
    if st.live and not root.live:
        root = RootSpec(root.kind, root.value, True)
    v["root"] = root
    if init_argv is not None:
        cmd_args = list(init_argv)
    return BootConfig(
        init_args=tuple(cmd_args or default_args),
        modules_early=tuple(st.modules),
        blacklist=frozenset(st.blacklist),
        module_options={m: " ".join(p) for m, p in st.options.items()},
        luks_names=st.luks_names,
        luks_options=st.luks_options,
        **{f: tuple(items) for f, items in st.lists.items()},
        break_at=frozenset(st.breaks),
        errors=tuple(st.errors),
        ignored=tuple(st.ignored),
        **v,
    )
