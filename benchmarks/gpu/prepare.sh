#!/usr/bin/env bash
# Run HERE (a machine that reaches the package index), before a GPU run: puts every wheel the GPU
# machine lacks into .gpu_wheels/ (git-ignored; it travels with the working tree when the run names
# it in `carry`) and checks that the set installs offline for CPython 3.12 on manylinux x86_64.
#
#   bash benchmarks/gpu/prepare.sh            # about a minute; writes .gpu_wheels/
#
# The GPU machine (Python 3.12, its own torch/torchvision/numpy 2, opencv, matplotlib, pyyaml,
# tensorboard, pytest...) lacks Detectron2 and these of its needs: fvcore, iopath, yacs, termcolor,
# omegaconf, hydra-core, antlr4-python3-runtime, pycocotools. Versions: the ones pinned in
# constraints.txt; Detectron2: the index's sal-detectron2 of tools/setup_env.sh, repacked without
# its CPython-3.10 _C extension (benchmarks/gpu/wheels.py). The project itself travels as source.
# Fails loudly if the folder exceeds 50 MiB or the working tree with it would exceed 64 MiB.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DEST=.gpu_wheels
MAX_WHEELS_MIB=50
MAX_TREE_MIB=64   # what one device call carries: tracked + untracked-not-ignored files + carried paths
PY=${IOU_AWARE_PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
# pip's own exit status is kept; only the mirror's noise about missing local folders is filtered.
pip_() { "$PY" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
log() { echo "[prepare] $*"; }
die() { echo "[prepare] error: $*" >&2; exit 1; }

TARGET=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
# published as wheels (pycocotools: cp312-abi3, built against numpy 2's C API)
BINARY=(yacs termcolor omegaconf hydra-core pycocotools)
# published as pure-Python source archives only: built here into py3-none-any wheels
SOURCE=(fvcore iopath antlr4-python3-runtime)

pinned() {  # NAME -> NAME==VERSION from constraints.txt (one version each)
  local line
  line=$(grep -i -E "^$1==" constraints.txt | head -1) || die "$1 is not pinned in constraints.txt"
  echo "$line"
}
D2=$(grep -o -E 'sal-detectron2==[0-9.]+' tools/setup_env.sh | head -1) \
  || die "no sal-detectron2==VERSION in tools/setup_env.sh"

rm -rf "$DEST"
mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

specs=()
for n in "${BINARY[@]}"; do specs+=("$(pinned "$n")"); done
log "downloading cp312 manylinux wheels: ${specs[*]}"
pip_ download -q --no-deps "${TARGET[@]}" -d "$DEST" "${specs[@]}"

specs=()
for n in "${SOURCE[@]}"; do specs+=("$(pinned "$n")"); done
log "building pure-Python wheels from source archives: ${specs[*]}"
pip_ wheel -q --no-deps -w "$tmp/built" "${specs[@]}"
for w in "$tmp"/built/*.whl; do
  [[ "$w" == *-py3-none-any.whl || "$w" == *-py2.py3-none-any.whl ]] \
    || die "$(basename "$w") is not a pure-Python wheel; it would not run under CPython 3.12"
  mv "$w" "$DEST/"
done

log "downloading $D2 (Detectron2 at upstream a59f0563) and repacking it as py3-none-any without _C"
pip_ download -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    -d "$tmp/d2" "$D2"
"$PY" benchmarks/gpu/wheels.py repack-detectron2 "$tmp"/d2/*.whl "$DEST" >/dev/null

log "checking every wheel's requirements (carried, on the GPU machine, or accepted)"
"$PY" benchmarks/gpu/wheels.py check "$DEST"

log "installing the set offline for CPython 3.12 (--no-index, --no-deps: the rest is on the GPU machine)"
names=()
for w in "$DEST"/*.whl; do names+=("$(basename "$w" | cut -d- -f1 | tr _ -)"); done
pip_ install -q --no-index --find-links "$DEST" --no-deps --no-compile "${TARGET[@]}" \
    --target "$tmp/site" "${names[@]}"
for pkg in detectron2 fvcore iopath yacs termcolor omegaconf hydra antlr4 pycocotools; do
  [[ -d "$tmp/site/$pkg" ]] || die "the offline install has no $pkg/ package"
done
[[ -z "$(ls "$tmp"/site/detectron2/_C.* 2>/dev/null)" ]] || die "detectron2/_C is still in the wheel"
ls "$tmp"/site/pycocotools/_mask.abi3.so >/dev/null || die "pycocotools has no cp312 abi3 _mask extension"

wheels_b=$(du -sb "$DEST" | cut -f1)
tree_b=$(git ls-files -z -co --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
total_mib=$(( (wheels_b + tree_b) / 1048576 ))
log "sizes: $DEST $(( wheels_b / 1024 )) KiB, working tree $(( tree_b / 1024 )) KiB, together ${total_mib} MiB"
(( wheels_b <= MAX_WHEELS_MIB * 1048576 )) || die "$DEST is over $MAX_WHEELS_MIB MiB"
(( wheels_b + tree_b <= MAX_TREE_MIB * 1048576 )) \
  || die "working tree + $DEST over $MAX_TREE_MIB MiB: the device call would refuse it"
ls -1 "$DEST"
log "done: run the GPU command of benchmarks/gpu/README.md with carry [\"$DEST\"]"
