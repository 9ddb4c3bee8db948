#!/usr/bin/env bash
# Builds tests/kmod against the external-module build tree of the custom 7.3.4 kernel,
# ../shared/vm/linux-kbuild-7.3.4-iopf.tar.xz: iopf_sva_test.ko (the software IOMMU that
# drives the kernel's real SVA I/O page fault path) and iopf_vtd_report_test.ko (reports
# page requests for the QEMU edu device behind VT-d to iommu_report_device_fault). The tree
# is unpacked once into ${IOPF_CACHE:-~/.cache/iopf}/kbuild/; the sources are copied to
# target/kmod/build so the repository stays clean. Output: target/kmod/iopf_sva_test.ko and
# target/kmod/iopf_vtd_report_test.ko. Usage:
#   scripts/build-sva-kmod.sh            # IOPF_KBUILD_TARBALL=... to use another tarball
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tarball="${IOPF_KBUILD_TARBALL:-$(dirname "$here")/shared/vm/linux-kbuild-7.3.4-iopf.tar.xz}"
cache="${IOPF_CACHE:-$HOME/.cache/iopf}/kbuild"
out="$here/target/kmod"
say() { printf '[build-sva-kmod] %s\n' "$*"; }
die() { printf '[build-sva-kmod] error: %s\n' "$*" >&2; exit 1; }

[ -f "$tarball" ] || die "kernel build tree missing: $tarball (the 7.3.4-iopf kbuild tarball from shared/vm)"
for tool in make gcc tar xz; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install build-essential xz-utils)"
done

# Unpack once per tarball: the stamp holds its size and mtime.
stamp="$cache/.stamp"
want="$(stat -c '%s %Y' "$tarball") $(basename "$tarball")"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "unpacking $(basename "$tarball") into $cache"
  rm -rf "$cache" && mkdir -p "$cache"
  tar -C "$cache" -xJf "$tarball"
  printf '%s\n' "$want" >"$stamp"
fi
tree=$(find "$cache" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -f "$tree/Makefile" ] && [ -f "$tree/Module.symvers" ] || die "no kernel build tree in $cache (bad tarball?)"

build="$out/build"
rm -rf "$build" && mkdir -p "$build"
cp "$here"/tests/kmod/Makefile "$here"/tests/kmod/*.[ch] "$build"/
say "building against $(basename "$tree") with $(gcc -dumpfullversion)"
start=$(date +%s)
make -s -C "$tree" M="$build" -j"$(nproc)" modules
mods=(iopf_sva_test iopf_vtd_report_test)
for m in "${mods[@]}"; do
  cp "$build/$m.ko" "$out/$m.ko"
done
say "done in $(( $(date +%s) - start ))s"
for m in "${mods[@]}"; do
  say "  $out/$m.ko ($(tr '\0' '\n' <"$out/$m.ko" | sed -n 's/^vermagic=\(.*[^ ]\) *$/\1/p'))"
done
