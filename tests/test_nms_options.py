"""The options every NMS type takes in the detectors: MODEL.IOU_AWARE.NMS.CLASS_AGNOSTIC (suppress
across classes) and NMS.OUTPUT_SCORE_THRESH (a threshold on the scores the NMS outputs), applied in
the order docs/nms.md states: candidates, NMS, output-score threshold, DETECTIONS_PER_IMAGE.

Expected values come from torchvision's nms (class-agnostic standard NMS), from each registered
type called directly with every box in one class, and from the same model without the option,
filtered by hand."""

import pytest
import torch
import torchvision

from iou_aware.modeling import NMSConfig, run_nms
from iou_aware.nms import NMS_REGISTRY, nms_needs_ious
from test_modeling import RCNN, RETINANET, build, fake_batch, make_cfg

IOU_HEAD = ["MODEL.IOU_AWARE.IOU_HEAD.ENABLED", "True"]


def clustered(seed, n=120, classes=4):
    """Boxes in a few tight clusters, each cluster spread over several classes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(5, 2, generator=g) * 80
    c = centres[torch.randint(0, 5, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 3
    wh = 20 + torch.rand(n, 2, generator=g) * 6
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1)
    return boxes, torch.rand(n, generator=g), torch.randint(0, classes, (n,), generator=g), torch.rand(n, generator=g)


@pytest.mark.parametrize("seed", range(10))
def test_class_agnostic_standard_equals_torchvision_nms(seed):
    boxes, scores, classes, _ = clustered(seed)
    cfg = NMSConfig(type="standard", iou_threshold=0.5, class_agnostic=True)
    keep, out_scores, out_boxes = run_nms(cfg, boxes, scores, classes)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, expected)
    assert torch.equal(out_scores, scores[expected]) and torch.equal(out_boxes, boxes[expected])
    class_aware = run_nms(NMSConfig(type="standard", iou_threshold=0.5), boxes, scores, classes)[0]
    assert len(class_aware) > len(keep), "the clusters mix classes: class-aware NMS keeps more"


@pytest.mark.parametrize("name", sorted(NMS_REGISTRY))
def test_class_agnostic_is_one_group_for_every_type(name):
    boxes, scores, classes, ious = clustered(3)
    values = {}
    cfg = NMSConfig(type=name, iou_threshold=0.5, values=values, class_agnostic=True)
    got = run_nms(cfg, boxes, scores, classes, ious if nms_needs_ious(name) else None)
    kwargs = NMS_REGISTRY.arguments(name, values)
    if nms_needs_ious(name):
        kwargs["ious"] = ious
    direct = NMS_REGISTRY.get(name).fn(boxes, scores, torch.zeros_like(classes), 0.5, **kwargs)
    assert torch.equal(got[0], direct[0]) and torch.equal(got[1], direct[1])
    assert torch.equal(got[2], direct[2] if len(direct) == 3 else boxes[direct[0]])


@pytest.mark.parametrize("name", ["standard", "soft", "matrix", "score_fused"])
def test_output_score_threshold_drops_only_low_outputs(name):
    boxes, scores, classes, ious = clustered(5)
    extra = ious if nms_needs_ious(name) else None
    full = run_nms(NMSConfig(type=name, iou_threshold=0.5), boxes, scores, classes, extra)
    t = float(full[1].median())
    got = run_nms(NMSConfig(type=name, iou_threshold=0.5, output_score_thresh=t), boxes, scores, classes, extra)
    ok = full[1] >= t
    assert 0 < int(ok.sum()) < len(ok)
    for a, b in zip(got, full):
        assert torch.equal(a, b[ok])


def detect(config, *opts):
    model = build(make_cfg(config, *IOU_HEAD, *opts))
    model.eval()
    with torch.no_grad():
        return model(fake_batch(n_images=1))[0]["instances"]


def _kept_pairs_overlap(calls, thr, cross_class_only):
    """Whether two boxes the NMS kept (before the detector clips them to the image) overlap by
    more than ``thr`` (of different classes only, with ``cross_class_only``)."""
    found = False
    for boxes, classes, keep in calls:
        b, c = boxes[keep], classes[keep]
        iou = torchvision.ops.box_iou(b, b).triu(1)
        pair = iou > thr
        if cross_class_only:
            pair &= c[:, None] != c[None, :]
        found |= bool(pair.any())
    return found


@pytest.mark.parametrize("config,thresh_key", [(RETINANET, "MODEL.RETINANET.NMS_THRESH_TEST"),
                                               (RCNN, "MODEL.ROI_HEADS.NMS_THRESH_TEST")])
def test_detector_class_agnostic_suppresses_across_classes(config, thresh_key, monkeypatch):
    import iou_aware.modeling.postprocess as post

    calls, original = [], post.run_nms

    def recording(cfg, boxes, scores, classes, ious=None):
        out = original(cfg, boxes, scores, classes, ious)
        calls.append((boxes, classes, out[0]))
        return out

    for module in ("iou_aware.modeling.dense", "iou_aware.modeling.roi_heads"):
        monkeypatch.setattr(f"{module}.run_nms", recording)
    thr = 0.5
    detect(config, thresh_key, str(thr))
    assert len(calls) == 1 and _kept_pairs_overlap(calls, thr, cross_class_only=True), (
        "precondition: class-aware NMS keeps overlapping boxes of different classes")
    kept_aware = len(calls.pop()[2])
    agnostic = detect(config, thresh_key, str(thr), "MODEL.IOU_AWARE.NMS.CLASS_AGNOSTIC", "True")
    assert len(calls) == 1 and len(agnostic) > 0
    assert not _kept_pairs_overlap(calls, thr, cross_class_only=False)
    assert len(calls[0][2]) < kept_aware


@pytest.mark.parametrize("config", [RETINANET, RCNN])
def test_detector_output_threshold_then_detections_per_image(config):
    soft = ["MODEL.IOU_AWARE.NMS.TYPE", "soft"]
    full = detect(config, *soft, "TEST.DETECTIONS_PER_IMAGE", "1000")
    t = float(full.scores[len(full) // 3])
    ok = full.scores >= t
    for max_det in (1000, 5):
        got = detect(config, *soft, "MODEL.IOU_AWARE.NMS.OUTPUT_SCORE_THRESH", str(t),
                     "TEST.DETECTIONS_PER_IMAGE", str(max_det))
        expected = full[ok][:max_det]
        assert len(got) == min(int(ok.sum()), max_det)
        assert torch.equal(got.scores, expected.scores)
        assert torch.equal(got.pred_boxes.tensor, expected.pred_boxes.tensor)
        assert torch.equal(got.pred_classes, expected.pred_classes)


@pytest.mark.parametrize(
    "opts,key",
    [
        (["MODEL.IOU_AWARE.NMS.OUTPUT_SCORE_THRESH", "1.5"], "MODEL.IOU_AWARE.NMS.OUTPUT_SCORE_THRESH"),
        (["MODEL.IOU_AWARE.NMS.OUTPUT_SCORE_THRESH", "-0.1"], "MODEL.IOU_AWARE.NMS.OUTPUT_SCORE_THRESH"),
    ],
)
def test_invalid_option_names_the_key(opts, key):
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(make_cfg(RETINANET, *opts))
