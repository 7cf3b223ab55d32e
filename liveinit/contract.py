"""The contract between the packer, the runtime and the boot lab, defined once.

What the packer bakes into /init (`Settings`), where things live on the
medium and under /run, the console lines the runtime prints and the lab
reads, and the demo root's markers. The runtime imports this on every boot,
so it holds constants and one `Plain` record only; the lab builds its
regular expressions from the same format strings (`line_pattern`)."""
from __future__ import annotations

from liveinit.plain import Plain

# -- the live medium (ISO, stick, netboot tree) ------------------------------
LIVE_DIR = "/live"
LIVE_IMAGE = LIVE_DIR + "/filesystem.squashfs"   # the runtime's default image path
ID_FILE = LIVE_DIR + "/liveinit.id"              # the identity the packer baked into /init
KERNEL_FILE = LIVE_DIR + "/vmlinuz"
INITRD_FILE = LIVE_DIR + "/initrd.img"
CHECKSUMS_FILE = LIVE_DIR + "/SHA256SUMS"        # sha256sum format, paths relative to the medium
# Persistence on a stick (`liveinit usb` makes them, the boot menu names them):
PERSISTENCE_LABEL = "persistence"                # label of a persistence partition (ext4, or LUKS2 header)
PERSISTENCE_IMAGE = "/persistence.img"           # an ext4 image file on the medium itself
# The LUKS2 subsystem of an encrypted persistence partition `liveinit usb` wrote without
# device-mapper: nothing inside yet; the runtime makes the ext4 on its first open (liveinit/freshfs.py).
PERSISTENCE_FRESH = "liveinit-unformatted"
# In the live image's root (`liveinit image --writable-from`): the paths union=bind makes
# writable instead of its fixed set, one absolute path a line ('#' comments).
WRITABLE_LIST = "/etc/liveinit/writable"

# -- the runtime's mounts under /run (moved into the new root at hand-over) ---
RUN_DIR = "/run/liveinit"
MEDIUM = RUN_DIR + "/medium"        # the live medium
ISO_MOUNT = RUN_DIR + "/iso"        # findiso: the filesystem holding the ISO file
RO = RUN_DIR + "/ro"                # the read-only image
RW = RUN_DIR + "/rw"                # the writable layer (tmpfs or persistence): upper/, work/
RAM = RUN_DIR + "/ram"              # toram: the copy of the image
PERSIST_HOST = RUN_DIR + "/persist"  # the filesystem holding a persistence image file
OLD_ROOT = RUN_DIR + "/initrd"      # pivot_root: where the old initrd root goes
RECORD = RUN_DIR + "/boot.json"     # the boot record
SYSROOT = "/sysroot"                # the new root, before hand-over
MAPPER_PREFIX = "liveinit-"         # /dev/mapper names of LUKS volumes liveinit opens for persistence

# -- console keymaps (packer/keymap.py compiles them, liveinit/keymap.py loads them)
KEYMAP_DIR = "/etc/liveinit/keymaps"
KEYMAP_SUFFIX = ".bmap"             # `loadkeys -b` output

# -- LUKS volumes of an installed system (packer/crypttab.py bakes, liveinit/layers.py opens)
CRYPTTAB = "/etc/liveinit/crypttab"     # crypttab(5) lines: the entries baked from the root's crypttab
KEY_DIR = "/etc/liveinit/keys"          # their key files (NAME.key, mode 0400; the image is then 0600)

# -- boot stages, in order (timing lines, break points, the boot record) ------
STAGES = ("early", "cmdline", "coldplug", "findroot", "stack", "handover")

# -- console lines: the runtime prints PREFIX + one of these; the lab parses them.
# Fields in braces; a `:spec` is how the runtime formats it (the lab ignores it).
PREFIX = "liveinit: "
STAGE_LINE = "stage {name} {ms:.0f} ms"
STARTING_LINE = "starting {init} after {ms:.0f} ms"
COSTS_LINE = "costs: {summary}"            # costs.Costs.summary(): time by kind of work
FAILED_LINE = "FAILED: {message}"
HINT_LINE = "hint: {hint}"
SHELL_LINE = "emergency shell"
# A locked emergency shell (rd.shell=0, or three wrong passwords): then reboot/poweroff/halt.
LOCKDOWN_LINE = "no emergency shell ({why}): {action} in {seconds:.0f} s"
SHELL_PASSWORD_PROMPT = "emergency shell password: "
# The medium check (liveinit.check, rd.live.check, verify-checksums): progress, then the verdict.
CHECK_PROGRESS_LINE = "check: {percent}% ({done_mib} of {total_mib} MiB)"
CHECK_OK_LINE = "check: the medium is intact ({files} files, {mib} MiB, SHA-256)"
CHECK_BAD_LINE = "check: {path}: {problem}"
# The passphrase prompt (on every active console; the lab types the answer after it).
PASSPHRASE_PROMPT = "Passphrase for {device} ({what}): "

# -- the demo root's init (packer writes it, the lab waits for it) ------------
DEMO_OK = "LIVEINIT-DEMO-OK"             # + " uptime=S root=FSTYPE writable=yes persisted=no init=PID"
DEMO_MODULES = "LIVEINIT-DEMO-MODULES"   # + " record=yes modules=a,b,c"
DEMO_KMSG = "liveinit-demo: init running"
DEMO_POWEROFF = "liveinit.demo=poweroff"  # on the lab's command line: the demo init powers off


class Settings(Plain):
    """What `liveinit pack` bakes into /init for `boot.main`.

    cmdline: the image's default command line (the kernel's overrides it);
    identity: the medium identity (also in ID_FILE on the medium); kver: the
    kernel release the modules are for; moddir, index: where the modules and
    the compiled module index are in the image. Set at boot, not baked: t0
    (monotonic time of /init's first line), argv (/init's arguments, passed on
    to init); max_attempts (tests: tries per stage, 0 = for ever). The image's
    default console keymap is a word of `cmdline` (vconsole.keymap=NAME), so
    the kernel's command line overrides it like any other default.
    shell_password_hash: a crypt(3) SHA-512 hash (`$6$...`) that gates the
    emergency shell ("" = an open shell, as in dracut)."""

    __slots__ = ("cmdline", "identity", "kver", "moddir", "index", "t0", "argv", "max_attempts",
                 "shell_password_hash")
    cmdline: str
    identity: str
    kver: str
    moddir: str
    index: str
    t0: float | None
    argv: tuple[str, ...]
    max_attempts: int
    shell_password_hash: str
    _defaults = {"cmdline": "", "identity": "", "kver": "", "moddir": "", "index": "",
                 "t0": None, "argv": (), "max_attempts": 0, "shell_password_hash": ""}

    # The fields the packer writes into /init (the rest are set at boot).
    BAKED = ("cmdline", "identity", "kver", "moddir", "index", "shell_password_hash")


def moddir_for(kver: str) -> str:
    """Where the image keeps the modules of kernel `kver`."""
    return f"/lib/modules/{kver}"


def index_for(kver: str) -> str:
    """Where the image keeps the compiled module index of kernel `kver`."""
    return moddir_for(kver) + "/liveinit.index"
