#!/usr/bin/env bash
# Install what liveinit needs on a Debian bookworm machine (as root): the host
# tools it drives, a virtualenv with the project and its test extras, and the
# test kernel (fetched with apt-get download, unpacked into the cache, never
# into the repository). Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${LIVEINIT_CACHE:-/var/cache/liveinit}
venv=${LIVEINIT_VENV:-$here/.venv}
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

pkgs=(
  python3 python3-venv python3-dev gcc libudev1 ca-certificates
  qemu-system-x86 qemu-utils ovmf
  xorriso squashfs-tools erofs-utils mtools dosfstools
  isolinux syslinux-common syslinux-utils grub-pc-bin grub-efi-amd64-bin
  busybox-static cpio libarchive-tools kmod debootstrap
  e2fsprogs exfatprogs btrfs-progs xfsprogs f2fs-tools udftools util-linux fdisk
  gzip xz-utils zstd lz4 bc file openssl iproute2
  # liveinit usb (syslinux's installer), netboot (pxelinux, iPXE's ROMs), Secure Boot's oracle
  syslinux pxelinux ipxe sbsigntool
  # block layers, keymaps and the filesystems findiso reads (the tests pack and prepare them)
  cryptsetup-bin lvm2 mdadm kbd console-data ntfs-3g exfat-fuse
)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The image embeds the host's Debian interpreter by default, so the project's
# third-party runtime packages are installed for that same interpreter.
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q -e "$here[test]"
  touch "$stamp"
fi

"$venv/bin/liveinit" fetch-kernel --cache "$cache" >/dev/null
