#!/usr/bin/env bash
# Benchmark report: builds in release mode, runs every benchmark of the project on this
# machine, and writes docs/benchmarks.md with each figure beside its baseline and target.
#
#   bash benches/run.sh            # full run (about 25–35 minutes on 2 cores; BULK_RUNS=N)
#   QUICK=1 bash benches/run.sh    # smaller load-generator runs, for a smoke test
#
# Needs: the Debian packages `age` (peer baseline) and `curl`; nothing else beyond `cargo`;
# about 35 GB free under target/ (each bulk run keeps 3 GB until the end, see below).
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
files=2000; calls=500; secs=60; bulk_runs=${BULK_RUNS:-5}
if [ -n "${QUICK:-}" ]; then files=200; calls=50; secs=10; bulk_runs=1; fi
# Bulk ingest, several runs: a virtual disk drifts from one minute to the next, so one run
# proves little. Each run has a fresh server and data directory. This VM takes about its first
# GB of buffered writes after a pause three times faster, and at a third of the CPU per file,
# than what follows; the copy's buffered writes use that burst, the vault's direct writes do
# not need it. So each run is made twice: "rested", after a pause of 65 s (the copy in its
# burst), and "steady", right after 2 GB of buffered writes with fsync have used the burst up
# (the preconditioning of disk benchmarks: the state a long bulk transfer runs in). Nothing is
# deleted until every run is over: ext4 without a journal skips inodes freed in the last 60 s
# (360 s while their table block is dirty) when it creates files, which would slow the next
# run's file creation (measured: up to a fifth of the server's CPU in that scan).
bulk_run() {  # bulk_run NAME: one load-generator bulk run against a fresh server
  mkdir -p "$work/server-$1" "$work/copy-$1"
  (cd "$work/server-$1" && exec "$OLDPWD/$bin" serve --dev --listen 127.0.0.1:18443 --metrics-listen 127.0.0.1:19464) >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 300); do grep -q "callguard ready" "$work/server.log" && break; sleep 0.2; done
  cargo bench --bench loadgen -- --url https://127.0.0.1:18443 --pki "$work/server-$1/callguard-dev/pki" \
    --files "$files" --concurrency 8 --seconds-of-audio 60 --baseline-dir "$work/copy-$1" \
    --keep-baseline-files --server-pid "$server_pid" >"$work/bulk-$1.txt" 2>&1
  kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
  grep -E "ingest / copy" "$work/bulk-$1.txt" | sed "s/^/   bulk run $1: /"
}
for run in $(seq 1 "$bulk_runs"); do
  sync; sleep 65
  bulk_run "rested-$run"
  dd if=/dev/zero of="$work/precondition-$run" bs=1M count=2048 conv=fsync status=none
  bulk_run "steady-$run"
  rm "$work/precondition-$run"  # one file: no inode scan to fear, and 2 GB back
done
mkdir -p "$work/server"; sync; sleep 65
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
def grab(name, pattern, default=None):
    found = re.search(pattern, read(name))
    return float(found.group(1)) if found else default
def verdict(ok):
    return "met" if ok else "**MISSED**"
bulk_files = {state: sorted(f for f in os.listdir(work) if re.fullmatch(rf"bulk-{state}-\d+\.txt", f))
              for state in ("rested", "steady")}
def bulk_run(name):
    """One bulk run's figures: ingest, the interleaved copy and vault alone, the ratios, CPU."""
    text = read(name)
    rounds = re.search(r"MB/s round by round: copy ([\d ]+); ingest ([\d ]+); vault alone ([\d ]+)", text)
    per_round = [[float(v) for v in g.split()] for g in rounds.groups()] if rounds else [[], [], []]
    copy_cpu = re.search(r"copy\+fsync CPU per file round by round \(.*?\): ([\d. ]+)", text)
    per_round.append([float(v) for v in copy_cpu.group(1).split()] if copy_cpu else [])
    return {
        "name": name,
        "ingest": grab(name, r"throughput \(stored uploads\): [\d.]+ files/s, ([\d.]+) MB/s"),
        "copy": grab(name, r"copy\+fsync \(write\+fsync .*?\): [\d.]+ files/s, ([\d.]+) MB/s"),
        "ratio": grab(name, r"ingest / copy\+fsync: (\d+) %"),
        "ratio_round": grab(name, r"ingest / copy\+fsync round by round: median (\d+) %"),
        "vault": grab(name, r"vault alone \(.*?\), \d+ tasks: [\d.]+ files/s, ([\d.]+) MB/s"),
        "vault_ratio": grab(name, r"vault alone / copy\+fsync: (\d+) %"),
        "cpu": grab(name, r"CPU during the load phase: server ([\d.]+) cores"),
        "copy_ms": grab(name, r"copy\+fsync \(write\+fsync .*?([\d.]+) ms CPU per file"),
        "ingest_ms": grab(name, r"CPU per stored file: .*?all processors busy ([\d.]+) ms"),
        "file_mb": grab(name, r"\((\d+) bytes each") or 480058,
        "rounds": per_round,
    }
bulk = {state: [bulk_run(f) for f in files] for state, files in bulk_files.items()}
# In each state, the run whose ratio is the median is the one reported in full.
median = {state: sorted(runs, key=lambda r: r["ratio"] if r["ratio"] is not None else -1)[len(runs) // 2]
          for state, runs in bulk.items() if runs}
STATES = {"rested": "rested (after a 65 s pause)", "steady": "steady (after 2 GB of buffered writes)"}
REGIMES = {"burst": "rounds with the copy in the VM's burst", "after": "rounds with the copy past the burst"}
# A round's copy is in the VM's burst when it cost less than this CPU per file (all processors,
# ms): in the burst a buffered write+fsync of a 480 kB file costs 0.1 to 0.4 ms here, past it 1 ms
# or more (filling fresh page-cache pages). The cost tells the regime apart whatever the speeds
# of the other rounds (a run whose disk never gives the burst has no burst round at all).
BURST_COPY_MS = 0.6
def round_regimes():
    """Every round of every bulk run, split by the copy's CPU per file: in the VM's burst or
    not. For each: rounds, the copy's mean MB/s, the lowest, median and highest ingest/copy
    ratio, and the median vault-alone/copy and ingest/vault-alone ratios."""
    quads = [(c, i, v, ms) for runs in bulk.values() for r in runs
             for c, i, v, ms in zip(r["rounds"][0], r["rounds"][1], r["rounds"][2], r["rounds"][3]) if c > 0 and v > 0]
    if not quads:
        return {}
    split = {"burst": [], "after": []}
    for c, i, v, ms in quads:
        split["burst" if ms < BURST_COPY_MS else "after"].append((c, i, v))
    def median(values):
        values = sorted(values)
        return values[len(values) // 2]
    out = {}
    for name, rounds in split.items():
        if rounds:
            ratios = sorted(i / c * 100 for c, i, _ in rounds)
            out[name] = {"n": len(rounds), "copy": sum(c for c, _, _ in rounds) / len(rounds),
                         "ingest": sum(i for _, i, _ in rounds) / len(rounds),
                         "lo": ratios[0], "median": median(ratios), "hi": ratios[-1],
                         "vault_copy": median(v / c * 100 for c, _, v in rounds),
                         "ingest_vault": median(i / v * 100 for _, i, v in rounds)}
    return out
def runs_text(state):
    return ", ".join(f"{r['ratio']:.0f} %" for r in bulk[state])
def bulk_table():
    rows = ["| run | ingest | copy+fsync (interleaved) | ingest / copy | median of the rounds' ratios | vault alone | vault alone / copy | CPU per file: ingest / copy | server CPU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for state in STATES:
        for r in bulk.get(state, []):
            rows.append(f"| {r['name'][5:-4]} | {r['ingest']:.0f} MB/s | {r['copy']:.0f} MB/s | {r['ratio']:.0f} % | {r['ratio_round']:.0f} % | {r['vault']:.0f} MB/s | {r['vault_ratio']:.0f} % | {r['ingest_ms']} / {r['copy_ms']} ms | {r['cpu']} cores |")
    return rows
enc_pairs = grab("vault.txt", r"interleaved encrypt: vault/raw (\d+) %")
dec_pairs = grab("vault.txt", r"interleaved decrypt: vault/raw (\d+) %")
def targets():
    rt_errors = grab("realtime.txt", r"uploads: \d+ attempted, \d+ stored, \d+ discarded \(.*?\), (\d+) errors")
    rt_stored = grab("realtime.txt", r"uploads: \d+ attempted, (\d+) stored")
    rt_p99 = grab("realtime.txt", r"chunk send latency[^:]*: p50 [\d.]+ ms, p90 [\d.]+ ms, p99 ([\d.]+) ms")
    rt_rss = grab("realtime.txt", r"VmHWM ([\d.]+) MiB")
    purge_s = grab("purge.txt", r"for 100 000: ([\d.]+) s")
    objection_us = grab("purge.txt", r"Objections::check, with the HMACs\): ([\d.]+) µs")
    serial_p99 = grab("serial.txt", r"p99 ([\d.]+) ms")
    rows = [
        "## Targets",
        "",
        "| target (issue) | measured | baseline / bound | verdict |",
        "| --- | --- | --- | --- |",
        f"| vault encrypt ≥ 80 % of raw AES-256-GCM (foundation; median of alternating pairs) | {enc_pairs:.0f} % | 80 % (criterion, one after the other: {enc_vault:.0f} / {enc_raw:.0f} MiB/s) | {verdict(enc_pairs >= 80)} |",
        f"| vault decrypt ≥ 80 % of raw AES-256-GCM (foundation; median of alternating pairs) | {dec_pairs:.0f} % | 80 % (criterion, one after the other: {dec_vault:.0f} / {dec_raw:.0f} MiB/s) | {verdict(dec_pairs >= 80)} |",
        *(f"| bulk ingest ≥ 50 % of copy+fsync, {REGIMES[name]} (ingest; median of {r['n']} rounds over all runs, copy interleaved with the uploads) "
          f"| {r['ingest']:.0f} MB/s | {r['copy']:.0f} MB/s (median round {r['median']:.0f} %, rounds {r['lo']:.0f} to {r['hi']:.0f} %) "
          f"| {verdict(r['median'] >= 50)} |"
          for name, r in round_regimes().items()),
        *([] if "burst" in round_regimes() else [
            f"| bulk ingest ≥ 50 % of copy+fsync, {REGIMES['burst']} (ingest) | no such round in this report | — | not measured |"]),
        f"| 500 live calls: zero errors (ingest) | {rt_errors:.0f} errors, {rt_stored:.0f} stored | 0 | {verdict(rt_errors == 0)} |",
        f"| 500 live calls: p99 chunk latency < 100 ms (ingest) | {rt_p99} ms | 100 ms | {verdict(rt_p99 is not None and rt_p99 < 100)} |",
        f"| 500 live calls: server peak RSS < 150 MiB (ingest) | {rt_rss} MiB | 150 MiB | {verdict(rt_rss is not None and rt_rss < 150)} |",
        f"| purge of 100 000 at 1 M recordings < 30 s (policy) | {purge_s} s | 30 s | {verdict(purge_s is not None and purge_s < 30)} |",
        f"| objection check per ingest < 50 µs (policy) | {objection_us} µs | 50 µs | {verdict(objection_us is not None and objection_us < 50)} |",
        f"| serial ACK p99 < 20 ms at 200 frames/s (alarms) | {serial_p99} ms | 20 ms | {verdict(serial_p99 is not None and serial_p99 < 20)} |",
    ]
    split = round_regimes()
    all_runs = [r for runs in bulk.values() for r in runs]
    if split and all_runs:
        copy_ms = sorted(r["copy_ms"] for r in all_runs if r["copy_ms"] is not None)
        ingest_ms = sorted(r["ingest_ms"] for r in all_runs if r["ingest_ms"] is not None)
        ingest = sorted(r["ingest"] for r in all_runs if r["ingest"] is not None)
        run_ratios = "; ".join(f"{state}: {runs_text(state)}" for state in STATES if bulk.get(state))
        rows += [
            "",
            "The copy's speed depends on the state of this virtual machine, the ingest's hardly. After a pause the VM takes "
            "its first GB or so of buffered writes two to three times faster and at a third of the CPU per file; a 2 000-file "
            "copy (960 MB) can run entirely in that burst. The vault writes recordings with direct I/O, which needs no page "
            f"cache and so no burst: the ingest ran at {ingest[0]:.0f} to {ingest[-1]:.0f} MB/s in every run, bound by CPU "
            f"({ingest_ms[0]} to {ingest_ms[-1]} ms per file, server and load generator: TLS, SHA-256 and AES-256-GCM of every byte, "
            "HTTP, the probe, the blob's fsync, the catalog commit), while the copy's CPU per file went from "
            f"{copy_ms[0]} to {copy_ms[-1]} ms between runs. So the verdict is given per round, by the copy's regime: a round is in "
            f"the burst when its copy cost less than {BURST_COPY_MS} ms of CPU per file (0.1 to 0.4 ms there, 1 ms or more past it)."
            + ("" if split.get("burst") else " No round of this report met the copy in its burst (the disk did not give "
               "it): the burst's verdict is not measured by this report."),
            "",
            f"Whole runs, for the record (ingest / copy over the run's 12 rounds): {run_ratios}. Runs are made rested (after a "
            "65 s pause) and steady (right after 2 GB of buffered writes with fsync) to meet both states; the pause brings the "
            "burst back only partly after runs that wrote several GB, and a steady run can start inside it, as the rounds show.",
        ]
        burst = split.get("burst")
        if burst and burst["median"] < 50:
            seal_ms = all_runs[0]["file_mb"] / (enc_vault * 2**20) * 1e3
            rows += [
                "",
                f"Gap, stated plainly: against the copy in its burst, bulk ingest reached {burst['median']:.0f} % (median round), not 50 %. "
                "Everything is CPU-bound on the same 2 cores. On top of what a copy does, the spec requires SHA-256 of "
                f"every byte, AES-256-GCM with the required aes-gcm crate ({enc_vault:.0f} MiB/s: {seal_ms:.2f} ms per "
                "file), TLS encryption in the load generator and decryption in the server, and the blob's fsync "
                "and the catalog commit; half of a copy that costs "
                f"{copy_ms[0]} ms of CPU per file would need all of that in about 1 ms per file on 2 cores. "
                f"In the same rounds the vault alone (SHA-256, AES-256-GCM and the durable write, without TLS, HTTP, "
                f"the probe or the catalog) reached {burst['vault_copy']:.0f} % of the copy (median round): the ingest "
                f"would need {50 / burst['vault_copy'] * 100:.0f} % of the vault alone's speed and reached "
                f"{burst['ingest_vault']:.0f} %.",
            ]
    return rows
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
lines = [
    "# Benchmarks",
    "",
    f"Produced by `bash benches/run.sh` on {datetime.date.today()} — {os.cpu_count()} cores ({cpu}), "
    f"{platform.system()} {platform.release()}, `{subprocess.run(['rustc','--version'],capture_output=True,text=True).stdout.strip()}`.",
    "Each figure sits beside its baseline (same machine, same run) and its target."
    + (" QUICK run: smaller load-generator runs (200 files; 50 calls for 10 s), not the issue's full loads." if os.environ.get("QUICK") else ""),
    "",
    *targets(),
    "",
    "## Vault vs raw AES-256-GCM (16 MiB, default 32 KiB chunks, one core)",
    "",
    "| operation | vault | raw AES-256-GCM | ratio | target |",
    "| --- | --- | --- | --- | --- |",
    f"| encrypt | {enc_vault:.0f} MiB/s | {enc_raw:.0f} MiB/s | {enc_vault/enc_raw:.0%} | ≥ 80 % |",
    f"| decrypt | {dec_vault:.0f} MiB/s | {dec_raw:.0f} MiB/s | {dec_vault/dec_raw:.0%} | ≥ 80 % |",
    f"| encrypt, alternating pairs of passes | — | — | {enc_pairs:.0f} % (median) | ≥ 80 % |",
    f"| decrypt, alternating pairs of passes | — | — | {dec_pairs:.0f} % (median) | ≥ 80 % |",
    f"| write path (blob file, fsync, dir fsync where needed) | {store_w:.0f} MiB/s | {enc_raw:.0f} MiB/s | {store_w/enc_raw:.0%} | — |",
    f"| streaming read (`PlainReader`) | {store_r:.0f} MiB/s | {dec_raw:.0f} MiB/s | {store_r/dec_raw:.0%} | — |",
    f"| peer baseline: `age` (X25519, ChaCha20-Poly1305), same-size buffer | {age_mibs:.0f} MiB/s | {enc_raw:.0f} MiB/s | vault/age = {enc_vault/age_mibs:.1f}× | — |",
    "",
    "## Ingest over HTTPS (load generator, release server)",
    "",
    "Bulk: 8 kHz µ-law one-minute WAVs, 8 streams, against copying the same files with write+fsync "
    "(8 threads), and against the vault alone: the same files hashed and written through `BlobWriter` "
    "(AES-256-GCM, direct I/O, fsync, directory fsync where the file system needs it) in the load generator's process, without TLS, HTTP, "
    "probing or the catalog. The three are interleaved in 12 rounds of about 167 files, their order "
    "rotating from round to round, so that the disk's drift favours none (README, `--baseline-dir`). "
    "Each run is made rested and steady (see the note under the targets).",
    "",
    *bulk_table(),
    "",
    *(line for state, m in median.items() for line in (
        f"The median {state} run ({m['name'][5:-4]}) in full:", "", "```text", read(m["name"]).strip(), "```", "")),
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
