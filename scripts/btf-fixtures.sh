#!/usr/bin/env bash
# Regenerates the kernel BTF fixtures in iopf-agent/tests/fixtures/btf/ (run by
# `cargo xtask btf-fixtures`; not part of CI, the outputs are committed):
#   debian-6.1.btf.zst        Debian 12 linux-image-6.1.*-amd64-unsigned (newest in apt)
#   debian-6.12.btf.zst       Debian 12 linux-image-6.12.*+deb12-amd64-unsigned (newest in apt)
#   iopf-6.12.btf.zst         ../shared/vm/bzImage-6.12.117-iopf (IOMMUFD_TEST, IOMMU_IOPF built in)
#   host-6.18.btf.zst         /sys/kernel/btf/vmlinux of a development host (6.18)
#   debian-7.3-arm64.btf.zst  Debian trixie-backports linux-binary-unsigned-7.3.*+deb13-arm64, the
#                             image `cargo xtask vm-test --kernel debian-7.3-arm64` fetched (it has
#                             both SMMU drivers' `struct arm_smmu_device`)
# Downloads are cached in ${IOPF_CACHE:-$HOME/.cache/iopf}.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/iopf-agent/tests/fixtures/btf"
cache="${IOPF_CACHE:-$HOME/.cache/iopf}/kernels"
mkdir -p "$out" "$cache"
say() { printf '[btf-fixtures] %s\n' "$*"; }

newest() { apt-cache search --names-only "$1" | awk '{print $1}' | grep -E "$2" | sort -V | tail -1; }

# vmlinuz/bzImage -> the .BTF section of the vmlinux inside it.
btf_of_bzimage() {
  local img=$1 dst=$2 tmp off
  tmp=$(mktemp -d)
  off=$(python3 - "$img" <<'PY'
import sys
b = open(sys.argv[1], 'rb').read()
for tool, magic in (('xz', b'\xfd7zXZ\x00'), ('zstd', b'\x28\xb5\x2f\xfd'), ('gzip', b'\x1f\x8b\x08')):
    i = b.find(magic)
    if i >= 0:
        print(tool, i)
        break
PY
)
  set -- $off
  # Decompressors stop at the payload's end and complain about the trailer: that is fine.
  tail -c +$(($2 + 1)) "$img" | "$1" -dc > "$tmp/vmlinux" 2>/dev/null || true
  objcopy -O binary --only-section=.BTF "$tmp/vmlinux" "$tmp/btf"
  zstd -q -19 -f "$tmp/btf" -o "$dst"
  rm -rf "$tmp"
}

# An uncompressed arm64 Image -> its .BTF section, found by its header (magic 0xeb9f, version
# 1, a 24-byte header) and sized from that header: no ELF to cut it from.
btf_of_arm64_image() {
  python3 - "$1" "$2.raw" <<'PY'
import struct, sys
b = open(sys.argv[1], 'rb').read()
i = b.find(b'\x9f\xeb\x01\x00')
while i >= 0:
    hdr, type_off, type_len, str_off, str_len = struct.unpack_from('<5I', b, i + 4)
    if hdr == 24 and type_off == 0 and str_off == type_len and type_len > 1 << 20:
        open(sys.argv[2], 'wb').write(b[i:i + hdr + str_off + str_len])
        sys.exit(0)
    i = b.find(b'\x9f\xeb\x01\x00', i + 1)
sys.exit(f"{sys.argv[1]}: no vmlinux BTF found")
PY
  zstd -q -19 -f --rm "$2.raw" -o "$2"
}

for spec in "linux-image-6.1:^linux-image-6\.1\.[0-9]+-[0-9]+-amd64-unsigned$:debian-6.1" \
            "linux-image-6.12:^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$:debian-6.12"; do
  IFS=: read -r search re name <<<"$spec"
  pkg=$(newest "$search" "$re")
  [ -n "$pkg" ] || { echo "no package matches $re (apt-get update?)" >&2; exit 1; }
  if ! ls "$cache/$pkg"_*.deb >/dev/null 2>&1; then
    say "downloading $pkg"
    (cd "$cache" && apt-get download "$pkg" >/dev/null)
  fi
  deb=$(ls "$cache/$pkg"_*.deb | head -1)
  tmp=$(mktemp -d)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards './boot/vmlinuz-*'
  say "$name <- $pkg"
  btf_of_bzimage "$tmp"/boot/vmlinuz-* "$out/$name.btf.zst"
  rm -rf "$tmp"
done
say "iopf-6.12 <- ../shared/vm/bzImage-6.12.117-iopf"
btf_of_bzimage "$here/../shared/vm/bzImage-6.12.117-iopf" "$out/iopf-6.12.btf.zst"
if [ "$(uname -r | cut -d. -f1,2)" = "6.18" ]; then
  say "host-6.18 <- /sys/kernel/btf/vmlinux"
  zstd -q -19 -f /sys/kernel/btf/vmlinux -o "$out/host-6.18.btf.zst"
else
  say "host-6.18 kept (this host runs $(uname -r))"
fi
arm64=$(ls "$cache"/linux-binary-unsigned-7.3.*+deb13-arm64/usr/lib/modules/*/vmlinuz.unsigned 2>/dev/null | sort -V | tail -1)
if [ -n "$arm64" ]; then
  say "debian-7.3-arm64 <- $arm64"
  btf_of_arm64_image "$arm64" "$out/debian-7.3-arm64.btf.zst"
else
  say "debian-7.3-arm64 kept (no arm64 7.3 image in $cache: cargo xtask vm-test --kernel debian-7.3-arm64 fetches it)"
fi
ls -la "$out"
