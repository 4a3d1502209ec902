#!/usr/bin/env bash
# Runs every cargo fuzz target of moat for a bounded time and prints, per
# target, the executions and the coverage libFuzzer reached.
#
#   fuzz/run.sh                    # SECONDS_PER_TARGET=60
#   SECONDS_PER_TARGET=10 fuzz/run.sh policy dicom
#   SECONDS_PER_TARGET=3600 fuzz/run.sh          # the long run (docs/fuzzing.md)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz
# --locked`). Seeds are in fuzz/corpus/TARGET and stay as they are: what
# libFuzzer finds goes to a scratch corpus, crashes to fuzz/artifacts/TARGET.
# Exits non-zero if a target crashes, leaks past the RSS limit or times out
# on one input.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
SECS=${SECONDS_PER_TARGET:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(policy request_path session_cookie dicom mllp)
command -v cargo-fuzz >/dev/null || { echo "fuzz/run.sh: needs cargo-fuzz (cargo install cargo-fuzz --locked)" >&2; exit 1; }
SCRATCH=$(mktemp -d /tmp/moat-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
cd "$HERE"
cargo +nightly fuzz build >&2
status=0
printf '%-16s %12s %10s %8s %8s %s\n' target executions exec/s cov ft result
for t in "${TARGETS[@]}"; do
  mkdir -p "$SCRATCH/$t"
  log="$SCRATCH/$t.log"
  rc=0
  # One input may take at most 10 s; 2 GB RSS at most.
  cargo +nightly fuzz run "$t" "$SCRATCH/$t" "corpus/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  last=$(grep -E '#[0-9]+.*cov: [0-9]+' "$log" | tail -n1 || true)
  cov=$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo "?")
  ft=$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || echo "?")
  if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (exit $rc; log: fuzz/artifacts/$t, $log kept below)"; status=1; fi
  printf '%-16s %12s %10s %8s %8s %s\n' "$t" "$runs" "$speed" "$cov" "$ft" "$result"
  if [ "$rc" -ne 0 ]; then tail -n 40 "$log" >&2; fi
done
exit "$status"
