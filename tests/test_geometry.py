"""Tests of iou_aware.geometry: validation, aligned IoU and its shared terms, extended IoU
(Peng & Yu eq. 10-22), pairwise IoU. Expected values are worked out by hand in the comments."""

import math

import pytest
import torch
from torchvision.ops import box_iou

from iou_aware import geometry
from iou_aware.geometry import (
    BoxPairTerms,
    aligned_iou,
    box_iou_pairwise,
    extended_intersection_union,
    extended_iou,
)

F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


# Four hand-worked pairs, used across the file (pred, target):
# P1 overlapping squares   (0,0,2,2) / (1,1,3,3): I = 1, U = 4 + 4 - 1 = 7, IoU = 1/7
# P2 apart along x         (0,0,1,1) / (2,0,3,1): I = 0, U = 2, gap of 1 along x
# P3 apart diagonally      (0,0,1,1) / (2,2,3,3): I = 0, U = 2
# P4 pred contains target  (0,0,4,2) / (0,0,2,2): I = 4, U = 8 + 4 - 4 = 8, IoU = 1/2
PRED = t64([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 4, 2]])
TARGET = t64([[1, 1, 3, 3], [2, 0, 3, 1], [2, 2, 3, 3], [0, 0, 2, 2]])


# -- validation ----------------------------------------------------------------------------------
def test_bad_shapes_raise_clear_value_errors():
    good = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"pred must have shape \(N, 4\), got \(3, 5\)"):
        aligned_iou(torch.zeros(3, 5), good)
    with pytest.raises(ValueError, match=r"target must have shape \(N, 4\), got \(4,\)"):
        aligned_iou(good, torch.zeros(4))
    with pytest.raises(ValueError, match=r"same number of boxes.*got 3 and 2"):
        extended_iou(good, torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"pred must be a torch.Tensor"):
        aligned_iou([[0, 0, 1, 1]], good)
    with pytest.raises(ValueError, match=r"boxes2 must have shape \(N, 4\), got \(2, 3\)"):
        box_iou_pairwise(good, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="eps"):
        BoxPairTerms(good, good, eps=-1.0)


# -- aligned IoU and the shared terms -----------------------------------------------------------
def test_aligned_iou_hand_values():
    # P1: 1/7; P2, P3: 0 (no overlap); P4: 4/8.
    expected = t64([1 / 7, 0.0, 0.0, 0.5])
    torch.testing.assert_close(aligned_iou(PRED, TARGET), expected, rtol=0, atol=1e-7)
    # identical boxes: 4 / (4 + eps)
    box = t64([[0, 0, 2, 2]])
    torch.testing.assert_close(aligned_iou(box, box), t64([4 / (4 + 1e-7)]))


def test_shared_terms_hand_values():
    t = BoxPairTerms(PRED, TARGET, eps=0.0)
    # intersection / union: P1 1/7, P2 0/2, P3 0/2, P4 4/8
    torch.testing.assert_close(t.intersection, t64([1, 0, 0, 4]))
    torch.testing.assert_close(t.union, t64([7, 2, 2, 8]))
    # enclosing boxes: P1 (0,0,3,3), P2 (0,0,3,1), P3 (0,0,3,3), P4 (0,0,4,2)
    torch.testing.assert_close(t.enclose_w, t64([3, 3, 3, 4]))
    torch.testing.assert_close(t.enclose_h, t64([3, 1, 3, 2]))
    torch.testing.assert_close(t.enclose_area, t64([9, 3, 9, 8]))
    # c^2 = w_c^2 + h_c^2: 18, 10, 18, 20
    torch.testing.assert_close(t.enclose_diag2, t64([18, 10, 18, 20]))
    # centres: P1 (1,1)-(2,2): 2; P2 (.5,.5)-(2.5,.5): 4; P3 (.5,.5)-(2.5,2.5): 8; P4 (2,1)-(1,1): 1
    torch.testing.assert_close(t.center_dist2, t64([2, 4, 8, 1]))
    # GIoU penalty (|C| - U)/|C|: 2/9, 1/3, 7/9, 0
    torch.testing.assert_close(t.giou_penalty, t64([2 / 9, 1 / 3, 7 / 9, 0]))
    # DIoU penalty rho^2/c^2: 1/9, 2/5, 4/9, 1/20
    torch.testing.assert_close(t.diou_penalty, t64([1 / 9, 2 / 5, 4 / 9, 1 / 20]))
    # CIoU v: only P4 differs in aspect ratio (4x2 vs 2x2): v = 4/pi^2 (atan(1) - atan(2))^2
    v4 = 4 / math.pi**2 * (math.pi / 4 - math.atan(2)) ** 2
    torch.testing.assert_close(t.aspect_v, t64([0, 0, 0, v4]))
    # trade-off v / (1 - IoU + v): 0 for P1-P3, v4 / (1/2 + v4) for P4
    torch.testing.assert_close(t.ciou_tradeoff, t64([0, 0, 0, v4 / (0.5 + v4)]))
    # efficient-IoU width/height terms: only P4, (4-2)^2 / 4^2 + (2-2)^2 / 2^2 = 1/4
    torch.testing.assert_close(t.efficient_wh_penalty, t64([0, 0, 0, 0.25]))


def test_terms_are_computed_once_and_detached_factors_do_not_leak():
    pred = PRED.clone().requires_grad_()
    t = BoxPairTerms(pred, TARGET)
    # ciou_tradeoff is first: it must not cache a gradient-less IoU for the others.
    assert not t.ciou_tradeoff.requires_grad
    assert t.iou.requires_grad and t.aspect_v.requires_grad
    assert t.iou is t.iou and t.enclose_diag2 is t.enclose_diag2


def test_dtype_policy():
    p16, t16 = PRED.half(), TARGET.half()
    assert aligned_iou(p16, t16).dtype == torch.float32
    assert extended_iou(PRED.bfloat16(), TARGET.bfloat16()).dtype == torch.float32
    assert aligned_iou(PRED, TARGET).dtype == F64
    assert aligned_iou(PRED.float(), TARGET.float()).dtype == torch.float32
    assert box_iou_pairwise(p16, t16).dtype == torch.float32


# -- extended IoU (Peng & Yu eq. 10-22) ---------------------------------------------------------
def test_extended_iou_hand_values():
    # Notation of eq. 1-4, 10-15: x1 = max(x1t, x1p), x2 = min(x2t, x2p), x0 = min(x1t, x1p), ...
    # P1 overlapping: I_e = I = 1 (eq. 17), U_e = 7, EIoU = 1/7.
    # P2 (case ii, x1 = 2 > x2 = 1; y1 = 0, y2 = 1; x0 = y0 = 0): eq. 18
    #    I_e = (x_min - x_max)(y_max - y0) + (x_min - x_max)(y_min - y0) = (1-2)(1) + (1-2)(0) = -1,
    #    U_e = 1 + 1 + 1 = 3, EIoU = -1/3.
    # P3 (case iv, x1 = y1 = 2 > x2 = y2 = 1): eq. 20
    #    I_e = 2((x_min-x0)(y_min-y0) - (x_max-x0)(y_max-y0)) = 2(1*1 - 2*2) = -6, U_e = 8, EIoU = -3/4.
    # P4 overlapping: I_e = 4, U_e = 8, EIoU = 1/2.
    i_e, u_e = extended_intersection_union(PRED, TARGET)
    torch.testing.assert_close(i_e, t64([1, -1, -6, 4]))
    torch.testing.assert_close(u_e, t64([7, 3, 8, 8]))
    torch.testing.assert_close(extended_iou(PRED, TARGET, eps=0.0), t64([1 / 7, -1 / 3, -3 / 4, 1 / 2]))


def test_extended_iou_hand_values_cases_ii_and_iii_asymmetric():
    # case (ii) with different heights: pred (0,0,2,1), target (3,-1,4,2)
    #   x1 = 3, x2 = 2, y1 = 0, y2 = 1, x0 = 0, y0 = -1; x_min = 2, x_max = 3, y_min = 0, y_max = 1
    #   eq. 16: (x2-x0)(y2-y0) + (x_min-x0)(y_min-y0) - (x1-x0)(y_max-y0) - (x_max-x0)(y1-y0)
    #         = 2*2 + 2*1 - 3*2 - 3*1 = -3   (eq. 18: (2-3)(1+1) + (2-3)(0+1) = -3 as well)
    #   U_e = S_t + S_p - I_e = 3 + 2 + 3 = 8, EIoU = -3/8.
    # case (iii): pred (0,0,1,1), target (0,2,1,3): x1 = 0, x2 = 1, y1 = 2, y2 = 1, x0 = y0 = 0
    #   eq. 19: (x_max-x0)(y_min-y_max) + (x_min-x0)(y_min-y_max) = 1*(1-2) + 0*(1-2) = -1
    #   U_e = 1 + 1 + 1 = 3, EIoU = -1/3.
    pred = t64([[0, 0, 2, 1], [0, 0, 1, 1]])
    target = t64([[3, -1, 4, 2], [0, 2, 1, 3]])
    i_e, u_e = extended_intersection_union(pred, target)
    torch.testing.assert_close(i_e, t64([-3, -1]))
    torch.testing.assert_close(u_e, t64([8, 3]))
    torch.testing.assert_close(extended_iou(pred, target, eps=0.0), t64([-3 / 8, -1 / 3]))


def _random_boxes(n, generator, scale=10.0):
    xy = torch.rand(n, 2, generator=generator, dtype=F64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=F64) * scale + 0.5
    return torch.cat([xy, xy + wh], 1)


def test_extended_iou_equals_iou_for_overlapping_pairs():
    g = torch.Generator().manual_seed(0)
    target = _random_boxes(200, g)
    pred = target + (torch.rand(200, 4, generator=g, dtype=F64) - 0.5) * 2.0
    pred = torch.cat([torch.minimum(pred[:, :2], pred[:, 2:]), torch.maximum(pred[:, :2], pred[:, 2:])], 1)
    terms = BoxPairTerms(pred, target)
    overlapping = terms.intersection > 0
    assert overlapping.sum() > 150
    torch.testing.assert_close(
        extended_iou(pred, target)[overlapping], aligned_iou(pred, target)[overlapping]
    )
    # and I_e is the standard intersection there (eq. 17)
    i_e, _ = extended_intersection_union(pred, target)
    torch.testing.assert_close(i_e[overlapping], terms.intersection[overlapping])


@pytest.mark.parametrize("direction", [(1, 0), (0, 1), (1, 1), (-1, 0), (0, -1), (-1, -1), (1, -0.5)])
def test_extended_iou_negative_and_decreasing_with_distance(direction):
    target = t64([[0, 0, 2, 3]])
    dx, dy = direction
    values = []
    for d in [3.5, 4, 5, 8, 16, 100, 1000]:  # every pred here is apart from the target
        pred = t64([[0.5 + dx * d, 1 + dy * d, 1.5 + dx * d, 2 + dy * d]])
        assert aligned_iou(pred, target).item() == 0
        values.append(extended_iou(pred, target).item())
    assert all(v < 0 for v in values)
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[-1] > -1  # EIoU = I_e / (S_t + S_p - I_e) > -1


def test_extended_iou_is_shift_invariant_at_huge_coordinates():
    # Corners are taken relative to (x0, y0) before multiplying, so a 1e6 shift (exact in float32
    # for these integer corners) changes nothing.
    pred = torch.tensor([[0.0, 0, 20, 10], [30, 0, 40, 10], [0, 0, 8, 8]])
    target = torch.tensor([[5.0, 5, 25, 30], [0, 20, 10, 50], [40, 40, 64, 48]])
    shift = 1e6
    torch.testing.assert_close(extended_iou(pred + shift, target + shift), extended_iou(pred, target))
    torch.testing.assert_close(aligned_iou(pred + shift, target + shift), aligned_iou(pred, target))


@pytest.mark.parametrize("fn", [aligned_iou, extended_iou])
def test_iou_functions_finite_for_degenerate_boxes(fn):
    pred = torch.tensor(
        [
            [5.0, 5, 5, 5],
            [1, 0, 1, 4],
            [10, 10, 0, 0],
            [10, 0, 0, 10],
            [0, 0, 10, 10],
            [0, 0, 1, 1],
            [1e6, 1e6, 1e6 + 64, 1e6 + 32],
        ],
        requires_grad=True,
    )
    target = torch.tensor(
        [
            [0.0, 0, 10, 10],
            [1, 0, 1, 4],
            [8, 8, 2, 2],
            [0, 0, 10, 10],
            [0, 0, 10, 10],
            [1e4, 1e4, 1e4 + 1, 1e4 + 1],
            [-1e6, -1e6, -1e6 + 16, -1e6 + 128],
        ],
        requires_grad=True,
    )
    out = fn(pred, target)
    assert torch.isfinite(out).all()
    assert (out.abs() <= 1).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all() and torch.isfinite(target.grad).all()


@pytest.mark.parametrize("fn", [aligned_iou, extended_iou, box_iou_pairwise])
def test_gradcheck(fn):
    # non-degenerate: no equal coordinates, no touching edges; some pairs overlap, some do not
    g = torch.Generator().manual_seed(2)
    pred = _random_boxes(6, g).requires_grad_()
    target = (_random_boxes(6, g) + 3.3).requires_grad_()
    assert torch.autograd.gradcheck(fn, (pred, target), eps=1e-6, atol=1e-6)


def test_empty_input():
    empty = torch.zeros(0, 4)
    assert aligned_iou(empty, empty).shape == (0,)
    assert extended_iou(empty, empty).shape == (0,)
    assert box_iou_pairwise(empty, torch.zeros(3, 4)).shape == (0, 3)


# -- pairwise IoU ----------------------------------------------------------------------------------
def test_box_iou_pairwise_equals_torchvision():
    g = torch.Generator().manual_seed(1)
    a = _random_boxes(30, g).float()
    b = _random_boxes(20, g).float()
    out = box_iou_pairwise(a, b)
    assert out.shape == (30, 20)
    torch.testing.assert_close(out, box_iou(a, b), rtol=0, atol=0)


def test_box_iou_pairwise_hand_values_and_zero_area():
    boxes = t64([[0, 0, 2, 2], [1, 1, 3, 3], [3, 3, 3, 3]])
    # (0,0,2,2) vs (1,1,3,3): 1/7; a zero-area box gives 0 against everything, itself included
    expected = t64([[1, 1 / 7, 0], [1 / 7, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(box_iou_pairwise(boxes, boxes), expected)


def test_module_imports_torch_only():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(geometry))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"math", "functools", "typing", "torch"}, imported
