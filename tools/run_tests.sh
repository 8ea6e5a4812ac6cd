#!/usr/bin/env bash
# README command 2: set up (idempotent), then run the test suite (CPU; the CUDA tests also run where
# a GPU is present).
#
#   bash tools/run_tests.sh [PYTEST ARGS ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
exec "${IOU_AWARE_VENV:-.venv}/bin/python" -m pytest "$@"   # pytest.ini: testpaths = tests
