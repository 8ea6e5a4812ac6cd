#!/usr/bin/env bash
# README command 1, the main job: set up, train and evaluate a small IoU-aware RetinaNet on the
# built-in synthetic dataset (generated on first use), compare NMS types on the trained weights
# (standard, IoU-guided, score-fused: one table), then run the demo on validation images with
# IoU-guided NMS, side by side with standard NMS of the same model.
#
#   bash tools/run_main.sh [CONFIG.yaml] [KEY VALUE ...]     # default CONFIG below; trailing config overrides
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
PY=${IOU_AWARE_VENV:-.venv}/bin/python

CONFIG=configs/synthetic/retinanet_R18_FPN_iou_aware.yaml
if [[ "${1:-}" == *.yaml || "${1:-}" == *.yml ]]; then CONFIG=$1; shift; fi
# the config's OUTPUT_DIR and the validation images (generating the dataset if needed), in one start-up
{ read -r OUT; read -r VAL_IMAGES; } < <($PY -c "
import sys
from detectron2.data import DatasetCatalog, MetadataCatalog
from iou_aware.engine import setup_cfg
cfg = setup_cfg(sys.argv[1], sys.argv[2:])
DatasetCatalog.get(cfg.DATASETS.TEST[0])
print(cfg.OUTPUT_DIR)
print(MetadataCatalog.get(cfg.DATASETS.TEST[0]).image_root)
" "$CONFIG" "$@") || true
[[ -n "${OUT:-}" && -n "${VAL_IMAGES:-}" ]] || { echo "[main] error: could not load config $CONFIG" >&2; exit 1; }

start=$(date +%s)
echo "[main] training $CONFIG -> $OUT"
$PY tools/train_net.py --config-file "$CONFIG" "$@"
echo "[main] NMS types on the trained weights"
$PY tools/compare_nms.py --config-file "$CONFIG" "$@" MODEL.WEIGHTS "$OUT/model_final.pth"
echo "[main] demo on 8 validation images from $VAL_IMAGES"
$PY tools/demo.py --config-file "$CONFIG" --input "$VAL_IMAGES" --output "$OUT/demo" --max-images 8 \
    --confidence-threshold 0.3 --side-by-side --nms iou_guided --opts "$@" MODEL.WEIGHTS "$OUT/model_final.pth"
echo "[main] done in $(( $(date +%s) - start )) s. Outputs:"
echo "  model:        $OUT/model_final.pth"
echo "  metrics:      $OUT/metrics.json (training curves, evaluation), $OUT/log.txt"
echo "  evaluation:   $OUT/inference/ (COCO results json)"
echo "  NMS table:    $OUT/nms_comparison.md (and .csv)"
echo "  demo images:  $OUT/demo/*.png (left: standard NMS, right: IoU-guided NMS) and $OUT/demo/detections.json"
