#!/usr/bin/env bash
# The HAL against real kernel drivers: boots Debian's own kernel (linux-image-amd64) in
# qemu-system-x86_64 (TCG: KVM does not work on these machines) with a busybox initramfs
# holding our binary and the modules vivid (V4L2 camera), snd-aloop (ALSA loopback),
# snd-dummy (a card with a mixer) and i6300esb (the watchdog of qemu's `-device i6300esb`).
#
# Inside, /init runs `branchgate hal selftest` (cameras: frames read through V4L2, then 4 s of
# vivid's picture through our GStreamer pipeline — v4l2src, x264enc, RTP —; a 1 kHz tone through the loopback,
# the mixer, the watchdog petted and closed with the magic 'V'), then `branchgate run` with
# `--watchdog-device /dev/watchdog --watchdog-timeout 5`: its health loop keeps the VM up for
# 15 s, then the daemon is killed with SIGKILL (no magic close) and the watchdog must reset
# the VM, which shows as a second boot on the serial console.
#
# Output: $VM_WORK/serial.log (the whole console) and $VM_WORK/report.json (the selftest's
# report); exit 0 when the VM booted twice. The checks on the report are in
# tests/e2e/hal-vm.test.mjs, which runs this script.
#
#   BRANCHGATE_BIN  the binary to test (default target/debug/branchgate)
#   VM_WORK         work directory (default tests/artifacts/vm; .debs cached in its cache/)
#   VM_TIMEOUT      seconds before qemu is killed (default 170)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${BRANCHGATE_BIN:-$ROOT/target/debug/branchgate}
WORK=${VM_WORK:-$ROOT/tests/artifacts/vm}
CACHE=$WORK/cache
TIMEOUT=${VM_TIMEOUT:-170}
log() { printf 'vm: %s\n' "$*" >&2; }

[[ -x $BIN ]] || { log "no binary at $BIN (cargo build -p branchgate)"; exit 2; }
mkdir -p "$CACHE"

# --- packages: busybox (static, so the initramfs needs no libc for it), kmod's depmod,
# binutils' objcopy, qemu-system-x86; and the kernel (tests/vm/kernel.sh).
source "$HERE/kernel.sh"
vm_install_packages busybox-static kmod binutils
BUSYBOX=/bin/busybox
vm_kernel "$CACHE" "$WORK/kernel"

# --- the initramfs.
RD=$WORK/root
rm -rf "$RD"; mkdir -p "$RD"/{bin,dev,proc,sys,tmp,etc,lib/modules/"$KVER"}
cp "$BUSYBOX" "$RD/bin/busybox"
# Debug info is most of a debug build; the guest needs only the code.
objcopy --strip-debug "$BIN" "$RD/bin/branchgate"
# The shared libraries it links (libasound, GStreamer, OpenSSL, libopus, glibc ...), at their paths.
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
  mkdir -p "$RD$(dirname "$lib")"; cp -L "$lib" "$RD$lib"
done
# GStreamer: only the plugins a vivid camera's pipeline uses (v4l2src, videoconvert, queue and
# identity, x264enc, rtph264pay, appsink) and its snapshot (rtph264depay, h264parse, decodebin,
# openh264dec, jpegenc) and the libraries they link; the registry is built
# in-process at the first use (no gst-plugin-scanner in the guest).
GST_PLUGINS=$(pkg-config --variable=pluginsdir gstreamer-1.0 2>/dev/null || echo /usr/lib/x86_64-linux-gnu/gstreamer-1.0)
mkdir -p "$RD/gst-plugins"
for p in coreelements video4linux2 videoconvertscale x264 rtp app videoparsersbad playback typefindfunctions openh264 jpeg; do
  so=$GST_PLUGINS/libgst$p.so
  [[ -f $so ]] || { log "GStreamer plugin $so missing (apt-get install gstreamer1.0-plugins-{base,good,bad,ugly})"; exit 1; }
  cp -L "$so" "$RD/gst-plugins/"
  for lib in $(ldd "$so" | grep -o '/[^ ]*'); do
    [[ -e $RD$lib ]] && continue
    mkdir -p "$RD$(dirname "$lib")"; cp -L "$lib" "$RD$lib"
  done
done
# libasound reads its configuration to resolve names like hw:Loopback,0,0.
mkdir -p "$RD/usr/share"; cp -r /usr/share/alsa "$RD/usr/share/alsa"

# The modules and what they depend on, indexed with depmod -b.
vm_add_modules "$RD" vivid snd-aloop snd-dummy i6300esb

cat >"$RD/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "BGVM: boot"
# vivid: one device with a video capture node only; snd-aloop as card 0, snd-dummy (a mixer) as 1.
modprobe vivid n_devs=1 node_types=0x1
modprobe snd-aloop index=0 pcm_substreams=2
modprobe snd-dummy index=1
modprobe i6300esb
for i in $(seq 50); do
  [ -e /dev/watchdog ] && [ -e /dev/video0 ] && [ -e /dev/snd/controlC1 ] && break
  sleep 0.2
done
ls /dev/watchdog /dev/video* /dev/snd/
echo "BGVM: selftest"
export GST_PLUGIN_SYSTEM_PATH=/gst-plugins GST_REGISTRY=/tmp/gst-registry.bin GST_REGISTRY_FORK=no
/bin/branchgate hal selftest --json --camera-encode-secs 4 --camera-encode-width 640 --camera-encode-height 360 \
  --camera-restart-size 320x180 --camera-snapshot \
  --audio-playback hw:Loopback,0,0 --audio-capture hw:Loopback,1,0 --tone-hz 1000 --tone-ms 1000 \
  --mixer-card Dummy --camera-frames 3 \
  --watchdog /dev/watchdog --watchdog-timeout 5 --pets 4 >/tmp/report.json 2>/tmp/stderr
rc=$?
echo "BGVM: report-begin"
cat /tmp/report.json
echo "BGVM: report-end rc=$rc"
cat /tmp/stderr
# The daemon pets the device from its health loop: alive for well over the 5 s timeout,
# then killed (no magic close), after which the watchdog must reset the machine.
ip link set lo up
echo "BGVM: daemon start"
/bin/branchgate run --data-dir /tmp/box --watchdog-device /dev/watchdog --watchdog-timeout 5 >/tmp/daemon.log 2>&1 &
daemon=$!
for i in $(seq 240); do grep -q "admin UI ready" /tmp/daemon.log && break; sleep 0.5; done
grep -q "admin UI ready" /tmp/daemon.log && echo "BGVM: daemon ready"
sleep 15
kill -0 $daemon && echo "BGVM: daemon alive after 15 s"
grep -i "watchdog" /tmp/daemon.log | sed 's/^/BGVM: daemon log: /'
kill -9 $daemon
echo "BGVM: daemon killed, waiting for the watchdog"
sleep 60
echo "BGVM: still alive after 60 s: the watchdog did not reset the machine"
poweroff -f
INIT
chmod +x "$RD/init"
(cd "$RD" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null >"$WORK/initrd.cpio")
log "initramfs $(du -h "$WORK/initrd.cpio" | cut -f1), kernel $KVER"

# --- boot. The console goes to a file that is watched for the second boot.
SERIAL=$WORK/serial.log
: >"$SERIAL"
started=$SECONDS
rm -f "$WORK/qemu.pid"
# qemu's own output goes to a file: an orphaned qemu must not hold the caller's pipes open.
timeout -s KILL "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 768 -smp 1 -nodefaults -no-user-config \
  -display none -serial "file:$SERIAL" -pidfile "$WORK/qemu.pid" \
  -device i6300esb -action watchdog=reset \
  -kernel "$VMLINUZ" -initrd "$WORK/initrd.cpio" -append "console=ttyS0 panic=-1 loglevel=3" \
  >"$WORK/qemu.out" 2>&1 </dev/null &
guard=$!
stop_qemu() {
  # TERM to timeout is passed on to qemu; the pid file catches a qemu that outlived it.
  kill -TERM "$guard" 2>/dev/null || true
  wait "$guard" 2>/dev/null || true
  local pid
  pid=$(cat "$WORK/qemu.pid" 2>/dev/null || true)
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
}
trap stop_qemu EXIT
boots=0
while kill -0 "$guard" 2>/dev/null; do
  boots=$(grep -c "BGVM: boot" "$SERIAL" || true)
  ((boots >= 2)) && break
  grep -q "BGVM: still alive" "$SERIAL" && break
  sleep 0.5
done
stop_qemu
log "qemu ran $((SECONDS - started)) s; boots seen: $boots"
# The report: the lines between the markers (the serial console adds \r).
tr -d '\r' <"$SERIAL" | sed -n '/^BGVM: report-begin/,/^BGVM: report-end/p' | sed '1d;$d' >"$WORK/report.json"
((boots >= 2)) || { log "no second boot: the watchdog did not reset the VM (see $SERIAL)"; exit 1; }
