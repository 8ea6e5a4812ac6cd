"""Tests of the NMS / fusion / voting variants against plain-Python loops written from the papers.

- DIoU-NMS: Zheng et al., AAAI 2020 (greedy, IoU - (rho^2 / c^2)^beta).
- Cluster-NMS: Zheng et al., TCYB 2021, Algorithm 1 (the matrix iteration, literally), with the
  score penalty, the distance penalty and weighted coordinates; the plain form against
  torchvision's batched_nms.
- Matrix NMS: Wang et al., SOLOv2 (decay with compensation, linear and gaussian).
- Weighted NMS: Zhou et al. 2017 (greedy, kept box = weighted mean of the boxes it suppresses).
- Score voting: Kim & Lee, PAA, ECCV 2020.
- Weighted Boxes Fusion: against the authors' package ensemble-boxes.

Random boxes use coordinates on a 1/8-pixel grid below 512: areas, intersections and unions are
then exact in float32 and float64, so every threshold decision is the same in torchvision's
kernel, in this package and in the float64 Python references, and keep sets compare exactly.
"""

import dataclasses
import math

import pytest
import torch
import torchvision

from iou_aware.nms import NMS_REGISTRY, _dense, _layout
from iou_aware.nms.cluster import cluster_nms
from iou_aware.nms.diou import diou_nms
from iou_aware.nms.matrix import matrix_nms
from iou_aware.nms.merge import score_voting, score_voting_nms, weighted_nms
from iou_aware.nms.wbf import weighted_boxes_fusion
from test_modeling import RCNN, RETINANET, build, fake_batch, make_cfg

# ----------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------


def grid_boxes(seed, n=None, classes=3, span=64, size=32, score_levels=10, dtype=torch.float64):
    """Heavily overlapping boxes on a 1/8 grid, scores with ties (``score_levels`` values)."""
    g = torch.Generator().manual_seed(seed)
    if n is None:
        n = int(torch.randint(1, 120, (1,), generator=g))
    xy = torch.randint(0, span * 8, (n, 2), generator=g).to(dtype) / 8
    wh = torch.randint(1, size * 8, (n, 2), generator=g).to(dtype) / 8
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.randint(1, score_levels + 1, (n,), generator=g).to(dtype) / score_levels
    idxs = torch.randint(0, classes, (n,), generator=g)
    # a few exact duplicates (IoU 1, same score)
    if n > 4:
        boxes[1] = boxes[0]
        scores[1] = scores[0]
        idxs[1] = idxs[0]
    return boxes, scores, idxs


SEEDS = range(25)

# ----------------------------------------------------------------------------------------------
# plain-Python references
# ----------------------------------------------------------------------------------------------


def py_iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def py_distance_ratio(a, b):
    """rho^2 / c^2: squared centre distance over the squared diagonal of the enclosing box."""
    rho2 = ((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2 + (
        (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    ) ** 2
    c2 = (max(a[2], b[2]) - min(a[0], b[0])) ** 2 + (max(a[3], b[3]) - min(a[1], b[1])) ** 2
    return rho2 / c2 if c2 > 0 else 0.0


def ranked_classes(scores, idxs, agnostic=False):
    """{class: [input indices sorted by score desc, ties by index]}"""
    groups = {}
    for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        groups.setdefault(0 if agnostic else idxs[i], []).append(i)
    return groups


def as_result(pairs, max_det=None):
    pairs = sorted(pairs, key=lambda p: (-p[1], p[0]))[:max_det]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def ref_greedy(boxes, scores, idxs, suppresses, agnostic=False):
    """Greedy NMS: take the best remaining box, remove the remaining boxes it suppresses."""
    b, s, c = boxes.tolist(), scores.tolist(), idxs.tolist()
    kept = []
    for order in ranked_classes(s, c, agnostic).values():
        remaining = list(order)
        while remaining:
            m = remaining.pop(0)
            kept.append(m)
            remaining = [j for j in remaining if not suppresses(b[m], b[j])]
    return kept


def ref_diou_nms(boxes, scores, idxs, thr, beta=1.0, agnostic=False, max_det=None):
    kept = ref_greedy(
        boxes,
        scores,
        idxs,
        lambda m, j: py_iou(m, j) - py_distance_ratio(m, j) ** beta > thr,
        agnostic,
    )
    return as_result([(k, scores[k].item()) for k in kept], max_det)


def ref_cluster_nms(
    boxes,
    scores,
    idxs,
    thr,
    criterion="iou",
    beta=1.0,
    penalty="none",
    sigma=0.2,
    distance_beta=0.6,
    weighted=False,
    weighted_threshold=0.8,
    score_threshold=None,
    agnostic=False,
    max_det=None,
):
    """TCYB 2021 Algorithm 1 per class, literally (C = X; A = C; b = max_i A; E = diag(b <= thr);
    C = E X; until A == C), then the SPM / distance penalty / weighted coordinates."""
    b, s, c = boxes.tolist(), scores.tolist(), idxs.tolist()
    out, out_boxes = [], {}
    for order in ranked_classes(s, c, agnostic).values():
        n = len(order)
        bx = [b[i] for i in order]
        iou = [[py_iou(bx[i], bx[j]) if i < j else 0.0 for j in range(n)] for i in range(n)]
        dist = [
            [py_distance_ratio(bx[i], bx[j]) if i < j else 0.0 for j in range(n)] for i in range(n)
        ]
        if criterion == "iou":
            X = iou
        else:
            X = [
                [iou[i][j] - dist[i][j] ** beta if i < j else 0.0 for j in range(n)]
                for i in range(n)
            ]
        C = [row[:] for row in X]
        while True:
            A = C
            bmax = [max([A[i][j] for i in range(n)]) for j in range(n)]
            E = [1.0 if bmax[i] <= thr else 0.0 for i in range(n)]
            C = [[E[i] * X[i][j] for j in range(n)] for i in range(n)]
            if C == A:
                break
        kept = [bmax[j] <= thr for j in range(n)]
        for j in range(n):
            score = s[order[j]]
            if penalty != "none":
                for i in range(n):
                    cij = E[i] * iou[i][j]  # the IoU rows of the kept boxes (C of the IoU matrix)
                    f = math.exp(-cij * cij / sigma)
                    if penalty == "score_distance" and E[i] and i < j:
                        f = min(f + dist[i][j] ** distance_beta, 1.0)
                    score *= f
            elif not kept[j]:
                continue
            if score_threshold is not None and score < score_threshold:
                continue
            out.append((order[j], score))
            box = bx[j]
            if weighted and kept[j]:
                num, den = [s[order[j]] * v for v in bx[j]], s[order[j]]
                for k in range(j + 1, n):
                    if iou[j][k] > weighted_threshold:
                        w = s[order[k]] * iou[j][k]
                        num = [u + w * v for u, v in zip(num, bx[k])]
                        den += w
                box = [u / den for u in num]
            out_boxes[order[j]] = box
    keep, sc = as_result(out, max_det)
    return keep, sc, [out_boxes[k] for k in keep]


def ref_matrix_nms(
    boxes,
    scores,
    idxs,
    kernel="gaussian",
    sigma=2.0,
    score_threshold=0.05,
    agnostic=False,
    max_det=None,
):
    """SOLOv2: decay_j = min_{i above j} f(iou_ij) / f(max_{k above i} iou_ki)."""
    b, s, c = boxes.tolist(), scores.tolist(), idxs.tolist()

    def f(x):
        return 1.0 - x if kernel == "linear" else math.exp(-sigma * x * x)

    out = []
    for order in ranked_classes(s, c, agnostic).values():
        comp = [
            max([py_iou(b[order[k]], b[order[i]]) for k in range(i)], default=0.0)
            for i in range(len(order))
        ]
        for j, jj in enumerate(order):
            decay = 1.0
            for i in range(j):
                fc = f(comp[i])
                if fc == 0.0:
                    continue  # a suppressor that is itself fully suppressed removes nothing
                decay = min(decay, f(py_iou(b[order[i]], b[jj])) / fc)
            if s[jj] * decay >= score_threshold:
                out.append((jj, s[jj] * decay))
    return as_result(out, max_det)


def ref_weighted_nms(boxes, scores, idxs, thr, mode="score_iou", agnostic=False, max_det=None):
    """CAD (Zhou et al. 2017): greedy; the kept box M becomes the w-weighted mean of M and the
    remaining boxes it suppresses, w_j = s_j IoU(M, b_j) (or s_j)."""
    b, s, c = boxes.tolist(), scores.tolist(), idxs.tolist()
    out, merged = [], {}
    for order in ranked_classes(s, c, agnostic).values():
        remaining = list(order)
        while remaining:
            m = remaining.pop(0)
            num, den = [s[m] * v for v in b[m]], s[m]
            still = []
            for j in remaining:
                o = py_iou(b[m], b[j])
                if o > thr:
                    w = s[j] * (o if mode == "score_iou" else 1.0)
                    num = [u + w * v for u, v in zip(num, b[j])]
                    den += w
                else:
                    still.append(j)
            remaining = still
            out.append((m, s[m]))
            merged[m] = [u / den for u in num]
    keep, sc = as_result(out, max_det)
    return keep, sc, [merged[k] for k in keep]


def ref_score_voting(boxes, scores, idxs, keep, sigma=0.025):
    """PAA: b <- sum p_i s_i b_i / sum p_i s_i over same-class candidates with IoU(b, b_i) > 0."""
    b, s, c = boxes.tolist(), scores.tolist(), idxs.tolist()
    voted = []
    for k in keep:
        num, den = [0.0] * 4, 0.0
        for i in range(len(b)):
            o = py_iou(b[k], b[i])
            if c[i] == c[k] and o > 0:
                w = math.exp(-((1 - o) ** 2) / sigma) * s[i]
                num = [u + w * v for u, v in zip(num, b[i])]
                den += w
        voted.append([u / den for u in num])
    return voted


def assert_same(result, ref, boxes_too=False):
    keep, sc = result[0], result[1]
    assert keep.dtype == torch.int64
    assert keep.tolist() == ref[0]
    torch.testing.assert_close(sc, torch.tensor(ref[1], dtype=sc.dtype), rtol=1e-9, atol=1e-12)
    if boxes_too:
        torch.testing.assert_close(
            result[2], torch.tensor(ref[2], dtype=result[2].dtype).view(-1, 4), rtol=1e-9, atol=1e-9
        )


# ----------------------------------------------------------------------------------------------
# Cluster-NMS
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_plain_cluster_nms_keeps_exactly_what_torchvision_keeps(dtype):
    for seed in range(60):
        classes = 1 + seed % 5
        boxes, scores, idxs = grid_boxes(
            seed, n=1 + (seed * 37) % 300, classes=classes, dtype=dtype
        )
        for thr in (0.3, 0.5, 0.7):
            ref = torchvision.ops.batched_nms(boxes, scores, idxs, thr)
            keep, sc = cluster_nms(boxes, scores, idxs, thr)
            assert set(keep.tolist()) == set(ref.tolist()), (seed, thr)
            assert len(keep) == len(ref)
            assert torch.equal(sc, scores[keep])
            # sorted by score, ties by index
            order = sorted(keep.tolist(), key=lambda i: (-scores[i].item(), i))
            assert keep.tolist() == order
        agnostic = torchvision.ops.nms(boxes, scores, 0.5)
        assert set(cluster_nms(boxes, scores, idxs, 0.5, class_agnostic=True)[0].tolist()) == set(
            agnostic.tolist()
        )


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"criterion": "diou"},
        {"criterion": "diou", "beta": 0.6},
        {"penalty": "score"},
        {"penalty": "score", "sigma": 0.5, "score_threshold": 0.05},
        {"penalty": "score_distance"},
        {"penalty": "score_distance", "criterion": "diou", "distance_beta": 0.8},
        {"weighted": True},
        {"weighted": True, "weighted_threshold": 0.5, "penalty": "score_distance"},
        {"score_threshold": 0.35, "max_det": 7},
    ],
)
def test_cluster_nms_matches_algorithm_1(options):
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for agnostic in (False, True):
            ref = ref_cluster_nms(boxes, scores, idxs, 0.5, agnostic=agnostic, **options)
            got = cluster_nms(boxes, scores, idxs, 0.5, class_agnostic=agnostic, **options)
            assert len(got) == (3 if options.get("weighted") else 2)
            assert_same(got, ref, boxes_too=options.get("weighted", False))


def test_cluster_diou_equals_diou_nms():
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for beta in (1.0, 0.7):
            a = cluster_nms(boxes, scores, idxs, 0.45, criterion="diou", beta=beta)
            b = diou_nms(boxes, scores, idxs, 0.45, beta=beta)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# ----------------------------------------------------------------------------------------------
# DIoU-NMS, Matrix NMS, weighted NMS, score voting
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_diou_nms_matches_greedy_reference(beta):
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for thr in (0.3, 0.5):
            assert_same(
                diou_nms(boxes, scores, idxs, thr, beta),
                ref_diou_nms(boxes, scores, idxs, thr, beta),
            )
        assert_same(
            diou_nms(boxes, scores, idxs, 0.5, beta, class_agnostic=True, max_det=5),
            ref_diou_nms(boxes, scores, idxs, 0.5, beta, agnostic=True, max_det=5),
        )


def test_blocked_greedy_equals_reference_on_large_classes(monkeypatch):
    """Many rank blocks (a tiny chunk budget): the block-by-block greedy is still exact."""
    monkeypatch.setattr(_dense, "_CHUNK_ELEMENTS", 256)
    for seed in range(6):
        boxes, scores, idxs = grid_boxes(seed, n=300, classes=2, score_levels=1000)
        assert_same(diou_nms(boxes, scores, idxs, 0.5), ref_diou_nms(boxes, scores, idxs, 0.5))
        assert_same(
            weighted_nms(boxes, scores, idxs, 0.5), ref_weighted_nms(boxes, scores, idxs, 0.5), True
        )
        keep = cluster_nms(boxes, scores, idxs, 0.5)[0]
        assert set(keep.tolist()) == set(
            torchvision.ops.batched_nms(boxes, scores, idxs, 0.5).tolist()
        )


def test_diou_nms_reduces_to_standard_nms_for_concentric_boxes():
    g = torch.Generator().manual_seed(3)
    half = torch.randint(1, 160, (60, 2), generator=g).double() / 8
    boxes = torch.cat([50.0 - half, 50.0 + half], 1)  # all centred on (50, 50): rho = 0
    scores = torch.rand(60, generator=g).double()
    idxs = torch.zeros(60, dtype=torch.int64)
    ref = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    assert set(diou_nms(boxes, scores, idxs, 0.5)[0].tolist()) == set(ref.tolist())


@pytest.mark.parametrize("kernel,sigma", [("gaussian", 2.0), ("gaussian", 0.5), ("linear", 2.0)])
def test_matrix_nms_matches_solov2(kernel, sigma):
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for thr in (0.05, 0.3):
            assert_same(
                matrix_nms(boxes, scores, idxs, kernel=kernel, sigma=sigma, score_threshold=thr),
                ref_matrix_nms(boxes, scores, idxs, kernel, sigma, thr),
            )
        assert_same(
            matrix_nms(boxes, scores, idxs, 0.5, kernel=kernel, class_agnostic=True, max_det=9),
            ref_matrix_nms(boxes, scores, idxs, kernel, 2.0, 0.05, agnostic=True, max_det=9),
        )


def test_matrix_nms_linear_exact_duplicates_stay_finite():
    boxes = torch.tensor(
        [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 11, 11]], dtype=torch.float64
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6], dtype=torch.float64)
    keep, sc = matrix_nms(
        boxes, scores, torch.zeros(4, dtype=torch.int64), kernel="linear", score_threshold=0.0
    )
    assert torch.isfinite(sc).all()
    ref = ref_matrix_nms(boxes, scores, torch.zeros(4, dtype=torch.int64), "linear", 2.0, 0.0)
    assert_same((keep, sc), ref)


@pytest.mark.parametrize("mode", ["score_iou", "score"])
def test_weighted_nms_matches_cad_reference(mode):
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for thr in (0.3, 0.6):
            got = weighted_nms(boxes, scores, idxs, thr, mode=mode)
            assert_same(got, ref_weighted_nms(boxes, scores, idxs, thr, mode), boxes_too=True)
            assert set(got[0].tolist()) == set(
                torchvision.ops.batched_nms(boxes, scores, idxs, thr).tolist()
            )
        assert_same(
            weighted_nms(boxes, scores, idxs, 0.5, mode=mode, class_agnostic=True, max_det=4),
            ref_weighted_nms(boxes, scores, idxs, 0.5, mode, agnostic=True, max_det=4),
            boxes_too=True,
        )


def test_score_voting_matches_paa_reference():
    for seed in SEEDS:
        boxes, scores, idxs = grid_boxes(seed)
        for sigma in (0.025, 0.1):
            keep, sc, voted = score_voting_nms(boxes, scores, idxs, 0.5, sigma)
            ref_keep = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
            assert set(keep.tolist()) == set(ref_keep.tolist())
            assert torch.equal(sc, scores[keep])
            ref = torch.tensor(
                ref_score_voting(boxes, scores, idxs, keep.tolist(), sigma), dtype=voted.dtype
            )
            torch.testing.assert_close(voted, ref.view(-1, 4), rtol=1e-9, atol=1e-9)
        # voting after any keep set (here: every box)
        every = torch.arange(len(scores))
        ref = torch.tensor(ref_score_voting(boxes, scores, idxs, every.tolist()), dtype=boxes.dtype)
        torch.testing.assert_close(
            score_voting(boxes, scores, idxs, every), ref.view(-1, 4), rtol=1e-9, atol=1e-9
        )


def test_score_voting_class_agnostic_and_max_det():
    boxes, scores, idxs = grid_boxes(5, n=80)
    keep, _, voted = score_voting_nms(boxes, scores, idxs, 0.5, class_agnostic=True, max_det=6)
    ref_keep = torchvision.ops.nms(boxes, scores, 0.5)
    assert len(keep) == min(6, len(ref_keep))
    zeros = torch.zeros_like(idxs)
    ref = torch.tensor(ref_score_voting(boxes, scores, zeros, keep.tolist()), dtype=voted.dtype)
    torch.testing.assert_close(voted, ref.view(-1, 4), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------------------------
# padded batch == per-image calls
# ----------------------------------------------------------------------------------------------

BATCHED = [
    (cluster_nms, {}),
    (
        cluster_nms,
        {
            "criterion": "diou",
            "penalty": "score_distance",
            "weighted": True,
            "score_threshold": 0.1,
        },
    ),
    (matrix_nms, {"kernel": "linear"}),
    (matrix_nms, {"max_det": 5}),
    (weighted_nms, {}),
    (weighted_nms, {"mode": "score", "class_agnostic": True, "max_det": 3}),
]


def padded_batch(images, g):
    """The images ``[(boxes, scores, idxs), ...]`` as a padded batch, their boxes scattered among
    padding slots (arbitrary values) in their order; returns ``(boxes, scores, idxs, valid)`` and
    each image's slots."""
    n = max(len(s) for _, s, _ in images)
    b = len(images)
    boxes = (
        torch.rand(b, n, 4, generator=g, dtype=torch.float64) * 1000
    )  # padding: arbitrary values
    scores = torch.rand(b, n, generator=g, dtype=torch.float64) + 5.0
    idxs = torch.randint(0, 3, (b, n), generator=g)
    valid = torch.zeros(b, n, dtype=torch.bool)
    slots = []
    for k, (bx, sc, ix) in enumerate(images):
        # real boxes scattered among padding, in their order (ties rank by index within the image)
        slot = torch.randperm(n, generator=g)[: len(sc)].sort().values
        boxes[k, slot], scores[k, slot], idxs[k, slot], valid[k, slot] = bx, sc, ix, True
        slots.append(slot)
    return (boxes, scores, idxs, valid), slots


def assert_batch_equals_single_calls(fn, options, images, g):
    (boxes, scores, idxs, valid), slots = padded_batch(images, g)
    thr = [] if fn is matrix_nms else [0.5]
    batch = fn(boxes, scores, idxs, *thr, valid=valid, **options)
    for k, (bx, sc, ix) in enumerate(images):
        single = fn(bx, sc, ix, *thr, **options)
        count = int((batch[0][k] >= 0).sum())
        assert count == len(single[0])
        assert (batch[0][k, count:] == -1).all()
        # per-image keep indices are slots of the padded row
        assert batch[0][k, :count].tolist() == slots[k][single[0]].tolist()
        for got, want in zip(batch[1:], single[1:]):
            torch.testing.assert_close(got[k, :count], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn,options", BATCHED)
def test_padded_batch_equals_per_image_calls(fn, options):
    g = torch.Generator().manual_seed(11)
    images = [grid_boxes(seed, n=n) for seed, n in ((1, 30), (2, 1), (3, 57), (4, 12))]
    assert_batch_equals_single_calls(fn, options, images, g)


def test_batch_without_valid_and_bad_valid():
    boxes, scores, idxs = grid_boxes(7, n=20)
    batch = cluster_nms(
        boxes[None].repeat(2, 1, 1), scores[None].repeat(2, 1), idxs[None].repeat(2, 1), 0.5
    )
    single = cluster_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(batch[0][0], single[0]) and torch.equal(batch[0][1], single[0])
    with pytest.raises(ValueError, match="valid"):
        cluster_nms(boxes[None], scores[None], idxs[None], 0.5, valid=torch.ones(1, 20))
    with pytest.raises(ValueError, match="scores must have shape"):
        matrix_nms(boxes[None], scores, idxs[None])
    with pytest.raises(ValueError, match="valid is for a padded batch"):
        weighted_nms(boxes, scores, idxs, 0.5, valid=torch.ones(20, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------
# dtypes, edge cases, errors
# ----------------------------------------------------------------------------------------------

ALL = [
    ("diou", lambda b, s, i, **k: diou_nms(b, s, i, 0.5, **k)),
    ("cluster", lambda b, s, i, **k: cluster_nms(b, s, i, 0.5, **k)),
    (
        "cluster_spm_w",
        lambda b, s, i, **k: cluster_nms(
            b, s, i, 0.5, penalty="score_distance", weighted=True, **k
        ),
    ),
    ("matrix", lambda b, s, i, **k: matrix_nms(b, s, i, **k)),
    ("weighted", lambda b, s, i, **k: weighted_nms(b, s, i, 0.5, **k)),
    ("score_voting", lambda b, s, i, **k: score_voting_nms(b, s, i, 0.5, **k)),
]


@pytest.mark.parametrize("name,fn", ALL)
def test_inputs_that_require_grad(name, fn):
    # detector outputs taken outside torch.no_grad(): the same result, no graph kept
    boxes, scores, idxs = grid_boxes(11, n=80, dtype=torch.float32)
    ref = fn(boxes, scores, idxs)
    got = fn(boxes.clone().requires_grad_(), scores.clone().requires_grad_(), idxs)
    for a, b in zip(got, ref):
        assert torch.equal(a, b) and not a.requires_grad


@pytest.mark.parametrize("name,fn", ALL)
def test_dtypes(name, fn):
    boxes, scores, idxs = grid_boxes(9, n=60, dtype=torch.float64)
    ref = fn(boxes.float(), scores.float(), idxs)
    for b_dtype, s_dtype in (
        (torch.float16, torch.float16),
        (torch.bfloat16, torch.float32),
        (torch.int32, torch.float32),
    ):
        b = (boxes * 8).to(b_dtype) if b_dtype == torch.int32 else boxes.to(b_dtype)
        got = fn(b, scores.to(s_dtype), idxs)
        assert got[1].dtype == torch.float32, (name, b_dtype)
        if b_dtype == torch.float16:  # grid values below 2048 are exact in fp16
            assert torch.equal(got[0], ref[0])
        if b_dtype == torch.int32:  # same boxes scaled by 8: IoUs unchanged
            assert torch.equal(got[0], fn(boxes.float() * 8, scores.float(), idxs)[0])
    got64 = fn(boxes, scores, idxs)
    assert got64[1].dtype == torch.float64
    assert torch.equal(got64[0], ref[0])


@pytest.mark.parametrize("name,fn", ALL)
def test_edge_cases(name, fn):
    fused = name in ("cluster_spm_w", "weighted", "score_voting")
    empty = fn(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))
    assert [tuple(t.shape) for t in empty] == [(0,), (0,)] + ([(0, 4)] if fused else [])
    assert empty[0].dtype == torch.int64
    one = fn(torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.9]), torch.tensor([3]))
    assert one[0].tolist() == [0]
    assert one[1].tolist() == pytest.approx([0.9])
    if fused:
        torch.testing.assert_close(one[2], torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # zero-area, inverted, identical and point boxes: finite results
    boxes = torch.tensor(
        [
            [5, 5, 5, 5],
            [5, 5, 5, 5],
            [0, 0, 10, 0],
            [10, 10, 0, 0],
            [10, 0, 0, 10],
            [0, 0, 10, 10],
            [0, 0, 10, 10],
            [2, 2, 2, 9],
        ],
        dtype=torch.float32,
    )
    scores = torch.tensor([0.9, 0.9, 0.8, 0.7, 0.6, 0.5, 0.5, 0.4])
    out = fn(boxes, scores, torch.zeros(8, dtype=torch.int64))
    for t in out[1:]:
        assert torch.isfinite(t).all(), name
    assert len(set(out[0].tolist())) == len(out[0])
    # max_det
    boxes, scores, idxs = grid_boxes(4, n=90)
    full = fn(boxes, scores, idxs)
    cut = fn(boxes, scores, idxs, max_det=3)
    assert cut[0].tolist() == full[0][:3].tolist()
    assert fn(boxes, scores, idxs, max_det=0)[0].numel() == 0


@pytest.mark.parametrize("name,fn", ALL)
def test_non_finite_and_bad_arguments(name, fn):
    boxes, scores, idxs = grid_boxes(2, n=10)
    for bad, arg in (
        (math.nan, "boxes"),
        (math.inf, "boxes"),
        (-math.inf, "scores"),
        (math.nan, "scores"),
    ):
        b, s = boxes.clone(), scores.clone()
        (b[3, 1] if arg == "boxes" else s[4]).fill_(bad)
        with pytest.raises(ValueError, match=f"{arg} contains NaN or infinite"):
            fn(b, s, idxs)
    with pytest.raises(ValueError, match="max_det"):
        fn(boxes, scores, idxs, max_det=-1)
    with pytest.raises(ValueError, match="class_agnostic"):
        fn(boxes, scores, idxs, class_agnostic="yes")
    with pytest.raises(ValueError, match="idxs"):
        fn(boxes, scores, idxs[:5])
    with pytest.raises(ValueError, match="boxes must have shape"):
        fn(boxes[:, :3], scores, idxs)


def test_option_errors_name_the_argument():
    boxes, scores, idxs = grid_boxes(2, n=10)
    cases = [
        (lambda: diou_nms(boxes, scores, idxs, 0.5, beta=0), "beta"),
        (lambda: diou_nms(boxes, scores, idxs, "x"), "iou_threshold"),
        (lambda: cluster_nms(boxes, scores, idxs, 0.5, criterion="giou"), "criterion"),
        (lambda: cluster_nms(boxes, scores, idxs, 0.5, penalty="soft"), "penalty"),
        (lambda: cluster_nms(boxes, scores, idxs, 0.5, sigma=0), "sigma"),
        (lambda: cluster_nms(boxes, scores, idxs, 0.5, distance_beta=-1), "distance_beta"),
        (lambda: cluster_nms(boxes, scores, idxs, 0.5, weighted=1), "weighted"),
        (lambda: matrix_nms(boxes, scores, idxs, kernel="box"), "kernel"),
        (lambda: matrix_nms(boxes, scores, idxs, sigma=-2.0), "sigma"),
        (lambda: weighted_nms(boxes, scores, idxs, 0.5, mode="iou"), "mode"),
        (lambda: score_voting_nms(boxes, scores, idxs, 0.5, sigma=0), "sigma"),
        (lambda: score_voting(boxes, scores, idxs, torch.tensor([0, 99])), "keep"),
        (lambda: cluster_nms(boxes, scores, idxs.float(), 0.5), "idxs"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()


# ----------------------------------------------------------------------------------------------
# the layout: size buckets, rows without boxes left skipped, column and rank blocks
# ----------------------------------------------------------------------------------------------


def uneven_classes(seed, n=240, dtype=torch.float64):
    """Grid boxes in classes of very uneven size: about 30 % in class 0, the rest over up to 39
    classes whose sizes fall off to single boxes."""
    boxes, scores, _ = grid_boxes(seed, n=n, score_levels=20, dtype=dtype)
    g = torch.Generator().manual_seed(1000 + seed)
    idxs = (torch.rand(n, generator=g) ** 3 * 40).long()
    return boxes, scores, idxs


LAYOUTS = {
    "one bucket": ({"bucket_plan": lambda sizes: [(0, len(sizes))]}, {}),
    "a bucket per row": (
        {"bucket_plan": lambda sizes: [(r, r + 1) for r in range(len(sizes))]},
        {},
    ),
    "small blocks": ({}, {"_COLUMN_BLOCK": 5, "_GREEDY_FIRST": 3, "_GREEDY_BLOCK": 7}),
    "one block": (
        {},
        {"_COLUMN_BLOCK": 1 << 30, "_GREEDY_FIRST": 1 << 30, "_GREEDY_BLOCK": 1 << 30},
    ),
}


def with_layout(monkeypatch, name):
    layout, dense = LAYOUTS[name]
    for attr, value in layout.items():
        monkeypatch.setattr(_layout, attr, value)
    for attr, value in dense.items():
        monkeypatch.setattr(_dense, attr, value)


def test_bucket_plan():
    assert _layout.bucket_plan([5, 4, 4, 1]) == [(0, 4)]
    # one class of thousands of boxes among small ones gets its own bucket
    assert _layout.bucket_plan([20000] + [30] * 79) == [(0, 1), (1, 80)]
    assert _layout.bucket_plan([20000, 9000] + [3] * 40) == [(0, 1), (1, 2), (2, 42)]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layouts_give_identical_results(layout, monkeypatch):
    """Buckets, block sizes and the skipped rows change which pairs are computed together, never a
    result: keep sets equal, scores and boxes equal up to the order of sums."""
    inputs = [uneven_classes(seed) for seed in range(12)]
    inputs += [grid_boxes(seed, n=150, classes=6) for seed in range(4)]
    want = [[fn(*x) for _, fn in ALL] for x in inputs]
    with monkeypatch.context() as m:
        with_layout(m, layout)
        got = [[fn(*x) for _, fn in ALL] for x in inputs]
    for x, results, expected in zip(range(len(inputs)), got, want):
        for (name, _), a, b in zip(ALL, results, expected):
            assert torch.equal(a[0], b[0]), (layout, name, x)
            for u, v in zip(a[1:], b[1:]):
                torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layout", ["a bucket per row", "small blocks"])
def test_uneven_classes_match_the_references(layout, monkeypatch):
    with_layout(monkeypatch, layout)
    for seed in range(4):
        boxes, scores, idxs = uneven_classes(seed, n=160)
        assert_same(diou_nms(boxes, scores, idxs, 0.4), ref_diou_nms(boxes, scores, idxs, 0.4))
        assert_same(matrix_nms(boxes, scores, idxs), ref_matrix_nms(boxes, scores, idxs))
        assert_same(
            weighted_nms(boxes, scores, idxs, 0.5), ref_weighted_nms(boxes, scores, idxs, 0.5), True
        )
        options = {"penalty": "score_distance", "weighted": True}
        assert_same(
            cluster_nms(boxes, scores, idxs, 0.5, **options),
            ref_cluster_nms(boxes, scores, idxs, 0.5, **options),
            boxes_too=True,
        )
        keep, _, voted = score_voting_nms(boxes, scores, idxs, 0.5)
        assert set(keep.tolist()) == set(
            torchvision.ops.batched_nms(boxes, scores, idxs, 0.5).tolist()
        )
        ref = torch.tensor(ref_score_voting(boxes, scores, idxs, keep.tolist()), dtype=voted.dtype)
        torch.testing.assert_close(voted, ref.view(-1, 4), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["a bucket per row", "small blocks"])
@pytest.mark.parametrize("fn,options", BATCHED)
def test_uneven_padded_batch_equals_per_image_calls(fn, options, layout, monkeypatch):
    with_layout(monkeypatch, layout)
    g = torch.Generator().manual_seed(5)
    for seed in range(3):
        images = [uneven_classes(10 * seed + k, n=n) for k, n in enumerate((90, 3, 140, 1))]
        assert_batch_equals_single_calls(fn, options, images, g)


def test_rank_order_of_float32_scores_equals_a_sort_by_score_then_class():
    """float32 scores are ranked by one integer sort: the same order as the float64 path's two
    stable sorts, with ties (+0 and -0 included), negative, tiny and huge scores."""
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(1, 300, (1,), generator=g))
        s = torch.randint(-6, 7, (n,), generator=g).float() / 3
        for p, value in ((0.1, -0.0), (0.05, 3e38 * (-1) ** seed), (0.05, 1e-45 * (-1) ** seed)):
            s[torch.rand(n, generator=g) < p] = value
        k = torch.randint(0, 5, (n,), generator=g)
        fast = _layout._rank_order(_layout.prepare(torch.zeros(n, 4), s, k))
        two_sorts = _layout._rank_order(_layout.prepare(torch.zeros(n, 4), s.double(), k))
        assert torch.equal(fast, two_sorts), seed


def test_scratch_buffers_are_reused_but_never_shared():
    like = torch.zeros(1)
    with _dense.scratch_for(like) as outer:
        held = outer("iou", (10,)).fill_(1.0)
        with _dense.scratch_for(like) as inner:  # starts while the outer one holds the buffers
            inner("iou", (10,)).fill_(2.0)
        assert (held == 1).all()
    with _dense.scratch_for(like) as later:  # takes over what the last pass left
        assert later("iou", (5,)).data_ptr() in (held.data_ptr(), inner.slots["iou"].data_ptr())
    big = _dense._SCRATCH_KEEP_ELEMENTS + 1
    with _dense.scratch_for(like) as scratch:
        scratch("t1", (big,))
    with _dense.scratch_for(like) as scratch:
        assert "t1" not in scratch.slots  # slots above the limit are not kept


def test_pair_terms_of_degenerate_boxes():
    """Zero-area, inverted and point boxes: the IoU and the DIoU ratio of the formulas (IoU 0 where
    the union is not positive, ratio 0 where c^2 = 0, also with rho^2 > 0 for inverted boxes)."""
    boxes = [
        [5, 5, 5, 5],
        [0, 0, 10, 0],
        [10, 10, 0, 0],
        [12, 12, 0, 0],
        [10, 0, 0, 10],
        [0, 0, 10, 10],
        [2, 2, 2, 9],
        [5, 5, 6, 6],
        [1, 2, 3, 4],
    ]
    t = torch.tensor(boxes, dtype=torch.float64)
    iou, ratio = _dense.pair_terms(t[None], t[None], distance=True)
    want_iou = torch.tensor([[py_iou(a, b) for b in boxes] for a in boxes], dtype=torch.float64)
    want_ratio = [[min(py_distance_ratio(a, b), 1.0) for b in boxes] for a in boxes]
    assert torch.equal(iou[0], want_iou)
    torch.testing.assert_close(ratio[0], torch.tensor(want_ratio, dtype=torch.float64))
    assert ratio[0, 3, 0] == 0  # c^2 = 0, rho^2 > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    for seed in range(10):
        boxes, scores, idxs = grid_boxes(seed, n=200, dtype=torch.float32)
        for name, fn in ALL:
            cpu = fn(boxes, scores, idxs)
            gpu = fn(boxes.cuda(), scores.cuda(), idxs.cuda())
            assert gpu[0].device.type == "cuda", name
            assert torch.equal(gpu[0].cpu(), cpu[0]), (name, seed)
            for a, b in zip(gpu[1:], cpu[1:]):
                torch.testing.assert_close(a.cpu(), b, rtol=1e-5, atol=1e-4)
        for fn, options in BATCHED:
            thr = [] if fn is matrix_nms else [0.5]
            batch_gpu = fn(
                boxes.cuda()[None], scores.cuda()[None], idxs.cuda()[None], *thr, **options
            )
            single = fn(boxes, scores, idxs, *thr, **options)
            assert torch.equal(batch_gpu[0][0].cpu(), single[0])


# ----------------------------------------------------------------------------------------------
# Weighted Boxes Fusion against ensemble-boxes
# ----------------------------------------------------------------------------------------------


def wbf_models(seed, models=3, n=25, labels=2):
    """Normalized predictions of several models (continuous scores: no ties)."""
    g = torch.Generator().manual_seed(seed)
    boxes, scores, labs = [], [], []
    base = torch.rand(6, 2, generator=g) * 0.6
    for m in range(models):
        k = int(torch.randint(0, n, (1,), generator=g)) if m == 1 else n
        centre = (
            base[torch.randint(0, 6, (k,), generator=g)] + torch.randn(k, 2, generator=g) * 0.02
        )
        wh = torch.rand(k, 2, generator=g) * 0.2 + 0.05
        b = torch.cat([centre, centre + wh], 1).clamp(0, 1)
        boxes.append(b.numpy().astype("float64"))
        scores.append(torch.rand(k, generator=g).numpy().astype("float64"))
        labs.append(torch.randint(0, labels, (k,), generator=g).numpy())
    return boxes, scores, labs


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg", "absent_model_aware_avg"])
def test_wbf_matches_ensemble_boxes(conf_type):
    import numpy as np
    from ensemble_boxes import weighted_boxes_fusion as reference

    for seed in range(25):
        boxes, scores, labels = wbf_models(seed)
        for weights, thr, skip, overflow in (
            (None, 0.55, 0.0, False),
            ([2, 1, 3], 0.4, 0.2, False),
            ([1, 1.5, 1], 0.7, 0.0, True),
        ):
            rb, rs, rl = reference(
                boxes,
                scores,
                labels,
                weights=weights,
                iou_thr=thr,
                skip_box_thr=skip,
                conf_type=conf_type,
                allows_overflow=overflow,
            )
            gb, gs, gl = weighted_boxes_fusion(
                boxes,
                scores,
                labels,
                weights=weights,
                iou_threshold=thr,
                skip_box_threshold=skip,
                conf_type=conf_type,
                allows_overflow=overflow,
            )
            assert len(gb) == len(rb), (seed, weights)
            # compare as sets of (label, score, box): the reference's order of equal scores differs
            ref_rows = sorted(np.concatenate([rl[:, None], rs[:, None], rb], 1).tolist())
            got_rows = sorted(torch.cat([gl[:, None].double(), gs[:, None], gb], 1).tolist())
            # the reference keeps fused boxes in float32: compare to that precision
            np.testing.assert_allclose(np.array(got_rows), np.array(ref_rows), rtol=1e-6, atol=1e-6)
            assert gl.dtype == torch.int64
            assert (gs[:-1] >= gs[1:]).all()


def test_wbf_absolute_coordinates_and_errors():
    boxes, scores, labels = wbf_models(3)
    norm = weighted_boxes_fusion(boxes, scores, labels, iou_threshold=0.5)
    scaled = weighted_boxes_fusion([b * 800 for b in boxes], scores, labels, iou_threshold=0.5)
    torch.testing.assert_close(scaled[0], norm[0] * 800)
    torch.testing.assert_close(scaled[1], norm[1])
    # inverted corners are ordered, zero-area boxes skipped
    inv = [b[:, [2, 3, 0, 1]] for b in boxes]
    torch.testing.assert_close(
        weighted_boxes_fusion(inv, scores, labels, iou_threshold=0.5)[0], norm[0]
    )
    empty = weighted_boxes_fusion(
        [torch.zeros(0, 4)], [torch.zeros(0)], [torch.zeros(0, dtype=torch.int64)]
    )
    assert [tuple(t.shape) for t in empty] == [(0, 4), (0,), (0,)]
    bad = [b.copy() for b in boxes]
    bad[2][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"boxes_list\[2\] contains NaN"):
        weighted_boxes_fusion(bad, scores, labels)
    with pytest.raises(ValueError, match="weights"):
        weighted_boxes_fusion(boxes, scores, labels, weights=[1, 2])
    with pytest.raises(ValueError, match="conf_type"):
        weighted_boxes_fusion(boxes, scores, labels, conf_type="median")
    with pytest.raises(ValueError, match="same length"):
        weighted_boxes_fusion(boxes, [s[:-1] for s in scores], labels)
    with pytest.raises(ValueError, match="labels_list"):
        weighted_boxes_fusion(boxes, scores, labels[:2])


# ----------------------------------------------------------------------------------------------
# the registered types in the detectors
# ----------------------------------------------------------------------------------------------

# each type with non-default values of its keys: (type, [KEY, value, ...], {argument: value})
DETECTOR_TYPES = [
    ("diou", ["NMS.DIOU_BETA", "0.8"], {"beta": 0.8}),
    (
        "cluster",
        [
            "NMS.CLUSTER_PENALTY",
            "score_distance",
            "NMS.CLUSTER_WEIGHTED",
            "True",
            "NMS.CLUSTER_SCORE_THRESH",
            "0.01",
            "NMS.CLUSTER_SIGMA",
            "0.3",
            "NMS.CLUSTER_WEIGHTED_THRESH",
            "0.5",
        ],
        {
            "penalty": "score_distance",
            "weighted": True,
            "score_threshold": 0.01,
            "sigma": 0.3,
            "criterion": "iou",
            "beta": 1.0,
            "distance_beta": 0.6,
            "weighted_threshold": 0.5,
        },
    ),
    (
        "cluster",
        ["NMS.CLUSTER_CRITERION", "diou", "NMS.DIOU_BETA", "0.7"],
        {"criterion": "diou", "beta": 0.7, "score_threshold": None, "weighted": False},
    ),
    (
        "matrix",
        ["NMS.MATRIX_KERNEL", "linear", "NMS.MATRIX_SCORE_THRESH", "0.0"],
        {"kernel": "linear", "sigma": 2.0, "score_threshold": 0.0},
    ),
    ("weighted", ["NMS.WEIGHTED_MODE", "score"], {"mode": "score"}),
    ("score_voting", ["NMS.VOTING_SIGMA", "0.05"], {"sigma": 0.05}),
]


@pytest.mark.parametrize("config", [RETINANET, RCNN], ids=["retinanet", "faster_rcnn"])
@pytest.mark.parametrize(
    "name,opts,args", DETECTOR_TYPES, ids=[f"{t[0]}-{t[1][0]}" for t in DETECTOR_TYPES]
)
def test_detectors_run_each_type(config, name, opts, args, monkeypatch):
    """MODEL.IOU_AWARE.NMS.TYPE selects the type, its keys reach the function, and the detections
    are the function's output (its scores; its boxes for the box-fusion types), best first."""
    entry = NMS_REGISTRY.get(name)
    calls = []

    def spy(*a, **k):
        out = entry.fn(*a, **k)
        calls.append((a, k, out))
        return out

    monkeypatch.setitem(NMS_REGISTRY._entries, name, dataclasses.replace(entry, fn=spy))
    keys = [f"MODEL.IOU_AWARE.{v}" if i % 2 == 0 else v for i, v in enumerate(opts)]
    model = build(make_cfg(config, "MODEL.IOU_AWARE.NMS.TYPE", name, *keys))
    model.eval()
    with torch.no_grad():
        out = model(fake_batch(n_images=1))[0]["instances"]
    ((a, kwargs, result),) = calls
    for key, value in args.items():
        assert kwargs[key] == value, key
    boxes = a[0]
    k = len(out)
    assert 0 < k <= len(result[0])
    torch.testing.assert_close(out.scores, result[1][:k].to(out.scores.dtype))
    want_boxes = result[2][:k] if len(result) == 3 else boxes[result[0][:k]]
    # the detectors' postprocessing clips the boxes to the (64 x 64, unscaled) image
    want_boxes = want_boxes.to(out.pred_boxes.tensor.dtype).clamp(0, 64)
    torch.testing.assert_close(out.pred_boxes.tensor, want_boxes)
    if name in ("cluster", "weighted", "score_voting") and len(result) == 3:
        assert not torch.equal(result[2], boxes[result[0]])  # fusion moved some box


def test_config_checks_name_the_key():
    for key, value, text in [
        ("NMS.DIOU_BETA", "0.0", "must be > 0"),
        ("NMS.CLUSTER_CRITERION", "giou", "valid values are"),
        ("NMS.CLUSTER_PENALTY", "soft", "valid values are"),
        ("NMS.CLUSTER_WEIGHTED_THRESH", "1.5", "must be in"),
        ("NMS.MATRIX_KERNEL", "box", "valid values are"),
        ("NMS.MATRIX_SIGMA", "-1.0", "must be > 0"),
        ("NMS.WEIGHTED_MODE", "iou", "valid values are"),
        ("NMS.VOTING_SIGMA", "0.0", "must be > 0"),
    ]:
        cfg = make_cfg(
            RETINANET, "MODEL.IOU_AWARE.NMS.TYPE", "cluster", f"MODEL.IOU_AWARE.{key}", value
        )
        with pytest.raises(ValueError, match=f"MODEL.IOU_AWARE.{key}: {text}"):
            build(cfg)


def test_nms_benchmark_times_every_registered_type():
    from benchmarks import benchmark_nms

    variants = dict(benchmark_nms.variants(0.5))
    for name in NMS_REGISTRY.names():
        assert name in benchmark_nms.TIMED_BY_FUNCTION or f"type {name}" in variants, name
    boxes, scores, ious, idxs = benchmark_nms.make_detections(300, 4)
    direct = {
        "type diou": diou_nms(boxes, scores, idxs, 0.5),
        "type matrix": matrix_nms(boxes, scores, idxs),
        "type weighted": weighted_nms(boxes, scores, idxs, 0.5),
    }
    for name, want in direct.items():  # called with the config defaults, as the detectors do
        got = variants[name](boxes, scores, ious, idxs)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), name
