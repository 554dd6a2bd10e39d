#!/usr/bin/env bash
# Set up and run the demo: a synthetic liver CT and its SEG sent to a node started here on its
# embedded defaults (SQLite, local spool); the two TID 1500 reports and the other results come
# back and are left in ./out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/radiomics-node demo "$@"
