#!/usr/bin/env bash
# Set up and run the whole test suite: unit tests, the reference-value tests against
# ../shared/refdata, and the integration tests with a real Orthanc and DCMTK.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --system-tools
.venv/bin/ruff check node pipelines models tests
exec .venv/bin/python -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"
