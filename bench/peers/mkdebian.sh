#!/bin/bash
# The Debian live case: a debootstrap bookworm minbase root with systemd (the
# same tree tests/test_debian_e2e.py boots), squashed into an ISO (label
# PEERSDEB) at both /live/filesystem.squashfs (live-boot) and
# /LiveOS/squashfs.img (dmsquash-live), like mklive.sh. The only addition: a
# drop-in that stamps /dev/kmsg just before the serial console's getty prints
# the login prompt (PEERS-LOGIN-KMSG: the printk clock, as the other cases'
# PEERS-MARKER-KMSG), then powers off a few seconds later so the VM exits.
# Output: $W/debian.iso
set -euo pipefail
. "$(dirname "$0")/common.sh"
ROOT=${DEBIAN_ROOT:-/var/cache/liveinit/debian-root/bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ ! -e "$ROOT/.liveinit-complete" ]; then
  rm -rf "$ROOT.partial"; mkdir -p "$(dirname "$ROOT")"
  debootstrap --variant=minbase --include=systemd-sysv,udev bookworm "$ROOT.partial" "$MIRROR"
  rm -rf "$ROOT"; mv "$ROOT.partial" "$ROOT"; touch "$ROOT/.liveinit-complete"
fi
D=$W/debian-iso; rm -rf "$D"; mkdir -p "$D/live" "$D/LiveOS"
DROPIN=$W/peers-login.conf
cat > "$DROPIN" <<'EOI'
[Service]
ExecStartPre=-/bin/sh -c 'echo PEERS-LOGIN-KMSG > /dev/kmsg'
ExecStartPost=-/bin/sh -c '(sleep 4; echo o > /proc/sysrq-trigger) >/dev/null 2>&1 &'
EOI
# The root as debootstrap left it, plus the drop-in (mksquashfs pseudo files: the tree is not touched).
G='etc/systemd/system/serial-getty@.service.d'
# (-e takes every argument after it: last.)
mksquashfs "$ROOT" "$D/live/filesystem.squashfs" -noappend -quiet -comp xz \
  -p "$G d 755 0 0" -p "$G/peers-login.conf f 644 0 0 cat $DROPIN" -e .liveinit-complete
cp "$D/live/filesystem.squashfs" "$D/LiveOS/squashfs.img"
rm -f "$W/debian.iso"
xorriso -as mkisofs -quiet -V PEERSDEB -J -R -o "$W/debian.iso" "$D"
rm -rf "$D"
ls -l "$W/debian.iso"
