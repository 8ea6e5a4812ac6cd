"""Tests of iou_aware.nms against plain-Python references of the published algorithms.

- IoU-guided NMS: IoU-Net (Jiang et al. 2018), Algorithm 1, written out below box by box.
- Soft-NMS: Bodla et al. 2017, Algorithm 1 (linear and gaussian), per class.
- Score-fused NMS: fusing by hand, then torchvision's NMS.

Random test boxes use coordinates on a 1/8-pixel grid below 256 in most tests: every area,
intersection and union is then exact in float16/32/64 alike, and for these box sizes and
thresholds the rounding of the final quotient cannot cross the threshold, so a pair is decided the
same way by torchvision's float32 kernel, our float64 decisions and the float64 Python references,
and comparisons can be exact. Tests on arbitrary float coordinates are there too.
"""

import math

import pytest
import torch
import torchvision

from iou_aware.nms import batched_nms, fuse_scores, iou_guided_nms, score_fused_nms, soft_nms

# ----------------------------------------------------------------------------------------------
# plain-Python references
# ----------------------------------------------------------------------------------------------


def _py_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _sorted_result(pairs):
    """[(index, score)] -> (indices, scores) sorted by score desc, ties by index asc."""
    pairs = sorted(pairs, key=lambda p: (-p[1], p[0]))
    return [p[0] for p in pairs], [p[1] for p in pairs]


def reference_iou_guided_nms(boxes, scores, ious, idxs, threshold):
    """IoU-Net Algorithm 1, literally: B is the list of remaining boxes, D the output."""
    boxes, scores, ious, idxs = boxes.tolist(), scores.tolist(), ious.tolist(), idxs.tolist()
    remaining = list(range(len(boxes)))
    detections = []
    while remaining:
        # argmax of the localization confidence I (ties: lowest index)
        m = min(remaining, key=lambda i: (-ious[i], i))
        remaining.remove(m)
        s = scores[m]
        still = []
        for j in remaining:
            if idxs[j] == idxs[m] and _py_iou(boxes[m], boxes[j]) > threshold:
                s = max(s, scores[j])  # the kept box takes the best score of the boxes it removes
            else:
                still.append(j)
        remaining = still
        detections.append((m, s))
    return _sorted_result(detections)


def reference_soft_nms(boxes, scores, idxs, sigma, iou_threshold, method, score_threshold):
    """Bodla et al. 2017, Algorithm 1, one class at a time."""
    boxes, scores, idxs = boxes.tolist(), scores.tolist(), idxs.tolist()
    detections = []
    for c in sorted(set(idxs)):
        current = {i: scores[i] for i in range(len(boxes)) if idxs[i] == c}
        while current:
            m = min(current, key=lambda i: (-current[i], i))
            s_m = current.pop(m)
            if s_m < score_threshold:
                break
            detections.append((m, s_m))
            for j in list(current):
                o = _py_iou(boxes[m], boxes[j])
                if method == "linear":
                    weight = 1.0 - o if o > iou_threshold else 1.0
                else:
                    weight = math.exp(-(o * o) / sigma)
                current[j] *= weight
                if current[j] < score_threshold:
                    del current[j]
    return _sorted_result(detections)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def clustered_boxes(
    seed, n, num_classes, num_objects=6, grid=8.0, dtype=torch.float32, quantize_ious=False
):
    """Heavily overlapping clusters of boxes around a few objects, coordinates on a 1/grid grid.

    Returns boxes (n, 4), scores (n,), ious (n,), idxs (n,) as torch tensors.
    """
    g = torch.Generator().manual_seed(seed)
    size = torch.empty(num_objects).uniform_(12, 80, generator=g)
    ctr = torch.empty(num_objects, 2).uniform_(40, 200, generator=g)
    obj_cls = torch.randint(0, num_classes, (num_objects,), generator=g)
    obj = torch.randint(0, num_objects, (n,), generator=g)
    jitter = torch.randn(n, 4, generator=g) * 0.15
    wh = size[obj, None] * torch.exp(jitter[:, 2:])
    c = ctr[obj] + jitter[:, :2] * size[obj, None]
    boxes = torch.cat([c - wh / 2, c + wh / 2], 1).clamp(0, 255)
    if grid:
        boxes = torch.round(boxes * grid) / grid
    # a few boxes of another class inside each cluster
    idxs = torch.where(
        torch.rand(n, generator=g) < 0.85,
        obj_cls[obj],
        torch.randint(0, num_classes, (n,), generator=g),
    )
    scores = torch.rand(n, generator=g)
    ious = torch.rand(n, generator=g)
    if quantize_ious:  # many exact ties in the ranking key
        ious = torch.round(ious * 5) / 5
    return boxes.to(dtype), scores.to(dtype), ious.to(dtype), idxs


def _assert_result(keep, out, ref_keep, ref_scores, exact=True):
    assert keep.dtype == torch.int64
    assert keep.tolist() == ref_keep
    if exact:
        assert out.tolist() == ref_scores
    else:
        torch.testing.assert_close(
            out.double(), torch.tensor(ref_scores, dtype=torch.float64), rtol=1e-9, atol=1e-12
        )


# ----------------------------------------------------------------------------------------------
# IoU-guided NMS
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["dense", "grid"])
def suppressor_search(request, monkeypatch):
    """Run the test with one of the two suppressor searches of IoU-guided NMS forced (dense
    per-class blocks or the spatial grid), and check afterwards that only that one ran."""
    from iou_aware.nms import suppressor as nms_module

    search = request.param
    limit = 1 << 62 if search == "dense" else 0
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS_CPU", limit)
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS_CUDA", limit)
    calls = {"dense": 0, "grid": 0, "with removed boxes": 0}
    dispatch = nms_module._suppressor_of_removed

    def dispatch_spy(boxes, shifted, keep_mask, *args):
        calls["with removed boxes"] += int(not keep_mask.all())
        return dispatch(boxes, shifted, keep_mask, *args)

    monkeypatch.setattr(nms_module, "_suppressor_of_removed", dispatch_spy)
    for name, attr in (("dense", "_suppressor_dense"), ("grid", "_suppressor_by_grid")):

        def spy(*args, _name=name, _fn=getattr(nms_module, attr), **kwargs):
            calls[_name] += 1
            return _fn(*args, **kwargs)

        monkeypatch.setattr(nms_module, attr, spy)
    yield search
    other = "grid" if search == "dense" else "dense"
    assert calls[search] == calls["with removed boxes"] and calls[other] == 0, calls


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_iou_guided_matches_algorithm_1(threshold, suppressor_search):
    for seed in range(25):
        n = 20 + 7 * seed
        boxes, scores, ious, idxs = clustered_boxes(seed, n, num_classes=1 + seed % 4)
        keep, out = iou_guided_nms(boxes, scores, ious, idxs, threshold)
        ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, threshold)
        _assert_result(keep, out, ref_keep, ref_scores)


@pytest.mark.parametrize("threshold", [-0.5, 0.0, 0.05, 0.95, 1.0])
def test_iou_guided_extreme_thresholds(threshold, suppressor_search):
    # t <= 0: every overlapping pair counts (no spatial window); t >= 1: nothing is removed
    for seed in range(6):
        boxes, scores, ious, idxs = clustered_boxes(700 + seed, 60, num_classes=2)
        keep, out = iou_guided_nms(boxes, scores, ious, idxs, threshold)
        ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, threshold)
        _assert_result(keep, out, ref_keep, ref_scores)


def test_iou_guided_ties_in_ious_and_scores(suppressor_search):
    for seed in range(15):
        boxes, scores, ious, idxs = clustered_boxes(
            100 + seed, 80, num_classes=3, quantize_ious=True
        )
        scores = torch.round(scores * 4) / 4  # ties in the output scores too
        keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        _assert_result(keep, out, ref_keep, ref_scores)


def test_iou_guided_unquantized_float_boxes(suppressor_search):
    for seed in range(10):
        boxes, scores, ious, idxs = clustered_boxes(200 + seed, 120, num_classes=3, grid=0)
        keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        _assert_result(keep, out, ref_keep, ref_scores)


def test_iou_guided_keeps_what_standard_nms_keeps_on_ious(suppressor_search):
    for seed in range(10):
        boxes, scores, ious, idxs = clustered_boxes(300 + seed, 300, num_classes=5)
        keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        tv_keep = torchvision.ops.batched_nms(boxes, ious, idxs, 0.5)
        assert sorted(keep.tolist()) == sorted(tv_keep.tolist())
        assert (out >= scores[keep]).all()  # a kept box never loses score


def test_iou_guided_many_boxes_pair_chunks(monkeypatch):
    # force the grid search's (kept, removed) pair list to be processed in several chunks
    from iou_aware.nms import iou_guided as iou_guided_module, suppressor as nms_module

    boxes, scores, ious, idxs = clustered_boxes(7, 400, num_classes=2, num_objects=12)
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS_CPU", 1 << 62)  # the dense search
    expected = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    monkeypatch.setattr(nms_module, "_DENSE_PAIRS_CPU", 0)  # the grid search
    monkeypatch.setattr(nms_module, "_MAX_PAIRS_PER_CHUNK_CPU", 97)
    monkeypatch.setattr(iou_guided_module, "_NMS_GROUP_BOXES_CPU", 16)  # and several kernel groups
    keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    assert torch.equal(keep, expected[0]) and torch.equal(out, expected[1])
    ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    _assert_result(keep, out, ref_keep, ref_scores)


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.4, 0.5, 0.6, 0.8, 0.95])
def test_iou_guided_centre_window_bound_holds(threshold):
    # The candidate search relies on: IoU > t implies |cx_k - cx_r| < g(t) * min(w_k, w_r) (and
    # the same for heights). Check it on random pairs whose sizes differ up to the factor 1/t that
    # IoU > t allows, with centre offsets reaching past the bound.
    from iou_aware.nms.suppressor import _centre_window

    bound = _centre_window(threshold)
    g = torch.Generator().manual_seed(int(threshold * 100))
    n = 400_000
    uniform = lambda lo, hi, *shape: torch.empty(*shape, dtype=torch.float64).uniform_(lo, hi, generator=g)  # noqa: E731
    wh_k = torch.exp(uniform(0, 4, n, 2))
    wh_r = wh_k * torch.exp(uniform(-1, 1, n, 2) * math.log(1 / threshold))
    shift = uniform(-1.2, 1.2, n, 2) * bound * torch.minimum(wh_k, wh_r)
    k = torch.cat([-wh_k / 2, wh_k / 2], 1)
    r = torch.cat([shift - wh_r / 2, shift + wh_r / 2], 1)
    inter_wh = (torch.minimum(k[:, 2:], r[:, 2:]) - torch.maximum(k[:, :2], r[:, :2])).clamp(min=0)
    inter = inter_wh.prod(1)
    iou = inter / (wh_k.prod(1) + wh_r.prod(1) - inter)
    torch.testing.assert_close(iou[:100], torchvision.ops.box_iou(k[:100], r[:100]).diagonal())
    above = iou > threshold
    assert above.sum() > 100  # the sample does exercise the bound
    closeness = (shift.abs() / (bound * torch.minimum(wh_k, wh_r)))[above]
    assert (closeness < 1).all()
    assert closeness.max() > 0.8  # and comes near it: the bound is tight, the test not vacuous


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("removed_is_narrow", [True, False])
def test_iou_guided_finds_suppressor_at_the_edge_of_the_window(threshold, removed_is_narrow, monkeypatch):
    # The tight case of the window bound, end to end: a box of width m flush with one side of a box
    # of width just under m / t (IoU just above t, centre offset just under g(t) * m). The removed
    # box must still hand its score to its suppressor. The finest grid (cells of 1/64 of the
    # span) makes the search window itself decide: a window 10% too small fails the cases where
    # the removed box is the narrow one (the window is the removed box's).
    from iou_aware.nms import suppressor as nms_module

    monkeypatch.setattr(nms_module, "_DENSE_PAIRS_CPU", 0)  # the grid search
    monkeypatch.setattr(nms_module, "_CELL_FACTOR", 1e-6)
    m, wide = 10.0, 10.0 / threshold * (1 - 1e-6)
    narrow_box, wide_box = [20.0, 0.0, 20.0 + m, 10.0], [20.0, 0.0, 20.0 + wide, 10.0]
    kept_box, removed_box = (wide_box, narrow_box) if removed_is_narrow else (narrow_box, wide_box)
    boxes = torch.tensor([kept_box, removed_box], dtype=torch.float64)
    scores = torch.tensor([0.2, 0.9], dtype=torch.float64)
    ious = torch.tensor([0.8, 0.6], dtype=torch.float64)  # the first box ranks first
    idxs = torch.zeros(2, dtype=torch.int64)
    keep, out = iou_guided_nms(boxes, scores, ious, idxs, threshold)
    assert keep.tolist() == [0] and out.tolist() == [0.9]
    _assert_result(keep, out, *reference_iou_guided_nms(boxes, scores, ious, idxs, threshold))


@pytest.mark.parametrize("rank_of_middle_box", [0.7, 0.85])
def test_iou_guided_removed_box_goes_to_the_first_kept_box(rank_of_middle_box, suppressor_search):
    # A and C are kept (IoU 0.25); B overlaps both above 0.5 and is removed by A, the first kept
    # box in rank order, whether B ranks below C or between A and C: only A takes B's score.
    boxes = torch.tensor([[0, 0, 10, 10], [6, 0, 16, 10], [3, 0, 13, 10]], dtype=torch.float32)
    scores = torch.tensor([0.1, 0.2, 0.95])
    ious = torch.tensor([0.9, 0.8, rank_of_middle_box])
    keep, out = iou_guided_nms(boxes, scores, ious, torch.zeros(3, dtype=torch.long), 0.5)
    assert keep.tolist() == [0, 1]
    assert out.tolist() == pytest.approx([0.95, 0.2])
    ref = reference_iou_guided_nms(boxes, scores, ious, torch.zeros(3, dtype=torch.long), 0.5)
    _assert_result(keep, out, *ref)


def test_iou_guided_best_localized_box_carries_cluster_score(suppressor_search):
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 11], [1, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float32
    )
    scores = torch.tensor([0.9, 0.2, 0.5, 0.3])
    ious = torch.tensor([0.6, 0.95, 0.7, 0.4])
    idxs = torch.tensor([0, 0, 0, 0])
    keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    assert keep.tolist() == [1, 3]
    assert out.tolist() == pytest.approx([0.9, 0.3])


# ----------------------------------------------------------------------------------------------
# score-fused NMS
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_score_fused_equals_fusing_then_torchvision_nms(alpha):
    for seed in range(10):
        boxes, scores, ious, idxs = clustered_boxes(400 + seed, 150, num_classes=4)
        keep, fused = score_fused_nms(boxes, scores, ious, idxs, 0.6, alpha=alpha)
        expected = scores.pow(1 - alpha) * ious.clamp(0, 1).pow(alpha)
        tv_keep = torchvision.ops.batched_nms(boxes, expected, idxs, 0.6)
        assert keep.tolist() == tv_keep.tolist()
        assert torch.equal(fused, expected[keep])
        assert torch.all(fused[:-1] >= fused[1:])


def test_score_fused_alpha_zero_is_plain_nms():
    boxes, scores, ious, idxs = clustered_boxes(5, 200, num_classes=3)
    keep, fused = score_fused_nms(boxes, scores, ious, idxs, 0.5, alpha=0.0)
    assert torch.equal(keep, batched_nms(boxes, scores, idxs, 0.5))
    assert torch.equal(fused, scores[keep])


def test_fuse_scores_clamps_ious_and_checks_alpha():
    scores = torch.tensor([0.25, 0.5])
    ious = torch.tensor([1.5, -0.2])
    torch.testing.assert_close(fuse_scores(scores, ious, 0.5), torch.tensor([0.5, 0.0]))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            score_fused_nms(
                torch.zeros(2, 4), scores, ious, torch.zeros(2, dtype=torch.long), 0.5, alpha=bad
            )


# ----------------------------------------------------------------------------------------------
# Soft-NMS
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,kwargs",
    [
        ("gaussian", dict(sigma=0.5)),
        ("gaussian", dict(sigma=0.1, score_threshold=0.05)),
        ("linear", dict(iou_threshold=0.3)),
        ("linear", dict(iou_threshold=0.6, score_threshold=0.0)),
    ],
)
def test_soft_nms_matches_bodla(method, kwargs):
    params = dict(sigma=0.5, iou_threshold=0.3, score_threshold=0.001)
    params.update(kwargs)
    for seed in range(12):
        n = 30 + 11 * seed
        boxes, scores, _, idxs = clustered_boxes(
            500 + seed, n, num_classes=1 + seed % 3, dtype=torch.float64
        )
        keep, new = soft_nms(boxes, scores, idxs, method=method, **params)
        ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, method=method, **params)
        _assert_result(keep, new, ref_keep, ref_scores, exact=False)


def test_soft_nms_many_boxes_one_class_float32():
    # many candidates per round, compaction of the padded layout, float32 arithmetic
    boxes, scores, _, idxs = clustered_boxes(9, 500, num_classes=1, num_objects=25, grid=0)
    for method in ("gaussian", "linear"):
        keep, new = soft_nms(boxes, scores, idxs, method=method)
        ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, 0.5, 0.3, method, 0.001)
        assert keep.tolist() == ref_keep
        torch.testing.assert_close(
            new, torch.tensor(ref_scores, dtype=torch.float32), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_without_precomputed_multipliers(method, monkeypatch):
    # the on-the-fly path (large inputs): dense and ragged multi-pick steps, compaction
    from iou_aware.nms import soft as nms_module

    monkeypatch.setattr(nms_module, "_SOFT_NMS_DENSE_ELEMENTS", 0)
    for seed in range(6):
        boxes, scores, _, idxs = clustered_boxes(
            800 + seed, 150, num_classes=3, num_objects=10, dtype=torch.float64
        )
        # one class of scattered, non-overlapping boxes: many picks per step next to busy clusters
        grid = torch.arange(40, dtype=torch.float64)
        spread = torch.stack([grid * 300, grid * 0, grid * 300 + 20, grid * 0 + 20], 1)
        boxes = torch.cat([boxes, spread])
        scores = torch.cat(
            [
                scores,
                torch.rand(40, generator=torch.Generator().manual_seed(seed), dtype=torch.float64),
            ]
        )
        idxs = torch.cat([idxs, torch.full((40,), 9)])
        keep, new = soft_nms(boxes, scores, idxs, method=method)
        ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, 0.5, 0.3, method, 0.001)
        _assert_result(keep, new, ref_keep, ref_scores, exact=False)


@pytest.mark.parametrize("method", ["gaussian", "linear"])
@pytest.mark.parametrize("dense_elements", [None, 0])  # precomputed multipliers, or on the fly
@pytest.mark.parametrize("sync_every", [1, 3, 10**9])  # 10**9: all `width` steps, no early stop
def test_soft_nms_steps_without_host_sync(method, dense_elements, sync_every, monkeypatch):
    # the path CUDA takes (one pick per class per step, no value read back inside a step), run on
    # the CPU here: Bodla et al.'s result like the adaptive CPU path
    from iou_aware.nms import soft as nms_module

    monkeypatch.setattr(nms_module, "_SYNC_FREE_DEVICES", ("cpu",))
    monkeypatch.setattr(nms_module, "_SYNC_EVERY", sync_every)
    if dense_elements is not None:
        monkeypatch.setattr(nms_module, "_SOFT_NMS_DENSE_ELEMENTS", dense_elements)
    params = dict(sigma=0.5, iou_threshold=0.3, score_threshold=0.001)
    for seed in range(6):
        boxes, scores, _, idxs = clustered_boxes(
            700 + seed, 40 + 13 * seed, num_classes=1 + seed % 4, dtype=torch.float64
        )
        keep, new = soft_nms(boxes, scores, idxs, method=method, **params)
        ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, method=method, **params)
        _assert_result(keep, new, ref_keep, ref_scores, exact=False)
    tie_boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4 + [[20.0, 20.0, 30.0, 30.0]] * 2)
    tie_scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.7, 0.7])
    keep, _ = soft_nms(tie_boxes, tie_scores, torch.zeros(6, dtype=torch.long), method="gaussian")
    assert keep.tolist() == [1, 4, 3, 5, 0, 2]


def test_soft_nms_identical_boxes_ties():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 4 + [[20.0, 20.0, 30.0, 30.0]] * 2)
    scores = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.7, 0.7])
    idxs = torch.zeros(6, dtype=torch.long)
    keep, new = soft_nms(boxes, scores, idxs, method="gaussian", sigma=0.5)
    ref_keep, ref_scores = reference_soft_nms(boxes, scores, idxs, 0.5, 0.3, "gaussian", 0.001)
    assert keep.tolist() == ref_keep == [1, 4, 3, 5, 0, 2]
    torch.testing.assert_close(new.double(), torch.tensor(ref_scores, dtype=torch.float64))
    keep, new = soft_nms(boxes, scores, idxs, method="linear")
    assert keep.tolist() == [1, 4]  # identical boxes decay to 0 with the linear rule
    assert new.tolist() == pytest.approx([0.9, 0.7])


def test_soft_nms_classes_do_not_interact():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 3)
    scores = torch.tensor([0.9, 0.8, 0.7])
    keep, new = soft_nms(boxes, scores, torch.tensor([0, 1, 2]))
    assert keep.tolist() == [0, 1, 2]
    assert torch.equal(new, scores)


def test_soft_nms_drops_boxes_below_threshold():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [30.0, 30.0, 40.0, 40.0]])
    keep, new = soft_nms(boxes, torch.tensor([0.9, 0.0005]), torch.tensor([0, 0]))
    assert keep.tolist() == [0] and new.tolist() == pytest.approx([0.9])
    keep, new = soft_nms(boxes, torch.tensor([0.0001, 0.0005]), torch.tensor([0, 0]))
    assert keep.numel() == 0 and new.numel() == 0


def test_soft_nms_bad_arguments():
    boxes, scores, idxs = torch.zeros(2, 4), torch.ones(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="method"):
        soft_nms(boxes, scores, idxs, method="hard")
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(boxes, scores, idxs, sigma=0.0)


# ----------------------------------------------------------------------------------------------
# shared edge cases
# ----------------------------------------------------------------------------------------------


def _run_all(boxes, scores, ious, idxs):
    return {
        "batched": (batched_nms(boxes, scores, idxs, 0.5), None),
        "guided": iou_guided_nms(boxes, scores, ious, idxs, 0.5),
        "fused": score_fused_nms(boxes, scores, ious, idxs, 0.5),
        "soft": soft_nms(boxes, scores, idxs),
    }


def test_empty_input():
    empty = torch.zeros(0, 4)
    for name, (keep, out) in _run_all(
        empty, torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    ).items():
        assert keep.dtype == torch.int64 and keep.shape == (0,), name
        if out is not None:
            assert out.shape == (0,) and out.is_floating_point(), name


def test_one_box():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 5.0]])
    results = _run_all(boxes, torch.tensor([0.7]), torch.tensor([0.64]), torch.tensor([3]))
    for name, (keep, _) in results.items():
        assert keep.tolist() == [0], name
    assert results["guided"][1].tolist() == pytest.approx([0.7])
    assert results["fused"][1].tolist() == pytest.approx([math.sqrt(0.7 * 0.64)])
    assert results["soft"][1].tolist() == pytest.approx([0.7])


def test_identical_boxes():
    boxes = torch.tensor([[5.0, 5.0, 15.0, 25.0]] * 5)
    scores = torch.tensor([0.3, 0.8, 0.8, 0.1, 0.5])
    ious = torch.tensor([0.9, 0.2, 0.9, 0.9, 0.4])
    idxs = torch.zeros(5, dtype=torch.long)
    r = _run_all(boxes, scores, ious, idxs)
    assert r["batched"][0].tolist() == [1]  # tie in score: lower index
    assert r["guided"][0].tolist() == [0]  # tie in ious: lower index; carries the best score
    assert r["guided"][1].tolist() == pytest.approx([0.8])
    assert r["fused"][0].tolist() == [2]


def test_zero_area_boxes_do_not_suppress():
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    scores, ious = torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.9, 0.8, 0.7])
    idxs = torch.zeros(3, dtype=torch.long)
    r = _run_all(boxes, scores, ious, idxs)
    for name in ("batched", "guided", "fused"):
        assert sorted(r[name][0].tolist()) == [0, 1, 2], name
    assert r["soft"][0].tolist() == [0, 1, 2]
    # every IoU is 0 (zero-area boxes have no intersection): no score decays
    assert r["soft"][1].tolist() == pytest.approx([0.9, 0.8, 0.7])


def test_single_class_matches_class_aware_result_on_one_class():
    boxes, scores, ious, _ = clustered_boxes(11, 150, num_classes=1)
    idxs = torch.full((150,), 7)
    keep, out = iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    ref_keep, ref_scores = reference_iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    _assert_result(keep, out, ref_keep, ref_scores)
    keep_sn, _ = soft_nms(boxes, scores, idxs)
    assert (
        keep_sn.tolist() == reference_soft_nms(boxes, scores, idxs, 0.5, 0.3, "gaussian", 0.001)[0]
    )


def test_float16_input():
    boxes, scores, ious, idxs = clustered_boxes(12, 120, num_classes=3)  # grid values exact in fp16
    half = [boxes.half(), scores.half(), ious.half()]
    ref = [t.float() for t in half]
    keep, out = iou_guided_nms(half[0], half[1], half[2], idxs, 0.5)
    ref_keep, ref_scores = reference_iou_guided_nms(ref[0], ref[1], ref[2], idxs, 0.5)
    assert out.dtype == torch.float32
    _assert_result(keep, out, ref_keep, ref_scores)
    keep, fused = score_fused_nms(half[0], half[1], half[2], idxs, 0.5)
    keep32, fused32 = score_fused_nms(*ref, idxs, 0.5)
    assert torch.equal(keep, keep32) and torch.equal(fused, fused32)
    assert torch.equal(
        batched_nms(half[0], half[1], idxs, 0.5), batched_nms(ref[0], ref[1], idxs, 0.5)
    )
    keep, new = soft_nms(half[0], half[1], idxs)
    keep32, new32 = soft_nms(ref[0], ref[1], idxs)
    assert torch.equal(keep, keep32) and torch.equal(new, new32)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            (torch.zeros(5, 3), torch.zeros(5), torch.zeros(5), torch.zeros(5, dtype=torch.long)),
            r"boxes must have shape \(N, 4\), got \(5, 3\)",
        ),
        (
            (torch.zeros(4), torch.zeros(1), torch.zeros(1), torch.zeros(1, dtype=torch.long)),
            r"boxes must have shape \(N, 4\)",
        ),
        (
            (torch.zeros(5, 4), torch.zeros(4), torch.zeros(5), torch.zeros(5, dtype=torch.long)),
            r"scores must have shape \(N,\) with N = 5",
        ),
        (
            (torch.zeros(5, 4), torch.zeros(5), torch.zeros(6), torch.zeros(5, dtype=torch.long)),
            r"ious must have shape",
        ),
        (
            (torch.zeros(5, 4), torch.zeros(5), torch.zeros(5), torch.zeros(3, dtype=torch.long)),
            r"idxs must have shape",
        ),
        (
            (
                torch.zeros(5, 4),
                torch.zeros(5, 1),
                torch.zeros(5),
                torch.zeros(5, dtype=torch.long),
            ),
            r"scores must have shape",
        ),
    ],
)
def test_bad_input_raises_value_error(args, message):
    boxes, scores, ious, idxs = args
    with pytest.raises(ValueError, match=message):
        iou_guided_nms(boxes, scores, ious, idxs, 0.5)
    with pytest.raises(ValueError, match=message):
        score_fused_nms(boxes, scores, ious, idxs, 0.5)
    if "ious" not in message:
        with pytest.raises(ValueError, match=message):
            batched_nms(boxes, scores, idxs, 0.5)
        with pytest.raises(ValueError, match=message):
            soft_nms(boxes, scores, idxs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_references(suppressor_search):
    # float64 so that CPU and GPU round identically enough to give the same rankings
    for seed in range(5):
        boxes, scores, ious, idxs = clustered_boxes(
            600 + seed, 400, num_classes=4, dtype=torch.float64
        )
        cpu = _run_all(boxes, scores, ious, idxs)
        gpu = _run_all(boxes.cuda(), scores.cuda(), ious.cuda(), idxs.cuda())
        for name in cpu:
            assert gpu[name][0].device.type == "cuda", name
            assert torch.equal(cpu[name][0], gpu[name][0].cpu()), name
            if cpu[name][1] is not None:
                torch.testing.assert_close(cpu[name][1], gpu[name][1].cpu(), rtol=1e-12, atol=1e-15)
        keep, out = gpu["guided"]
        _assert_result(
            keep.cpu(), out.cpu(), *reference_iou_guided_nms(boxes, scores, ious, idxs, 0.5)
        )
        keep, new = gpu["soft"]
        ref = reference_soft_nms(boxes, scores, idxs, 0.5, 0.3, "gaussian", 0.001)
        _assert_result(keep.cpu(), new.cpu(), *ref, exact=False)
    # float16 on the GPU
    boxes, scores, ious, idxs = clustered_boxes(650, 200, num_classes=3)
    keep, out = iou_guided_nms(
        boxes.half().cuda(), scores.half().cuda(), ious.half().cuda(), idxs.cuda(), 0.5
    )
    ref = reference_iou_guided_nms(
        boxes.half().float(), scores.half().float(), ious.half().float(), idxs, 0.5
    )
    _assert_result(keep.cpu(), out.cpu(), *ref)
