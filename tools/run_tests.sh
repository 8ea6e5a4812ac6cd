#!/usr/bin/env bash
# README command 2: set up (idempotent), then run the test suite on CPU.
#
#   bash tools/run_tests.sh [PYTEST ARGS ...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
exec .venv/bin/python -m pytest tests "$@"
