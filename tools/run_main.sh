#!/usr/bin/env bash
# README command 1, the main job: set up, train and evaluate a small IoU-aware RetinaNet on the
# built-in synthetic dataset (generated on first use), then run the demo on validation images with
# IoU-guided NMS, side by side with standard NMS of the same model.
#
#   bash tools/run_main.sh [CONFIG] [KEY VALUE ...]     # default CONFIG below; trailing config overrides
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash tools/setup_env.sh
PY=.venv/bin/python

CONFIG=${1:-configs/synthetic/retinanet_R18_FPN_iou_aware.yaml}
shift || true
OUT=$($PY -c "from iou_aware.engine import setup_cfg; import sys; print(setup_cfg(sys.argv[1], sys.argv[2:]).OUTPUT_DIR)" "$CONFIG" "$@")
VAL_IMAGES=$($PY -c "from iou_aware.engine import setup_cfg; from detectron2.data import MetadataCatalog, DatasetCatalog; import sys; cfg = setup_cfg(sys.argv[1], sys.argv[2:]); DatasetCatalog.get(cfg.DATASETS.TEST[0]); print(MetadataCatalog.get(cfg.DATASETS.TEST[0]).image_root)" "$CONFIG" "$@")

start=$(date +%s)
echo "[main] training $CONFIG -> $OUT"
$PY tools/train_net.py --config-file "$CONFIG" "$@"
echo "[main] demo on 8 validation images from $VAL_IMAGES"
$PY tools/demo.py --config-file "$CONFIG" --input "$VAL_IMAGES" --output "$OUT/demo" --max-images 8 \
    --side-by-side --opts "$@" MODEL.WEIGHTS "$OUT/model_final.pth"
echo "[main] done in $(( $(date +%s) - start )) s. Outputs:"
echo "  model:        $OUT/model_final.pth"
echo "  metrics:      $OUT/metrics.json (training curves, evaluation), $OUT/log.txt"
echo "  evaluation:   $OUT/inference/ (COCO results json)"
echo "  demo images:  $OUT/demo/*.png (left: standard NMS, right: the config's NMS) and $OUT/demo/detections.json"
