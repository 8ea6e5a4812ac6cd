"""NMS types registered from outside the package (iou_aware.nms.register_nms), selected by
MODEL.IOU_AWARE.NMS.TYPE and run by IoUAwareRetinaNet and Faster R-CNN with IoUAwareROIHeads.

Each type is registered by a fixture and unregistered at teardown. Models are the tiny fresh ones
of test_modeling (64 px, one fake image); the expected detections come from the same model with
standard NMS, filtered or rewritten by hand.
"""

import pytest
import torch

from iou_aware.modeling import NMSConfig, run_nms
from iou_aware.nms import NMS_REGISTRY, batched_nms, register_nms
from test_modeling import RCNN, RETINANET, build, fake_batch, make_cfg

IOU_HEAD = ["MODEL.IOU_AWARE.IOU_HEAD.ENABLED", "True"]
CALLS = []  # what the registered test functions received, one dict per call


@pytest.fixture
def min_score_nms():
    """The README's example: standard NMS, then drop the kept boxes scored below min_score."""
    CALLS.clear()

    @register_nms("standard_min_score", params={"NMS.MIN_SCORE": "min_score"})
    def standard_min_score_nms(boxes, scores, idxs, iou_threshold, min_score=0.05):
        """Standard NMS, then drop the kept boxes scored below min_score."""
        CALLS.append({"min_score": min_score})
        keep = batched_nms(boxes, scores, idxs, iou_threshold)
        keep = keep[scores[keep] >= min_score]
        return keep, scores[keep]

    yield "standard_min_score"
    NMS_REGISTRY.unregister("standard_min_score")


@pytest.fixture
def iou_ranked_nms():
    """needs_ious: standard NMS ranked by the predicted IoUs, which are also the output scores."""
    CALLS.clear()

    def iou_ranked(boxes, scores, idxs, iou_threshold, *, ious):
        CALLS.append({"ious": ious, "num_boxes": boxes.shape[0]})
        keep = batched_nms(boxes, ious, idxs, iou_threshold)
        return keep, ious[keep]

    register_nms("iou_ranked", iou_ranked, needs_ious=True)
    yield "iou_ranked"
    NMS_REGISTRY.unregister("iou_ranked")


def _fused_box(j):
    # a box well inside the 64 px image, different for every output slot
    return [float(j % 30), 2.0, float(j % 30) + 20.0, 22.0]


@pytest.fixture
def box_fusion_nms():
    """Returns out_boxes: standard NMS whose output boxes are replaced by _fused_box(slot)."""

    @register_nms("fixed_boxes")
    def fixed_boxes(boxes, scores, idxs, iou_threshold):
        keep = batched_nms(boxes, scores, idxs, iou_threshold)
        out_boxes = torch.tensor([_fused_box(j) for j in range(len(keep))], dtype=boxes.dtype)
        return keep, scores[keep], out_boxes.reshape(-1, 4)

    yield "fixed_boxes"
    NMS_REGISTRY.unregister("fixed_boxes")


def detect(config, *opts):
    """Instances of one fake image through a fresh model (seed 0) of ``config``."""
    model = build(make_cfg(config, *IOU_HEAD, *opts))
    model.eval()
    with torch.no_grad():
        return model(fake_batch(n_images=1))[0]["instances"]


@pytest.mark.parametrize("config", [RETINANET, RCNN])
def test_registered_nms_with_its_own_key(config, min_score_nms):
    cfg = make_cfg(config, *IOU_HEAD)
    assert cfg.MODEL.IOU_AWARE.NMS.MIN_SCORE == 0.05  # the key, with the signature's default
    standard = detect(config)
    assert len(standard) > 4
    # a non-default threshold that drops about half of the standard detections
    min_score = float(standard.scores.median())
    assert min_score != 0.05
    CALLS.clear()
    out = detect(config, "MODEL.IOU_AWARE.NMS.TYPE", min_score_nms,
                 "MODEL.IOU_AWARE.NMS.MIN_SCORE", repr(min_score))
    assert CALLS == [{"min_score": min_score}]  # the config value reached the function, once
    expected = standard.scores >= min_score
    assert 0 < int(expected.sum()) < len(standard)
    assert (out.scores >= min_score).all()
    assert torch.equal(out.scores, standard.scores[expected])
    assert torch.equal(out.pred_boxes.tensor, standard.pred_boxes.tensor[expected])
    assert torch.equal(out.pred_classes, standard.pred_classes[expected])


@pytest.mark.parametrize("config", [RETINANET, RCNN])
def test_needs_ious_type_receives_the_iou_heads_predictions(config, iou_ranked_nms):
    out = detect(config, "MODEL.IOU_AWARE.NMS.TYPE", iou_ranked_nms)
    (call,) = CALLS
    assert call["ious"].shape == (call["num_boxes"],)
    assert ((call["ious"] > 0) & (call["ious"] < 1)).all()  # sigmoid outputs
    # the detections carry the IoU head's prediction of each box (pred_ious): the scores the
    # function made from the ious it received are exactly those
    assert len(out) > 0
    assert torch.equal(out.scores, out.pred_ious)


def test_needs_ious_type_requires_the_iou_head(iou_ranked_nms):
    cfg = make_cfg(RETINANET, "MODEL.IOU_AWARE.NMS.TYPE", iou_ranked_nms)
    with pytest.raises(ValueError, match=r"MODEL.IOU_AWARE.NMS.TYPE: 'iou_ranked'.*IOU_HEAD.ENABLED True"):
        build(cfg)
    with pytest.raises(ValueError, match="'iou_ranked' needs predicted IoUs"):
        run_nms(NMSConfig(type=iou_ranked_nms), torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))


@pytest.mark.parametrize("config", [RETINANET, RCNN])
def test_returned_boxes_replace_the_kept_boxes(config, box_fusion_nms):
    standard = detect(config)
    out = detect(config, "MODEL.IOU_AWARE.NMS.TYPE", box_fusion_nms)
    assert len(out) == len(standard) > 0
    assert torch.equal(out.scores, standard.scores)
    assert torch.equal(out.pred_classes, standard.pred_classes)
    assert out.pred_boxes.tensor.tolist() == [_fused_box(j) for j in range(len(out))]


# ------------------------------------------------------------------------------------- errors
def _nms(boxes, scores, idxs, iou_threshold):
    return batched_nms(boxes, scores, idxs, iou_threshold), scores


def test_registry_errors_are_clear(min_score_nms):
    with pytest.raises(KeyError, match="NMS type 'standard_min_score' is already registered"):
        register_nms("standard_min_score", _nms)
    with pytest.raises(TypeError, match="needs_ious=True.*ious=.*_nms"):
        register_nms("no_ious_arg", _nms, needs_ious=True)
    with pytest.raises(TypeError, match="needs_ious must be True or False"):
        register_nms("bad_flag", _nms, needs_ious="yes")
    with pytest.raises(ValueError, match="'NMS.MIN_SCORE' is already declared with default 0.05"):
        register_nms("other_min", params={"NMS.MIN_SCORE": "min_score"})(
            lambda boxes, scores, idxs, iou_threshold, min_score=0.1: None
        )
    assert not {"no_ious_arg", "bad_flag", "other_min"} & set(NMS_REGISTRY)
    cfg = make_cfg(RETINANET, "MODEL.IOU_AWARE.NMS.TYPE", "standard_min_scor")
    with pytest.raises(ValueError, match="MODEL.IOU_AWARE.NMS.TYPE: unknown NMS type 'standard_min_scor'; "
                                         "valid names are: .*'standard_min_score'.*register_nms"):
        build(cfg)


def test_bad_results_and_late_registration_are_clear(min_score_nms):
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    scores, idxs = torch.tensor([0.9, 0.8]), torch.tensor([0, 0])
    bad = {
        "one_value": (lambda b, s, i, t: torch.tensor([0]), "must return \\(keep, out_scores\\)"),
        "float_keep": (lambda b, s, i, t: (torch.tensor([0.0]), s[:1]), "keep must be 1-D int64"),
        "short_scores": (lambda b, s, i, t: (torch.tensor([0]), s), "out_scores must have shape \\(1,\\)"),
        "bad_boxes": (lambda b, s, i, t: (torch.tensor([0]), s[:1], b), "out_boxes must have shape \\(1, 4\\)"),
    }
    try:
        for name, (fn, message) in bad.items():
            register_nms(name, fn)
            with pytest.raises(ValueError, match=f"NMS type '{name}'.*{message}"):
                run_nms(NMSConfig(type=name), boxes, scores, idxs)
    finally:
        for name in bad:
            NMS_REGISTRY.unregister(name)
    # a key registered after the config was built is missing from it: say so, and what to do
    cfg = make_cfg(RETINANET)
    register_nms("late", params={"NMS.LATE_KEY": "late"})(lambda b, s, i, t, late=1.0: None)
    try:
        with pytest.raises(KeyError, match="MODEL.IOU_AWARE.NMS.LATE_KEY is not in the config.*register"):
            NMSConfig.from_config(cfg, 0.5, type_override="late")
    finally:
        NMS_REGISTRY.unregister("late")
