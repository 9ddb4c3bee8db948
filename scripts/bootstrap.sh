#!/usr/bin/env bash
# Installs what building (`bootstrap.sh run`) or also testing (`bootstrap.sh test`, the
# default) iopf needs, idempotently, saying what it does.
# Safe to run repeatedly: every step checks first and skips when already satisfied.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '[bootstrap] %s\n' "$*"; }

# The toolchains are pinned in rust-toolchain.toml (userspace) and in
# iopf-ebpf/rust-toolchain.toml (eBPF nightly); read them so there is one place to change.
stable=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/rust-toolchain.toml")
nightly=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/iopf-ebpf/rust-toolchain.toml")
# The arm64 VM guests' binaries are cross-built for this target of the stable toolchain
# (xtask/src/cross.rs; the linker is named in .cargo/config.toml).
cross_targets=(aarch64-unknown-linux-gnu)
# bpf-linker must be built against the same LLVM major as the nightly's rustc.
llvm_major=22
bpf_linker_version=0.13.0
cargo_fuzz_version=0.13.2
kubernetes_validate_version=1.37.0

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# `./x run` needs only what builds the agent; `./x test` also what the tests drive.
mode=${1:-test}
apt_pkgs=(
  "llvm-${llvm_major}-dev" "libpolly-${llvm_major}-dev" # bpf-linker build
  libzstd-dev zlib1g-dev                                 # bpf-linker links these via llvm-config
)
if [ "$mode" = test ]; then
  apt_pkgs+=(
    qemu-system-x86                                      # VM test tier
    gcc-aarch64-linux-gnu libc6-dev-arm64-cross          # VM tier's arm64 guest: links its static binaries
    prometheus                                           # real Prometheus scraping the agent in tests
    curl openssl                                         # TLS endpoint tests: client, test certificates
    bpftrace                                             # benchmark comparison
    zstd cpio xz-utils busybox-static                    # BTF fixtures, VM-tier initramfs
    python3-jsonschema                                   # validates the shipped policy schema in tests
    python3-pip                                          # installs kubernetes-validate into the cache
    chromium                                             # renders the HTML report in tests (headless)
  )
fi
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "apt: installing ${missing[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "apt: all packages present"
fi
# Debian starts a prometheus service on install; it is left alone: tests run their own
# instances on free ports.
command -v rustup >/dev/null || { echo "rustup not found: install it from your distribution or rustup.rs" >&2; exit 1; }
if ! rustup toolchain list | grep -q "^${stable}"; then
  say "rustup: installing ${stable}"
  rustup toolchain install "$stable" --profile minimal -c rustfmt -c clippy
else
  say "rustup: ${stable} present"
fi
if [ "$mode" = test ]; then
  installed=$(rustup target list --installed --toolchain "$stable")
  for t in "${cross_targets[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
      say "rustup: adding target ${t} to ${stable}"
      rustup target add --toolchain "$stable" "$t"
    else
      say "rustup: ${stable} target ${t} present"
    fi
  done
fi
if ! rustup toolchain list | grep -q "^${nightly}"; then
  say "rustup: installing ${nightly} with rust-src"
  rustup toolchain install "$nightly" --profile minimal -c rust-src
elif ! rustup component list --toolchain "$nightly" --installed | grep -q '^rust-src'; then
  say "rustup: adding rust-src to ${nightly}"
  rustup component add rust-src --toolchain "$nightly"
else
  say "rustup: ${nightly} with rust-src present"
fi

if ! command -v bpf-linker >/dev/null || ! bpf-linker --version 2>/dev/null | grep -q "$bpf_linker_version"; then
  say "cargo: building bpf-linker ${bpf_linker_version} against LLVM ${llvm_major} (a few minutes, once)"
  PATH="/usr/lib/llvm-${llvm_major}/bin:$PATH" cargo "+${stable}" install --locked bpf-linker \
    --version "$bpf_linker_version" --no-default-features --features "llvm-${llvm_major}"
else
  say "cargo: bpf-linker ${bpf_linker_version} present"
fi
if [ "$mode" = test ]; then
  # The offline Kubernetes validator (it ships the API schemas) for the deployment tests,
  # into our cache, not the system's Python.
  pylib="${IOPF_CACHE:-$HOME/.cache/iopf}/python"
  if ! PYTHONPATH="$pylib" /usr/bin/python3 -m kubernetes_validate --version 2>/dev/null | grep -qx "$kubernetes_validate_version"; then
    say "pip: installing kubernetes-validate ${kubernetes_validate_version} into ${pylib}"
    /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
      --target "$pylib" "kubernetes-validate==${kubernetes_validate_version}"
  else
    say "pip: kubernetes-validate ${kubernetes_validate_version} present"
  fi
  if ! cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz ${cargo_fuzz_version}"; then
    say "cargo: installing cargo-fuzz ${cargo_fuzz_version} (fuzz tier of ./x test)"
    cargo "+${stable}" install --locked cargo-fuzz --version "$cargo_fuzz_version"
  else
    say "cargo: cargo-fuzz ${cargo_fuzz_version} present"
  fi
fi
say "done"
