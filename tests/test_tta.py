"""Test-time augmentation (iou_aware.modeling.tta.IoUAwareTTA, Trainer.test_with_TTA, train_net).

Real models are the tiny fresh ones of test_modeling (64 px, fake images). Where the expected
output must be known exactly, a stub GeneralizedRCNN returns fixed detections in the pixels of the
augmented image it is given, and the expectation is computed by hand or by the library functions
(torchvision's batched_nms, iou_aware.nms.weighted_nms, weighted_boxes_fusion) on the same boxes.
"""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.modeling import GeneralizedRCNN
from detectron2.structures import Boxes, Instances
from torch import nn

from conftest import REPO, load_tool
from iou_aware.modeling import IoUAwareTTA
from iou_aware.nms import NMS_REGISTRY, weighted_boxes_fusion, weighted_nms
from test_modeling import RCNN, RETINANET, build, fake_batch, make_cfg
from test_one_stage_quality import FCOS
from test_one_stage_quality import make_cfg as make_one_stage_cfg

IOU_HEAD = ["MODEL.IOU_AWARE.IOU_HEAD.ENABLED", "True"]


def aug_opts(min_sizes, max_size=1000, flip=False, merge="standard"):
    return ["TEST.AUG.MIN_SIZES", str(tuple(min_sizes)), "TEST.AUG.MAX_SIZE", str(max_size),
            "TEST.AUG.FLIP", str(flip), "TEST.AUG.MERGE_TYPE", merge]


def run_tta(cfg, model, batch):
    with torch.no_grad():
        return [out["instances"] for out in IoUAwareTTA(cfg, model)(batch)]


# ------------------------------------------------------------------------------ a stub detector
class StubRCNN(GeneralizedRCNN):
    """A GeneralizedRCNN whose ``inference`` returns ``detect(image)``: a dict of ``boxes`` (in the
    given image's pixels), ``scores``, ``classes`` and optionally ``ious``. Records the images."""

    def __init__(self, detect):
        nn.Module.__init__(self)  # no backbone or heads: nothing of them is used
        self.detect = detect
        self.seen = []

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        assert not do_postprocess, "IoUAwareTTA needs the detections in the augmented image's pixels"
        results = []
        for x in batched_inputs:
            image = x["image"]
            self.seen.append(image)
            d = self.detect(image)
            inst = Instances(tuple(image.shape[1:]))
            inst.pred_boxes = Boxes(torch.tensor(d["boxes"], dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.tensor(d["scores"], dtype=torch.float32)
            inst.pred_classes = torch.tensor(d["classes"], dtype=torch.int64)
            if "ious" in d:
                inst.pred_ious = torch.tensor(d["ious"], dtype=torch.float32)
            results.append(inst)
        return results


NONE = {"boxes": [], "scores": [], "classes": []}


# ------------------------------------------------- (a) one augmentation = the plain model output
MODELS = {  # name -> (config of the tiny model, with extra overrides; whether it predicts IoUs)
    "retinanet": (lambda *o: make_cfg(RETINANET, *o), False),
    "retinanet_iou_head": (lambda *o: make_cfg(RETINANET, *IOU_HEAD, *o), True),
    "faster_rcnn": (lambda *o: make_cfg(RCNN, *o), False),
    "faster_rcnn_iou_head_score_fused": (
        lambda *o: make_cfg(RCNN, *IOU_HEAD, "MODEL.IOU_AWARE.NMS.TYPE", "score_fused", *o), True),
    "fcos_iou_quality": (lambda *o: make_one_stage_cfg(FCOS, "MODEL.IOU_AWARE.QUALITY", "iou", *o), True),
    "stock_retinanet": (lambda *o: make_cfg(RETINANET, *o, iou_aware=False), False),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_augmentation_equals_the_plain_model(name):
    make, with_ious = MODELS[name]
    cfg = make(*aug_opts([64], max_size=64))
    model = build(cfg)
    model.eval()
    batch = fake_batch(n_images=2)
    with torch.no_grad():  # one image per forward, as the wrapper runs them (batches differ by ~1e-5)
        plain = [model([copy.deepcopy(x)])[0]["instances"] for x in batch]
    tta = run_tta(cfg, model, batch)
    for p, t in zip(plain, tta):
        assert len(p) > 0
        assert t.image_size == p.image_size == (64, 64)
        torch.testing.assert_close(t.pred_boxes.tensor, p.pred_boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(t.scores, p.scores, rtol=0, atol=0)
        assert torch.equal(t.pred_classes, p.pred_classes)
        assert t.has("pred_ious") == p.has("pred_ious") == with_ious
        if with_ious:
            torch.testing.assert_close(t.pred_ious, p.pred_ious, rtol=0, atol=0)


# ------------------------------------------------------------- (b) boxes map back, by hand
def bright_left_column(height, width):
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[:, :, 0] = 255
    return image


def only_when_flipped(image):
    """One box in the flipped, 2x resized 40 x 64 image (80 x 128): its right column is bright."""
    flipped = image[0, :, -1].float().mean() > image[0, :, 0].float().mean()
    return {"boxes": [[8.0, 20.0, 40.0, 60.0]], "scores": [0.9], "classes": [1]} if flipped else NONE


@pytest.mark.parametrize(
    "height,width,expected",
    [
        # unflip in 128 px: x -> 128 - x gives [88, 20, 120, 60]; halve back to 40 x 64
        (40, 64, [44.0, 10.0, 60.0, 30.0]),
        # the image is the test loader's 2x resize of a 20 x 32 original: a quarter of [88, 20, 120, 60]
        (20, 32, [22.0, 5.0, 30.0, 15.0]),
    ],
)
def test_flipped_detection_maps_back(height, width, expected):
    cfg = make_cfg(RCNN, *aug_opts([80], flip=True))
    stub = StubRCNN(only_when_flipped)
    (out,) = run_tta(cfg, stub, [{"image": bright_left_column(40, 64), "height": height, "width": width}])
    assert [tuple(im.shape) for im in stub.seen] == [(3, 80, 128), (3, 80, 128)]
    assert out.image_size == (height, width)
    assert out.pred_boxes.tensor.tolist() == [expected]
    assert out.scores.tolist() == pytest.approx([0.9]) and out.pred_classes.tolist() == [1]


# ------------------------------------------------------- (c) the merge, against the libraries
# detections of two augmentations (64 px = the image, and 128 px), in the original image's pixels
AUG_64 = {"boxes": [[10, 10, 30, 30], [40, 40, 60, 60], [12, 40, 28, 58]],
          "scores": [0.9, 0.8, 0.4], "classes": [0, 1, 0], "ious": [0.7, 0.6, 0.5]}
AUG_128 = {"boxes": [[11, 10, 31, 31], [41, 41, 59, 61], [10, 10, 30, 30]],
           "scores": [0.85, 0.95, 0.3], "classes": [0, 1, 1], "ious": [0.9, 0.4, 0.8]}


def two_scales(image):
    """AUG_64 on the 64 px input, AUG_128's boxes doubled on the 128 px one."""
    if image.shape[-1] == 64:
        return AUG_64
    return {**AUG_128, "boxes": [[2 * v for v in b] for b in AUG_128["boxes"]]}


def concatenated(key, dtype=torch.float32):
    return torch.cat([torch.tensor(AUG_64[key], dtype=dtype), torch.tensor(AUG_128[key], dtype=dtype)])


@pytest.mark.parametrize("merge", ["standard", "weighted", "wbf"])
def test_merge_equals_the_library_functions(merge):
    cfg = make_cfg(RCNN, *IOU_HEAD, *aug_opts([64, 128], merge=merge), "MODEL.ROI_HEADS.NMS_THRESH_TEST", "0.5")
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    (out,) = run_tta(cfg, StubRCNN(two_scales), [{"image": image, "height": 64, "width": 64}])

    boxes, scores, classes = concatenated("boxes"), concatenated("scores"), concatenated("classes", torch.int64)
    if merge == "wbf":
        exp_boxes, exp_scores, exp_classes = weighted_boxes_fusion(
            [AUG_64["boxes"], AUG_128["boxes"]], [AUG_64["scores"], AUG_128["scores"]],
            [AUG_64["classes"], AUG_128["classes"]], iou_threshold=0.5,
        )
        exp_boxes, exp_scores = exp_boxes.float(), exp_scores.float()
        assert not out.has("pred_ious")
    else:
        if merge == "standard":
            keep = torchvision.ops.batched_nms(boxes, scores, classes, 0.5)
            exp_scores, exp_boxes = scores[keep], boxes[keep]
        else:
            keep, exp_scores, exp_boxes = weighted_nms(boxes, scores, classes, 0.5)
        exp_classes = classes[keep]
        torch.testing.assert_close(out.pred_ious, concatenated("ious")[keep], rtol=0, atol=0)
    # the two class-0 boxes near (10, 10) and the two class-1 boxes near (40, 40) overlap: 6 -> 4
    assert len(out) == len(exp_boxes) == 4
    torch.testing.assert_close(out.pred_boxes.tensor, exp_boxes, rtol=0, atol=0)
    torch.testing.assert_close(out.scores, exp_scores, rtol=0, atol=0)
    assert torch.equal(out.pred_classes, exp_classes)


def test_detections_per_image_caps_the_merge():
    cfg = make_cfg(RCNN, *aug_opts([64, 128]), "TEST.DETECTIONS_PER_IMAGE", "2")
    (out,) = run_tta(cfg, StubRCNN(two_scales), [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])
    # the two best of the merge: 0.95 (class 1 at 128 px) and 0.9 (class 0 at 64 px)
    assert out.scores.tolist() == pytest.approx([0.95, 0.9])
    assert out.pred_boxes.tensor.tolist() == [[41.0, 41.0, 59.0, 61.0], [10.0, 10.0, 30.0, 30.0]]


# ------------------------------------------------- (d) every registered type on a tiny RetinaNet
@pytest.fixture(scope="module")
def retinanet_with_iou_head():
    model = build(make_cfg(RETINANET, *IOU_HEAD))
    return model.eval()


@pytest.mark.parametrize("merge", sorted(NMS_REGISTRY) + ["wbf"])
def test_every_merge_type_gives_finite_detections(merge, retinanet_with_iou_head):
    cfg = make_cfg(RETINANET, *IOU_HEAD, *aug_opts([48, 64], max_size=64, flip=True, merge=merge),
                   "MODEL.IOU_AWARE.NMS.MATRIX_SCORE_THRESH", "0.0")  # a fresh model scores about 0.01
    (out,) = run_tta(cfg, retinanet_with_iou_head, fake_batch(n_images=1))
    boxes = out.pred_boxes.tensor
    assert 0 < len(out) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert torch.isfinite(boxes).all() and torch.isfinite(out.scores).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 64).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (out.scores[:-1] >= out.scores[1:]).all(), "best first"
    assert ((out.pred_classes >= 0) & (out.pred_classes < 6)).all()
    if merge != "wbf":
        assert ((out.pred_ious >= 0) & (out.pred_ious <= 1)).all()


def test_merge_type_default_is_detectron2s_merge_and_empty_is_the_models_type(retinanet_with_iou_head):
    soft = ["MODEL.IOU_AWARE.NMS.TYPE", "soft"]
    assert IoUAwareTTA(make_cfg(RETINANET, *IOU_HEAD, *soft), retinanet_with_iou_head).merge_type == "standard"
    own = make_cfg(RETINANET, *IOU_HEAD, *soft, "TEST.AUG.MERGE_TYPE", "")
    assert IoUAwareTTA(own, retinanet_with_iou_head).merge_type == "soft"


# --------------------------------------------------------------------- (e) errors name the key
def test_unknown_merge_type_names_the_key():
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MERGE_TYPE: unknown merge type 'nms'.*'wbf'.*'standard'"):
        make_cfg(RETINANET, "TEST.AUG.MERGE_TYPE", "nms")
    cfg = make_cfg(RCNN).clone()
    cfg.defrost()
    cfg.TEST.AUG.MERGE_TYPE = "nms"  # set after setup_cfg: the wrapper checks it too
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MERGE_TYPE"):
        IoUAwareTTA(cfg, StubRCNN(two_scales))


def test_iou_guided_without_iou_prediction_names_the_key():
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MERGE_TYPE 'iou_guided'.*IOU_HEAD"):
        make_cfg(RETINANET, "TEST.AUG.MERGE_TYPE", "iou_guided")
    # the config claims an IoU head, the model's detections have no pred_ious
    no_ious = {k: v for k, v in AUG_64.items() if k != "ious"}
    cfg = make_cfg(RCNN, *IOU_HEAD, *aug_opts([64], merge="iou_guided"))
    with pytest.raises(ValueError, match=r"TEST\.AUG\.MERGE_TYPE 'iou_guided'.*pred_ious"):
        run_tta(cfg, StubRCNN(lambda image: no_ious), [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8)}])


def test_masks_and_other_models_are_refused():
    cfg = make_cfg(RCNN).clone()
    cfg.defrost()
    cfg.MODEL.MASK_ON = True
    with pytest.raises(ValueError, match=r"MODEL\.MASK_ON"):
        IoUAwareTTA(cfg, StubRCNN(two_scales))
    with pytest.raises(TypeError, match="GeneralizedRCNN"):
        IoUAwareTTA(make_cfg(RCNN), nn.Linear(1, 1))


# ---------------------------------------------------------------- (f) train_net with TEST.AUG
def test_train_net_evaluates_with_tta(tiny_synthetic_opts, tmp_path):
    config = "configs/synthetic/retinanet_R18_FPN.yaml"
    opts = [
        *tiny_synthetic_opts, "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.RETINANET.NUM_CONVS", "1",
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # a 2-iteration model scores below 0.05
        "TEST.DETECTIONS_PER_IMAGE", "10", "TEST.AUG.ENABLED", "True", *aug_opts([96, 128], max_size=128),
    ]
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", config, *opts, "SOLVER.MAX_ITER", "2",
         "OUTPUT_DIR", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # after training: the plain evaluation and the one with TTA (EvalHook(0, test_with_TTA))
    for folder in ("inference", "inference_TTA"):
        assert (run / folder / "synthetic_shapes_val" / "coco_instances_results.json").is_file(), folder
    with open(run / "metrics.json") as f:
        last = [json.loads(line) for line in f][-1]
    assert "bbox/AP" in last and "bbox_TTA/AP" in last  # both evaluations reach the writers

    train_net = load_tool("train_net")
    args = train_net.get_parser().parse_args(
        ["--config-file", config, "--eval-only", *opts, "OUTPUT_DIR", str(tmp_path / "eval"),
         "MODEL.WEIGHTS", str(run / "model_final.pth")])
    res = train_net.main(args)
    assert set(res) == {"bbox", "bbox_TTA"}
    assert "AP" in res["bbox_TTA"] and "AP95" in res["bbox_TTA"]
    assert (tmp_path / "eval" / "inference_TTA" / "synthetic_shapes_val" / "coco_instances_results.json").is_file()
