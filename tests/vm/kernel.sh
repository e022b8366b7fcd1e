# Shared by tests/vm/run.sh (the HAL test) and tests/image/build.sh (the bootable image):
# Debian's own kernel, the package linux-image-amd64 points at, cached as a .deb and unpacked
# with dpkg -x, and qemu-system-x86_64 installed when missing. Source it, then call
#
#   vm_install_packages PKG...     Debian packages (and qemu-system-x86 from bookworm-backports:
#                                  bookworm's 7.2 conflicts with the qemu-utils 10 on these machines)
#   vm_kernel CACHE_DIR UNPACK_DIR sets KDIR (the unpacked package), KVER, VMLINUZ, MODSRC
#
# Logs through the caller's `log`.

vm_install_packages() {
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
  done
  if ((${#need[@]})) || ! command -v qemu-system-x86_64 >/dev/null; then
    [[ $(id -u) -eq 0 ]] || { log "run as root to install: ${need[*]} qemu-system-x86"; return 2; }
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/bookworm-backports.list
    fi
    apt-get update -qq
    if ((${#need[@]})); then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    command -v qemu-system-x86_64 >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports qemu-system-x86 >/dev/null
  fi
}

vm_kernel() {
  local cache=$1 unpack=$2 deb pkg
  mkdir -p "$cache"
  deb=$(ls -t "$cache"/linux-image-*-amd64_*.deb 2>/dev/null | head -1 || true)
  if [[ -z $deb ]]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [[ -z $pkg ]]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'); fi
    log "downloading $pkg"
    (cd "$cache" && apt-get download -q "$pkg" 2>&1 | grep -v "unsandboxed" >&2 || true)
    deb=$(ls -t "$cache"/linux-image-*-amd64_*.deb | head -1)
  fi
  KDIR=$unpack
  if [[ ! -f $KDIR/.from || $(cat "$KDIR/.from") != "$(basename "$deb")" ]]; then
    rm -rf "$KDIR"; mkdir -p "$KDIR"
    dpkg -x "$deb" "$KDIR"
    basename "$deb" >"$KDIR/.from"
  fi
  KVER=$(ls "$KDIR/lib/modules" | head -1)
  VMLINUZ=$KDIR/boot/vmlinuz-$KVER
  MODSRC=$KDIR/lib/modules/$KVER
}

# vm_add_modules ROOT NAME...: copies the modules and what they depend on (modinfo's `depends`)
# from the unpacked kernel into ROOT/lib/modules/KVER and indexes them with depmod -b.
vm_add_modules() {
  local root=$1; shift
  local -A seen=()
  local queue=("$@") name file dep
  while ((${#queue[@]})); do
    name=${queue[0]}; queue=("${queue[@]:1}")
    [[ -n ${seen[$name]:-} ]] && continue; seen[$name]=1
    file=$(find "$MODSRC/kernel" -name "$name.ko" -o -name "${name//-/_}.ko" -o -name "${name//_/-}.ko" | head -1)
    [[ -n $file ]] || { log "module $name not found"; return 1; }
    mkdir -p "$root/lib/modules/$KVER/$(dirname "${file#"$MODSRC"/}")"
    cp "$file" "$root/lib/modules/$KVER/${file#"$MODSRC"/}"
    for dep in $(modinfo -F depends "$file" | tr ',' ' '); do queue+=("$dep"); done
  done
  cp "$MODSRC"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$KVER/" 2>/dev/null || true
  depmod -b "$root" "$KVER"
}
