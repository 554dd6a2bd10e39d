#!/usr/bin/env bash
# Set up and run the demo: a synthetic liver CT and its SEG sent to a node started here on its
# embedded defaults (SQLite, local spool); the TID 1500 report comes back and is left in ./out.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/radiomics-node demo "$@"
