#!/usr/bin/env bash
# Figures of the bootable image (built by `./x image` into $IMAGE_WORK): disk image size
# (apparent, allocated, gzip-compressed), rootfs size, a bundle's size, and the boot time from
# starting qemu (TCG, OVMF) until the admin HTTPS answers through the forwarded port; then the
# time until the boot health check marks the slot good, when it does (RAUC backend).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${IMAGE_WORK:-$ROOT/tests/artifacts/image}
BIN=${BRANCHGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/branchgate}
PORT=${ADMIN_PORT:-18543}
disk=$WORK/disk.img
mib() { echo "scale=1; $1 / 1048576" | bc; }
echo "image: $(mib "$(stat -c %s "$disk")") MiB apparent, $(mib $(($(stat -c %b "$disk") * 512))) MiB allocated, $(mib "$(gzip -1 -c "$disk" | wc -c)") MiB gzip -1"
echo "rootfs (slot A, ext4): $(mib "$(stat -c %s "$WORK/rootfs-a.ext4")") MiB; content $(du -sm "$WORK/rootfs" | cut -f1) MiB"
BRANCHGATE_BIN=$BIN IMAGE_WORK=$WORK bash "$ROOT/tests/image/build.sh" bundle 9.9.9 "$WORK/bench.raucb" 2>/dev/null
echo "bundle: $(mib "$(stat -c %s "$WORK/bench.raucb")") MiB"
rm -f "$WORK/bench.raucb"
cp "$disk" "$WORK/bench-disk.img"
serial=$WORK/bench-serial.log
: >"$serial"
start=$(date +%s.%N)
QEMU_SERIAL=$serial QEMU_TIMEOUT=300 QEMU_PIDFILE=$WORK/bench-qemu.pid ADMIN_PORT=$PORT IMAGE_WORK=$WORK \
  bash "$ROOT/tests/image/qemu.sh" "$WORK/bench-disk.img" &
guard=$!
trap 'kill "$(cat "$WORK/bench-qemu.pid" 2>/dev/null)" 2>/dev/null || true; wait $guard 2>/dev/null || true; rm -f "$WORK/bench-disk.img"*' EXIT
until curl -ks -o /dev/null "https://127.0.0.1:$PORT/"; do
  kill -0 $guard 2>/dev/null || { echo "qemu exited; see $serial"; exit 1; }
  sleep 0.5
done
echo "boot to admin-ready (TCG): $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s"
for _ in $(seq 90); do grep -q "marked good" "$serial" && break; sleep 1; done
if grep -q "marked good" "$serial"; then
  echo "boot to slot marked good (TCG): $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s"
else
  echo "slot not marked good within 90 s (no RAUC backend?)"
fi
