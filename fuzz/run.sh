#!/usr/bin/env bash
# Runs fuzz targets under AFL++ (cargo-afl) and minimizes what they found into corpus/<target>/.
#
#   fuzz/run.sh build                 # instrumented binaries (cargo afl build --release)
#   fuzz/run.sh fuzz TARGET [SECONDS] # one campaign (default 600 s), from seeds + corpus
#   fuzz/run.sh cmin TARGET           # minimize the campaign's queue into corpus/TARGET/ (cmin.py)
#   fuzz/run.sh stats TARGET          # the campaign's figures as a README table row
#
# Campaigns run under nice -n 19 and log to $WORK/TARGET.log; their state is in $WORK/TARGET/.
# Crashes land in $WORK/TARGET/default/crashes/: copy each into crashes/TARGET/ with the fix.
set -euo pipefail
cd "$(dirname "$0")"
FUZZ="$PWD"
WORK="${WORK:-/tmp/sluice-fuzz}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$FUZZ/afl/target}"
BIN="${BIN:-$CARGO_TARGET_DIR/release}"
# A shared build machine: no CPU pinning or frequency checks, no core_pattern demand.
export AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_UI=1 AFL_NO_STARTUP_CALIBRATION=1

case "${1:-}" in
build)
  (cd afl && cargo afl build --release --locked)
  ;;
fuzz)
  t="$2"; secs="${3:-600}"
  seeds="$WORK/seeds"
  [ -d "$seeds/$t" ] || python3 "$FUZZ/seeds.py" "$seeds" >/dev/null
  in="$WORK/$t.in"; rm -rf "$in" "$WORK/$t"; mkdir -p "$in"
  cp "$seeds/$t"/* "$in"/
  [ -d "corpus/$t" ] && cp corpus/"$t"/* "$in"/ 2>/dev/null || true
  nice -n 19 cargo afl fuzz -i "$in" -o "$WORK/$t" -V "$secs" -t 1000 -- "$BIN/$t" \
    > "$WORK/$t.log" 2>&1
  grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|saved_crashes|saved_hangs|bitmap_cvg|edges_found|total_edges) ' \
    "$WORK/$t/default/fuzzer_stats"
  ;;
cmin)
  t="$2"
  rm -rf "$WORK/$t.cmin" "$WORK/$t.traces"
  # afl-showmap over the whole queue in one process, then fuzz/cmin.py keeps the smallest
  # input per edge (see there why not afl-cmin).
  afl_bin="$(dirname "$(ls -d "$HOME"/.local/share/afl.rs/rustc-*/afl.rs-*/afl/bin/afl-showmap | tail -1)")"
  nice -n 19 "$afl_bin/afl-showmap" -e -t 1000 -i "$WORK/$t/default/queue" -o "$WORK/$t.traces" \
    -- "$BIN/$t" > "$WORK/$t.cmin.log" 2>&1
  python3 "$FUZZ/cmin.py" "$WORK/$t.traces" "$WORK/$t/default/queue" "$WORK/$t.cmin"
  rm -rf "corpus/$t"; mkdir -p "corpus/$t"
  # Names by content hash: stable across runs, and AFL++'s ids/ops names carry ':' and ','.
  for f in "$WORK/$t.cmin"/*; do
    cp "$f" "corpus/$t/$(sha1sum "$f" | cut -c1-16)"
  done
  echo "$t: $(ls "corpus/$t" | wc -l) files, $(du -sh "corpus/$t" | cut -f1)"
  ;;
stats)
  # One row of README.md's results table from the campaign's fuzzer_stats.
  t="$2"
  awk -F' *: ' -v t="$t" -v n="$(ls "corpus/$t" | wc -l)" '
    { v[$1] = $2 }
    END { printf "| `%s` | %.1f | %d | %d | %s | %d / %d | %d | %s |\n", t, v["run_time"] / 60,
          v["execs_per_sec"], v["execs_done"], v["bitmap_cvg"], v["edges_found"], v["total_edges"],
          n, v["saved_crashes"] }' "$WORK/$t/default/fuzzer_stats"
  ;;
*)
  sed -n 2,11p "$0"; exit 2
  ;;
esac
