"""The small embedded demo root: static busybox and an /sbin/init that reports.

The init prints what the initramfs left behind, then the line the boot lab
waits for:

    LIVEINIT-DEMO-MODULES record=<yes|no> modules=<a,b,c>
    LIVEINIT-DEMO-OK uptime=<s> root=<fstype of /> writable=<yes|no> persisted=<yes|no> init=<pid>

(`modules` is the first column of /proc/modules, sorted; `record` says
whether the runtime's boot record /run/liveinit/boot.json is there)

then powers off when the kernel cmdline has `liveinit.demo=poweroff` (the lab's
default) or opens a shell on the console."""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from liveinit.contract import DEMO_KMSG, DEMO_OK, DEMO_POWEROFF, RECORD
from packer.busybox import BUSYBOX, applets
from packer.elf import resolve
from packer.errors import CommandError
from qemu.console import DEMO_MODULES_LINE

# A file written on every boot; finding it at the next boot means the
# writable layer persisted (persistence partition), not a tmpfs.
STAMP = "/var/lib/liveinit-demo/boot-stamp"

OS_RELEASE = """\
PRETTY_NAME="liveinit demo (busybox)"
NAME="liveinit-demo"
ID=liveinit-demo
VERSION_ID=1
HOME_URL="https://example.invalid/liveinit"
"""

INIT_SCRIPT = f"""\
#!/bin/sh
# liveinit demo init: report what the live stack looks like, then power off
# (liveinit.demo=poweroff) or give the console a shell.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
[ -r /proc/uptime ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev 2>/dev/null
# a printk-timestamped mark: when the real init started, to the microsecond
[ -c /dev/kmsg ] && echo "{DEMO_KMSG}" > /dev/kmsg
persisted=no
[ -f {STAMP} ] && persisted=yes
writable=no
mkdir -p {os.path.dirname(STAMP)} 2>/dev/null && echo "$$ $(date +%s)" > {STAMP} 2>/dev/null \\
  && sync && writable=yes
fstype=$(awk '$2 == "/" {{ t = $3 }} END {{ print t }}' /proc/mounts)
record=no
[ -f {RECORD} ] && record=yes
mods=$(awk '{{ print $1 }}' /proc/modules | sort | awk '{{ printf "%s%s", s, $1; s = "," }}')
echo "{DEMO_MODULES_LINE.format(record="$record", modules="$mods")}"
read up _idle < /proc/uptime
echo "{DEMO_OK} uptime=$up root=$fstype writable=$writable persisted=$persisted init=$$"
case " $(cat /proc/cmdline) " in
  *" {DEMO_POWEROFF} "*) sync; poweroff -f ;;
esac
echo "liveinit demo: shell on the console; 'poweroff -f' to leave"
while true; do setsid cttyhack sh -l; done
"""

DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "run", "tmp",
        "root", "mnt", "var/lib", "var/tmp")


def _is_static(binary: Path) -> bool:
    """A static ELF needs no interpreter and no library (its closure is empty);
    raises packer.elf's NotElfError for a script or other non-ELF file."""
    closure = resolve([binary.absolute()])
    return closure.interpreter is None and not closure.libraries


def build_demo_root(dest: Path, busybox: Path = BUSYBOX, force: bool = False) -> Path:
    """Create the demo root tree at `dest` and return it."""
    if not busybox.is_file():
        raise CommandError(f"{busybox} not found", hint="apt-get install busybox-static")
    if not _is_static(busybox):
        raise CommandError(f"{busybox} is dynamically linked; the demo root needs a static busybox",
                           hint="apt-get install busybox-static")
    if dest.exists() and any(dest.iterdir()):
        # A previous demo root is rebuilt (./run-demo runs twice); anything else is the user's.
        previous = dest / "etc" / "os-release"
        ours = previous.is_file() and "ID=liveinit-demo" in previous.read_text(errors="replace")
        if not (force or ours):
            raise CommandError(f"{dest} exists, is not empty and is not a demo root",
                               hint="pass --force to replace it, or choose another directory")
        shutil.rmtree(dest)
    for d in DIRS:
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    os.chmod(dest / "root", 0o700)
    shutil.copy2(busybox, dest / "bin" / "busybox")
    os.chmod(dest / "bin" / "busybox", 0o755)
    for rel in applets(busybox):
        link = dest / rel
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    sh = dest / "bin" / "sh"
    if not sh.exists():
        sh.symlink_to("busybox")
    init = dest / "sbin" / "init"
    if init.is_symlink() or init.exists():
        init.unlink()
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    etc = dest / "etc"
    (etc / "os-release").write_text(OS_RELEASE)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    (etc / "hostname").write_text("liveinit-demo\n")
    (etc / "fstab").write_text("")
    (etc / "profile").write_text("export PATH=/bin:/sbin:/usr/bin:/usr/sbin\nPS1='liveinit-demo# '\n")
    return dest


def configure(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("dir", type=Path, help="directory to create the demo root in")
    parser.add_argument("--busybox", type=Path, default=BUSYBOX,
                        help=f"static busybox to install (default: {BUSYBOX})")
    parser.add_argument("--force", action="store_true", help="replace DIR if it is not empty")


def run(args: argparse.Namespace) -> int:
    build_demo_root(args.dir, busybox=args.busybox, force=args.force)
    if not args.quiet:
        print(f"demo root in {args.dir}")
    return 0
