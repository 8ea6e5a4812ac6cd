#!/usr/bin/env bash
# One command that validates and times the project on a CUDA machine (benchmarks/gpu/README.md):
#
#   bash benchmarks/gpu/run.sh OUTDIR                     # on the GPU machine, with .gpu_wheels carried
#   bash benchmarks/gpu/run.sh OUTDIR --device cpu --quick # every step at toy sizes on CPU (tests)
#   bash benchmarks/gpu/run.sh OUTDIR --steps training amp # only some steps (a rerun)
#
# Installs the carried wheels (.gpu_wheels/, from benchmarks/gpu/prepare.sh) into a temporary
# folder when they are there and the device is cuda (--wheels DIR or --wheels none to choose), puts
# this repository first on PYTHONPATH (the project travels as source), then runs the five steps of
# benchmarks/gpu/run.py. Exit status 0 when every step passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

[[ $# -ge 1 && "$1" != -* ]] || { echo "usage: bash benchmarks/gpu/run.sh OUTDIR [--device cuda|cpu] [--quick] [--steps ...] [--wheels DIR|none]" >&2; exit 2; }
OUTDIR=$1; shift
DEVICE=cuda
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE=${2:?--device needs cuda or cpu}; ARGS+=(--device "$2"); shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a folder or none}; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[[ -n "$WHEELS" ]] || WHEELS=$([[ "$DEVICE" == cuda && -d .gpu_wheels ]] && echo .gpu_wheels || echo none)
PY=${IOU_AWARE_PYTHON:-python3}

SITE=""
if [[ "$WHEELS" != none ]]; then
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "[gpu-run] error: no wheel in $WHEELS (run benchmarks/gpu/prepare.sh here first)" >&2; exit 2; }
  SITE=$(mktemp -d)/site
  trap 'rm -rf "$(dirname "$SITE")"' EXIT
  echo "[gpu-run] installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE (offline, no deps)"
  # a failed install is reported by the import check of the first step, naming the package
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
      --target "$SITE" "$WHEELS"/*.whl || echo "[gpu-run] warning: the wheel install failed (see above)" >&2
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu/run.py "$OUTDIR" "${ARGS[@]}"
