#!/usr/bin/env bash
# Fuzz smoke run: builds the cargo-fuzz targets of tests/fuzz and runs each one from its seeds
# for a short while; exits 1 if any target crashes (panic, broken assertion, sanitizer report,
# timeout, out of memory). .ci/run calls it; run it by hand the same way. docs/fuzzing.md.
#
#   tests/fuzz/smoke.sh                          every target, FUZZ_SECONDS (default 25) each
#   tests/fuzz/smoke.sh multipart sidecar        only these targets
#   FUZZ_SECONDS=600 FUZZ_SANITIZER=address tests/fuzz/smoke.sh probe
#                                                a 10-minute campaign of one target, under ASan
#
# FUZZ_SANITIZER (default none) is cargo-fuzz's --sanitizer. Without AddressSanitizer the cold
# build takes about 30% less CPU, which matters in CI; the code under test forbids `unsafe`, so
# ASan watches only dependencies, and a campaign is the place for it.
#
# The corpus grown by a run is thrown away (each run starts from tests/fuzz/seeds); crash
# reproducers are kept in tests/fuzz/artifacts/TARGET/ (not committed).
# Toolchain: nightly when rustup has one, else stable with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs
# -Z flags).
set -euo pipefail
cd "$(dirname "$0")"

CARGO_FUZZ_VERSION=0.13.2
seconds=${FUZZ_SECONDS:-25}
sanitizer=${FUZZ_SANITIZER:-none}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if rustup toolchain list | grep -q '^nightly'; then
  toolchain=+nightly
else
  toolchain=+stable
  export RUSTC_BOOTSTRAP=1
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo "$toolchain" fuzz list --fuzz-dir .)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  echo "fuzz: no target found (cargo $toolchain fuzz list)"
  exit 1
fi

# vault_reader writes its blobs under TMPDIR, and the fuzzer exits without removing them.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work

echo "fuzz: building the targets with cargo $toolchain fuzz build -O --sanitizer $sanitizer"
if ! cargo "$toolchain" fuzz build --fuzz-dir . -O --sanitizer "$sanitizer" >"$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log"
  exit 1
fi

failed=()
for target in "${targets[@]}"; do
  mkdir -p "$work/corpus/$target" "artifacts/$target"
  log="$work/$target.log"
  if cargo "$toolchain" fuzz run --fuzz-dir . -O --sanitizer "$sanitizer" \
      "$target" "$work/corpus/$target" "seeds/$target" -- -max_total_time="$seconds" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -n 1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
    echo "fuzz: $target ok: $runs(s), $cov"
  else
    echo "fuzz: $target FAILED; the end of its log:"
    tail -n 60 "$log"
    failed+=("$target")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}; reproducers in tests/fuzz/artifacts/"
  exit 1
fi
