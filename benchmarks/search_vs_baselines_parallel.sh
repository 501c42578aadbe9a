#!/usr/bin/env bash
# The search vs uniform LoRA baselines on real data, on one machine in parallel processes
# (benchmarks/glue.py --protocol search-vs-baselines): (1) the searches, one process each (tasks x
# budgets x {new, old}); (2) the lr selections, then (3) the final runs, each sharded over PROCS
# processes; (4) the reports; (5) proxy_quality with the trained importance (CPU, reduced; skipped
# with --no-proxy).
#
#   bash benchmarks/search_vs_baselines_parallel.sh OUT [--quick] [--device cuda|cpu] [--data-dir DIR]
#                                                       [--procs N] [--threads T] [--seeds 0,1,2] [--no-proxy]
#
# OUT gets runs/ (every run's JSON, resumable: rerun the same command after a failure), logs/,
# search_vs_baselines.{md,csv}, search_vs_baselines_pareto.png and proxy_quality*. Defaults:
# --device cuda, --data-dir .dev/glue (the carried GLUE folders SST-2/ and MRPC/), 8 processes x 1
# torch thread (GPU steps are launch-bound: one Python thread each), proxy_quality on 6 CPU threads
# with a time limit of PQ_LIMIT seconds (default 420), the protocol's 5 seeds (--seeds: fewer).
# --quick: the whole pipeline at a tiny scale (1 seed, a few steps per run) for a CPU check.
#
# Size (glue.py --protocol search-vs-baselines --estimate-only prints the step counts): 6 searches
# (today's engine: <= 10 trials x 120 steps each; the new one should cost <= 0.5 training), 80
# distinct lr-selection runs as long as a final on 80% of train (SST-2 400, MRPC 552 steps) = 36,256
# steps, 100 distinct final runs at 5 seeds = 56,650 steps (SST-2 500, MRPC 690 per run; the
# diagnostics peft-vo@0.1% and peft-qv-all@0.02% included; peft-qv-all@0.1% is peft-qv@0.1%'s runs).
# A MiniLM step at batch 16 on an H200 is launch-bound (~15-25 ms with our adapters, ~10 ms PEFT):
# serial, ~25-40 s per search, ~13 min of selection, ~20 min of finals; 8 processes on the one GPU
# overlap ~3-4x, so: searches ~1.5-2 min (6 at once, start-up included), selection ~4 min, finals
# ~5-6 min, reports ~20 s: ~11-12 min in all.  On a 15-minute lease pass --seeds 0,1,2 (finals ~3.5
# min).  If it still runs long, cut in this order: --procs 12, then select_steps None -> 150 in
# glue.py's SEARCH_VS_BASELINES (short selection runs: on MRPC they all sat at the majority class
# and picked 5e-3 for (a) and (b)), then the 0.02% old search (its rows only).  On 2 CPU cores the
# same protocol took 8.6 h of runs and 0.4 h of searches (search_vs_baselines.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/search_vs_baselines_parallel.sh OUT [--quick] [--device D] [--data-dir DIR] [--procs N] [--threads T] [--seeds 0,1,2] [--no-proxy]}
shift
DEVICE=cuda DATA=.dev/glue PROCS=8 THREADS=1 QUICK=() SEEDS=() PROXY=1 PQ_LIMIT=${PQ_LIMIT:-420}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=(--quick) ;;
    --device) DEVICE=$2; shift ;;
    --data-dir) DATA=$2; shift ;;
    --procs) PROCS=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --seeds) IFS=, read -r -a SEEDS <<< "$2"; SEEDS=(--seeds "${SEEDS[@]}"); shift ;;
    --no-proxy) PROXY=0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ -d "$DATA/SST-2" ] && [ -d "$DATA/MRPC" ] || { echo "--data-dir $DATA has no SST-2/ and MRPC/ folders" >&2; exit 2; }
mkdir -p "$OUT/logs"
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
GLUE=(python benchmarks/glue.py --protocol search-vs-baselines "${QUICK[@]}" "${SEEDS[@]}" --device "$DEVICE"
      --data-dir "$DATA" --runs-dir "$OUT/runs" --out "$OUT/search_vs_baselines" --threads "$THREADS" --no-calibrate)
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 ))s] $*"; }

# Runs the given commands (one per line of stdin: "log-name args...") in parallel, at most
# PROCS at a time; progress: a line per finished process; fails if any failed (its log's tail
# is printed).
parallel() {
  local pids=() names=() fail=0 next=0 name line
  finish() {  # wait for process $1 (an index)
    if wait "${pids[$1]}"; then
      say "  done ${names[$1]}: $(grep -E '^(search|select|final) ' "$OUT/logs/${names[$1]}.log" | grep -vc 'does not apply') new run(s)"
    else
      fail=1; say "  FAILED ${names[$1]} (log: $OUT/logs/${names[$1]}.log):"; tail -n 15 "$OUT/logs/${names[$1]}.log"
    fi
  }
  while read -r name line; do
    # shellcheck disable=SC2086
    "${GLUE[@]}" $line </dev/null >"$OUT/logs/$name.log" 2>&1 &
    pids+=($!); names+=("$name")
    if [ $(( ${#pids[@]} - next )) -ge "$PROCS" ]; then finish $next; next=$((next + 1)); fi
  done
  while [ $next -lt ${#pids[@]} ]; do finish $next; next=$((next + 1)); done
  return $fail
}

if [ "$PROXY" = 1 ]; then  # CPU-only, beside the GPU phases (the machine's other cores)
  PQ=(--tasks MRPC --layers 1 3 5 --steps 32 --supernet-steps 200)
  [ ${#QUICK[@]} -gt 0 ] && PQ=(--quick --tasks MRPC)
  timeout "$PQ_LIMIT" python benchmarks/proxy_quality.py "${PQ[@]}" --data-dir "$DATA" --threads 6 --out "$OUT" \
    >"$OUT/logs/proxy_quality.log" 2>&1 &
  PQ_PID=$!
  say "proxy_quality (trained importance beside the zero-cost proxies) started on CPU, pid $PQ_PID"
fi

say "1/4 searches (device $DEVICE)"
parallel <<JOBS || exit 1
search_sst2_0.1_new --phase search --tasks sst2 --methods new-search@0.1%
search_sst2_0.1_old --phase search --tasks sst2 --methods old-search@0.1%
search_sst2_0.02_new --phase search --tasks sst2 --methods new-search@0.02%
search_sst2_0.02_old --phase search --tasks sst2 --methods old-search@0.02%
search_mrpc_0.1_new --phase search --tasks mrpc --methods new-search@0.1%
search_mrpc_0.1_old --phase search --tasks mrpc --methods old-search@0.1%
JOBS
grep -h '^search ' "$OUT"/logs/search_*.log

say "2/4 lr selection on held-out train, $PROCS processes"
for k in $(seq 0 $((PROCS - 1))); do echo "select_$k --phase select --shard $k/$PROCS"; done | parallel || exit 1

say "3/4 final runs, $PROCS processes"
for k in $(seq 0 $((PROCS - 1))); do echo "final_$k --phase final --shard $k/$PROCS"; done | parallel || exit 1

say "4/4 reports"
"${GLUE[@]}" --report-only >"$OUT/logs/report.log" 2>&1 || { tail -n 20 "$OUT/logs/report.log"; exit 1; }
sed -n '/^## Summary/,/^## SST-2\|^## MRPC/p' "$OUT/search_vs_baselines.md"

if [ "$PROXY" = 1 ]; then
  if wait "$PQ_PID"; then say "proxy_quality done:"; grep -E "spearman|trained" "$OUT/logs/proxy_quality.log" | tail -n 12
  else say "proxy_quality FAILED (log: $OUT/logs/proxy_quality.log)"; tail -n 15 "$OUT/logs/proxy_quality.log"; fi
fi
say "all done: $OUT/search_vs_baselines.md"
