"""Tests of iou_aware.losses.iou_losses against hand-worked values, torchvision, the papers'
properties and equations, and degenerate input. Expected values are derived by hand in comments."""

import math

import pytest
import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss

from iou_aware.geometry import BoxPairTerms, aligned_iou, extended_intersection_union
from iou_aware.losses.iou_losses import (
    alpha_iou_loss,
    ciou_loss,
    diou_loss,
    efficient_iou_loss,
    focal_efficient_iou_loss,
    giou_loss,
    harmonic_iou_loss,
    iou_loss,
    smooth_extended_iou_loss,
)

F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


def close(actual, expected, atol=1e-6, rtol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=rtol)


# ================================================================================================
# Hand-worked values. Pairs (pred, target):
# P1 (0,0,2,2)/(1,1,3,3): I=1, U=7, IoU=1/7; enclosing C=(0,0,3,3): |C|=9, c^2=9+9=18;
#    centres (1,1),(2,2): rho^2=2; both 2x2 so v=0 and w-w_gt = h-h_gt = 0.
# P2 (0,0,1,1)/(2,0,3,1): I=0, U=2, IoU=0; C=(0,0,3,1): |C|=3, c^2=9+1=10; rho^2=(2.5-.5)^2=4; v=0.
# P3 (0,0,1,1)/(2,2,3,3): I=0, U=2, IoU=0; C=(0,0,3,3): |C|=9, c^2=18; rho^2=2^2+2^2=8; v=0.
# P4 (0,0,4,2)/(0,0,2,2): I=4, U=8, IoU=1/2; C=(0,0,4,2): |C|=8, c^2=16+4=20; centres (2,1),(1,1):
#    rho^2=1; v = 4/pi^2 (atan(2/2) - atan(4/2))^2 = 4/pi^2 (pi/4 - atan 2)^2 =: V4;
#    w - w_gt = 2 (w_c = 4), h - h_gt = 0.
# Extended IoU (geometry tests derive these): I_e = 1, -1, -6, 4; U_e = 7, 3, 8, 8;
#    EIoU = 1/7, -1/3, -3/4, 1/2.
# ================================================================================================
PRED = t64([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 4, 2]])
TARGET = t64([[1, 1, 3, 3], [2, 0, 3, 1], [2, 2, 3, 3], [0, 0, 2, 2]])
V4 = 4 / math.pi**2 * (math.pi / 4 - math.atan(2)) ** 2
BETA4 = V4 / (0.5 + V4)  # CIoU trade-off v / (1 - IoU + v) for P4
LOG_EPS = -math.log(1e-7)  # -log(IoU) with IoU floored at eps=1e-7 (P2, P3 do not overlap)

HAND_VALUES = [
    # 1 - IoU
    ("iou linear", iou_loss, {}, [6 / 7, 1, 1, 1 / 2]),
    # 1 - IoU^2: 1 - 1/49, 1, 1, 1 - 1/4
    ("iou square", iou_loss, {"mode": "square"}, [48 / 49, 1, 1, 3 / 4]),
    # -log IoU: log 7, -log eps, -log eps, log 2
    ("iou log", iou_loss, {"mode": "log"}, [math.log(7), LOG_EPS, LOG_EPS, math.log(2)]),
    # 1 - IoU + (|C| - U)/|C|: 6/7 + 2/9 = 68/63; 1 + 1/3; 1 + 7/9; 1/2 + 0
    ("giou", giou_loss, {}, [68 / 63, 4 / 3, 16 / 9, 1 / 2]),
    # 1 - IoU + rho^2/c^2: 6/7 + 2/18 = 61/63; 1 + 4/10; 1 + 8/18; 1/2 + 1/20
    ("diou", diou_loss, {}, [61 / 63, 7 / 5, 13 / 9, 11 / 20]),
    # DIoU + beta v: v = 0 for P1-P3; P4: 11/20 + BETA4 * V4
    ("ciou", ciou_loss, {}, [61 / 63, 7 / 5, 13 / 9, 11 / 20 + BETA4 * V4]),
    # DIoU + (w-w_gt)^2/w_c^2 + (h-h_gt)^2/h_c^2: P1-P3 as DIoU; P4: 11/20 + 4/16 + 0 = 4/5
    ("efficient", efficient_iou_loss, {}, [61 / 63, 7 / 5, 13 / 9, 4 / 5]),
    # IoU^0.5 * EIoU: sqrt(1/7) 61/63; 0; 0; sqrt(1/2) 4/5
    ("focal eiou", focal_efficient_iou_loss, {}, [math.sqrt(1 / 7) * 61 / 63, 0, 0, math.sqrt(0.5) * 0.8]),
    # 1 - IoU^3: 1 - 1/343 = 342/343; 1; 1; 1 - 1/8
    ("alpha iou", alpha_iou_loss, {}, [342 / 343, 1, 1, 7 / 8]),
    # + ((|C| - U)/|C|)^3: 342/343 + 8/729; 1 + 1/27; 1 + 343/729; 7/8 + 0
    ("alpha giou", alpha_iou_loss, {"penalty": "giou"}, [342 / 343 + 8 / 729, 28 / 27, 1 + 343 / 729, 7 / 8]),
    # + (rho^2/c^2)^3: 342/343 + 1/729; 1 + 8/125; 1 + 64/729; 7/8 + 1/8000
    (
        "alpha diou",
        alpha_iou_loss,
        {"penalty": "diou"},
        [342 / 343 + 1 / 729, 1 + 8 / 125, 1 + 64 / 729, 7 / 8 + 1 / 8000],
    ),
    # + (beta v)^3: only P4
    (
        "alpha ciou",
        alpha_iou_loss,
        {"penalty": "ciou"},
        [342 / 343 + 1 / 729, 1 + 8 / 125, 1 + 64 / 729, 7 / 8 + 1 / 8000 + (BETA4 * V4) ** 3],
    ),
    # a1 = 3, a2 = 1: 1 - IoU^3 + rho^2/c^2
    (
        "alpha diou a2=1",
        alpha_iou_loss,
        {"penalty": "diou", "alpha_penalty": 1.0},
        [342 / 343 + 1 / 9, 1 + 2 / 5, 1 + 4 / 9, 7 / 8 + 1 / 20],
    ),
    # Box-Cox, eq. 1: (1 - IoU^3)/3 = 114/343; 1/3; 1/3; (7/8)/3 = 7/24
    ("alpha box-cox", alpha_iou_loss, {"box_cox": True}, [114 / 343, 1 / 3, 1 / 3, 7 / 24]),
    # (1 + IoU)^gamma (1 - IoU), gamma = 0.8: (8/7)^0.8 6/7; 1; 1; (3/2)^0.8 / 2
    ("hiou 0.8", harmonic_iou_loss, {}, [(8 / 7) ** 0.8 * 6 / 7, 1, 1, 1.5**0.8 / 2]),
    # gamma = 1: (8/7)(6/7) = 48/49; 1; 1; (3/2)(1/2) = 3/4
    ("hiou 1", harmonic_iou_loss, {"gamma": 1.0}, [48 / 49, 1, 1, 3 / 4]),
    # (1 - EIoU)^2: (6/7)^2 = 36/49; (4/3)^2 = 16/9; (7/4)^2 = 49/16; (1/2)^2 = 1/4
    ("smooth eiou", smooth_extended_iou_loss, {}, [36 / 49, 16 / 9, 49 / 16, 1 / 4]),
    ("smooth eiou no sot", smooth_extended_iou_loss, {"sot": False}, [36 / 49, 16 / 9, 49 / 16, 1 / 4]),
    # power 1.5: (6/7)^1.5; (4/3)^1.5; (7/4)^1.5; (1/2)^1.5
    (
        "smooth eiou p1.5",
        smooth_extended_iou_loss,
        {"power": 1.5},
        [(6 / 7) ** 1.5, (4 / 3) ** 1.5, 1.75**1.5, 0.5**1.5],
    ),
]


@pytest.mark.parametrize("name,fn,kwargs,expected", HAND_VALUES, ids=[h[0] for h in HAND_VALUES])
def test_hand_worked_values(name, fn, kwargs, expected):
    close(fn(PRED, TARGET, **kwargs), expected)
    close(fn(PRED, TARGET, reduction="sum", **kwargs), sum(expected))
    if fn is not focal_efficient_iou_loss:
        close(fn(PRED, TARGET, reduction="mean", **kwargs), sum(expected) / 4)
    close(fn(PRED.float(), TARGET.float(), **kwargs), expected, atol=1e-5, rtol=1e-5)


def test_focal_efficient_iou_reductions_follow_eq_11():
    # w = IoU^0.5 = (1/sqrt 7, 0, 0, 1/sqrt 2); L_EIoU = (61/63, 7/5, 13/9, 4/5)
    w1, w4 = 1 / math.sqrt(7), 1 / math.sqrt(2)
    weighted_sum = w1 * 61 / 63 + w4 * 4 / 5
    close(focal_efficient_iou_loss(PRED, TARGET, reduction="sum"), weighted_sum)
    # eq. 11: sum(w L) / sum(w), not a plain mean
    close(focal_efficient_iou_loss(PRED, TARGET, reduction="mean"), weighted_sum / (w1 + w4))
    # gamma = 0: weights 1, the EIoU loss and its plain mean
    close(focal_efficient_iou_loss(PRED, TARGET, gamma=0.0), [61 / 63, 7 / 5, 13 / 9, 4 / 5])
    close(
        focal_efficient_iou_loss(PRED, TARGET, gamma=0.0, reduction="mean"),
        (61 / 63 + 7 / 5 + 13 / 9 + 4 / 5) / 4,
    )
    # no overlapping pair: every weight is 0, the normalized mean is 0 (not 0/0)
    pred = PRED[1:3].clone().requires_grad_()
    out = focal_efficient_iou_loss(pred, TARGET[1:3], reduction="mean")
    out.backward()
    assert out.item() == 0 and torch.isfinite(pred.grad).all()


# ================================================================================================
# torchvision equality (values within 1e-6, gradients too)
# ================================================================================================
def random_pairs(n, seed, dtype=F64, spread=1.0):
    """Random valid boxes; about half the pairs overlap."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=F64) * 20
    wh = torch.rand(n, 2, generator=g, dtype=F64) * 10 + 1
    target = torch.cat([xy, xy + wh], 1)
    shift = (torch.rand(n, 2, generator=g, dtype=F64) - 0.5) * 20 * spread
    scale = torch.rand(n, 2, generator=g, dtype=F64) * 1.5 + 0.5
    c = (xy + wh / 2) + shift
    half = wh * scale / 2
    pred = torch.cat([c - half, c + half], 1)
    return pred.to(dtype), target.to(dtype)


TV = [
    (giou_loss, generalized_box_iou_loss),
    (diou_loss, distance_box_iou_loss),
    (ciou_loss, complete_box_iou_loss),
]


@pytest.mark.parametrize("ours,theirs", TV, ids=["giou", "diou", "ciou"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_equals_torchvision_values(ours, theirs, dtype):
    pred, target = random_pairs(500, seed=3, dtype=dtype)
    assert (aligned_iou(pred, target) == 0).any() and (aligned_iou(pred, target) > 0.3).any()
    for reduction in ("none", "sum", "mean"):
        expected = theirs(pred, target, reduction=reduction)
        actual = ours(pred, target, reduction=reduction)
        scale = 500 if reduction == "sum" else 1
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("ours,theirs", TV, ids=["giou", "diou", "ciou"])
def test_equals_torchvision_gradients(ours, theirs):
    # Same gradients too: in particular CIoU's trade-off alpha is detached as in torchvision.
    pred, target = random_pairs(200, seed=4)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    ours(p1, target, reduction="sum").backward()
    theirs(p2, target, reduction="sum").backward()
    torch.testing.assert_close(p1.grad, p2.grad, rtol=1e-9, atol=1e-12)


def test_ciou_gradient_is_diou_plus_detached_tradeoff_times_dv():
    pred, target = random_pairs(50, seed=5)
    terms = BoxPairTerms(pred, target)
    assert (terms.aspect_v > 1e-3).sum() > 20
    p_ciou, p_diou, p_v = (pred.clone().requires_grad_() for _ in range(3))
    ciou_loss(p_ciou, target, reduction="sum").backward()
    diou_loss(p_diou, target, reduction="sum").backward()
    BoxPairTerms(p_v, target).aspect_v.backward(terms.ciou_tradeoff)  # sum_i alpha_i dv_i
    torch.testing.assert_close(p_ciou.grad, p_diou.grad + p_v.grad)


# ================================================================================================
# gradcheck (float64, non-degenerate pairs: no touching edges, no equal coordinates)
# ================================================================================================
GRADCHECK = [
    ("iou linear", iou_loss, {}),
    ("iou square", iou_loss, {"mode": "square"}),
    ("iou log", iou_loss, {"mode": "log"}),
    ("giou", giou_loss, {}),
    ("diou", diou_loss, {}),
    ("efficient", efficient_iou_loss, {}),
    ("focal eiou gamma=0", focal_efficient_iou_loss, {"gamma": 0.0}),
    ("alpha 3", alpha_iou_loss, {}),
    ("alpha 0.5", alpha_iou_loss, {"alpha": 0.5}),
    ("alpha giou", alpha_iou_loss, {"penalty": "giou"}),
    ("alpha diou 2/0.7", alpha_iou_loss, {"penalty": "diou", "alpha": 2.0, "alpha_penalty": 0.7}),
    ("alpha box-cox", alpha_iou_loss, {"box_cox": True, "alpha": 0.5}),
    ("hiou", harmonic_iou_loss, {}),
    ("hiou -0.5", harmonic_iou_loss, {"gamma": -0.5}),
    ("smooth eiou", smooth_extended_iou_loss, {"sot": False}),
    ("smooth eiou p1.5", smooth_extended_iou_loss, {"sot": False, "power": 1.5}),
    ("smooth eiou p1", smooth_extended_iou_loss, {"sot": False, "power": 1.0}),
]


def gradcheck_pairs():
    pred, target = random_pairs(8, seed=6)
    return pred.requires_grad_(), target.requires_grad_()


@pytest.mark.parametrize("name,fn,kwargs", GRADCHECK, ids=[g[0] for g in GRADCHECK])
def test_gradcheck(name, fn, kwargs):
    pred, target = gradcheck_pairs()
    assert (aligned_iou(pred, target) > 0).any() and (aligned_iou(pred, target) == 0).any()
    assert torch.autograd.gradcheck(lambda p, t: fn(p, t, **kwargs), (pred, target), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "fn,kwargs", [(ciou_loss, {}), (alpha_iou_loss, {"penalty": "ciou"})], ids=["ciou", "alpha ciou"]
)
def test_gradcheck_ciou_where_the_detached_tradeoff_has_zero_derivative(fn, kwargs):
    # alpha = v / (1 - IoU + v) is detached by design, so gradcheck can only agree where its
    # derivative times v vanishes: at equal aspect ratios (v = 0, dv = 0). Elsewhere the gradient is
    # checked against torchvision and the explicit identity above.
    target = t64([[0, 0, 4, 2], [1, 1, 3, 5], [10, 10, 13, 13]])
    pred = t64([[1, 0.5, 5.2, 2.6], [1.5, 0.2, 3.1, 3.4], [0, 0.5, 4, 4.5]]).requires_grad_()
    terms = BoxPairTerms(pred, target)
    torch.testing.assert_close(terms.aspect_v, torch.zeros(3, dtype=F64), atol=1e-20, rtol=0)
    assert torch.autograd.gradcheck(lambda p: fn(p, target, **kwargs), (pred,), eps=1e-6, atol=1e-6)


def test_focal_weight_is_detached():
    # d(w L)/dx = w dL/dx with w = IoU^gamma held constant (Zhang et al. eq. 10).
    pred, target = random_pairs(40, seed=7)
    w = aligned_iou(pred, target).pow(0.5)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    focal_efficient_iou_loss(p1, target, reduction="sum").backward()
    efficient_iou_loss(p2, target).backward(w)
    torch.testing.assert_close(p1.grad, p2.grad)


def test_harmonic_factor_is_differentiated():
    # d/dx [(1+IoU)^g (1-IoU)] = (1+IoU)^(g-1) ((g-1) - (g+1) IoU) dIoU/dx  (nothing detached)
    g = 0.8
    pred, target = random_pairs(40, seed=8)
    iou = aligned_iou(pred, target)
    factor = (1 + iou).pow(g - 1) * ((g - 1) - (g + 1) * iou)
    p1, p2 = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    harmonic_iou_loss(p1, target, gamma=g, reduction="sum").backward()
    aligned_iou(p2, target).backward(factor)
    torch.testing.assert_close(p1.grad, p2.grad)


# ================================================================================================
# Alpha-IoU properties (He et al.)
# ================================================================================================
@pytest.mark.parametrize(
    "penalty,base", [("none", iou_loss), ("giou", giou_loss), ("diou", diou_loss), ("ciou", ciou_loss)]
)
def test_alpha_one_gives_the_base_losses(penalty, base):
    pred, target = random_pairs(100, seed=9)
    for kwargs in ({"alpha": 1.0}, {"alpha": 1.0, "alpha_penalty": 1.0}):
        torch.testing.assert_close(
            alpha_iou_loss(pred, target, penalty=penalty, **kwargs), base(pred, target)
        )
    # and so are the gradients: this checks the (beta v)^alpha path of alpha-CIoU, which gradcheck
    # cannot (its trade-off factor is detached), against CIoU's, itself checked against torchvision
    p = pred.clone().requires_grad_()
    (g_alpha,) = torch.autograd.grad(alpha_iou_loss(p, target, penalty=penalty, alpha=1.0).sum(), p)
    (g_base,) = torch.autograd.grad(base(p, target).sum(), p)
    torch.testing.assert_close(g_alpha, g_base)
    if penalty == "none":
        torch.testing.assert_close(alpha_iou_loss(pred, target, alpha=1.0, box_cox=True), base(pred, target))
        # alpha = 2 with Box-Cox is L_IoU^2 / 2 (He et al. below eq. 1)
        torch.testing.assert_close(
            alpha_iou_loss(pred, target, alpha=2.0, box_cox=True), iou_loss(pred, target, mode="square") / 2
        )


@pytest.mark.parametrize("alpha", [0.3, 0.5, 2.0, 3.0, 5.0])
@pytest.mark.parametrize("box_cox", [False, True])
def test_alpha_iou_preserves_the_order_of_iou(alpha, box_cox):
    # Property 1: IoU(B_i) < IoU(B_j) <=> L_IoU(B_i) > L_IoU(B_j) <=> L_alpha(B_i) > L_alpha(B_j),
    # for predictions of one ground truth.
    g = torch.Generator().manual_seed(10)
    target = t64([[10, 10, 30, 25]]).expand(64, 4)
    pred = target + (torch.rand(64, 4, generator=g, dtype=F64) - 0.5) * 16
    iou = aligned_iou(pred, target)
    loss = alpha_iou_loss(pred, target, alpha=alpha, box_cox=box_cox)
    base = iou_loss(pred, target)
    order = torch.argsort(iou)
    assert len(torch.unique(iou)) == 64 and (iou > 0).all()
    assert (torch.diff(base[order]) < 0).all()
    assert (torch.diff(loss[order]) < 0).all()


def test_box_cox_tends_to_minus_log_iou():
    # eq. 2: lim_{alpha -> 0} (1 - IoU^alpha) / alpha = -log IoU
    pred, target = random_pairs(50, seed=11, spread=0.2)
    iou = aligned_iou(pred, target)
    keep = iou > 0.05
    neg_log = -torch.log(iou[keep])
    errors = []
    for alpha in (1e-1, 1e-2, 1e-3, 1e-5):
        loss = alpha_iou_loss(pred, target, alpha=alpha, box_cox=True)[keep]
        errors.append((loss - neg_log).abs().max().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4
    torch.testing.assert_close(iou_loss(pred, target, mode="log")[keep], neg_log)


# ================================================================================================
# Harmonic IoU monotonicity (Wang & Zhang sec. 3.2: gamma <= 1)
# ================================================================================================
@pytest.mark.parametrize("gamma", [-1.0, 0.0, 0.5, 0.8, 1.0])
def test_harmonic_iou_is_monotone_for_gamma_at_most_one(gamma):
    # pred (0,0,s,1) inside target (0,0,1,1): IoU = s, so the loss must decrease as s grows.
    s = torch.linspace(0.01, 0.99, 100, dtype=F64).requires_grad_()  # s = 1 is the kink IoU = 1
    zeros = torch.zeros_like(s)
    pred = torch.stack([zeros, zeros, s, zeros + 1], 1)
    target = t64([[0, 0, 1, 1]]).expand(100, 4)
    loss = harmonic_iou_loss(pred, target, gamma=gamma, eps=0.0)
    close(loss, (1 + s.detach()) ** gamma * (1 - s.detach()), atol=1e-12, rtol=1e-12)
    assert (torch.diff(loss) < 0).all()
    loss.sum().backward()
    assert (s.grad <= 0).all()


def test_harmonic_iou_rejects_gamma_above_one_where_it_is_not_monotone():
    # The reason for the range: for gamma = 1.5, L(IoU) = (1+IoU)^1.5 (1-IoU) rises from L(0) = 1:
    # L(0.1) = 1.1^1.5 * 0.9 = 1.0383... > 1, so low-IoU boxes would be pushed away.
    with pytest.raises(ValueError, match="gamma.*<= 1"):
        harmonic_iou_loss(PRED, TARGET, gamma=1.5)


# ================================================================================================
# Smooth-EIoU: Peng & Yu appendix eq. 33-44 against autograd, CT, SOT (eq. 28)
# ================================================================================================
def peng_appendix_gradients(p, t):
    """dI_e, dU_e, dL (L = (1 - I_e/U_e)^2) w.r.t. (x1p, y1p, x2p, y2p), written from eq. 33-44."""
    x1p, y1p, x2p, y2p = p
    x1t, y1t, x2t, y2t = t
    x1, y1, x2, y2 = max(x1t, x1p), max(y1t, y1p), min(x2t, x2p), min(y2t, y2p)  # eq. 1-4
    x0, y0 = min(x1t, x1p), min(y1t, y1p)  # eq. 10-11
    xmin, ymin, xmax, ymax = min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)  # eq. 12-15
    i_e = (
        (x2 - x0) * (y2 - y0) + (xmin - x0) * (ymin - y0) - (x1 - x0) * (ymax - y0) - (xmax - x0) * (y1 - y0)
    )
    u_e = (x2t - x1t) * (y2t - y1t) + (x2p - x1p) * (y2p - y1p) - i_e  # eq. 21
    # eq. 33
    if x1p >= x1t:
        d_i_x1 = ymin - ymax if x1 <= x2 else 2 * y0 - ymax - y1
    else:
        d_i_x1 = 0.0
    # eq. 34
    if y1p >= y1t:
        d_i_y1 = xmin - xmax if y1 <= y2 else 2 * x0 - xmax - x1
    else:
        d_i_y1 = 0.0
    # eq. 35
    if x2p <= x2t:
        d_i_x2 = y2 - y1 if x1 <= x2 else y2 + ymin - 2 * y0
    else:
        d_i_x2 = 0.0
    # eq. 36
    if y2p <= y2t:
        d_i_y2 = x2 - x1 if y1 <= y2 else x2 + xmin - 2 * x0
    else:
        d_i_y2 = 0.0
    d_i = [d_i_x1, d_i_y1, d_i_x2, d_i_y2]
    # eq. 37-40
    d_u = [(y1p - y2p) - d_i_x1, (x1p - x2p) - d_i_y1, (y2p - y1p) - d_i_x2, (x2p - x1p) - d_i_y2]
    # eq. 41-44
    d_l = [2 * (1 - i_e / u_e) * (i_e * du - di * u_e) / u_e**2 for di, du in zip(d_i, d_u)]
    return i_e, u_e, d_i, d_u, d_l


# target (0,0,3,4) and predictions covering every branch of eq. 33-36 that the paper gets right
PENG_TARGET = (0.0, 0.0, 3.0, 4.0)
PENG_CASES = {
    "overlap, x1p>x1t y1p>y1t x2p>x2t y2p>y2t": (1.0, 1.5, 4.0, 5.0),
    "overlap, x1p<x1t y1p<y1t x2p<x2t y2p<y2t": (-1.0, -0.5, 2.0, 3.0),
    "case ii, pred right": (4.0, 0.5, 6.0, 2.0),
    "case ii, pred left": (-5.0, 1.0, -1.0, 3.0),
    "case iii, pred below": (0.5, 5.0, 2.0, 6.0),
    "case iii, pred above": (0.5, -3.0, 2.5, -1.0),
    "case iv, pred below right": (4.0, 5.0, 6.0, 7.0),
}


@pytest.mark.parametrize("case", list(PENG_CASES), ids=list(PENG_CASES))
def test_peng_appendix_gradients_equal_autograd(case):
    p = PENG_CASES[case]
    i_e, u_e, d_i, d_u, d_l = peng_appendix_gradients(p, PENG_TARGET)
    target = t64([PENG_TARGET])
    pred = t64([p]).requires_grad_()
    ai, au = extended_intersection_union(pred, target)
    close(ai, [i_e], atol=1e-12)
    close(au, [u_e], atol=1e-12)
    (g_i,) = torch.autograd.grad(ai.sum(), pred, retain_graph=True)
    (g_u,) = torch.autograd.grad(au.sum(), pred)
    loss = smooth_extended_iou_loss(pred, target, sot=False, eps=0.0)
    (g_l,) = torch.autograd.grad(loss.sum(), pred)
    close(g_i[0], d_i, atol=1e-12)  # eq. 33-36
    close(g_u[0], d_u, atol=1e-12)  # eq. 37-40
    close(g_l[0], d_l, atol=1e-12)  # eq. 41-44


@pytest.mark.parametrize(
    "p,true_d_x1,true_d_y1",
    [
        # case (iii), x1p < x1t: pred (-1,5,2,6), x0 = -1, y1 = 5 > y2 = 4.
        # I_e = (x2-x0)(y2-y1) + (x1-x0)(y2-y1) (eq. 19) = (2-x1p)(-1) + (0-x1p)(-1): dI_e/dx1p = 2 = 2(y1-y2)
        ((-1.0, 5.0, 2.0, 6.0), 2.0, None),
        # case (iv), x1p < x1t and y1p < y1t: pred (-4,-5,-1,-1): x1 = 0 > x2 = -1, y1 = 0 > y2 = -1.
        # I_e = 2((x2-x0)(y2-y0) - (x1-x0)(y1-y0)) (eq. 20) with x0 = x1p, y0 = y1p:
        # dI_e/dx1p = 2(-(y2-y0) + (y1-y0)) = 2(y1-y2) = 2, and likewise dI_e/dy1p = 2(x1-x2) = 2
        ((-4.0, -5.0, -1.0, -1.0), 2.0, 2.0),
    ],
)
def test_peng_eq_33_34_third_branch_erratum(p, true_d_x1, true_d_y1):
    """Eq. 33/34 give 0 for x1p < x1t (y1p < y1t), but I_e of eq. 16 then depends on x1p through
    x0 whenever the boxes are also apart along the other axis. We differentiate eq. 16 itself; a
    central finite difference of eq. 16 confirms the corrected value."""
    _, _, d_i, _, _ = peng_appendix_gradients(p, PENG_TARGET)
    target = t64([PENG_TARGET])
    pred = t64([p]).requires_grad_()
    i_e, _ = extended_intersection_union(pred, target)
    (g,) = torch.autograd.grad(i_e.sum(), pred)
    h = 1e-4
    for k, true in ((0, true_d_x1), (1, true_d_y1)):
        if true is None:
            continue
        assert d_i[k] == 0.0  # what the appendix says
        plus, minus = list(p), list(p)
        plus[k] += h
        minus[k] -= h
        fd = (
            extended_intersection_union(t64([plus]), target)[0]
            - extended_intersection_union(t64([minus]), target)[0]
        ) / (2 * h)
        close(fd, [true], atol=1e-6)
        close(g[0, k], true, atol=1e-12)


def test_convexification_gives_vanishing_gradient_at_the_minimum():
    # eq. 24: dL/dz = -2 (1 - EIoU) dEIoU/dz -> 0 as EIoU -> 1 for power 2 (CT); without CT
    # (power 1, the plain 1 - EIoU) the gradient keeps its size next to the minimum.
    target = t64([[1, 2, 4, 6]])
    direction = t64([[0.3, -0.2, 0.5, 0.4]])
    norms = {}
    for power in (2.0, 1.5, 1.0):
        for delta in (1e-2, 1e-4):
            pred = (target + delta * direction).requires_grad_()
            smooth_extended_iou_loss(pred, target, power=power, sot=False, eps=0.0).sum().backward()
            norms[power, delta] = pred.grad.norm().item()
    # 100x closer: the gradient shrinks ~100x for power 2 (linear in the distance), ~10x for 1.5
    assert norms[2.0, 1e-4] < 2e-2 * norms[2.0, 1e-2]
    assert norms[1.5, 1e-4] < 0.2 * norms[1.5, 1e-2]
    assert norms[1.0, 1e-4] > 0.5 * norms[1.0, 1e-2] > 0.05  # does not vanish


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sot_keeps_values_and_scales_gradients_by_u_e(reduction):
    pred, target = random_pairs(30, seed=12)
    _, u_e = extended_intersection_union(pred, target)
    assert (u_e > 0).all()
    p_sot, p_plain = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    out_sot = smooth_extended_iou_loss(p_sot, target, sot=True, reduction=reduction)
    out_plain = smooth_extended_iou_loss(p_plain, target, sot=False, reduction=reduction)
    assert torch.equal(out_sot, out_plain)  # forward value unchanged, bit for bit
    out_sot.sum().backward()
    out_plain.sum().backward()
    # eq. 28: each box's gradient times its U_e (the loss uses U_e + eps, eps = 1e-7)
    torch.testing.assert_close(p_sot.grad, p_plain.grad * (u_e + 1e-7)[:, None])


def test_sot_makes_the_step_proportional_to_box_size():
    # Fig. 5 of Peng & Yu: scaling both boxes by k scales the SOT gradient by k, while the plain
    # gradient scales by 1/k (it is inversely proportional to the size).
    target = t64([[0, 0, 1, 1]])
    pred = t64([[0, 0, 0.5, 0.5]])
    grads = {}
    for k in (1.0, 4.0):
        for sot in (True, False):
            p = (pred * k).requires_grad_()
            smooth_extended_iou_loss(p, target * k, sot=sot).sum().backward()
            grads[k, sot] = p.grad
    torch.testing.assert_close(grads[4.0, True], 4 * grads[1.0, True])
    torch.testing.assert_close(grads[4.0, False], grads[1.0, False] / 4)


# ================================================================================================
# Degenerate input: finite values and gradients, float32 and float16
# ================================================================================================
ALL_LOSSES = [
    ("iou linear", iou_loss, {}),
    ("iou square", iou_loss, {"mode": "square"}),
    ("iou log", iou_loss, {"mode": "log"}),
    ("giou", giou_loss, {}),
    ("diou", diou_loss, {}),
    ("ciou", ciou_loss, {}),
    ("efficient", efficient_iou_loss, {}),
    ("focal eiou", focal_efficient_iou_loss, {}),
    ("focal eiou g0", focal_efficient_iou_loss, {"gamma": 0.0}),
    ("alpha 3", alpha_iou_loss, {}),
    ("alpha 0.5", alpha_iou_loss, {"alpha": 0.5}),
    ("alpha giou", alpha_iou_loss, {"penalty": "giou"}),
    ("alpha giou 0.5", alpha_iou_loss, {"penalty": "giou", "alpha": 0.5}),
    ("alpha diou 0.5", alpha_iou_loss, {"penalty": "diou", "alpha": 0.5}),
    ("alpha ciou", alpha_iou_loss, {"penalty": "ciou"}),
    ("alpha ciou 0.5", alpha_iou_loss, {"penalty": "ciou", "alpha": 0.5}),
    ("alpha box-cox 0.1", alpha_iou_loss, {"box_cox": True, "alpha": 0.1}),
    ("hiou", harmonic_iou_loss, {}),
    ("hiou -1", harmonic_iou_loss, {"gamma": -1.0}),
    ("smooth eiou", smooth_extended_iou_loss, {}),
    ("smooth eiou no sot", smooth_extended_iou_loss, {"sot": False}),
    ("smooth eiou p1", smooth_extended_iou_loss, {"power": 1.0}),
    ("smooth eiou p1.5", smooth_extended_iou_loss, {"power": 1.5}),
]
LOSS_IDS = [c[0] for c in ALL_LOSSES]


def degenerate_cases(dtype):
    huge = 1e6 if dtype == torch.float32 else 4e4  # float16 tops out at 65504
    return {
        "zero-area pred": ([5, 5, 5, 5], [0, 0, 10, 10]),
        "zero-width pair, identical": ([1, 0, 1, 4], [1, 0, 1, 4]),
        "two identical points": ([3, 3, 3, 3], [3, 3, 3, 3]),
        "zero-area pred far away": ([50, 50, 50, 60], [0, 0, 10, 10]),
        "inverted pred": ([10, 10, 0, 0], [0, 0, 10, 10]),
        "inverted in x only": ([10, 0, 0, 10], [0, 0, 10, 10]),
        "both inverted": ([10, 10, 0, 0], [8, 8, 2, 2]),
        "inverted zero-area target": ([6, 6, 4, 4], [5, 5, 5, 5]),
        "identical": ([0, 0, 10, 10], [0, 0, 10, 10]),
        "touching": ([0, 0, 1, 1], [1, 0, 2, 1]),
        "far apart": ([0, 0, 1, 1], [1e4, 1e4, 1e4 + 1, 1e4 + 1]),
        "huge, far apart": ([huge, huge, huge + 64, huge + 32], [-huge, -huge, -huge + 16, -huge + 128]),
        "huge, overlapping": ([huge, huge, huge + 64, huge + 32], [huge + 8, huge, huge + 72, huge + 40]),
        "huge boxes": ([-huge, -huge, huge, huge / 2], [-huge / 2, 0, huge, huge]),
    }


# fp16 input is computed in float32 and its gradient is cast back to fp16 (max 65504). Two
# gradients are genuinely larger than that (documented in iou_aware.geometry): SOT scales the
# gradient by U_e, so an 80000-px box gets gradients ~1e5; and any IoU ratio of two identical
# zero-width boxes has an eps-capped 1/width gradient. For these the float32 gradient is checked
# to be finite and to exceed the fp16 range, so the fp16 inf is the cast, not the computation.
FP16_RANGE_EXCEEDED = {
    ("smooth eiou", "huge boxes"),
    ("smooth eiou p1.5", "huge boxes"),
    ("smooth eiou no sot", "zero-width pair, identical"),
}


def _loss_and_grads(fn, kwargs, preds, targets, dtype, reduction):
    pred = torch.tensor(preds, dtype=dtype, requires_grad=True)
    target = torch.tensor(targets, dtype=dtype, requires_grad=True)
    assert torch.isfinite(pred).all() and torch.isfinite(target).all()
    out = fn(pred, target, reduction=reduction, **kwargs)
    out.sum().backward()
    return out, pred.grad, target.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_finite_values_and_gradients_for_degenerate_boxes(name, fn, kwargs, dtype):
    cases = degenerate_cases(dtype)
    exceeded = (
        {label for (loss, label) in FP16_RANGE_EXCEEDED if loss == name} if dtype == torch.float16 else set()
    )
    # one case at a time, then all the others in one batch
    batches = [([p], [t], label) for label, (p, t) in cases.items()]
    rest = [label for label in cases if label not in exceeded]
    batches.append(([cases[k][0] for k in rest], [cases[k][1] for k in rest], "all"))
    for preds, targets, label in batches:
        for reduction in ("none", "mean"):
            out, g_pred, g_target = _loss_and_grads(fn, kwargs, preds, targets, dtype, reduction)
            assert out.dtype == torch.float32, label
            assert torch.isfinite(out).all(), (label, reduction, out)
            if label in exceeded:
                # the same (fp16-rounded) values as float32 leaves: finite, but beyond fp16's range
                _, g32_pred, g32_target = _loss_and_grads(
                    fn, kwargs, preds, targets, torch.float32, reduction
                )
                g32 = torch.cat([g32_pred, g32_target])
                assert torch.isfinite(g32).all(), (label, reduction, g32)
                assert g32.abs().max() > torch.finfo(torch.float16).max, (label, reduction, g32)
                continue
            assert torch.isfinite(g_pred).all(), (label, reduction, g_pred)
            assert torch.isfinite(g_target).all(), (label, reduction, g_target)


# Upper bounds of each loss when every IoU term lies in [0, 1] and every penalty ratio in [-1, 1]:
# 1 - IoU <= 1 (and its square, and 1 - IoU^alpha); -log(eps) = 16.12 (log mode, eps 1e-7);
# GIoU / DIoU add one ratio: 2; CIoU adds alpha v <= v < 4 (atan angles of both signs once widths
# are inverted): 6; EIoU adds three ratios: 4, and Focal-EIoU weights it by IoU^gamma <= 1;
# alpha-CIoU: 1 + 1 + (beta v)^alpha <= 2 + 4^alpha; Box-Cox (1 - IoU^alpha) / alpha <= 1 / alpha;
# HIoU (1 + IoU)^gamma (1 - IoU) is largest at IoU = 0 for gamma <= 1: 1; Smooth-EIoU
# (1 - EIoU)^p with the extended IoU in [-1, 1]: 2^p.
INVERTED_BOUNDS = {
    "iou linear": 1, "iou square": 1, "iou log": -math.log(1e-7), "giou": 2, "diou": 2, "ciou": 6,
    "efficient": 4, "focal eiou": 4, "focal eiou g0": 4, "alpha 3": 1, "alpha 0.5": 1,
    "alpha giou": 2, "alpha giou 0.5": 2, "alpha diou 0.5": 2, "alpha ciou": 2 + 4**3,
    "alpha ciou 0.5": 2 + 4**0.5, "alpha box-cox 0.1": 1 / 0.1, "hiou": 1, "hiou -1": 1,
    "smooth eiou": 2**2, "smooth eiou no sot": 2**2, "smooth eiou p1": 2, "smooth eiou p1.5": 2**1.5,
}


@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_penalties_stay_bounded_for_inverted_boxes(name, fn, kwargs):
    # Random boxes with corners in random order (most are inverted in x, y or both): every loss
    # stays within its bound above, because each penalty ratio is kept in [-1, 1] (1/eps-sized
    # ratios would be ~1e7).
    g = torch.Generator().manual_seed(13)
    pred = (torch.rand(256, 4, generator=g) * 20).requires_grad_()
    target = torch.rand(256, 4, generator=g) * 20
    out = fn(pred, target, **kwargs)
    assert torch.isfinite(out).all()
    assert out.abs().max() <= INVERTED_BOUNDS[name] * (1 + 1e-5), out.abs().max()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_identical_boxes_give_the_minimum(name, fn, kwargs):
    # every loss is 0 at IoU = 1 (up to the eps in the denominators)
    box = t64([[2, 3, 7, 11], [0, 0, 1, 1]])
    close(fn(box, box, **kwargs), [0.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_empty_input(name, fn, kwargs):
    pred = torch.zeros(0, 4, requires_grad=True)
    target = torch.zeros(0, 4)
    assert fn(pred, target, **kwargs).shape == (0,)
    for reduction in ("sum", "mean"):
        out = fn(pred, target, reduction=reduction, **kwargs)
        assert out.shape == () and out.item() == 0
        out.backward()
        assert pred.grad.shape == (0, 4)


@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_dtype_policy(name, fn, kwargs):
    assert fn(PRED.half(), TARGET.half(), **kwargs).dtype == torch.float32
    assert fn(PRED.bfloat16(), TARGET.bfloat16(), **kwargs).dtype == torch.float32
    assert fn(PRED.float(), TARGET.float(), **kwargs).dtype == torch.float32
    assert fn(PRED, TARGET, **kwargs).dtype == F64


# ================================================================================================
# Argument checking
# ================================================================================================
@pytest.mark.parametrize("name,fn,kwargs", ALL_LOSSES, ids=LOSS_IDS)
def test_bad_shapes_raise(name, fn, kwargs):
    good = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"pred must have shape \(N, 4\), got \(3, 5\)"):
        fn(torch.zeros(3, 5), good, **kwargs)
    with pytest.raises(ValueError, match=r"target must have shape \(N, 4\), got \(4,\)"):
        fn(good, torch.zeros(4), **kwargs)
    with pytest.raises(ValueError, match="same number of boxes"):
        fn(good, torch.zeros(2, 4), **kwargs)
    with pytest.raises(ValueError, match="reduction"):
        fn(good, good, reduction="avg", **kwargs)


@pytest.mark.parametrize(
    "fn,kwargs,match",
    [
        (iou_loss, {"mode": "cubic"}, r"mode must be one of \('linear', 'square', 'log'\)"),
        (alpha_iou_loss, {"penalty": "eiou"}, r"penalty must be one of \('none', 'giou', 'diou', 'ciou'\)"),
        (alpha_iou_loss, {"alpha": 0.0}, r"alpha must be .*> 0"),
        (alpha_iou_loss, {"alpha": -1.0}, r"alpha must be .*> 0"),
        (alpha_iou_loss, {"alpha": float("nan")}, r"alpha must be"),
        (alpha_iou_loss, {"alpha_penalty": 0.0}, r"alpha_penalty must be .*> 0"),
        (alpha_iou_loss, {"box_cox": True, "penalty": "giou"}, r"box_cox=True .*penalty='none'"),
        (focal_efficient_iou_loss, {"gamma": -0.5}, r"gamma must be .*>= 0"),
        (focal_efficient_iou_loss, {"gamma": "0.5"}, r"gamma must be"),
        (harmonic_iou_loss, {"gamma": 1.2}, r"gamma must be .*<= 1"),
        (smooth_extended_iou_loss, {"power": 0.5}, r"power must be .*>= 1"),
        (smooth_extended_iou_loss, {"sot": "yes"}, r"sot must be True or False"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(fn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fn(PRED, TARGET, **kwargs)


# ================================================================================================
# Registry
# ================================================================================================
OUR_NAMES = {
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
    "efficient_iou": efficient_iou_loss,
    "focal_efficient_iou": focal_efficient_iou_loss,
    "alpha_iou": alpha_iou_loss,
    "harmonic_iou": harmonic_iou_loss,
    "smooth_extended_iou": smooth_extended_iou_loss,
}


def test_registry_lists_our_losses():
    from iou_aware.losses import BOX_LOSSES

    for name, fn in OUR_NAMES.items():
        assert BOX_LOSSES[name] is fn
    assert set(BOX_LOSSES) == set(OUR_NAMES) | {"smooth_l1", "focal_l1", "iou_balanced_smooth_l1"}


def test_build_box_loss_binds_parameters():
    from iou_aware.losses import build_box_loss

    loss = build_box_loss("alpha_iou", alpha=2.0, penalty="diou")
    torch.testing.assert_close(loss(PRED, TARGET), alpha_iou_loss(PRED, TARGET, alpha=2.0, penalty="diou"))
    loss = build_box_loss("smooth_extended_iou", power=1.5, sot=False, reduction="sum")
    torch.testing.assert_close(
        loss(PRED, TARGET), smooth_extended_iou_loss(PRED, TARGET, power=1.5, sot=False).sum()
    )
    # bad values still fail at call time with the loss's own ValueError
    with pytest.raises(ValueError, match="gamma"):
        build_box_loss("harmonic_iou", gamma=2.0)(PRED, TARGET)


def test_build_box_loss_unknown_name_and_parameter():
    from iou_aware.losses import build_box_loss

    with pytest.raises(KeyError) as info:
        build_box_loss("eiou")
    for name in OUR_NAMES:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="gama"):
        build_box_loss("focal_efficient_iou", gama=0.5)


def test_module_does_not_import_detectron2():
    import ast
    import inspect

    from iou_aware.losses import iou_losses

    tree = ast.parse(inspect.getsource(iou_losses))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "detectron2" not in names
