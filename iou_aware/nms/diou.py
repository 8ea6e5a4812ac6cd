"""DIoU-NMS (Zheng et al., "Distance-IoU Loss: Faster and Better Learning for Bounding Box
Regression", AAAI 2020, sec. "Non-Maximum Suppression using DIoU")."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from ._dense import Scratch, greedy_keep, pair_terms
from ._layout import check_max_det, empty_like_result, finish, padded_rows, prepare
from ._common import check_real


def check_beta(beta, name: str = "beta") -> float:
    beta = check_real(beta, name)
    if not beta > 0:
        raise ValueError(f"{name} must be > 0 (the power of rho^2 / c^2), got {beta}")
    return beta


def iou_criterion(a: Tensor, b: Tensor, scratch: Optional[Scratch] = None) -> Tensor:
    """The IoU of every pair of two row blocks (the criterion of plain greedy NMS)."""
    return pair_terms(a, b, scratch=scratch)[0]


def diou_criterion(beta: float):
    """``IoU(a_i, b_j) - (rho^2 / c^2)^beta`` of every pair of two row blocks (the DIoU-NMS test of
    AAAI 2020, with the power ``beta`` of TCYB 2021)."""

    def criterion(a: Tensor, b: Tensor, scratch: Optional[Scratch] = None) -> Tensor:
        iou, ratio = pair_terms(a, b, distance=True, scratch=scratch)
        return iou.sub_(ratio if beta == 1.0 else ratio.pow_(beta))

    return criterion


def diou_nms(
    boxes: Tensor,
    scores: Tensor,
    idxs: Tensor,
    iou_threshold: float,
    beta: float = 1.0,
    *,
    class_agnostic: bool = False,
    max_det: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """DIoU-NMS: greedy NMS whose suppression test adds the distance of the box centres.

    Zheng et al. (AAAI 2020, sec. "Non-Maximum Suppression using DIoU"): with ``M`` the
    highest-scoring remaining box, a remaining box ``B_i`` of its class is removed (score 0) when
    ``IoU(M, B_i) - R(M, B_i)^beta`` reaches the threshold, else kept; ``R = rho^2 / c^2``,
    ``rho`` the distance of the two centres, ``c`` the diagonal of the smallest box enclosing both.
    ``beta = 1`` is the AAAI form; Zheng et al. (TCYB 2021) add the power ``beta`` (0.6-0.8 in
    their YOLOv3 experiments). The paper keeps ``< epsilon``; here, as in torchvision and the rest
    of this package, ``> iou_threshold`` suppresses (a pair exactly at the threshold survives), so
    that ``R = 0`` for every pair gives exactly standard NMS.

    Exact greedy result, computed block by block in rank order (``_dense.greedy_keep``: boxes
    suppressed by an earlier block's kept boxes in one batched product, the rest of a block by
    Cluster-NMS's matrix iteration, whose fixed point is the greedy result), every class at once.
    ``class_agnostic=True`` lets boxes of different classes suppress each other; ``max_det`` keeps
    the best ``max_det``. Returns ``(keep, scores[keep])``, sorted by score (ties by index).
    """
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    beta = check_beta(beta)
    max_det = check_max_det(max_det)
    prep = prepare(boxes, scores, idxs, class_agnostic=class_agnostic)
    if prep.scores.numel() == 0:
        return empty_like_result(prep, False, boxes.device)
    criterion = diou_criterion(beta)
    parts = []
    for rows in padded_rows(prep):
        parts.append(rows.select(greedy_keep(rows, criterion, iou_threshold), rows.scores))
    return finish(prep, parts, max_det=max_det)
