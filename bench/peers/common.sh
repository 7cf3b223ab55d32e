# Shared settings for the peer initramfs benchmarks. Source this file.
# The kernel is the one the boot lab fetched (qemu/testkernel.py, `liveinit fetch-kernel`):
# `liveinit bench` passes KVER and KROOT; run by hand, the unpacked kernel in the cache is used.
KCACHE=${KCACHE:-/var/cache/liveinit/kernel}
if [ -z "${KVER:-}" ]; then
  for stamp in "$KCACHE"/*/.unpacked; do
    [ -e "$stamp" ] && KVER=$(basename "$(dirname "$stamp")")
  done
fi
if [ -z "${KVER:-}" ]; then
  echo "no unpacked kernel under $KCACHE: run \`liveinit fetch-kernel\` first (or set KVER and KROOT)" >&2
  exit 1
fi
KROOT=${KROOT:-$KCACHE/$KVER/root}   # unpacked linux-image package (read-only input)
W=${PEERS_WORK:-/var/cache/liveinit/peers}   # scratch, outside the repo
MODROOT=$W/modroot                      # copy of $KROOT with depmod run (modules.dep etc.)
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
IMG=$W/images/$KVER                     # generated initramfs images (they hold this kernel's modules)
LOGS=${PEERS_LOGS:-$W/logs}
RES=${PEERS_RESULTS:-$W/results}  # raw tsv results
[ -f "$VMLINUZ" ] || { echo "no kernel image $VMLINUZ (KVER=$KVER KROOT=$KROOT)" >&2; exit 1; }
mkdir -p "$W" "$IMG" "$LOGS" "$RES"
