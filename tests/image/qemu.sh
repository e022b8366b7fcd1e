#!/usr/bin/env bash
# Boots the image of tests/image/build.sh in qemu-system-x86_64 with OVMF (UEFI), under TCG:
# KVM does not work on these machines. Always under `timeout -s KILL`.
#
#   qemu.sh [DISK]      (default $IMAGE_WORK/disk.img)
#
#   IMAGE_WORK     where the image and OVMF's variable store live (default tests/artifacts/image)
#   QEMU_SERIAL    file for the serial console (default: this terminal)
#   QEMU_PIDFILE   qemu's pid file (default none)
#   QEMU_TIMEOUT   seconds before qemu is killed (default 3600)
#   ADMIN_PORT     host port forwarded to the box's admin HTTPS :8443 (default 18443)
#   QEMU_MEMORY    MiB of guest memory (default 768)
#   QEMU_USB       a raw disk image plugged in as a USB stick (default none)
#
# The console is the box's: the daemon's log and the first-login password appear there.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=${IMAGE_WORK:-$ROOT/tests/artifacts/image}
DISK=${1:-$WORK/disk.img}
PORT=${ADMIN_PORT:-18443}
[[ -f $DISK ]] || { echo "qemu: no image at $DISK (./x image)" >&2; exit 2; }
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
# UEFI variables are per disk: OVMF writes its boot entries there.
VARS=$DISK.ovmf-vars
[[ -f $VARS ]] || cp /usr/share/OVMF/OVMF_VARS_4M.fd "$VARS"
if [[ -n ${QEMU_SERIAL:-} ]]; then serial=(-serial "file:$QEMU_SERIAL"); else serial=(-serial mon:stdio); fi
pidfile=(); [[ -n ${QEMU_PIDFILE:-} ]] && pidfile=(-pidfile "$QEMU_PIDFILE")
# The disk boots first (bootindex): a stick plugged in must not send OVMF to PXE or to the stick.
usb=(); [[ -n ${QEMU_USB:-} ]] && usb=(-device qemu-xhci -drive "if=none,id=stick,format=raw,file=$QEMU_USB" -device usb-storage,drive=stick,bootindex=9)
exec timeout -s KILL "${QEMU_TIMEOUT:-3600}" qemu-system-x86_64 -accel tcg -machine q35 -m "${QEMU_MEMORY:-768}" -smp 1 \
  -nodefaults -no-user-config -display none "${serial[@]}" "${pidfile[@]}" \
  -drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$VARS" \
  -drive "file=$DISK,format=raw,if=none,id=disk" -device virtio-blk-pci,drive=disk,bootindex=0 \
  -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$PORT-:8443" -device virtio-net-pci,netdev=net0 \
  -device virtio-rng-pci "${usb[@]}"
