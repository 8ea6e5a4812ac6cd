"""Box geometry for IoU-aware losses and NMS (pure torch, no Detectron2).

Boxes are ``(N, 4)`` float tensors in absolute ``x1, y1, x2, y2``. Aligned functions pair row ``i``
of ``pred`` with row ``i`` of ``target`` and return ``(N,)``; pairwise functions say so in their
name and return ``(N, M)``.

Every term that a loss needs is computed once, lazily, by :class:`BoxPairTerms`: a loss asks for
``terms.iou``, ``terms.diou_penalty``, ... and each term (and what it depends on) is computed on
first access and cached, so no loss recomputes or re-implements a shared term.

Numerical guards (the project's convention, ``docs/design.md``: finite values and gradients for
zero-area, inverted, identical, far-apart and huge boxes, without ``nan_to_num``). Each guard is a
no-op for valid boxes (``x1 <= x2``, ``y1 <= y2``), so values equal torchvision's there:

- union and enclosing area are clamped at 0 (they are never negative for valid boxes);
- IoU divides by ``union + eps`` and GIoU by ``enclosing area + eps`` (as torchvision's losses);
  the squared diagonal is ``c^2 = w_c^2 + h_c^2 + eps`` (as torchvision), and the efficient-IoU
  width/height terms divide by ``w_c^2 + eps`` and ``h_c^2 + eps``;
- the CIoU aspect term takes ``atan(w / max(h, eps))``, so a zero height gives a finite gradient,
  and a point box (``|w|, h <= eps``) gets ``atan = 0`` with zero gradient;
- every penalty ratio divides by ``max(denominator, numerator)`` (GIoU by ``max(|C|, U) + eps``,
  DIoU by ``max(c^2, rho^2)``, the efficient-IoU terms by ``max(w_c^2, (w - w_gt)^2) + eps``, the
  extended IoU by ``max(U_e, |I_e|) + eps``). For valid boxes the numerator never exceeds the
  denominator, so this changes nothing; for inverted boxes it keeps each ratio in ``[-1, 1]``.

Gradients of any IoU loss grow like 1 / (box size) as a box collapses (and, with Peng & Yu's SOT,
like the box size): the guards cap them near ``1/eps`` in float32. fp16 input is computed in
float32 and its gradient cast back to fp16, where values above 65504 overflow to ``inf``: for
boxes thinner than about 1e-4 (or, with SOT, larger than about 1e4) use float32 boxes.
"""

import math
from functools import cached_property
from typing import Tuple

import torch

__all__ = [
    "check_boxes",
    "check_box_pairs",
    "BoxPairTerms",
    "aligned_iou",
    "extended_iou",
    "extended_intersection_union",
    "box_iou_pairwise",
]


def check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    """Raise ``ValueError`` unless ``boxes`` is a tensor of shape ``(N, 4)``."""
    if not isinstance(boxes, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {tuple(boxes.shape)}")


def check_box_pairs(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``pred`` and ``target`` are aligned ``(N, 4)`` box tensors."""
    check_boxes(pred, "pred")
    check_boxes(target, "target")
    if pred.shape[0] != target.shape[0]:
        raise ValueError(
            "pred and target must hold the same number of boxes (aligned pairs), "
            f"got {pred.shape[0]} and {target.shape[0]}"
        )


def as_compute_dtype(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """The dtype policy of every loss and geometric term (``docs/design.md``): fp16/bf16/integers
    are computed in float32, float32 and float64 keep their dtype (all tensors are brought to the
    widest of them, so float64 gradcheck inputs stay float64)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


def _at_least(denominator: torch.Tensor, numerator: torch.Tensor) -> torch.Tensor:
    """``max(denominator, numerator)``, exact, with the whole gradient going to the selected one
    (``denominator`` at ties, unlike ``torch.maximum``, which splits it).

    Every ratio below has ``numerator <= denominator`` for valid boxes, where this returns
    ``denominator`` (value and gradient); for inverted boxes it keeps the ratio in ``[-1, 1]``
    instead of dividing by a collapsed ``eps``. (The condition is nearly always true, so the CPU
    ``where`` kernel, slow on unpredictable conditions, is fast here.)
    """
    with torch.no_grad():
        keep = denominator >= numerator
    return torch.where(keep, denominator, numerator)


class _DiouPenalty(torch.autograd.Function):
    """``rho^2 / max(c^2, rho^2)`` from the corner differences and the enclosing box size, with
    ``rho^2 = ((d1x + d2x)^2 + (d1y + d2y)^2) / 4`` and ``c^2 = w_c^2 + h_c^2 + eps``.

    One node with a hand-written backward (about half the elementwise ops of the composed one; the
    DIoU term is the largest part of the DIoU/CIoU/EIoU losses). Gradient, where ``c^2 >= rho^2``
    (always, for valid boxes): ``d/d(d1x) = d/d(d2x) = (d1x + d2x) / (2 c^2)`` and
    ``d/dw_c = -2 w_c rho^2 / c^4``; elsewhere the ratio is the constant 1.
    """

    @staticmethod
    def forward(ctx, d1x, d1y, d2x, d2y, enclose_w, enclose_h, eps):
        dx, dy = d1x + d2x, d1y + d2y
        rho2 = torch.addcmul(dx * dx, dy, dy).mul_(0.25)
        c2 = torch.addcmul(enclose_w * enclose_w, enclose_h, enclose_h).add_(eps)
        keep = c2 >= rho2
        out = rho2.div_(torch.where(keep, c2, rho2))
        # inv = 1 / c^2 where kept, 0 elsewhere (the ratio is constant there)
        inv = c2.reciprocal_().mul_(keep)
        ctx.save_for_backward(dx, dy, enclose_w, enclose_h, inv, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        dx, dy, enclose_w, enclose_h, inv, out = ctx.saved_tensors
        k = grad * inv  # d out / d rho^2
        g_rho = k * 0.5  # d rho^2 / d dx = dx / 2
        g_dx, g_dy = g_rho * dx, g_rho * dy
        g_c = k.mul_(out).mul_(-2.0)  # d out / d c^2 = -out / c^2, d c^2 / d w_c = 2 w_c
        return g_dx, g_dy, g_dx, g_dy, g_c * enclose_w, g_c * enclose_h, None


def _atan_aspect(w: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``atan(w / h)`` with ``h`` floored at ``eps``; a point box (``|w|, h <= eps``), whose aspect
    ratio is undefined, gives 0 with zero gradient instead of a ``1/eps`` gradient."""
    with torch.no_grad():
        point = (h <= eps) & (w.abs() <= eps)
    ratio = w / torch.where(point, torch.ones_like(h), h.clamp(min=eps))
    return torch.where(point, torch.zeros_like(w), torch.atan(ratio))


class BoxPairTerms:
    """Geometric terms of aligned box pairs, each computed once on first access.

    ``terms = BoxPairTerms(pred, target, eps)`` validates the shapes and upcasts fp16/bf16 to
    float32. Attributes (all ``(N,)``, all differentiable unless marked):

    - ``pred_w``, ``pred_h``, ``target_w``, ``target_h``: widths and heights;
    - ``pred_area``, ``target_area``: ``w * h`` (signed: negative for a box inverted in one axis);
    - ``inner_w``, ``inner_h``: signed overlap extents ``x2 - x1``, ``y2 - y1`` with Peng & Yu's
      ``x1 = max(x1_t, x1_p)``, ``x2 = min(x2_t, x2_p)`` ... (eq. 1-4); negative when apart;
    - ``inter_w``, ``inter_h``, ``intersection``: overlap of the two boxes (eq. 5);
    - ``union``: ``S_p + S_t - I`` (eq. 8); ``iou``: ``I / (U + eps)`` (eq. 9);
    - ``enclose_w``, ``enclose_h``, ``enclose_area``: width, height, area of the smallest enclosing
      box ``C``;
    - ``enclose_diag2``: ``c^2 = w_c^2 + h_c^2 + eps``;
    - ``center_dist2``: ``rho^2(b, b_gt)``, squared distance of the centres;
    - ``giou_penalty``: ``(|C| - U) / (|C| + eps)`` (GIoU, Rezatofighi et al.);
    - ``diou_penalty``: ``rho^2 / c^2`` (DIoU, Zheng et al.; He et al. eq. 4; Zhang et al. eq. 7);
    - ``aspect_v``: CIoU ``v = 4 / pi^2 * (atan(w_gt / h_gt) - atan(w / h))^2`` (Zhang et al. eq. 5);
    - ``ciou_tradeoff`` (detached): ``v / (1 - IoU + v + eps)``, computed without gradient as
      torchvision does (no ``IoU > 0.5`` gating);
    - ``ciou_aspect_penalty``: ``ciou_tradeoff * v``;
    - ``efficient_wh_penalty``: ``(w - w_gt)^2 / (w_c^2 + eps) + (h - h_gt)^2 / (h_c^2 + eps)``
      (Zhang et al. eq. 7, the width/height part of ``L_asp``);
    - ``extended_intersection`` ``I_e`` (Peng & Yu eq. 10-16), ``extended_union`` ``U_e`` (eq. 21),
      ``extended_denominator`` ``max(U_e, |I_e|) + eps``, ``extended_iou`` ``I_e / U_e`` (eq. 22).

    Difference form: with ``d1 = p1 - t1``, ``d2 = p2 - t2`` (per axis) and ``max(a, b) + min(a, b)
    = a + b``, ``max(a, b) - min(a, b) = |a - b|``, every max/min of two coordinates is rewritten::

        x2 - x1 (overlap)    = (w_p + w_t - |d1| - |d2|) / 2
        w_c (enclosing)      = w_p + w_t - (x2 - x1)
        2 (centre_p - centre_t) = d1 + d2
        x1 - x0, x2 - x0     = |d1|, (x2 - x1) + |d1|        (Peng & Yu's x0 = min(x1_t, x1_p))

    So every term is built from box-scale differences (at huge coordinates the centre distance, for
    example, is ``d1 + d2``, not the difference of two 2e6-sized coordinate sums that loses the
    low bits in float32), and from branch-free elementwise ops: the CPU ``where``/``maximum`` backward kernels branch on the (random)
    comparison and are several times slower. At a tie (``d1 = 0``) ``|d1|`` has gradient 0, i.e.
    the max/min gradient is split evenly between the two boxes.
    """

    def __init__(self, pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7):
        check_box_pairs(pred, target)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.pred, self.target = as_compute_dtype(pred, target)
        self.eps = float(eps)
        self.px1, self.py1, self.px2, self.py2 = self.pred.unbind(1)
        self.tx1, self.ty1, self.tx2, self.ty2 = self.target.unbind(1)

    # -- sizes -----------------------------------------------------------------------------------
    @cached_property
    def pred_w(self) -> torch.Tensor:
        return self.px2 - self.px1

    @cached_property
    def pred_h(self) -> torch.Tensor:
        return self.py2 - self.py1

    @cached_property
    def target_w(self) -> torch.Tensor:
        return self.tx2 - self.tx1

    @cached_property
    def target_h(self) -> torch.Tensor:
        return self.ty2 - self.ty1

    @cached_property
    def pred_area(self) -> torch.Tensor:
        return self.pred_w * self.pred_h

    @cached_property
    def target_area(self) -> torch.Tensor:
        return self.target_w * self.target_h

    # -- corner differences ------------------------------------------------------------------------
    # Column by column, so that pred has a single ``unbind`` node: each extra ``unbind`` of an
    # (N, 4) tensor costs a strided ``stack`` in the backward, as much as several elementwise ops.
    @cached_property
    def _delta(self):
        """``(d1x, d1y, d2x, d2y) = pred - target``."""
        return (self.px1 - self.tx1, self.py1 - self.ty1, self.px2 - self.tx2, self.py2 - self.ty2)

    @cached_property
    def _abs_delta(self):
        """``|pred - target|`` per coordinate: ``|d1x| = x1 - x0``, ``|d2x| = max(x2) - min(x2)``..."""
        return tuple(d.abs() for d in self._delta)

    # -- standard IoU (Peng & Yu eq. 1-9) ----------------------------------------------------------
    @cached_property
    def inner_w(self) -> torch.Tensor:
        a1, _, a2, _ = self._abs_delta
        return (self.pred_w + self.target_w).sub_(a1).sub_(a2).mul_(0.5)

    @cached_property
    def inner_h(self) -> torch.Tensor:
        _, a1, _, a2 = self._abs_delta
        return (self.pred_h + self.target_h).sub_(a1).sub_(a2).mul_(0.5)

    @cached_property
    def inter_w(self) -> torch.Tensor:
        return torch.relu(self.inner_w)

    @cached_property
    def inter_h(self) -> torch.Tensor:
        return torch.relu(self.inner_h)

    @cached_property
    def intersection(self) -> torch.Tensor:
        return self.inter_w * self.inter_h

    @cached_property
    def union(self) -> torch.Tensor:
        return torch.relu_((self.pred_area + self.target_area).sub_(self.intersection))

    @cached_property
    def iou(self) -> torch.Tensor:
        return self.intersection / (self.union + self.eps)

    # -- smallest enclosing box, centres -----------------------------------------------------------
    @cached_property
    def enclose_w(self) -> torch.Tensor:
        return (self.pred_w + self.target_w).sub_(self.inner_w)

    @cached_property
    def enclose_h(self) -> torch.Tensor:
        return (self.pred_h + self.target_h).sub_(self.inner_h)

    @cached_property
    def enclose_area(self) -> torch.Tensor:
        # Never negative for valid boxes; the clamp only matters for inverted ones.
        return torch.relu_(self.enclose_w * self.enclose_h)

    @cached_property
    def enclose_w2(self) -> torch.Tensor:
        return self.enclose_w.square()

    @cached_property
    def enclose_h2(self) -> torch.Tensor:
        return self.enclose_h.square()

    @cached_property
    def enclose_diag2(self) -> torch.Tensor:
        return (self.enclose_w2 + self.enclose_h2).add_(self.eps)

    @cached_property
    def center_dist2(self) -> torch.Tensor:
        # 2 (centre_pred - centre_target) = (x1 + x2)_pred - (x1 + x2)_target = d1x + d2x
        d1x, d1y, d2x, d2y = self._delta
        dx, dy = d1x + d2x, d1y + d2y
        return (dx.square() + dy.square()).mul_(0.25)

    # -- penalty terms shared by GIoU/DIoU/CIoU/efficient IoU and their alpha versions -------------
    @cached_property
    def giou_penalty(self) -> torch.Tensor:
        area_c, union = self.enclose_area, self.union
        return (area_c - union) / _at_least(area_c, union).add_(self.eps)

    @cached_property
    def diou_penalty(self) -> torch.Tensor:
        # Same value as center_dist2 / _at_least(enclose_diag2, center_dist2); one autograd node.
        d1x, d1y, d2x, d2y = self._delta
        return _DiouPenalty.apply(d1x, d1y, d2x, d2y, self.enclose_w, self.enclose_h, self.eps)

    @cached_property
    def aspect_v(self) -> torch.Tensor:
        atan_p = _atan_aspect(self.pred_w, self.pred_h, self.eps)
        atan_t = _atan_aspect(self.target_w, self.target_h, self.eps)
        return (4.0 / (math.pi**2)) * (atan_t - atan_p).square()

    @cached_property
    def ciou_tradeoff(self) -> torch.Tensor:
        # Detach the (cached, differentiable) terms instead of computing them under no_grad, which
        # would cache gradient-less versions for the other losses.
        v = self.aspect_v.detach()
        return v / (1.0 - self.iou.detach() + v + self.eps)

    @cached_property
    def ciou_aspect_penalty(self) -> torch.Tensor:
        return self.ciou_tradeoff * self.aspect_v

    @cached_property
    def efficient_wh_penalty(self) -> torch.Tensor:
        dw2 = (self.pred_w - self.target_w).square()
        dh2 = (self.pred_h - self.target_h).square()
        ratio_w = dw2 / _at_least(self.enclose_w2, dw2).add_(self.eps)
        return ratio_w.add_(dh2 / _at_least(self.enclose_h2, dh2).add_(self.eps))

    # -- extended IoU (Peng & Yu eq. 10-22) --------------------------------------------------------
    @cached_property
    def extended_intersection(self) -> torch.Tensor:
        """``I_e`` of Peng & Yu eq. 16, with every corner taken relative to ``(x0, y0)``:

        ``I_e = (x2-x0)(y2-y0) + (x_min-x0)(y_min-y0) - (x1-x0)(y_max-y0) - (x_max-x0)(y1-y0)``

        where ``x_min = min(x1, x2)``, ``x_max = max(x1, x2)`` (eq. 12-15), all relative to
        ``(x0, y0)`` and built from the corner differences (see the class docstring), so the
        products stay at box scale for huge coordinates.
        """
        near_x, near_y = self._abs_delta[0], self._abs_delta[1]  # x1 - x0 = |x1_p - x1_t|, y1 - y0
        far_x, far_y = self.inner_w + near_x, self.inner_h + near_y  # x2 - x0, y2 - y0
        # x_min - x0 = near - gap, x_max - x0 = far + gap with gap = relu(near - far) =
        # relu(-(x2 - x1)) > 0 when the boxes are apart along that axis (x1 > x2).
        gap_x, gap_y = torch.relu(-self.inner_w), torch.relu(-self.inner_h)
        lo_x, hi_x = near_x - gap_x, far_x + gap_x
        lo_y, hi_y = near_y - gap_y, far_y + gap_y
        return (far_x * far_y).add_(lo_x * lo_y).sub_(near_x * hi_y).sub_(hi_x * near_y)

    @cached_property
    def extended_union(self) -> torch.Tensor:
        """``U_e = S_t + S_p - I_e`` (Peng & Yu eq. 21)."""
        return self.pred_area + self.target_area - self.extended_intersection

    @cached_property
    def extended_denominator(self) -> torch.Tensor:
        """``max(U_e, |I_e|) + eps``: ``U_e + eps`` for valid boxes, bounded for inverted ones."""
        return _at_least(self.extended_union, self.extended_intersection.abs()).add_(self.eps)

    @cached_property
    def extended_iou(self) -> torch.Tensor:
        """``EIoU = I_e / U_e`` (Peng & Yu eq. 22), in ``(-1, 1]``."""
        return self.extended_intersection / self.extended_denominator


def aligned_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of aligned pairs: ``I / (U + eps)`` (Peng & Yu eq. 1-9). ``(N,4), (N,4) -> (N,)``.

    Differentiable; fp16/bf16 input is computed in float32. Values equal torchvision's loss-side
    IoU (``intersection / (union + eps)``).
    """
    return BoxPairTerms(pred, target, eps).iou


def extended_iou(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Extended IoU ``EIoU = I_e / U_e`` of Peng & Yu eq. 10-22. ``(N,4), (N,4) -> (N,)``.

    ``I_e`` (eq. 16) equals the standard intersection when the boxes overlap (eq. 17), so EIoU equals
    IoU there; when they are apart ``I_e < 0`` (eq. 18-20) and decreases with their distance, so
    EIoU is negative, decreasing with the distance, and tends to -1. ``U_e = S_t + S_p - I_e``
    (eq. 21). Computed as ``I_e / (max(U_e, |I_e|) + eps)``, i.e. ``I_e / (U_e + eps)`` for valid
    boxes. Not to be confused with the *efficient* IoU loss of Zhang et al.
    """
    return BoxPairTerms(pred, target, eps).extended_iou


def extended_intersection_union(
    pred: torch.Tensor, target: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(I_e, U_e)`` of Peng & Yu eq. 16 and eq. 21, unguarded (Smooth-EIoU / SOT need both)."""
    terms = BoxPairTerms(pred, target, 0.0)
    return terms.extended_intersection, terms.extended_union


def box_iou_pairwise(boxes1: torch.Tensor, boxes2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU ``(N, 4), (M, 4) -> (N, M)`` (for NMS and matching).

    ``IoU = I / max(U, eps)``: exactly torchvision's ``box_iou`` (``I / U``) whenever ``U >= eps``,
    and 0 instead of ``nan`` for two zero-area boxes. Computed in float32 for fp16/bf16 input.
    """
    check_boxes(boxes1, "boxes1")
    check_boxes(boxes2, "boxes2")
    boxes1, boxes2 = as_compute_dtype(boxes1, boxes2)
    wh1 = boxes1[:, 2:] - boxes1[:, :2]
    wh2 = boxes2[:, 2:] - boxes2[:, :2]
    area1 = wh1[:, 0] * wh1[:, 1]
    area2 = wh2[:, 0] * wh2[:, 1]
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return inter / union.clamp(min=eps)
