#!/usr/bin/env bash
# Rebuilds the VM tier's kernel (c), ../shared/vm/bzImage-6.12.117-iopf: Linux 6.12 from
# Debian's linux-source-6.12 with IOMMUFD_TEST (the iommufd mock that raises real
# iommu_report_device_fault calls), IOMMU_IOPF/SVA, VT-d/AMD drivers, BTF, kprobes, ftrace.
# About 22 minutes on 2 cores; not run in CI (the prebuilt image is shared). Usage:
#   cargo xtask build-kernel            # output: target/vm/bzImage-6.12-iopf
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
frag="$here/../shared/vm/iopf-kernel.config"
work="${IOPF_CACHE:-$HOME/.cache/iopf}/kernel-build"
out="$here/target/vm/bzImage-6.12-iopf"
say() { printf '[build-kernel] %s\n' "$*"; }
[ -f "$frag" ] || { echo "missing $frag" >&2; exit 1; }
say "installing build dependencies"
apt-get install -y -qq --no-install-recommends build-essential bc flex bison libelf-dev libssl-dev dwarves xz-utils >/dev/null
mkdir -p "$work" && cd "$work"
if [ ! -d src/linux-source-6.12 ]; then
  say "fetching linux-source-6.12"
  apt-get download linux-source-6.12 >/dev/null
  dpkg-deb -x linux-source-6.12_*.deb x
  mkdir -p src && tar -C src -xf x/usr/src/linux-source-6.12.tar.xz
fi
cd src/linux-source-6.12
say "configuring: defconfig + kvm_guest.config + $(basename "$frag")"
make O="$work/kbuild" defconfig >/dev/null
make O="$work/kbuild" kvm_guest.config >/dev/null
scripts/kconfig/merge_config.sh -m -O "$work/kbuild" "$work/kbuild/.config" "$frag" >/dev/null
make O="$work/kbuild" olddefconfig >/dev/null
for opt in IOMMUFD IOMMUFD_TEST IOMMU_IOPF DEBUG_INFO_BTF KPROBES; do
  grep -q "^CONFIG_$opt=y" "$work/kbuild/.config" || { echo "CONFIG_$opt did not end up =y" >&2; exit 1; }
done
say "building bzImage with $(nproc) jobs"
make O="$work/kbuild" -j"$(nproc)" bzImage
mkdir -p "$(dirname "$out")"
cp "$work/kbuild/arch/x86/boot/bzImage" "$out"
say "done: $out ($(sha256sum "$out" | cut -d' ' -f1))"
