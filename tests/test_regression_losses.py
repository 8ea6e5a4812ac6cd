"""Tests of the element-wise regression losses: smooth-L1, FocalL1 (Zhang et al. eq. 8-9) and the
IoU-balanced smooth-L1 (Wu & Li eq. 3-5).

Expected values are worked out by hand in the comments, never produced by running the code.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from fvcore import nn as fvcore_nn

from iou_aware.losses import focal_l1_loss, iou_balanced_smooth_l1_loss, smooth_l1_loss

E = math.e


def _t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------------------------
# smooth-L1
# --------------------------------------------------------------------------------------------


def test_smooth_l1_hand_values():
    # beta = 0.5: |d| < 0.5 -> 0.5 d^2 / 0.5 = d^2 ; otherwise |d| - 0.25
    #   d = 0    -> 0
    #   d = 0.2  -> 0.04
    #   d = -0.5 -> 0.5 - 0.25 = 0.25   (boundary: the quadratic piece also gives 0.25)
    #   d = 1.5  -> 1.5 - 0.25 = 1.25
    d = _t([0.0, 0.2, -0.5, 1.5])
    out = smooth_l1_loss(d, torch.zeros_like(d), beta=0.5)
    torch.testing.assert_close(out, _t([0.0, 0.04, 0.25, 1.25]))
    # beta = 0 is the L1 loss: |d|
    out = smooth_l1_loss(d, torch.zeros_like(d), beta=0.0)
    torch.testing.assert_close(out, _t([0.0, 0.2, 0.5, 1.5]))
    # default beta = 0.11: d = 0.1 -> 0.5 * 0.01 / 0.11 = 1/22 ; d = 1 -> 1 - 0.055 = 0.945
    out = smooth_l1_loss(_t([0.1, 1.0]), _t([0.0, 0.0]))
    torch.testing.assert_close(out, _t([1.0 / 22.0, 0.945]))
    # reductions of the beta = 0.5 values: sum 1.54, mean 0.385
    assert smooth_l1_loss(d, torch.zeros_like(d), 0.5, "sum").item() == pytest.approx(1.54)
    assert smooth_l1_loss(d, torch.zeros_like(d), 0.5, "mean").item() == pytest.approx(0.385)


@pytest.mark.parametrize("beta", [0.0, 0.11, 0.5, 1.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_smooth_l1_matches_torch_and_fvcore(beta, reduction):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = torch.randn(64, 4, generator=g)
    ours = smooth_l1_loss(x, y, beta=beta, reduction=reduction)
    torch.testing.assert_close(ours, F.smooth_l1_loss(x, y, beta=beta, reduction=reduction))
    # fvcore (a Detectron2 dependency) switches to L1 below beta 1e-5, as we do at 0
    torch.testing.assert_close(ours, fvcore_nn.smooth_l1_loss(x, y, beta=beta, reduction=reduction))


def test_smooth_l1_gradcheck():
    # |d| in {0.05, 0.3, 2.0}: away from the kinks 0 and beta = 0.11
    x = _t([[0.05, -0.3, 2.0, -1.2]], grad=True)
    y = _t([[0.0, 0.0, 0.0, 0.0]])
    assert torch.autograd.gradcheck(lambda a: smooth_l1_loss(a, y, beta=0.11), (x,))
    assert torch.autograd.gradcheck(lambda a: smooth_l1_loss(a, y, beta=0.0, reduction="sum"), (x,))


# --------------------------------------------------------------------------------------------
# FocalL1 (Zhang et al. eq. 8-9)
# --------------------------------------------------------------------------------------------


def test_focal_l1_hand_values():
    # beta = 1/e -> alpha = e * beta = 1, ln(beta) = -1.
    #   x <= 1: L = -x^2 (2 ln(x/e) - 1) / 4 = -x^2 (2 ln x - 3) / 4 = x^2 (3 - 2 ln x) / 4
    #     x = 0   -> 0
    #     x = 0.5 -> 0.25 (3 + 2 ln 2) / 4 = (3 + 2 ln 2) / 16
    #     x = 1   -> 3/4
    #   x > 1:  L = x + C, C = (2 ln beta + 1) / 4 = -1/4  ->  x = 2 -> 1.75
    x = _t([0.0, -0.5, 1.0, 2.0])
    out = focal_l1_loss(x, torch.zeros_like(x), beta=1 / E)
    torch.testing.assert_close(out, _t([0.0, (3 + 2 * math.log(2)) / 16, 0.75, 1.75]))

    # beta = 1 -> alpha = e, ln(beta) = 0.
    #   x <= 1: L = -e x^2 (2 ln x - 1) / 4
    #     x = 1/e -> -e e^-2 (-2 - 1) / 4 = 3 / (4e)
    #     x = 1   -> e / 4
    #   x > 1: slope -alpha ln(beta) = 0, C = e/4  ->  x = 3 -> e/4
    x = _t([1 / E, 1.0, 3.0])
    out = focal_l1_loss(x, torch.zeros_like(x), beta=1.0)
    torch.testing.assert_close(out, _t([3 / (4 * E), E / 4, E / 4]))

    # default beta = 0.8, alpha = 0.8 e, on x = |input - target|:
    #   x = 1 (input 3, target 2):  L = -alpha (2 ln 0.8 - 1) / 4
    #   x = 2 (input -1, target 1): L = -alpha ln 0.8 * 2 + alpha (2 ln 0.8 + 1) / 4
    a, lb = 0.8 * E, math.log(0.8)
    out = focal_l1_loss(_t([3.0, -1.0]), _t([2.0, 1.0]))
    torch.testing.assert_close(out, _t([-a * (2 * lb - 1) / 4, -a * lb * 2 + a * (2 * lb + 1) / 4]))


@pytest.mark.parametrize("beta", [1 / E, 0.5, 0.8, 1.0])
def test_focal_l1_continuity_and_max_slope(beta):
    alpha = E * beta
    eps = 1e-7
    x = _t([1 - eps, 1 + eps], grad=True)
    loss = focal_l1_loss(x, torch.zeros_like(x), beta=beta)
    (g,) = torch.autograd.grad(loss.sum(), x)
    # value continuous at x = 1: both sides equal -alpha (2 ln beta - 1) / 4 (up to slope * eps)
    expected = -alpha * (2 * math.log(beta) - 1) / 4
    assert loss[0].item() == pytest.approx(expected, abs=1e-6)
    assert loss[1].item() == pytest.approx(expected, abs=1e-6)
    # slope continuous at x = 1: both sides -alpha ln beta (eq. 8)
    assert g[0].item() == pytest.approx(-alpha * math.log(beta), abs=1e-5)
    assert g[1].item() == pytest.approx(-alpha * math.log(beta), abs=1e-5)

    # maximum slope 1, reached at x* = 1 / (e beta) (property 4, alpha = e beta)
    x_star = 1 / (E * beta)
    xs = torch.linspace(1e-4, 5.0, 2001, dtype=torch.float64)
    xs = torch.cat([xs, _t([x_star])]).requires_grad_(True)
    (gs,) = torch.autograd.grad(focal_l1_loss(xs, torch.zeros_like(xs), beta=beta).sum(), xs)
    assert gs[-1].item() == pytest.approx(1.0, abs=1e-9)
    assert gs.max().item() <= 1.0 + 1e-9
    assert (gs >= 0).all()


def test_focal_l1_gradient_matches_eq8():
    # eq. 8: g(x) = -alpha x ln(beta x) for x <= 1, -alpha ln beta for x > 1; sign follows d
    beta, alpha = 0.8, 0.8 * E
    d = _t([0.3, -0.6, 1.7, -4.0], grad=True)
    (g,) = torch.autograd.grad(focal_l1_loss(d, torch.zeros_like(d), beta=beta).sum(), d)
    x = d.detach().abs()
    mag = torch.where(x <= 1, -alpha * x * torch.log(beta * x), -alpha * math.log(beta) * torch.ones_like(x))
    torch.testing.assert_close(g, torch.sign(d.detach()) * mag)


def test_focal_l1_gradcheck():
    x = _t([[0.3, -0.6, 1.7, -4.0]], grad=True)
    y = _t([[0.1, 0.0, 0.2, 0.0]])
    for beta in (1 / E, 0.8, 1.0):
        assert torch.autograd.gradcheck(lambda a: focal_l1_loss(a, y, beta=beta), (x,))


@pytest.mark.parametrize("beta", [0.3, 1.2, -0.5, float("nan")])
def test_focal_l1_rejects_beta_out_of_range(beta):
    with pytest.raises(ValueError, match="beta"):
        focal_l1_loss(torch.zeros(2), torch.zeros(2), beta=beta)


# --------------------------------------------------------------------------------------------
# IoU-balanced smooth-L1 (Wu & Li eq. 3-5)
# --------------------------------------------------------------------------------------------

# Two boxes, beta = 0.5 (|d| < 0.5: d^2 ; else |d| - 0.25):
#   box 1: d = [1.25, 0, 0, 0]     -> per-box smooth-L1 = 1.0,   iou 0.25
#   box 2: d = [0.5, -0.5, 0, 0]   -> 0.25 + 0.25 = 0.5,         iou 1.0
_IB_INPUT = [[1.25, 0.0, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0]]
_IB_IOUS = [0.25, 1.0]


def test_iou_balanced_smooth_l1_hand_values_eq4():
    x, y, ious = _t(_IB_INPUT), torch.zeros(2, 4, dtype=torch.float64), _t(_IB_IOUS)
    # eq. 4, lambda = 1, w_loc = 2: w = [0.5, 2] -> [0.5 * 1.0, 2 * 0.5] = [0.5, 1.0]
    out = iou_balanced_smooth_l1_loss(x, y, ious, lam=1.0, beta=0.5, loc_weight=2.0)
    torch.testing.assert_close(out, _t([0.5, 1.0]))
    # lambda = 0.5, w_loc = 1: w = [sqrt(0.25), 1] = [0.5, 1] -> [0.5, 0.5]; sum 1.0, mean 0.5
    out = iou_balanced_smooth_l1_loss(x, y, ious, lam=0.5, beta=0.5)
    torch.testing.assert_close(out, _t([0.5, 0.5]))
    assert iou_balanced_smooth_l1_loss(x, y, ious, 0.5, 0.5, reduction="sum").item() == pytest.approx(1.0)
    assert iou_balanced_smooth_l1_loss(x, y, ious, 0.5, 0.5, reduction="mean").item() == pytest.approx(0.5)
    # lambda = 0, w_loc = 1 is the plain smooth-L1 summed over the coordinates: [1.0, 0.5]
    out = iou_balanced_smooth_l1_loss(x, y, ious, lam=0.0, beta=0.5)
    torch.testing.assert_close(out, _t([1.0, 0.5]))


def test_iou_balanced_smooth_l1_hand_values_eq5():
    x, y, ious = _t(_IB_INPUT), torch.zeros(2, 4, dtype=torch.float64), _t(_IB_IOUS)
    # eq. 5, lambda = 1: iou^lambda = [0.25, 1]; numerator 1.0 + 0.5 = 1.5;
    # denominator 0.25 * 1.0 + 1 * 0.5 = 0.75; factor 2 -> w = [0.5, 2] -> [0.5, 1.0]
    out = iou_balanced_smooth_l1_loss(x, y, ious, lam=1.0, beta=0.5, normalize=True)
    torch.testing.assert_close(out, _t([0.5, 1.0]))
    # the positive loss sum is kept: 0.5 + 1.0 == 1.0 + 0.5
    assert out.sum().item() == pytest.approx(1.5)
    # loc_weight scales the kept total
    out3 = iou_balanced_smooth_l1_loss(x, y, ious, lam=1.0, beta=0.5, loc_weight=3.0, normalize=True)
    torch.testing.assert_close(out3, _t([1.5, 3.0]))


def test_iou_balanced_smooth_l1_normalized_keeps_sum_random():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(50, 4, generator=g, dtype=torch.float64)
    ious = torch.rand(50, generator=g, dtype=torch.float64)
    for lam in (0.5, 1.5, 3.0):
        weighted = iou_balanced_smooth_l1_loss(x, y, ious, lam=lam, normalize=True, reduction="sum")
        plain = smooth_l1_loss(x, y, beta=0.11, reduction="sum")
        torch.testing.assert_close(weighted, plain)


@pytest.mark.parametrize("normalize", [False, True])
def test_iou_balanced_smooth_l1_weights_are_detached(normalize):
    x = _t(_IB_INPUT, grad=True)
    ious = _t(_IB_IOUS, grad=True)
    loss = iou_balanced_smooth_l1_loss(x, torch.zeros(2, 4, dtype=torch.float64), ious, lam=1.0,
                                       beta=0.5, normalize=normalize, reduction="sum")
    gx, gi = torch.autograd.grad(loss, (x, ious), allow_unused=True)
    assert gi is None or torch.count_nonzero(gi) == 0
    # eq. 6: dL/dl = w * d / delta (|d| < delta) or w * sign(d) with w held constant.
    # eq. 4 (w_loc = 1): w = [0.25, 1]; box 1 d = 1.25 > 0.5 -> 0.25 ;
    #   box 2 d = 0.5 (not < 0.5, linear) -> 1, d = -0.5 -> -1 ; zero deltas -> 0
    # eq. 5: w = [0.5, 2] -> [0.5, 0, 0, 0], [2, -2, 0, 0]
    w1, w2 = (0.5, 2.0) if normalize else (0.25, 1.0)
    torch.testing.assert_close(gx, _t([[w1, 0, 0, 0], [w2, -w2, 0, 0]]))


def test_iou_balanced_smooth_l1_gradcheck():
    x = _t([[0.05, -0.3, 2.0, -1.2], [0.5, 0.02, -0.07, 0.9]], grad=True)
    y = torch.zeros(2, 4, dtype=torch.float64)
    ious = _t([0.4, 0.8])
    assert torch.autograd.gradcheck(lambda a: iou_balanced_smooth_l1_loss(a, y, ious), (x,))
    # eq. 5: the normalization factor depends on the input but is detached on purpose, so finite
    # differences of the whole function differ from autograd. Check instead that the gradient is
    # exactly that of the smooth-L1 scaled by the (frozen) weights, for the sum reduction.
    loss = iou_balanced_smooth_l1_loss(x, y, ious, normalize=True)
    (g,) = torch.autograd.grad(loss.sum(), x)
    with torch.no_grad():
        per_box = smooth_l1_loss(x, y).sum(dim=1)
        w = ious.pow(1.5) * per_box.sum() / (ious.pow(1.5) * per_box).sum()  # eq. 5, lambda 1.5
    xf = x.detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((w[:, None] * smooth_l1_loss(xf, y)).sum(), xf)
    torch.testing.assert_close(g, g_ref)
    assert torch.autograd.gradcheck(lambda a: (w[:, None] * smooth_l1_loss(a, y)).sum(), (x,))


def test_iou_balanced_degenerate_ious():
    # all IoUs 0: eq. 4 gives zero weights; eq. 5 is 0/0 and falls back to weights 1 (kept sum)
    x = _t([[1.25, 0.0, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0]])
    y = torch.zeros(2, 4, dtype=torch.float64)
    z = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(iou_balanced_smooth_l1_loss(x, y, z, lam=1.0, beta=0.5), _t([0.0, 0.0]))
    out = iou_balanced_smooth_l1_loss(x, y, z, lam=1.0, beta=0.5, normalize=True)
    torch.testing.assert_close(out, _t([1.0, 0.5]))
    # tiny equal IoUs (1e-30 ** 1.5 underflows in float32): eq. 5 weights are exactly 1
    tiny = torch.full((2,), 1e-30)
    out = iou_balanced_smooth_l1_loss(x.float(), y.float(), tiny, lam=1.5, beta=0.5, normalize=True)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.5]))


# --------------------------------------------------------------------------------------------
# shared: extremes, dtypes, empty input, argument checks
# --------------------------------------------------------------------------------------------

_EXTREME = [[0.0, 0.0, 0.0, 0.0], [1e30, -1e30, 1e35, -1e35], [1e-30, -1e-45, 1.0, -1.0], [0.11, 1.0, 1e4, -1e4]]


def _elementwise_losses():
    return [
        ("smooth_l1", lambda a, b: smooth_l1_loss(a, b)),
        ("smooth_l1_beta0", lambda a, b: smooth_l1_loss(a, b, beta=0.0)),
        ("focal_l1", lambda a, b: focal_l1_loss(a, b)),
        ("focal_l1_1/e", lambda a, b: focal_l1_loss(a, b, beta=1 / E)),
        ("iou_balanced", lambda a, b: iou_balanced_smooth_l1_loss(a, b, torch.tensor([0.0, 1.0, 0.5, 1e-30]))),
        ("iou_balanced_norm", lambda a, b: iou_balanced_smooth_l1_loss(
            a, b, torch.tensor([0.0, 1.0, 0.5, 1e-30]), normalize=True)),
    ]


@pytest.mark.parametrize("name,fn", _elementwise_losses())
def test_extreme_inputs_finite(name, fn):
    x = torch.tensor(_EXTREME, dtype=torch.float32, requires_grad=True)
    loss = fn(x, torch.zeros(4, 4))
    assert torch.isfinite(loss).all(), name
    (g,) = torch.autograd.grad(loss.sum() if loss.numel() > 1 else loss, x)
    assert torch.isfinite(g).all(), name


@pytest.mark.parametrize("name,fn", _elementwise_losses())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_input_upcast(name, fn, dtype):
    x = torch.tensor([[0.05, -0.3, 2.0, -1.2], [60000.0, 0.0, 1e-3, 0.5],
                      [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).to(dtype).requires_grad_(True)
    loss = fn(x, torch.zeros(4, 4, dtype=dtype))
    assert loss.dtype == torch.float32, name
    assert torch.isfinite(loss).all()
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(g).all() and g.dtype == dtype
    # same values as computing in float32 from the start
    ref = fn(x.detach().float(), torch.zeros(4, 4))
    torch.testing.assert_close(loss, ref)


def test_float64_keeps_dtype():
    x = torch.zeros(3, 4, dtype=torch.float64)
    assert smooth_l1_loss(x, x).dtype == torch.float64
    assert focal_l1_loss(x, x).dtype == torch.float64
    assert iou_balanced_smooth_l1_loss(x, x, torch.ones(3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("normalize", [False, True])
def test_empty_input(normalize):
    x = torch.zeros(0, 4, requires_grad=True)
    y = torch.zeros(0, 4)
    ious = torch.zeros(0)
    for fn in (
        lambda r: smooth_l1_loss(x, y, reduction=r),
        lambda r: focal_l1_loss(x, y, reduction=r),
        lambda r: iou_balanced_smooth_l1_loss(x, y, ious, normalize=normalize, reduction=r),
    ):
        assert fn("none").numel() == 0
        for r in ("sum", "mean"):
            out = fn(r)
            assert out.shape == () and out.item() == 0.0
            out.backward()  # differentiable zero
    assert iou_balanced_smooth_l1_loss(x, y, ious, normalize=normalize).shape == (0,)


def test_bad_arguments_raise_naming_the_argument():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="beta"):
        smooth_l1_loss(x, x, beta=-0.1)
    with pytest.raises(ValueError, match="target"):
        smooth_l1_loss(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target"):
        focal_l1_loss(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="lam"):
        iou_balanced_smooth_l1_loss(x, x, torch.ones(2), lam=-1.0)
    with pytest.raises(ValueError, match="beta"):
        iou_balanced_smooth_l1_loss(x, x, torch.ones(2), beta=-1.0)
    with pytest.raises(ValueError, match="loc_weight"):
        iou_balanced_smooth_l1_loss(x, x, torch.ones(2), loc_weight=-1.0)
    with pytest.raises(ValueError, match="ious"):
        iou_balanced_smooth_l1_loss(x, x, torch.ones(3))
    with pytest.raises(ValueError, match="target"):
        iou_balanced_smooth_l1_loss(x, torch.zeros(3, 4), torch.ones(2))
