# Shared settings for the peer initramfs benchmarks. Source this file.
KVER=${KVER:-6.1.0-56-amd64}
KROOT=${KROOT:-/var/cache/liveinit/kernel/$KVER/root}   # unpacked linux-image package (read-only input)
W=${PEERS_WORK:-/var/cache/liveinit/peers}   # scratch, outside the repo
MODROOT=$W/modroot                      # copy of $KROOT with depmod run (modules.dep etc.)
VMLINUZ=$KROOT/boot/vmlinuz-$KVER
IMG=$W/images                           # generated initramfs images
LOGS=${PEERS_LOGS:-$W/logs}
RES=${PEERS_RESULTS:-$W/results}  # raw tsv results
mkdir -p "$W" "$IMG" "$LOGS" "$RES"
