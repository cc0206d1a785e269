#!/usr/bin/env bash
# Benchmark report: builds in release mode, runs every benchmark of the project on this
# machine, and writes docs/benchmarks.md with each figure beside its baseline and target.
#
#   bash benches/run.sh            # full run (about 15–25 minutes on 2 cores)
#   QUICK=1 bash benches/run.sh    # smaller load-generator runs, for a smoke test
#
# Needs: the Debian packages `age` (peer baseline) and `curl`; nothing else beyond `cargo`.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks.md
work=$(mktemp -d "${PWD}/target/bench-run.XXXXXX")
trap 'kill "${server_pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

command -v age >/dev/null || { echo "benches/run.sh: install the Debian package 'age'" >&2; exit 2; }
cargo build --release --bins --benches 2>&1 | tail -n 1
bin=target/release/callguard

echo "== vault vs raw AES-256-GCM"
CALLGUARD_BENCH_DIR="$work" cargo bench --bench vault -- --noplot >"$work/vault.txt" 2>&1
echo "== serial ACK latency"
cargo bench --bench serial_ack >"$work/serial.txt" 2>&1

echo "== load generator against a release server"
mkdir -p "$work/server"
(cd "$work/server" && exec "$OLDPWD/$bin" serve --dev --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19464) >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do grep -q "callguard ready" "$work/server.log" && break; sleep 0.2; done
files=2000; calls=500; secs=60
if [ -n "${QUICK:-}" ]; then files=200; calls=50; secs=10; fi
mkdir -p "$work/copy"
cargo bench --bench loadgen -- --url https://127.0.0.1:18443 --pki "$work/server/callguard-dev/pki" \
  --files "$files" --concurrency 8 --seconds-of-audio 60 --baseline-dir "$work/copy" --server-pid "$server_pid" \
  >"$work/bulk.txt" 2>&1
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
rm -rf "$work/server"; mkdir -p "$work/server"
(cd "$work/server" && exec "$OLDPWD/$bin" serve --dev --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19464) >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do grep -q "callguard ready" "$work/server.log" && break; sleep 0.2; done
cargo bench --bench loadgen -- --url https://127.0.0.1:18443 --pki "$work/server/callguard-dev/pki" \
  --realtime --concurrency "$calls" --duration "$secs" --server-pid "$server_pid" >"$work/realtime.txt" 2>&1
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true

# After the load generator: deleting 100 000 files leaves ext4 skipping recently freed inodes
# for minutes, which would slow the uploads' file creation.
echo "== purge at 1 M recordings"
cargo bench --bench purge >"$work/purge.txt" 2>&1

echo "== age (peer baseline) on the same 16 MiB buffer as the vault bench"
head -c $((16 << 20)) /dev/urandom >"$work/corpus.bin"
age-keygen -o "$work/age.key" 2>/dev/null
recipient=$(grep -o 'age1[0-9a-z]*' "$work/age.key" | head -n 1)
start=$(date +%s%N)
for _ in 1 2 3 4 5; do age -r "$recipient" -o "$work/corpus.age" "$work/corpus.bin"; done
end=$(date +%s%N)
age_mibs=$(python3 -c "print(f'{5*16/(($end-$start)/1e9):.0f}')")

python3 - "$work" "$out" "$age_mibs" <<'PY'
import json, os, re, sys, platform, datetime, subprocess
work, out, age_mibs = sys.argv[1], sys.argv[2], float(sys.argv[3])
def crit(group, bench):
    path = f"target/criterion/{group}/{bench}/new/estimates.json"
    mean = json.load(open(path))["mean"]["point_estimate"]  # ns per iteration
    return (16 * 2**20) / (mean / 1e9) / 2**20  # MiB/s
rows = []
enc_raw, enc_vault = crit("encrypt_16MiB", "raw_aes256gcm"), crit("encrypt_16MiB", "vault_format")
dec_raw, dec_vault = crit("decrypt_16MiB", "raw_aes256gcm"), crit("decrypt_16MiB", "vault_format")
store_w, store_r = crit("store_16MiB", "vault_write_fsync"), crit("store_16MiB", "vault_read")
def read(name):
    noise = ("Compiling ", "Finished ", "Running ", "Blocking ", "warning:")
    return "\n".join(l for l in open(os.path.join(work, name)).read().splitlines() if not l.strip().startswith(noise))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
lines = [
    "# Benchmarks",
    "",
    f"Produced by `bash benches/run.sh` on {datetime.date.today()} — {os.cpu_count()} cores ({cpu}), "
    f"{platform.system()} {platform.release()}, `{subprocess.run(['rustc','--version'],capture_output=True,text=True).stdout.strip()}`.",
    "Each figure sits beside its baseline (same machine, same run) and its target."
    + (" QUICK run: smaller load-generator runs (200 files; 50 calls for 10 s), not the issue's full loads." if os.environ.get("QUICK") else ""),
    "",
    "## Vault vs raw AES-256-GCM (16 MiB, default 32 KiB chunks, one core)",
    "",
    "| operation | vault | raw AES-256-GCM | ratio | target |",
    "| --- | --- | --- | --- | --- |",
    f"| encrypt | {enc_vault:.0f} MiB/s | {enc_raw:.0f} MiB/s | {enc_vault/enc_raw:.0%} | ≥ 80 % |",
    f"| decrypt | {dec_vault:.0f} MiB/s | {dec_raw:.0f} MiB/s | {dec_vault/dec_raw:.0%} | ≥ 80 % |",
    f"| write path (temp file, fsync, rename, dir fsync) | {store_w:.0f} MiB/s | {enc_raw:.0f} MiB/s | {store_w/enc_raw:.0%} | — |",
    f"| streaming read (`PlainReader`) | {store_r:.0f} MiB/s | {dec_raw:.0f} MiB/s | {store_r/dec_raw:.0%} | — |",
    f"| peer baseline: `age` (X25519, ChaCha20-Poly1305), same-size buffer | {age_mibs:.0f} MiB/s | {enc_raw:.0f} MiB/s | vault/age = {enc_vault/age_mibs:.1f}× | — |",
    "",
    "## Ingest over HTTPS (load generator, release server)",
    "",
    "Bulk: 8 kHz µ-law one-minute WAVs, 8 streams, against copying the same files with write+fsync.",
    "",
    "```text", read("bulk.txt").strip(), "```",
    "",
    "Real time: concurrent live calls at 64 kbit/s (target: zero errors, p99 chunk latency < 100 ms, server peak RSS < 150 MiB).",
    "",
    "```text", read("realtime.txt").strip(), "```",
    "",
    "## Policy engine at 1 000 000 recordings (targets: purge of 100 000 < 30 s, objection check < 50 µs)",
    "",
    "```text", read("purge.txt").strip(), "```",
    "",
    "## Serial ACK latency over a pty, 200 frames/s (target p99 < 20 ms)",
    "",
    "```text", read("serial.txt").strip(), "```",
    "",
]
open(out, "w").write("\n".join(lines) + "\n")
print(f"wrote {out}")
PY
