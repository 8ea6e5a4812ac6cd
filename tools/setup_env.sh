#!/usr/bin/env bash
# Idempotent environment set-up for iou_aware; both README commands call it first.
#
#   bash tools/setup_env.sh        # creates/updates .venv, prints which Detectron2 route it took
#
# 1. .venv (Python 3.11) if missing;
# 2. torch/torchvision pinned in constraints.txt (the index's default build; runs on CPU too);
# 3. Detectron2, by the route in docs/design.md: already importable -> keep; official git repository
#    reachable (checked with a 5 s time box) -> build it from there; otherwise the index's
#    sal-detectron2==0.7.2 pure-Python tree (Detectron2 at upstream a59f0563), its bundled _C.so removed;
# 4. the project itself, editable, with its dev extras and everything else from constraints.txt;
# 5. `pip check`.
# A second run with nothing changed only compares a stamp and returns in about a second.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${IOU_AWARE_VENV:-.venv}
D2_GIT=https://github.com/facebookresearch/detectron2.git
STAMP="$VENV/.setup_stamp"
want=$(cat constraints.txt setup.py tools/setup_env.sh | sha256sum | cut -d' ' -f1)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
   && "$VENV/bin/python" -c "import detectron2, iou_aware" 2>/dev/null; then
  echo "[setup] environment up to date ($VENV)"
  exit 0
fi

log() { echo "[setup] $*"; }
# pip's own exit status is kept; only the mirror's noise about missing local folders is filtered.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_q() { quiet "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

if [[ ! -x "$VENV/bin/python" ]]; then
  PY=""
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PY=$cand; break
    fi
  done
  [[ -n "$PY" ]] || { echo "[setup] error: Python 3.11 not found (tried python3.11, python3)" >&2; exit 1; }
  log "creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PYV="$VENV/bin/python"
SITE=$("$PYV" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

log "installing torch and torchvision (pinned in constraints.txt)"
pip_q -c constraints.txt torch torchvision
"$PYV" -c 'import torch, torchvision; print("[setup] torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'

if "$PYV" -c "import detectron2" 2>/dev/null; then
  log "detectron2 route: already importable ($("$PYV" -c 'import detectron2; print(detectron2.__version__, detectron2.__file__)')), kept"
elif timeout 5 git ls-remote "$D2_GIT" HEAD >/dev/null 2>&1; then
  log "detectron2 route: official repository reachable, building it (needs a compiler; minutes)"
  pip_q -c constraints.txt --no-build-isolation "git+$D2_GIT"
else
  log "detectron2 route: official repository unreachable, installing the index's sal-detectron2==0.7.2 pure-Python tree"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip_q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
      --target "$tmp" sal-detectron2==0.7.2
  # Keep the library and its metadata only: the wheel also ships Detectron2's tools/ scripts as a
  # top-level `tools` package, which would shadow this repository's tools/ folder.
  rm -f "$tmp"/detectron2/_C.*.so   # built for CPython 3.10 and another torch; not needed here
  rm -rf "$SITE/detectron2" "$SITE"/sal_detectron2-*.dist-info
  mv "$tmp/detectron2" "$tmp"/sal_detectron2-*.dist-info "$SITE/"
fi

log "installing the project (editable, dev extras) and its pinned dependencies"
pip_q -c constraints.txt -e ".[dev]"
"$PYV" -m pip check
"$PYV" -c 'import detectron2, iou_aware; print("[setup] detectron2", detectron2.__version__, "from", detectron2.__file__)'
echo "$want" > "$STAMP"
log "done: $VENV is ready"
