#!/usr/bin/env bash
# Builds the tiny test guest the QEMU tests boot: Debian's cloud kernel plus a busybox initramfs whose /init
# loads the virtio modules, takes a DHCP lease on eth0 and powers off on the ACPI power button.
#
#   scripts/build-test-guest.sh          build (or reuse) the guest, print where it is
#   scripts/build-test-guest.sh --force  rebuild even when the output is up to date
#
# Output: ${CLOUDLET_GUEST_DIR:-<repo>/.cache/test-guest}/
#   vmlinuz          the kernel (extracted from the .deb, never installed into /boot)
#   initrd.img       busybox guest
#   initrd-qga.img   the same plus qemu-guest-agent on the virtio-serial port org.qemu.guest_agent.0
#   guest.json       kernel version, files and their sha256
# The serial console shows `cloudlet-guest: init`, `cloudlet-guest: power button armed` (it now powers off on
# the ACPI power button), `cloudlet-guest: lease <ip>`, `cloudlet-guest: qga started` and
# `cloudlet-guest: poweroff`.
#
# Needs root (or sudo) only to install missing Debian packages. CLOUDLET_GUEST_KERNEL=<version> (e.g.
# 6.1.0-56-cloud-amd64) pins the kernel instead of following linux-image-cloud-amd64.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${CLOUDLET_GUEST_DIR:-$repo/.cache/test-guest}
force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
  *) echo "build-test-guest: unknown option '$1' (allowed: --force, --help)" >&2; exit 2 ;;
esac

die() { echo "build-test-guest: $*" >&2; exit 1; }

# Debian packages: what the tests run (qemu, dnsmasq) and what the guest is made of (busybox, qemu-ga, cpio).
packages=(qemu-system-x86 qemu-utils dnsmasq-base busybox-static cpio qemu-guest-agent)
# The modules /init loads, dependencies first (their own dependencies are added from the .ko files).
modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net
  virtio_console button evdev)

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "needs root to run: $*"
  fi
}

apt_updated=0
apt_update_once() {
  [ "$apt_updated" -eq 1 ] && return 0
  as_root apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed; cannot install or download packages"
  apt_updated=1
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

ensure_packages() {
  local missing=() pkg
  for pkg in "${packages[@]}"; do installed "$pkg" || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "build-test-guest: installing ${missing[*]}" >&2
  apt_update_once
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "could not install ${missing[*]} (run: apt-get install -y --no-install-recommends ${missing[*]})"
}

pkg_version() { dpkg-query -W -f='${Version}' "$1"; }

# The kernel linux-image-cloud-amd64 points at, or the pinned one, or (offline) the newest already cached.
kernel_version() {
  if [ -n "${CLOUDLET_GUEST_KERNEL:-}" ]; then echo "$CLOUDLET_GUEST_KERNEL"; return; fi
  local v
  v=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -1)
  if [ -z "$v" ] && [ ! -d "$out/cache" ]; then
    apt_update_once
    v=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: linux-image-\(.*-cloud-amd64\)$/\1/p' | head -1)
  fi
  if [ -z "$v" ]; then
    v=$(ls -d "$out"/cache/kernel-*/ 2>/dev/null | sed 's|.*/kernel-\(.*\)/$|\1|' | sort -V | tail -1)
  fi
  [ -n "$v" ] || die "cannot find the cloud kernel's version (apt-cache depends linux-image-cloud-amd64 found none); set CLOUDLET_GUEST_KERNEL"
  echo "$v"
}

# Downloads and unpacks linux-image-<version> into $out/cache/kernel-<version>/ (once).
fetch_kernel() {
  local version=$1 dir=$out/cache/kernel-$1
  [ -f "$dir/boot/vmlinuz-$version" ] && return 0
  local tmp
  tmp=$(mktemp -d "$out/cache/.download-XXXXXX")
  echo "build-test-guest: downloading linux-image-$version" >&2
  # Sandbox user root: _apt cannot write into our cache dir.
  if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$version" >&2); then
    apt_update_once
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "linux-image-$version" >&2) \
      || { rm -rf "$tmp"; die "could not download linux-image-$version"; }
  fi
  dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/tree" || { rm -rf "$tmp"; die "could not unpack linux-image-$version"; }
  [ -f "$tmp/tree/boot/vmlinuz-$version" ] || { rm -rf "$tmp"; die "linux-image-$version has no boot/vmlinuz-$version"; }
  rm -rf "$dir"
  mv "$tmp/tree" "$dir"
  rm -rf "$tmp"
}

# Prints the module files to load, each after its dependencies, read from the modules' own .modinfo.
ordered_modules() {
  local moddir=$1; shift
  local -A seen=()
  local order=()
  visit() {
    local name=$1 file dep deps
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    # Built in: nothing to load.
    grep -qE "/${name//_/[_-]}\.ko$" "$moddir/modules.builtin" 2>/dev/null && return 0
    file=$(find "$moddir/kernel" -regextype posix-extended -regex ".*/${name//_/[_-]}\.ko(\.xz|\.zst)?" | head -1)
    [ -n "$file" ] || die "kernel module $name not found under $moddir"
    deps=$(module_info "$file" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -1)
    for dep in ${deps//,/ }; do visit "$dep"; done
    order+=("$file")
  }
  local m
  for m in "$@"; do visit "$m"; done
  printf '%s\n' "${order[@]}"
}

module_info() {
  case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) command -v zstd >/dev/null || die "zstd is needed to unpack $1 (apt-get install zstd)"; zstd -dc "$1" ;;
    *) cat "$1" ;;
  esac
}

write_init() {
  cat > "$1/init" <<'EOF'
#!/bin/sh
# cloudlet test guest: PID 1.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp
echo "cloudlet-guest: init"
while read -r module; do insmod "/lib/modules/$module" || echo "cloudlet-guest: insmod $module failed"; done < /etc/modules.order

# Busybox has no acpid policy: wait for one event on every "Power Button" device, then power off. The
# device is opened first and said so ("armed"): tests wait for that line rather than guess how long a slow
# (TCG, loaded) guest takes to get here. Events after the open are queued for the reader.
for event in /sys/class/input/event*; do
  [ "$(cat "$event/device/name" 2>/dev/null)" = "Power Button" ] || continue
  ( command exec 3< "/dev/${event#/sys/class/}" || { echo "cloudlet-guest: power button not armed"; exit 1; }
    echo "cloudlet-guest: power button armed"
    dd bs=24 count=1 of=/dev/null <&3 2>/dev/null
    echo "cloudlet-guest: poweroff"; sync; poweroff -f ) &
done

[ -x /etc/start-qga.sh ] && /etc/start-qga.sh

ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
ip link set eth0 up
until udhcpc -i eth0 -t 20 -T 1 -A 1 -n -q -s /etc/udhcpc.script; do echo "cloudlet-guest: no lease yet"; done

while true; do sleep 3600; done
EOF
  cat > "$1/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    echo "cloudlet-guest: lease $ip" > /dev/console ;;
esac
exit 0
EOF
  chmod 755 "$1/init" "$1/etc/udhcpc.script"
}

# qemu-ga and the libraries it links; started on the port named org.qemu.guest_agent.0 (no udev, so find
# the /dev/vportNpM whose sysfs name matches).
add_qga() {
  local root=$1 lib
  mkdir -p "$root/usr/sbin"
  cp -L /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
  for lib in $(ldd /usr/sbin/qemu-ga | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cat > "$root/etc/start-qga.sh" <<'EOF'
#!/bin/sh
i=0
while [ $i -lt 100 ]; do
  for port in /sys/class/virtio-ports/*; do
    if [ "$(cat "$port/name" 2>/dev/null)" = org.qemu.guest_agent.0 ]; then
      /usr/sbin/qemu-ga -d -m virtio-serial -p "/dev/${port##*/}" -t /run -f /run/qemu-ga.pid \
        && echo "cloudlet-guest: qga started" || echo "cloudlet-guest: qga failed"
      exit 0
    fi
  done
  sleep 0.1; i=$((i + 1))
done
echo "cloudlet-guest: no org.qemu.guest_agent.0 port"
EOF
  chmod 755 "$root/etc/start-qga.sh"
}

pack() { (cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1) > "$2"; }

build() {
  local version=$1 tmp=$2 moddir=$out/cache/kernel-$1/lib/modules/$1
  local root=$tmp/root file name
  mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,etc,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  : > "$root/etc/modules.order"
  while read -r file; do
    name=$(basename "$file"); name=${name%.xz}; name=${name%.zst}
    module_info "$file" > "$root/lib/modules/$name"
    echo "$name" >> "$root/etc/modules.order"
  done < <(ordered_modules "$moddir" "${modules[@]}")
  write_init "$root"
  pack "$root" "$tmp/initrd.img"
  add_qga "$root"
  pack "$root" "$tmp/initrd-qga.img"
  cp "$out/cache/kernel-$version/boot/vmlinuz-$version" "$tmp/vmlinuz"
}

write_manifest() {
  local dir=$1 version=$2 inputs=$3 f
  {
    printf '{\n  "kernelVersion": "%s",\n  "inputs": "%s",\n  "files": {\n' "$version" "$inputs"
    local sep=""
    for f in vmlinuz initrd.img initrd-qga.img; do
      printf '%s    "%s": { "sha256": "%s", "bytes": %s }' "$sep" "$f" "$(sha256sum "$dir/$f" | cut -d' ' -f1)" "$(stat -c %s "$dir/$f")"
      sep=$',\n'
    done
    printf '\n  }\n}\n'
  } > "$dir/guest.json"
}

mkdir -p "$out/cache"
# Parallel test files may run this at once: one builds, the others wait and then find it up to date.
exec 9> "$out/.lock"
flock 9

ensure_packages
version=$(kernel_version)
if [ -z "${CLOUDLET_GUEST_KERNEL:-}" ] && [ ! -f "$out/cache/kernel-$version/boot/vmlinuz-$version" ]; then
  # Not cached yet: apt's lists may be old, naming a kernel ABI the archive has dropped since. Refresh them
  # first and ask again, rather than retry the download of a version that is gone.
  apt_update_once
  version=$(kernel_version)
fi
inputs=$(printf '%s\n' "$(sha256sum "$0" | cut -d' ' -f1)" "$version" "$(pkg_version busybox-static)" \
  "$(pkg_version qemu-guest-agent)" | sha256sum | cut -d' ' -f1)

up_to_date() {
  [ -f "$out/guest.json" ] && grep -q "\"inputs\": \"$inputs\"" "$out/guest.json" \
    && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ] && [ -s "$out/initrd-qga.img" ]
}

if [ "$force" -eq 1 ] || ! up_to_date; then
  fetch_kernel "$version"
  tmp=$(mktemp -d "$out/cache/.build-XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  build "$version" "$tmp"
  write_manifest "$tmp" "$version" "$inputs"
  for f in vmlinuz initrd.img initrd-qga.img guest.json; do mv -f "$tmp/$f" "$out/$f"; done
  echo "build-test-guest: built the guest for kernel $version" >&2
fi

echo "kernel:     $out/vmlinuz ($version)"
echo "initrd:     $out/initrd.img"
echo "initrd-qga: $out/initrd-qga.img"
echo "manifest:   $out/guest.json"
