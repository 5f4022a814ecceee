#!/usr/bin/env bash
# Builds kvmkit's test guest from Debian packages only, and caches it.
#
#   tools/guest/build.sh [--out DIR] [--install-deps]
#
# Produces in DIR (default: <repo>/target/guest):
#   vmlinux          uncompressed ELF kernel (booted through its PVH entry note)
#   vmlinux-unpatched  the same kernel built without the patches (for the instruction assist's tests)
#   vmlinux-noacpi   the same kernel (patched) built without ACPI and PCI, like Firecracker's microVM
#                    configs: it finds virtio devices only through virtio_mmio.device= on its command line
#   bzImage          the same kernel in the x86 boot-protocol format
#   initramfs.cpio   uncompressed cpio: /init (a static program), /dev/console
#   cmdline.txt      the kernel command line this kernel needs on this project's machines
#
# The kernel is Debian's linux-source-6.1, `make tinyconfig` + kernel.config + the patches in patches/
# (each inert unless its boot flag is on the command line). Results are cached under
# ${KVMKIT_CACHE:-$HOME/.cache/kvmkit}/guest/<hash of the inputs>, so a second run takes seconds.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/guest"
install_deps=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --install-deps) install_deps=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

pkgs=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils lz4)
if [ "$install_deps" = 1 ]; then
  missing=()
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "guest: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
src_tar=$(ls /usr/src/linux-source-6.1.tar.xz 2>/dev/null || true)
if [ -z "$src_tar" ]; then
  echo "guest: /usr/src/linux-source-6.1.tar.xz is missing: apt-get install linux-source-6.1 (or pass --install-deps)" >&2
  exit 1
fi
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)

# The kernel's cache key: what goes into the kernel build. Bump the recipe version when the kernel build
# steps below change; the initramfs is rebuilt on every run (it takes a second).
kernel_recipe=4
key=$( { echo "$src_version $kernel_recipe"; cat "$here/kernel.config" "$here"/patches/*.patch; } \
       | sha256sum | cut -c1-16)
cache="${KVMKIT_CACHE:-$HOME/.cache/kvmkit}/guest/$key"

if [ ! -f "$cache/done" ]; then
  echo "guest: building kernel $src_version (cache $cache); about 8 minutes on 2 cores" >&2
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvmkit-guest.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  tar -xf "$src_tar" -C "$work"
  ksrc=$(echo "$work"/linux-source-6.1)
  for p in "$here"/patches/*.patch; do
    patch -s -p1 -d "$ksrc" < "$p"
  done
  make -s -C "$ksrc" tinyconfig >/dev/null
  cat "$here/kernel.config" >> "$ksrc/.config"
  make -s -C "$ksrc" olddefconfig >/dev/null 2>&1
  # Every option the fragment asks for must really be there (Kconfig drops what lacks a dependency).
  bad=0
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qx "$line" "$ksrc/.config" || { echo "guest: $line did not stick" >&2; bad=1; } ;;
      "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
        if grep -q "^$opt=" "$ksrc/.config"; then echo "guest: $opt is still set" >&2; bad=1; fi ;;
    esac
  done < "$here/kernel.config"
  [ "$bad" = 0 ] || exit 1
  make -s -C "$ksrc" -j"$(nproc)" vmlinux bzImage
  make -s -C "$ksrc" usr/gen_init_cpio >/dev/null
  mkdir -p "$cache.tmp"
  cp "$ksrc/vmlinux" "$ksrc/arch/x86/boot/bzImage" "$ksrc/usr/gen_init_cpio" "$cache.tmp/"
  # The same kernel with none of the patches: what kvmkit's instruction assist must boot by itself.
  # Only the patched files and the link are redone (about 2 minutes).
  for p in "$here"/patches/*.patch; do
    patch -R -s -p1 -d "$ksrc" < "$p"
  done
  make -s -C "$ksrc" -j"$(nproc)" vmlinux
  cp "$ksrc/vmlinux" "$cache.tmp/vmlinux-unpatched"
  cp "$ksrc/.config" "$cache.tmp/config"
  # The patched kernel once more, without ACPI (and PCI, which only ACPI needed): a kernel that learns
  # of its virtio devices from the command line alone. Only what depends on those options is rebuilt.
  for p in "$here"/patches/*.patch; do
    patch -s -p1 -d "$ksrc" < "$p"
  done
  "$ksrc/scripts/config" --file "$ksrc/.config" --disable ACPI --disable PCI
  make -s -C "$ksrc" olddefconfig >/dev/null 2>&1
  for opt in CONFIG_ACPI CONFIG_PCI; do
    if grep -q "^$opt=" "$ksrc/.config"; then echo "guest: $opt is still set in the no-ACPI kernel" >&2; exit 1; fi
  done
  for line in CONFIG_VIRTIO_MMIO=y CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y CONFIG_VIRTIO_BLK=y CONFIG_VIRTIO_NET=y; do
    grep -qx "$line" "$ksrc/.config" || { echo "guest: $line did not stick in the no-ACPI kernel" >&2; exit 1; }
  done
  make -s -C "$ksrc" -j"$(nproc)" vmlinux
  cp "$ksrc/vmlinux" "$cache.tmp/vmlinux-noacpi"
  echo "$src_version" > "$cache.tmp/version"
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
  touch "$cache/done"
fi

# The initramfs: /init (a static program, no libc) and a console node. gen_init_cpio (from the kernel
# tree) needs no root and no mknod.
mkdir -p "$out"
init_work=$(mktemp -d "${TMPDIR:-/tmp}/kvmkit-init.XXXXXX")
gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie \
    -Wall -Werror -o "$init_work/init" "$here/init.c" "$here/init_net.c" "$here/init_control.c" "$here/init_shell.c" \
    "$here/init_vsock.c"
strip "$init_work/init"
cat > "$init_work/initramfs.list" <<LIST
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0755 0 0
dir /sys 0755 0 0
dir /mnt 0755 0 0
file /init $init_work/init 0755 0 0
LIST
"$cache/gen_init_cpio" "$init_work/initramfs.list" > "$out/initramfs.cpio"
# The init on its own too, for root filesystem images (integration-tests put it on an ext4 image).
cp "$init_work/init" "$out/init"
rm -rf "$init_work"
# Copied beside and renamed over: kvmkit maps a kernel's pages from its file, so a running VM must
# never see its kernel file rewritten in place.
for f in vmlinux vmlinux-unpatched vmlinux-noacpi bzImage config version; do
  cp "$cache/$f" "$out/$f.tmp"
  mv -f "$out/$f.tmp" "$out/$f"
done
cp "$here/cmdline.txt" "$out/cmdline.txt"
echo "guest: ready in $out (vmlinux, vmlinux-unpatched, vmlinux-noacpi, bzImage, initramfs.cpio, init, cmdline.txt)" >&2
