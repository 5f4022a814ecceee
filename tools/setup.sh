#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for kvmkit: installs the packages the guest build, the disk tests
# (e2fsprogs), the API tests (curl), the snapshot test (ping) and the benchmarks (QEMU, strace, the
# peer in tools/bench) need, builds kvmkit (release) and the test guest (tools/guest/build.sh, cached
# after the first run), and fetches Debian's cloud kernel for the instruction-assist boot test
# (tools/guest/debian-kernel.sh), and builds a Debian root filesystem (tools/guest/rootfs.sh,
# debootstrap from deb.debian.org). tmux drives the guest terminal test; util-linux (unshare) the
# full-disk test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -e /dev/kvm ]; then
  echo "setup: /dev/kvm is missing: kvmkit needs KVM (load kvm_intel/kvm_amd, or run on a host with KVM)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
pkgs=(linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils lz4 e2fsprogs
      qemu-system-x86 python3 iproute2 iputils-ping curl strace tmux util-linux debootstrap)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust 1.95 with rustup" >&2; exit 1; }

tools/guest/build.sh
tools/guest/debian-kernel.sh
# The Debian root filesystem (debootstrap needs root; cached after the first run).
$sudo tools/guest/rootfs.sh
cargo build --release -p kvmkit
echo "setup: done. kvmkit is target/release/kvmkit; the test guest is in target/guest/" >&2
