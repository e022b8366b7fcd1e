#!/usr/bin/env bash
# The bootable x86-64 image of the box, built on a Debian 12 machine as root from Debian
# packages and our binary (no Yocto, no loop devices: file systems are made with `mkfs -d`
# and mtools, the GPT with sfdisk on the image file).
#
#   build.sh image                  $IMAGE_WORK/disk.img: GPT with
#                                     1 efi       (FAT) GRUB EFI, the layer's A/B menu, grubenv
#                                     2 rootfs_a  (ext4) the rootfs, version $IMAGE_VERSION
#                                     3 rootfs_b  (ext4) empty until the first update
#                                     4 data      (ext4) mounted at /var/lib/branchgate
#   build.sh bundle V OUT [--unhealthy]
#                                   a signed RAUC bundle of a rootfs of version V; --unhealthy
#                                   makes a rootfs whose SIP service cannot start (its boot
#                                   health check fails, so the box must fall back)
#
# The rootfs: busybox (static) with its applets, our binary, rauc, dbus-daemon and grub-editenv
# with their shared libraries (ldd closure), Debian's kernel (tests/vm/kernel.sh) in /boot with
# a small initramfs (virtio, ext4: Debian builds them as modules) and the modules the box needs
# (virtio-net, vfat, loop, squashfs, dm-verity for RAUC's verity bundles). busybox init starts
# dbus, `rauc service` and the daemon (respawned).
#
# The vendor PKI that signs bundles (a CA and a signer, ECDSA P-256) is made once in
# $IMAGE_WORK/pki; the CA is the image's RAUC keyring and the daemon's firmware keyring.
#
#   BRANCHGATE_BIN   the binary (default: the release build, target/release/branchgate)
#   IMAGE_WORK       output and work directory (default tests/artifacts/image)
#   IMAGE_VERSION    the firmware version of the image's slot A (default 1.0.0)
#   IMAGE_PROVISION  a provisioning document put on the data partition (first start applies it)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
BIN=${BRANCHGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/branchgate}
WORK=${IMAGE_WORK:-$ROOT/tests/artifacts/image}
VERSION=${IMAGE_VERSION:-1.0.0}
COMPATIBLE=branchgate-x86_64
LAYER=$ROOT/yocto/meta-branchgate
log() { printf 'image: %s\n' "$*" >&2; }

# Partition sizes (MiB). A slot holds ~90 MiB today; the rest is room to grow.
ESP_MIB=32 SLOT_MIB=256 DATA_MIB=128
# The packages this script and the image need (qemu and OVMF to boot it: tests/image/qemu.sh).
IMAGE_PACKAGES=(busybox-static cpio kmod binutils grub-efi-amd64-bin grub-common ovmf rauc dbus squashfs-tools
  e2fsprogs dosfstools mtools fdisk openssl)

source "$ROOT/tests/vm/kernel.sh"

[[ -x $BIN ]] || { log "no binary at $BIN (cargo build --release -p branchgate)"; exit 2; }
vm_install_packages "${IMAGE_PACKAGES[@]}"
mkdir -p "$WORK"
vm_kernel "$ROOT/tests/artifacts/vm/cache" "$WORK/kernel"

# --- the vendor PKI (made once; the e2e test signs its bundles with it).
PKI=$WORK/pki
make_pki() {
  [[ -f $PKI/signer.pem ]] && return
  mkdir -p "$PKI"
  local o=(-nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256)
  openssl req -x509 "${o[@]}" -keyout "$PKI/ca.key" -out "$PKI/ca.pem" -days 3650 -subj "/CN=branchgate image test CA" 2>/dev/null
  openssl req "${o[@]}" -keyout "$PKI/signer.key" -out "$PKI/signer.csr" -subj "/CN=branchgate image test signer" 2>/dev/null
  openssl x509 -req -in "$PKI/signer.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca.key" -CAcreateserial \
    -out "$PKI/signer.pem" -days 3650 2>/dev/null
}

# Copies executable $2 to $1$3 (default: its own path) and its shared libraries (ldd closure)
# into $1 at their own paths.
copy_with_libs() {
  local root=$1 exe=$2 dest=${3:-$2} lib
  mkdir -p "$root$(dirname "$dest")"
  # Debug info is most of a debug build; the box needs only the code.
  objcopy --strip-debug "$exe" "$root$dest"
  for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
    [[ -e $root$lib ]] && continue
    mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"
  done
}

# --- the initramfs in each slot's /boot: loads virtio and ext4, mounts root=PARTLABEL=... read-only.
make_initramfs() {
  local out=$1 rd=$WORK/initramfs
  rm -rf "$rd"; mkdir -p "$rd"/{bin,dev,proc,sys,newroot}
  cp /bin/busybox "$rd/bin/busybox"
  vm_add_modules "$rd" virtio_pci virtio_blk ext4 crc32c_generic >/dev/null
  cat >"$rd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_blk crc32c_generic ext4; do modprobe $m; done
root=; for arg in $(cat /proc/cmdline); do case $arg in root=PARTLABEL=*) root=${arg#root=PARTLABEL=} ;; esac; done
dev=
for i in $(seq 100); do
  for u in /sys/class/block/*/uevent; do grep -qx "PARTNAME=$root" "$u" && dev=/dev/$(grep '^DEVNAME=' "$u" | cut -d= -f2); done
  [ -n "$dev" ] && [ -b "$dev" ] && break
  sleep 0.1
done
mount -o ro -t ext4 "$dev" /newroot || { echo "initramfs: cannot mount $root ($dev)"; sleep 5; reboot -f; }
umount /sys /proc; mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
INIT
  chmod +x "$rd/init"
  (cd "$rd" && find . | cpio -o -H newc --quiet | gzip -9 >"$out")
}

# --- a rootfs directory for version $2 in $1; --unhealthy as $3 breaks its SIP service.
make_rootfs_dir() {
  local r=$1 version=$2 unhealthy=${3:-}
  rm -rf "$r"; mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,run,tmp,mnt,boot/efi,var/lib/branchgate,root}
  cp /bin/busybox "$r/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list-full); do
    [[ -e $r/$applet ]] || ln -s /bin/busybox "$r/$applet"
  done
  ln -sf /bin/busybox "$r/sbin/init"
  # GLib (RAUC) looks for the system bus under /var/run.
  mkdir -p "$r/var"; ln -s /run "$r/var/run"
  copy_with_libs "$r" "$BIN" /usr/bin/branchgate
  local exe
  for exe in /usr/bin/rauc /usr/bin/dbus-daemon /usr/bin/grub-editenv; do copy_with_libs "$r" "$exe"; done
  # libasound resolves device names through its configuration; GStreamer is linked but the
  # simulated camera needs no plugins.
  mkdir -p "$r/usr/share"; cp -r /usr/share/alsa "$r/usr/share/alsa"
  # The kernel, its initramfs and the modules of the running box.
  cp "$VMLINUZ" "$r/boot/bzImage"
  cp "$WORK/initrd.gz" "$r/boot/initrd"
  vm_add_modules "$r" virtio_net virtio_rng vfat nls_ascii nls_cp437 loop squashfs dm-verity xhci_pci usb_storage sd_mod >/dev/null

  echo "$version" >"$r/etc/branchgate-version"
  printf 'root:x:0:0:root:/root:/bin/sh\nmessagebus:x:100:101::/run/dbus:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nmessagebus:x:101:\n' >"$r/etc/group"
  echo branchgate >"$r/etc/hostname"
  printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$r/etc/nsswitch.conf"
  # dbus-daemon needs a machine id; the rootfs is read-only and shared by every box, so each
  # boot makes one in /run.
  ln -s /run/machine-id "$r/etc/machine-id"
  # RAUC: the layer's system.conf for EFI machines, our keyring.
  mkdir -p "$r/etc/rauc"
  sed -e "s#@COMPATIBLE@#$COMPATIBLE#" -e "s#@KEYRING@#/etc/rauc/keyring.pem#" \
    -e "s#^data-directory=.*#data-directory=/var/lib/branchgate/rauc#" \
    "$LAYER/recipes-core/rauc/files/system.conf" >"$r/etc/rauc/system.conf"
  cp "$PKI/ca.pem" "$r/etc/rauc/keyring.pem"
  # The system bus, for RAUC and the daemon only (root on both ends).
  mkdir -p "$r/etc/dbus-1"
  cat >"$r/etc/dbus-1/system.conf" <<'CONF'
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=/run/dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <!-- Debian's kernel enables AppArmor; with no profiles loaded, mediation only refuses peers. -->
  <apparmor mode="disabled"/>
  <!-- Every rule a message needs, both ways: a message no rule allows is dropped, and without
       receive rules the bus's own reply to Hello never reaches a client (each client then waits
       for its connection to finish until it times out). -->
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
CONF
  cat >"$r/etc/inittab" <<'TAB'
::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/branchgate-start
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/sync
TAB
  mkdir -p "$r/etc/init.d"
  cat >"$r/etc/init.d/rcS" <<'RCS'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 run /run; mount -t tmpfs tmp /tmp; mount -t tmpfs mnt /mnt
mkdir -p /dev/pts /dev/disk/by-partlabel; mount -t devpts devpts /dev/pts
echo "branchgate: booting slot $(sed 's/.*rauc.slot=\([A-Z]\).*/\1/' /proc/cmdline), firmware $(cat /etc/branchgate-version)"
hostname -F /etc/hostname
# USB host and mass storage: the field tech's stick (the daemon mounts it, --usb-automount).
for m in virtio_net virtio_rng vfat nls_ascii nls_cp437 loop squashfs dm-verity xhci_pci usb_storage sd_mod; do modprobe $m; done
# No udev: the by-partlabel links RAUC's system.conf names.
for u in /sys/class/block/*/uevent; do
  name=$(grep '^PARTNAME=' "$u" | cut -d= -f2); dev=$(grep '^DEVNAME=' "$u" | cut -d= -f2)
  [ -n "$name" ] && ln -sf "/dev/$dev" "/dev/disk/by-partlabel/$name"
done
mount -t vfat /dev/disk/by-partlabel/efi /boot/efi
e2fsck -p /dev/disk/by-partlabel/data >/dev/null 2>&1
mount -t ext4 /dev/disk/by-partlabel/data /var/lib/branchgate
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
mkdir -p /run/dbus /var/lib/branchgate/rauc
tr -d '-' </proc/sys/kernel/random/uuid >/run/machine-id
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=/run/dbus/system_bus_socket
# --fork returns once the socket listens; DBUS_DEBUG_OUTPUT keeps the daemon's stderr (its
# policy rejections) on the console instead of /dev/null.
DBUS_DEBUG_OUTPUT=1 dbus-daemon --config-file=/etc/dbus-1/system.conf --fork --nopidfile --nosyslog >/dev/console 2>&1
rauc service >/dev/console 2>&1 &
# Until RAUC answers on the bus (the daemon looks for it once, at start), at most 3 x 5 s: a
# D-Bus call that hangs must not hold up the box, and software emulation under load is slow.
for try in 1 2 3; do timeout 5 rauc status >/dev/null 2>&1 && break; done \
  || echo "branchgate: RAUC does not answer on D-Bus; firmware updates will be simulated"
RCS
  cat >"$r/usr/sbin/branchgate-start" <<'RUN'
#!/bin/sh
# The daemon, restarted by init when it exits; its console output is the box's log.
set -- --data-dir /var/lib/branchgate --firmware-version "$(cat /etc/branchgate-version)" \
  --firmware-keyring /etc/rauc/keyring.pem --usb-automount
[ -f /var/lib/branchgate/provision.json ] && set -- "$@" --provision /var/lib/branchgate/provision.json
[ -x /etc/branchgate-pre-start ] && /etc/branchgate-pre-start
exec /usr/bin/branchgate run "$@" >/dev/console 2>&1
RUN
  chmod +x "$r/etc/init.d/rcS" "$r/usr/sbin/branchgate-start"
  if [[ $unhealthy == --unhealthy ]]; then
    # A deliberately broken release: something holds SIP's TCP port, so the sip service keeps
    # failing and the boot health check never passes. (busybox nc has no -k: it listens until a
    # first connection, which nothing makes; the daemon starts only once the port is taken, over
    # IPv6 as well: busybox nc listens on a dual-stack socket.)
    cat >"$r/etc/branchgate-pre-start" <<'PRE'
#!/bin/sh
grep -qs ':13C4 0*:0000 0A' /proc/net/tcp /proc/net/tcp6 && exit 0
nc -l -p 5060 >/dev/null 2>&1 </dev/null &
for i in $(seq 100); do grep -qs ':13C4 0*:0000 0A' /proc/net/tcp /proc/net/tcp6 && exit 0; sleep 0.1; done
echo "branchgate-pre-start: could not hold TCP 5060" >&2
PRE
    chmod +x "$r/etc/branchgate-pre-start"
  fi
}

# An ext4 image of directory $1 in $2, sized to its content plus room for the journal.
make_ext4() {
  local dir=$1 out=$2 label=$3 kib
  kib=$(du -sk "$dir" | cut -f1)
  kib=$(((kib * 12 / 10 + 16384 + 1023) / 1024 * 1024))
  rm -f "$out"
  mkfs.ext4 -q -F -L "$label" -b 4096 -E root_owner=0:0 -d "$dir" "$out" "${kib}k" >/dev/null
}

cmd_image() {
  make_pki
  make_initramfs "$WORK/initrd.gz"
  make_rootfs_dir "$WORK/rootfs" "$VERSION"
  make_ext4 "$WORK/rootfs" "$WORK/rootfs-a.ext4" rootfs

  # ESP: GRUB EFI at the removable-media path (OVMF boots it without NVRAM entries), the layer's
  # A/B menu and grubenv. The menu is RAUC's ORDER/x_OK/x_TRY logic unchanged; the image adds
  # the initramfs to each entry (Debian's kernel has virtio and ext4 as modules) and boots
  # without waiting at the menu.
  local esp=$WORK/esp
  rm -rf "$esp"; mkdir -p "$esp/EFI/BOOT"
  grub-mkimage -O x86_64-efi -p /EFI/BOOT -o "$esp/EFI/BOOT/BOOTX64.EFI" \
    part_gpt fat ext2 normal linux loadenv test echo serial terminal configfile efi_gop all_video gzio regexp
  sed -e 's/^timeout=.*/timeout=0/' -e 's/^set CMDLINE="ro /set CMDLINE="ro quiet /' \
    -e 's#^\( *\)linux (\$BOOTDISK,gpt\([0-9]\))\(.*\)$#\1linux ($BOOTDISK,gpt\2)\3\n\1initrd ($BOOTDISK,gpt\2)/boot/initrd#' \
    "$LAYER/wic/branchgate-grub.cfg" >"$esp/EFI/BOOT/grub.cfg"
  grep -q 'initrd ($BOOTDISK,gpt3)' "$esp/EFI/BOOT/grub.cfg" || { log "could not add the initramfs to the menu"; exit 1; }
  grub-editenv "$esp/EFI/BOOT/grubenv" create
  grub-editenv "$esp/EFI/BOOT/grubenv" set ORDER="A B" A_OK=1 A_TRY=0 B_OK=0 B_TRY=0
  rm -f "$WORK/esp.img"
  mkfs.vfat -C -n EFI "$WORK/esp.img" $((ESP_MIB * 1024)) >/dev/null
  mcopy -s -i "$WORK/esp.img" "$esp/EFI" ::/

  # Data partition: empty, or with the provisioning document.
  local data=$WORK/data
  rm -rf "$data"; mkdir -p "$data"
  [[ -n ${IMAGE_PROVISION:-} ]] && install -m 0600 "$IMAGE_PROVISION" "$data/provision.json"
  rm -f "$WORK/data.ext4"
  mkfs.ext4 -q -F -L data -E root_owner=0:0 -d "$data" "$WORK/data.ext4" "${DATA_MIB}M" >/dev/null

  # The disk: GPT, then each file system written at its partition's offset.
  local disk=$WORK/disk.img
  rm -f "$disk"
  truncate -s $(((1 + ESP_MIB + 2 * SLOT_MIB + DATA_MIB + 1) * 1024 * 1024)) "$disk"
  sfdisk --quiet "$disk" <<EOF
label: gpt
start=1MiB, size=${ESP_MIB}MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=efi
size=${SLOT_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_a
size=${SLOT_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=rootfs_b
size=${DATA_MIB}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data
EOF
  local offset=1
  dd if="$WORK/esp.img" of="$disk" bs=1M seek=$offset conv=notrunc,sparse status=none
  offset=$((offset + ESP_MIB))
  dd if="$WORK/rootfs-a.ext4" of="$disk" bs=1M seek=$offset conv=notrunc,sparse status=none
  offset=$((offset + 2 * SLOT_MIB))
  dd if="$WORK/data.ext4" of="$disk" bs=1M seek=$offset conv=notrunc,sparse status=none
  log "$disk: $(du -h --apparent-size "$disk" | cut -f1) ($(du -h "$disk" | cut -f1) allocated); slot A $VERSION: rootfs $(du -h "$WORK/rootfs-a.ext4" | cut -f1), kernel $KVER"
}

cmd_bundle() {
  local version=${1:?version} out=${2:?output} unhealthy=${3:-}
  make_pki
  [[ -f $WORK/initrd.gz ]] || make_initramfs "$WORK/initrd.gz"
  local dir=$WORK/bundle-$version
  rm -rf "$dir"; mkdir -p "$dir"
  make_rootfs_dir "$dir/rootfs" "$version" "$unhealthy"
  make_ext4 "$dir/rootfs" "$dir/rootfs.ext4" rootfs
  "$BIN" bundle create --cert "$PKI/signer.pem" --key "$PKI/signer.key" --version "$version" \
    --compatible "$COMPATIBLE" --rootfs "$dir/rootfs.ext4" -o "$out" >/dev/null
  rm -rf "$dir"
  log "$out: bundle $version${unhealthy:+ ($unhealthy)}, $(du -h "$out" | cut -f1)"
}

case ${1:-} in
  image) cmd_image ;;
  bundle) shift; cmd_bundle "$@" ;;
  *) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
