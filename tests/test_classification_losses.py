"""Tests of the classification-side losses: IoU-balanced classification weights (Wu & Li eq. 2),
Harmonic loss (Wang & Zhang eq. 2-7), Task-Contrastive loss (Wang & Zhang eq. 8), the IoU-head
KL loss (Peng & Yu eq. 31-32), Quality Focal Loss (Li et al.) and Varifocal Loss (Zhang et al. eq. 2).

Expected values are worked out by hand in the comments, never produced by running the code.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from iou_aware.losses import (
    harmonic_loss,
    iou_balanced_classification_weights,
    iou_kl_loss,
    task_contrastive_loss,
)


def _t(values, dtype=torch.float64, grad=False):
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


# --------------------------------------------------------------------------------------------
# IoU-balanced classification weights (Wu & Li eq. 2)
# --------------------------------------------------------------------------------------------


def test_iou_balanced_weights_hand_values():
    # ious [0.25, 1, 0], CE [2, 1, 3], eta = 0.5: iou^eta = [0.5, 1, 0]
    # numerator sum CE = 6 ; denominator 0.5*2 + 1*1 + 0*3 = 2 ; factor 3
    # w = [1.5, 3, 0] ; sum w*CE = 3 + 3 + 0 = 6 (kept)
    w = iou_balanced_classification_weights(_t([0.25, 1.0, 0.0]), _t([2.0, 1.0, 3.0]), eta=0.5)
    torch.testing.assert_close(w, _t([1.5, 3.0, 0.0]))
    # eta = 1: iou = [0.5, 0.5] -> equal IoUs give w = 1 whatever the losses
    w = iou_balanced_classification_weights(_t([0.5, 0.5]), _t([0.3, 7.0]), eta=1.0)
    torch.testing.assert_close(w, _t([1.0, 1.0]))
    # eta = 2, ious [0.5, 1], CE [4, 1]: iou^2 = [0.25, 1]; num 5, den 1 + 1 = 2; factor 2.5
    # w = [0.625, 2.5]; sum w*CE = 2.5 + 2.5 = 5
    w = iou_balanced_classification_weights(_t([0.5, 1.0]), _t([4.0, 1.0]), eta=2.0)
    torch.testing.assert_close(w, _t([0.625, 2.5]))
    # eta = 0: all ones
    w = iou_balanced_classification_weights(_t([0.1, 0.9, 0.0]), _t([1.0, 2.0, 3.0]), eta=0.0)
    torch.testing.assert_close(w, _t([1.0, 1.0, 1.0]))


def test_iou_balanced_weights_keep_positive_sum_and_detach():
    g = torch.Generator().manual_seed(0)
    ious = torch.rand(100, generator=g, dtype=torch.float64).requires_grad_(True)
    losses = (torch.rand(100, generator=g, dtype=torch.float64) * 5).requires_grad_(True)
    for eta in (0.5, 1.5, 4.0):
        w = iou_balanced_classification_weights(ious, losses, eta=eta)
        assert not w.requires_grad  # detached
        torch.testing.assert_close((w * losses).sum(), losses.sum())  # eq. 2 keeps the sum
        # higher IoU -> higher weight (monotone in iou)
        order = torch.argsort(ious.detach())
        assert (w[order].diff() >= 0).all()
    # only the loss factor carries gradient in eq. 1: d(sum w*CE)/dCE = w, nothing to ious
    w = iou_balanced_classification_weights(ious, losses, eta=1.5)
    gi, gl = torch.autograd.grad((w * losses).sum(), (ious, losses), allow_unused=True)
    assert gi is None
    torch.testing.assert_close(gl, w)


def test_iou_balanced_weights_degenerate_and_extreme():
    # all IoUs 0: eq. 2 is 0/0 -> weights 1 (keeps the sum, limit of equal IoUs -> 0)
    w = iou_balanced_classification_weights(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(w, torch.ones(3))
    # tiny IoUs whose power underflows float32 (1e-30 ** 1.5 = 1e-45): ratios are kept
    # ious [1e-30, 2e-30], eta = 1 -> iou ratio [0.5, 1]; CE [1, 1]: num 2, den 1.5 -> [2/3, 4/3]
    w = iou_balanced_classification_weights(torch.tensor([1e-30, 2e-30]), torch.ones(2), eta=1.0)
    torch.testing.assert_close(w, torch.tensor([2 / 3, 4 / 3]))
    # huge losses, fp16 input: finite, computed in float32
    w = iou_balanced_classification_weights(
        torch.tensor([0.0, 0.5, 1.0], dtype=torch.float16), torch.tensor([6e4, 0.0, 1e-3], dtype=torch.float16)
    )
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    # eq. 2 by hand: IoU^1.5 = [0, 0.353553, 1]; sum CE = 6e4 + 1e-3 (fp16 1e-3 = 0.00100040);
    # sum IoU^1.5 CE = 0.00100040 -> w = IoU^1.5 * 60000.001 / 0.00100040
    ce_small = float(torch.tensor(1e-3, dtype=torch.float16))
    expected = torch.tensor([0.0, 0.5**1.5, 1.0]) * (6e4 + ce_small) / ce_small
    torch.testing.assert_close(w, expected, rtol=1e-3, atol=0)
    # empty
    assert iou_balanced_classification_weights(torch.zeros(0), torch.zeros(0)).shape == (0,)


def test_iou_balanced_weights_bad_arguments():
    with pytest.raises(ValueError, match="eta"):
        iou_balanced_classification_weights(torch.ones(2), torch.ones(2), eta=-1.0)
    with pytest.raises(ValueError, match="losses"):
        iou_balanced_classification_weights(torch.ones(2), torch.ones(3))
    with pytest.raises(ValueError, match="ious"):
        iou_balanced_classification_weights(torch.ones(2, 2), torch.ones(2, 2))


# --------------------------------------------------------------------------------------------
# Harmonic loss (Wang & Zhang eq. 2-7)
# --------------------------------------------------------------------------------------------


def test_harmonic_loss_hand_values():
    # L = (1 + e^-loc) cls + (1 + e^-cls) loc
    #   cls = 0,    loc = 0    -> 0
    #   cls = ln 2, loc = ln 4 -> (1 + 1/4) ln 2 + (1 + 1/2) 2 ln 2 = 1.25 ln 2 + 3 ln 2 = 4.25 ln 2
    #   cls = 1,    loc = 0    -> 2 * 1 + (1 + 1/e) * 0 = 2
    #   cls = ln 3, loc = ln 3 -> 2 * (1 + 1/3) ln 3 = (8/3) ln 3
    cls = _t([0.0, math.log(2), 1.0, math.log(3)])
    loc = _t([0.0, math.log(4), 0.0, math.log(3)])
    expected = _t([0.0, 4.25 * math.log(2), 2.0, 8 / 3 * math.log(3)])
    torch.testing.assert_close(harmonic_loss(cls, loc), expected)
    # detaching the factors does not change the value
    torch.testing.assert_close(harmonic_loss(cls, loc, detach_factors=True), expected)
    assert harmonic_loss(cls, loc, reduction="sum").item() == pytest.approx(expected.sum().item())
    assert harmonic_loss(cls, loc, reduction="mean").item() == pytest.approx(expected.mean().item())


def test_harmonic_gradient_wrt_p_is_eq7():
    # With cls = CE = -log p (eq. 5, so beta_c = p), eq. 7 of Wang & Zhang:
    #     dL/dp = L_loc - (1 + e^{-L_loc}) / p
    p = _t([0.05, 0.3, 0.7, 0.99], grad=True)
    loc = _t([2.0, 0.1, 0.5, 0.0])
    loss = harmonic_loss(-torch.log(p), loc, reduction="sum")
    (g,) = torch.autograd.grad(loss, p)
    eq7 = loc - (1 + torch.exp(-loc)) / p.detach()
    torch.testing.assert_close(g, eq7)
    # hand check of one entry: p = 0.3, loc = 0.1 -> 0.1 - (1 + e^-0.1) / 0.3
    assert g[1].item() == pytest.approx(0.1 - (1 + math.exp(-0.1)) / 0.3)


def test_harmonic_gradient_wrt_loc_sign_warning():
    # d/d(loc) = 1 + e^{-cls} - cls * e^{-loc}
    # softmax CE over 81 classes at initialization: cls = ln 81, loc = 0 (small box loss):
    #   1 + 1/81 - ln 81 = 1.0123... - 4.3944... < 0 : the box is pushed AWAY from its target
    cls = _t([math.log(81), math.log(81), 0.1])
    loc = _t([0.0, 0.05, 3.0], grad=True)
    (g,) = torch.autograd.grad(harmonic_loss(cls, loc, reduction="sum"), loc)
    expected = 1 + torch.exp(-cls) - cls * torch.exp(-loc.detach())
    torch.testing.assert_close(g, expected)
    assert g[0].item() == pytest.approx(1 + 1 / 81 - math.log(81))
    assert g[0] < 0 and g[1] < 0
    assert g[2] > 0  # small cls, large loc: ordinary sign
    # detach_factors=True: the gradient is the plain weight 1 + e^{-cls} > 0
    loc2 = loc.detach().clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(harmonic_loss(cls, loc2, detach_factors=True, reduction="sum"), loc2)
    torch.testing.assert_close(g2, 1 + torch.exp(-cls))
    assert (g2 > 0).all()


def test_harmonic_gradcheck():
    cls = _t([0.3, 2.0, 4.4], grad=True)
    loc = _t([0.5, 0.01, 1.2], grad=True)
    assert torch.autograd.gradcheck(lambda c, l: harmonic_loss(c, l), (cls, loc))
    # detach_factors=True: finite differences would also see the factors move, so check the
    # analytic gradient directly: d/dcls = 1 + e^{-loc}, d/dloc = 1 + e^{-cls}
    gc, gl = torch.autograd.grad(harmonic_loss(cls, loc, detach_factors=True, reduction="sum"), (cls, loc))
    torch.testing.assert_close(gc, 1 + torch.exp(-loc.detach()))
    torch.testing.assert_close(gl, 1 + torch.exp(-cls.detach()))


# --------------------------------------------------------------------------------------------
# Task-Contrastive loss (Wang & Zhang eq. 8)
# --------------------------------------------------------------------------------------------

# margin 0.2; weight 1 / (1 + e^H), H = entropy of the normalized row q = p / sum(p)
#   row 1 softmax one-hot [1,0,0,0]: H = 0 -> w = 1/2 ; |0.9 - 0.5| - 0.2 = 0.2  -> 0.1
#   row 2 [0.6,0.4,0,0]: |0.6 - 0.5| - 0.2 < 0                                   -> 0
#   row 3 uniform [0.25]*4: H = ln 4 -> w = 1/5 ; |0.25 - 0.95| - 0.2 = 0.5       -> 0.1
#   row 4 sigmoid [0.8,0.8,0,0] -> q = [0.5,0.5,0,0], H = ln 2 -> w = 1/3 ;
#         |0.8 - 0.1| - 0.2 = 0.5                                                 -> 1/6
_TC_SCORES = [0.9, 0.6, 0.25, 0.8]
_TC_IOUS = [0.5, 0.5, 0.95, 0.1]
_TC_PROBS = [[1.0, 0, 0, 0], [0.6, 0.4, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.8, 0.8, 0, 0]]


def test_task_contrastive_hand_values():
    out = task_contrastive_loss(_t(_TC_SCORES), _t(_TC_IOUS), _t(_TC_PROBS))
    torch.testing.assert_close(out, _t([0.1, 0.0, 0.1, 1 / 6]))
    # margin 0: row 2 -> w = 1/(1 + e^H), H = -(0.6 ln 0.6 + 0.4 ln 0.4); gap 0.1
    h2 = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    out = task_contrastive_loss(_t(_TC_SCORES), _t(_TC_IOUS), _t(_TC_PROBS), margin=0.0)
    torch.testing.assert_close(out, _t([0.2, 0.1 / (1 + math.exp(h2)), 0.14, 0.7 / 3]))
    assert task_contrastive_loss(_t(_TC_SCORES), _t(_TC_IOUS), _t(_TC_PROBS), reduction="sum").item() == (
        pytest.approx(0.2 + 1 / 6)
    )


def test_task_contrastive_sigmoid_rows_are_normalized():
    # independent sigmoid probabilities: the entropy uses p / sum(p), so scaling a row changes
    # nothing, and a row that already sums to 1 (softmax) is used as is
    scores, ious = _t(_TC_SCORES), _t(_TC_IOUS)
    probs = _t(_TC_PROBS)
    base = task_contrastive_loss(scores, ious, probs)
    torch.testing.assert_close(task_contrastive_loss(scores, ious, probs * 0.3), base)
    # softmax over logits: weight = 1 / (1 + exp(entropy of the softmax))
    logits = _t([[2.0, -1.0, 0.5, 0.0]] * 4)
    sm = logits.softmax(dim=1)
    h = -(sm * sm.log()).sum(dim=1)
    gap = ((scores - ious).abs() - 0.2).clamp(min=0)
    torch.testing.assert_close(task_contrastive_loss(scores, ious, sm), gap / (1 + torch.exp(h)))


def test_task_contrastive_gradient_and_detach():
    scores = _t(_TC_SCORES, grad=True)
    ious = _t(_TC_IOUS, grad=True)
    probs = _t(_TC_PROBS, grad=True)
    loss = task_contrastive_loss(scores, ious, probs, reduction="sum")
    gs, gi, gp = torch.autograd.grad(loss, (scores, ious, probs), allow_unused=True)
    # d/dp = w * sign(p - iou) outside the margin, 0 inside: [1/2, 0, -1/5, 1/3]
    torch.testing.assert_close(gs, _t([0.5, 0.0, -0.2, 1 / 3]))
    assert gi is None and gp is None  # IoU target and entropy weight are detached


def test_task_contrastive_gradcheck():
    # away from the kinks |p - iou| = margin and p = iou
    scores = _t([0.9, 0.1, 0.55], grad=True)
    ious = _t([0.3, 0.8, 0.5])
    probs = _t([[0.7, 0.2, 0.1], [0.3, 0.3, 0.3], [0.9, 0.05, 0.05]])
    assert torch.autograd.gradcheck(lambda s: task_contrastive_loss(s, ious, probs, margin=0.02), (scores,))


def test_task_contrastive_extremes_and_bad_arguments():
    scores = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float16, requires_grad=True)
    ious = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float16)
    probs = torch.tensor([[0.0, 0.0, 0.0], [1e-3, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float16)
    out = task_contrastive_loss(scores, ious, probs)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # all-zero row: H = 0 (0 log 0 = 0) -> w = 1/2, gap 1 - 0.2 = 0.8 -> 0.4 ; tiny-mass row
    # [1e-3, 0, 0] (representable in fp16, unlike 1e-8): normalized to one-hot -> H = 0 -> 0.4 ;
    # row 3: gap 0 -> 0
    torch.testing.assert_close(out, torch.tensor([0.4, 0.4, 0.0]), atol=1e-6, rtol=0)
    (g,) = torch.autograd.grad(out.sum(), scores)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="margin"):
        task_contrastive_loss(scores, ious, probs, margin=-0.1)
    with pytest.raises(ValueError, match="ious"):
        task_contrastive_loss(torch.ones(3), torch.ones(2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="probs"):
        task_contrastive_loss(torch.ones(3), torch.ones(3), torch.ones(2, 2))


# --------------------------------------------------------------------------------------------
# IoU-head KL loss (Peng & Yu eq. 31-32)
# --------------------------------------------------------------------------------------------


def test_iou_kl_hand_values():
    # q_p = sigmoid(x); KL = q_g ln(q_g/q_p) + (1-q_g) ln((1-q_g)/(1-q_p))
    #   x = 0    (q_p = 1/2), q_g = 1/2 -> 0
    #   x = 0,               q_g = 1   -> ln(1 / (1/2)) = ln 2
    #   x = 0,               q_g = 0   -> ln 2
    #   x = ln 3 (q_p = 3/4), q_g = 1/2 -> 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3)
    #   x = ln 3,            q_g = 1   -> ln(4/3)
    x = _t([0.0, 0.0, 0.0, math.log(3), math.log(3)])
    q = _t([0.5, 1.0, 0.0, 0.5, 1.0])
    expected = _t([0.0, math.log(2), math.log(2), 0.5 * math.log(4 / 3), math.log(4 / 3)])
    torch.testing.assert_close(iou_kl_loss(x, q), expected)
    assert iou_kl_loss(x, q, reduction="sum").item() == pytest.approx(expected.sum().item())
    assert iou_kl_loss(x, q, reduction="mean").item() == pytest.approx(expected.mean().item())


def test_iou_kl_zero_iff_match_and_gradient():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64) * 4
    # prediction == target: exactly zero (float rounding only)
    zero = iou_kl_loss(x, torch.sigmoid(x))
    assert (zero >= 0).all() and zero.abs().max() < 1e-12
    zero32 = iou_kl_loss(x.float(), torch.sigmoid(x.float()))
    assert (zero32 >= 0).all() and zero32.max() < 1e-6
    # positive otherwise
    q = torch.rand(200, generator=g, dtype=torch.float64)
    far = (torch.sigmoid(x) - q).abs() > 1e-3
    kl = iou_kl_loss(x, q)
    assert (kl[far] > 0).all()
    # gradient: dKL/dx = sigmoid(x) - q_g (eq. 32 differentiated through eq. 31); nothing to q_g
    xg = x.clone().requires_grad_(True)
    qg = q.clone().requires_grad_(True)
    gx, gq = torch.autograd.grad(iou_kl_loss(xg, qg, reduction="sum"), (xg, qg), allow_unused=True)
    torch.testing.assert_close(gx, torch.sigmoid(x) - q)
    assert gq is None
    # hand values of the gradient: x = 0, q = 1 -> -1/2 ; x = ln 3, q = 1/2 -> 1/4
    xh = _t([0.0, math.log(3)], grad=True)
    (gh,) = torch.autograd.grad(iou_kl_loss(xh, _t([1.0, 0.5]), reduction="sum"), xh)
    torch.testing.assert_close(gh, _t([-0.5, 0.25]))
    # equals BCE minus the target entropy (the stable form of eq. 32)
    ent = -(q * q.log() + (1 - q) * (1 - q).log())
    torch.testing.assert_close(kl, F.binary_cross_entropy_with_logits(x, q, reduction="none") - ent)


def test_iou_kl_gradcheck():
    x = _t([-3.0, -0.2, 0.0, 1.5, 6.0], grad=True)
    q = _t([0.1, 0.5, 1.0, 0.0, 0.7])
    assert torch.autograd.gradcheck(lambda a: iou_kl_loss(a, q), (x,))


def test_iou_kl_extremes():
    x = torch.tensor([1e4, -1e4, 3e38, -3e38, 0.0, 88.0], requires_grad=True)
    q = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, -0.3])  # -0.3 (extended IoU) is clamped to 0
    out = iou_kl_loss(x, q)
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert out[0].item() == 0.0 and out[1].item() == 0.0 and out[4].item() == 0.0
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all()
    h = torch.tensor([30.0, -30.0, 0.0], dtype=torch.float16, requires_grad=True)
    out = iou_kl_loss(h, torch.tensor([0.0, 1.0, 0.5], dtype=torch.float16))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # x = 30, q = 0 -> KL = softplus(30) ~ 30
    assert out[0].item() == pytest.approx(30.0, abs=1e-4)
    (g,) = torch.autograd.grad(out.sum(), h)
    assert torch.isfinite(g).all() and g.dtype == torch.float16
    with pytest.raises(ValueError, match="target_ious"):
        iou_kl_loss(torch.zeros(3), torch.zeros(2))


# --------------------------------------------------------------------------------------------
# shared: empty input, reductions, dtypes
# --------------------------------------------------------------------------------------------


def test_empty_inputs():
    e = torch.zeros(0, requires_grad=True)
    calls = [
        lambda r: harmonic_loss(e, e, reduction=r),
        lambda r: task_contrastive_loss(e, e, torch.zeros(0, 5), reduction=r),
        lambda r: iou_kl_loss(e, e, reduction=r),
    ]
    for fn in calls:
        assert fn("none").shape == (0,)
        for r in ("sum", "mean"):
            out = fn(r)
            assert out.shape == () and out.item() == 0.0
        with pytest.raises(ValueError, match="reduction"):
            fn("avg")


def test_harmonic_extremes_and_dtypes():
    cls = torch.tensor([0.0, 1e30, 4.4, -1e-7, 1e4], requires_grad=True)
    loc = torch.tensor([0.0, 1e-30, 1e30, 0.0, -1e-7], requires_grad=True)
    out = harmonic_loss(cls, loc)
    assert torch.isfinite(out).all()
    gc, gl = torch.autograd.grad(out.sum(), (cls, loc))
    assert torch.isfinite(gc).all() and torch.isfinite(gl).all()
    ch = torch.tensor([0.0, 6e4, 4.4], dtype=torch.float16, requires_grad=True)
    lh = torch.tensor([6e4, 0.0, 1e-3], dtype=torch.float16, requires_grad=True)
    h = harmonic_loss(ch, lh)
    # cls = 0, loc = 6e4 -> (1 + 0) * 0 + (1 + 1) * 6e4 = 1.2e5 (beyond fp16, fine in float32)
    assert h.dtype == torch.float32 and torch.isfinite(h).all()
    assert h[0].item() == pytest.approx(2 * 6e4, rel=1e-3)
    gc, gl = torch.autograd.grad(h.sum(), (ch, lh))
    assert gc.dtype == torch.float16 and torch.isfinite(gc).all() and torch.isfinite(gl).all()
    d = torch.ones(3, dtype=torch.float64)
    assert harmonic_loss(d, d).dtype == torch.float64
    with pytest.raises(ValueError, match="loc_loss"):
        harmonic_loss(torch.ones(3), torch.ones(2))


# --------------------------------------------------------------------------------------------
# Quality Focal Loss (Li et al., GFL) and Varifocal Loss (Zhang et al., VarifocalNet, eq. 2)
# --------------------------------------------------------------------------------------------
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss  # noqa: E402

from iou_aware.losses import quality_focal_loss, varifocal_loss  # noqa: E402

LN2, LN3 = math.log(2.0), math.log(3.0)


def test_quality_focal_hand_values():
    # sigma = sigmoid(x): x = 0 -> 0.5, x = ln 3 -> 0.75, x = -ln 3 -> 0.25; beta = 2
    x = _t([0.0, LN3, 0.0, -LN3])
    y = _t([1.0, 0.25, 0.5, 0.0])
    expected = _t([
        0.25 * LN2,  # |1 - .5|^2 * -(1 * ln .5)
        0.25 * (0.75 * math.log(4.0) + 0.25 * math.log(4.0 / 3.0)),  # |.25-.75|^2 * -(.75 ln .25 + .25 ln .75)
        0.0,  # y == sigma
        0.0625 * math.log(4.0 / 3.0),  # |0 - .25|^2 * -(ln .75)
    ])
    torch.testing.assert_close(quality_focal_loss(x, y), expected)
    torch.testing.assert_close(quality_focal_loss(x, y, reduction="sum"), expected.sum())
    torch.testing.assert_close(quality_focal_loss(x, y, reduction="mean"), expected.mean())
    # beta = 0 is the soft-label binary cross-entropy: x = 0, y = 1 -> ln 2
    torch.testing.assert_close(quality_focal_loss(_t([0.0]), _t([1.0]), beta=0.0), _t([LN2]))


def test_quality_focal_hand_gradient():
    # d/dx [(y - s)^2 BCE] = -2 (y - s) s (1 - s) BCE + (y - s)^2 (s - y); x = 0, y = 1:
    # -2 * .5 * .25 * ln 2 + .25 * (-.5) = -0.25 ln 2 - 0.125
    x = _t([0.0], grad=True)
    quality_focal_loss(x, _t([1.0])).sum().backward()
    torch.testing.assert_close(x.grad, _t([-0.25 * LN2 - 0.125]))


def test_varifocal_hand_values():
    # p = sigmoid(x); alpha = 0.75, gamma = 2
    x = _t([0.0, 0.0, LN3, LN3, LN3])
    q = _t([0.6, 0.0, 0.25, 0.0, 1.0])
    expected = _t([
        0.6 * LN2,  # -.6 (.6 ln .5 + .4 ln .5)
        0.75 * 0.25 * LN2,  # -.75 * .5^2 * ln .5
        0.25 * (0.25 * math.log(4.0 / 3.0) + 0.75 * math.log(4.0)),  # -.25 (.25 ln .75 + .75 ln .25)
        0.75 * 0.5625 * math.log(4.0),  # -.75 * .75^2 * ln .25
        math.log(4.0 / 3.0),  # -1 * ln .75
    ])
    torch.testing.assert_close(varifocal_loss(x, q), expected)
    # positives: d/dx [q BCE(x, q)] = q (p - q); x = 0, q = 0.6 -> 0.6 * (0.5 - 0.6) = -0.06
    xg = _t([0.0], grad=True)
    varifocal_loss(xg, _t([0.6])).sum().backward()
    torch.testing.assert_close(xg.grad, _t([-0.06]))


def test_quality_losses_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 3, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.rand(6, 3, generator=g, dtype=torch.float64)
    y[0] = 0.0
    y[1, 0] = 1.0
    assert torch.autograd.gradcheck(lambda a: quality_focal_loss(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: quality_focal_loss(a, y, beta=1.5, reduction="sum"), (x,))
    assert torch.autograd.gradcheck(lambda a: varifocal_loss(a, y), (x,))
    assert torch.autograd.gradcheck(lambda a: varifocal_loss(a, y, alpha=0.5, gamma=1.5, reduction="mean"), (x,))


def test_quality_focal_is_focal_loss_for_binary_labels():
    """For y in {0, 1}, QFL is the sigmoid focal loss with gamma = beta and no alpha weighting."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64) * 4
    y = (torch.rand(50, 4, generator=g) > 0.7).to(torch.float64)
    for beta in (2.0, 1.0, 0.0):
        ref = tv_sigmoid_focal_loss(x, y, alpha=-1, gamma=beta, reduction="none")
        torch.testing.assert_close(quality_focal_loss(x, y, beta=beta), ref)


def test_varifocal_negatives_are_the_focal_loss_term():
    """q = 0: -alpha p^gamma log(1 - p), the focal loss of a negative whose weight (1 - alpha_FL)
    is 0.75 (alpha_FL = 0.25), gamma 2."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * 4
    zeros = torch.zeros_like(x)
    ref = tv_sigmoid_focal_loss(x, zeros, alpha=0.25, gamma=2.0, reduction="none")
    torch.testing.assert_close(varifocal_loss(x, zeros), ref)
    # positives are weighted by their target q, not by the focal term
    q = torch.full_like(x, 0.7)
    bce = F.binary_cross_entropy_with_logits(x, q, reduction="none")
    torch.testing.assert_close(varifocal_loss(x, q), 0.7 * bce)


def test_quality_losses_targets_are_detached_and_clamped():
    x = _t([0.3, -1.0], grad=True)
    y = _t([0.4, 0.9], grad=True)
    for fn in (quality_focal_loss, varifocal_loss):
        fn(x, y).sum().backward()
        assert y.grad is None
        # targets outside [0, 1] are clamped
        torch.testing.assert_close(fn(x.detach(), _t([1.7, -0.2])), fn(x.detach(), _t([1.0, 0.0])))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_quality_losses_low_precision_computed_in_float32(dtype):
    x = torch.tensor([0.0, 3.0, -3.0, 60000.0 if dtype == torch.float16 else 1e38, -6e4], dtype=dtype)
    y = torch.tensor([0.5, 1.0, 0.0, 0.3, 0.8], dtype=dtype)
    for fn in (quality_focal_loss, varifocal_loss):
        out = fn(x, y)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, fn(x.float(), y.float()))


def test_quality_losses_extreme_logits_finite():
    x = torch.tensor([1e38, -1e38, 1e4, -1e4, 0.0, 88.0, -88.0], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.5, 1.0, 0.0])
    for fn in (quality_focal_loss, varifocal_loss):
        x.grad = None
        out = fn(x, y)
        assert torch.isfinite(out).all(), out
        out.sum().backward()
        assert torch.isfinite(x.grad).all(), x.grad
    # a large logit of a negative costs about alpha * x (VFL) and x (QFL, sigma - 0 = 1)
    torch.testing.assert_close(varifocal_loss(torch.tensor([1e4]), torch.tensor([0.0])), torch.tensor([0.75e4]))
    torch.testing.assert_close(quality_focal_loss(torch.tensor([1e4]), torch.tensor([0.0])), torch.tensor([1e4]))
    # exact match of a fractional exponent: the gradient is finite (the loss is 0 there)
    xm = torch.tensor([0.0], requires_grad=True)
    quality_focal_loss(xm, torch.tensor([0.5]), beta=0.5).sum().backward()
    assert torch.isfinite(xm.grad).all()


def test_quality_losses_bad_arguments_and_empty():
    x = torch.zeros(3)
    for fn in (quality_focal_loss, varifocal_loss):
        with pytest.raises(ValueError, match="same shape"):
            fn(x, torch.zeros(4))
        with pytest.raises(ValueError, match="reduction"):
            fn(x, x, reduction="avg")
        assert fn(torch.zeros(0, 2), torch.zeros(0, 2), reduction="mean").item() == 0.0
    with pytest.raises(ValueError, match="beta"):
        quality_focal_loss(x, x, beta=-1.0)
    with pytest.raises(ValueError, match="alpha"):
        varifocal_loss(x, x, alpha=float("nan"))
    with pytest.raises(ValueError, match="gamma"):
        varifocal_loss(x, x, gamma=-0.5)
