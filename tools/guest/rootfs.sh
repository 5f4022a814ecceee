#!/usr/bin/env bash
# Builds a small Debian root filesystem for kvmkit guests: target/guest/rootfs.ext4.
#
#   tools/guest/rootfs.sh [OUT.ext4]        (as root: debootstrap chroots; about 2 minutes)
#
# Debian bookworm's `minbase` (dpkg, apt, bash, coreutils) from deb.debian.org, plus iproute2,
# iputils-ping, procps, netcat-openbsd and busybox (for `poweroff`: no systemd): nothing is downloaded from anywhere else. Its init is
# /sbin/kvmkit-init (below), not systemd: it mounts /proc, /sys and /dev, names the host `kvmkit`,
# brings eth0 up with `kvmkit_ip=A.B.C.D/NN` (and `kvmkit_gw=`) from the kernel command line if
# given, prints `KVMKIT-ROOTFS-READY`, then either runs `kvmkit_cmd=...` (underscores for spaces,
# as the command line splits on them) or `kvmkit_cmd64=...` (the command base64-encoded: any
# characters) and powers off, or gives a root shell on the console and powers off when it exits. Boot it with the test kernel:
#
#   target/release/kvmkit --kernel target/guest/vmlinux --disk path=target/guest/rootfs.ext4 \
#     --cmdline "$(cat target/guest/cmdline.txt) root=/dev/vda rw init=/sbin/kvmkit-init"
#
# The image is cached: it is rebuilt only when this script changes (delete it to force one).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root_dir=$(cd "$here/../.." && pwd)
out=${1:-$root_dir/target/guest/rootfs.ext4}
stamp="$out.sha256"
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "rootfs: $out is up to date" >&2
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "rootfs: run as root (debootstrap needs chroot)" >&2
  exit 1
fi
missing=()
for p in debootstrap e2fsprogs; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmkit-rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "rootfs: debootstrap bookworm (minbase) into $work/root" >&2
debootstrap --variant=minbase --include=iproute2,iputils-ping,procps,netcat-openbsd,busybox \
  bookworm "$work/root" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
  tail -20 "$work/debootstrap.log" >&2
  exit 1
}

cat >"$work/root/sbin/kvmkit-init" <<'INIT'
#!/bin/bash
# kvmkit's init for the Debian root filesystem (tools/guest/rootfs.sh).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /run /tmp
mount -t tmpfs tmpfs /run
hostname kvmkit
ip link set lo up
for word in $(cat /proc/cmdline); do
  case "$word" in
    kvmkit_ip=*) ip_addr=${word#kvmkit_ip=} ;;
    kvmkit_gw=*) gateway=${word#kvmkit_gw=} ;;
    kvmkit_cmd=*) command=${word#kvmkit_cmd=}; command=${command//_/ } ;;
    kvmkit_cmd64=*) command=$(base64 -d <<<"${word#kvmkit_cmd64=}") ;;
  esac
done
if [ -n "${ip_addr:-}" ]; then
  ip addr add "$ip_addr" dev eth0 && ip link set eth0 up
  [ -n "${gateway:-}" ] && ip route add default via "$gateway"
fi
echo "KVMKIT-ROOTFS-READY $(. /etc/os-release; echo "$PRETTY_NAME") kernel $(uname -r)"
if [ -n "${command:-}" ]; then
  bash -c "$command" </dev/console >/dev/console 2>&1
  echo "KVMKIT-ROOTFS-DONE status=$?"
else
  setsid -c bash -l </dev/console >/dev/console 2>&1
fi
sync
# No systemd here: busybox powers off (ACPI S5; kvmkit exits 0).
exec busybox poweroff -f
INIT
chmod 755 "$work/root/sbin/kvmkit-init"
echo kvmkit >"$work/root/etc/hostname"
# Keep the image small: no apt lists, caches or documentation.
rm -rf "$work/root/var/cache/apt/"* "$work/root/var/lib/apt/lists/"* "$work/root/usr/share/doc/"* \
  "$work/root/usr/share/man/"* "$work/root/usr/share/locale/"*

size_mib=$(( $(du -sm "$work/root" | cut -f1) * 3 / 2 + 64 ))
mkdir -p "$(dirname "$out")"
rm -f "$out.tmp"
mkfs.ext4 -q -L kvmkit-root -d "$work/root" "$out.tmp" "${size_mib}M"
mv "$out.tmp" "$out"
echo "$want" >"$stamp"
echo "rootfs: $out (${size_mib} MiB, Debian bookworm minbase)" >&2
