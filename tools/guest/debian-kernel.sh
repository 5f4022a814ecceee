#!/usr/bin/env bash
# Fetches Debian's own cloud kernel and extracts its uncompressed ELF vmlinux, for the boot test of
# kvmkit's instruction assist (a stock distribution kernel, not built by us, no patches).
#
#   tools/guest/debian-kernel.sh [--out DIR]
#
# Produces DIR/debian-vmlinux (default DIR: <repo>/target/guest) and DIR/debian-version. The package is
# whatever `linux-image-cloud-amd64` depends on in the configured apt sources (Debian 12: 6.1.x). Cached
# under ${KVMKIT_CACHE:-$HOME/.cache/kvmkit}/debian-kernel/<package version>.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/target/guest"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "debian-kernel.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done

find_pkg() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=$(find_pkg)
if [ -z "$pkg" ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq || true
  pkg=$(find_pkg)
fi
if [ -z "$pkg" ]; then
  echo "debian-kernel: apt knows no linux-image-cloud-amd64 (run apt-get update?)" >&2
  exit 1
fi
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
cache="${KVMKIT_CACHE:-$HOME/.cache/kvmkit}/debian-kernel/$pkg-$version"

if [ ! -f "$cache/vmlinux" ]; then
  echo "debian-kernel: fetching $pkg $version" >&2
  work=$(mktemp -d "${TMPDIR:-/tmp}/kvmkit-debian-kernel.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download "$pkg" >/dev/null 2>&1) || {
    echo "debian-kernel: apt-get download $pkg failed" >&2; exit 1; }
  dpkg-deb -x "$work"/*.deb "$work/root"
  vmlinuz=$(ls "$work"/root/boot/vmlinuz-* | head -1)
  # A bzImage carries the kernel compressed after its setup code and decompressor: find the
  # compressed stream by its magic and keep the first one that inflates to an ELF file.
  python3 - "$vmlinuz" "$work/vmlinux" <<'PY'
import subprocess, sys
data = open(sys.argv[1], "rb").read()
formats = [(b"\x1f\x8b\x08", ["gzip", "-dc"]), (b"\xfd7zXZ\x00", ["xz", "-dc"]),
           (b"\x02\x21\x4c\x18", ["lz4", "-dc"]), (b"\x28\xb5\x2f\xfd", ["zstd", "-dc"]),
           (b"BZh", ["bzip2", "-dc"]), (b"\x5d\x00\x00", ["xz", "--format=lzma", "-dc"])]
for magic, cmd in formats:
    at = data.find(magic)
    while at >= 0:
        try:
            out = subprocess.run(cmd, input=data[at:], capture_output=True).stdout
        except FileNotFoundError:
            break
        if out[:4] == b"\x7fELF":
            open(sys.argv[2], "wb").write(out)
            print(f"debian-kernel: {cmd[0]} stream at offset {at}, {len(out)} bytes", file=sys.stderr)
            sys.exit(0)
        at = data.find(magic, at + 1)
sys.exit("debian-kernel: no compressed ELF kernel found in " + sys.argv[1])
PY
  mkdir -p "$cache.tmp"
  mv "$work/vmlinux" "$cache.tmp/vmlinux"
  echo "$pkg $version" > "$cache.tmp/version"
  rm -rf "$cache"
  mv "$cache.tmp" "$cache"
fi
mkdir -p "$out"
cp "$cache/vmlinux" "$out/debian-vmlinux"
cp "$cache/version" "$out/debian-version"
echo "debian-kernel: ready: $out/debian-vmlinux ($(cat "$cache/version"))" >&2
