#!/usr/bin/env bash
# Runs each fuzz target for a bounded time over its committed corpus (new inputs go to a
# scratch directory, so the tree is not changed). Part of `./x test`. A crash, a timeout
# (10 s per input) or memory past 2 GiB fails the run and leaves the input in
# fuzz/artifacts/.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nightly=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' "$here/iopf-ebpf/rust-toolchain.toml")
seconds=${IOPF_FUZZ_SECONDS:-30}
cd "$here/fuzz"
for target in policy scenario; do
  scratch=$(mktemp -d)
  log="$scratch.log"
  echo "[fuzz] $target: ${seconds}s over corpus/$target ($(ls "corpus/$target" | wc -l) inputs)"
  # The agent's eBPF object is not needed to parse (and must not see sanitizer flags).
  if ! IOPF_AGENT_NO_EBPF=1 cargo "+$nightly" fuzz run "$target" "$scratch" "corpus/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    echo "[fuzz] $target FAILED; the end of its log ($log):"
    tail -40 "$log"
    exit 1
  fi
  grep -E '^(Done|stat::number_of_executed_units)' "$log" || true
  rm -rf "$scratch" "$log"
done
