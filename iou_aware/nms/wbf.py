"""Weighted Boxes Fusion (Solovyev, Wang, Gabruseva, "Weighted boxes fusion: Ensembling boxes from
different object detection models", Image and Vision Computing 2021): fuse the detections of
several models of one image."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._layout import check_finite
from ._common import check_real

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _as_list(values, name: str, num_models: int) -> List[Tensor]:
    if not isinstance(values, (list, tuple)) or len(values) != num_models:
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(
            f"{name} must be a list with one entry per model ({num_models}), got {got}"
        )
    return [torch.as_tensor(v) for v in values]


def _model_inputs(boxes_list, scores_list, labels_list, weights) -> Tuple[Tensor, ...]:
    """Concatenate the models' predictions: boxes (N, 4) float64 with ordered corners, scores,
    labels, model index, model weight of each box."""
    if not isinstance(boxes_list, (list, tuple)) or len(boxes_list) == 0:
        raise ValueError("boxes_list must be a non-empty list with one (N_m, 4) array per model")
    m = len(boxes_list)
    boxes_l = _as_list(boxes_list, "boxes_list", m)
    scores_l = _as_list(scores_list, "scores_list", m)
    labels_l = _as_list(labels_list, "labels_list", m)
    if weights is None:
        weights = torch.ones(m, dtype=torch.float64)
    else:
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if weights.numel() != m:
            raise ValueError(f"weights must hold one weight per model ({m}), got {weights.numel()}")
        check_finite(weights=weights)
        if bool((weights <= 0).any()):
            raise ValueError(f"weights must be > 0, got {weights.tolist()}")
    parts = []
    for t, (b, s, lab) in enumerate(zip(boxes_l, scores_l, labels_l)):
        b = (
            b.to(torch.float64).reshape(-1, 4)
            if b.numel()
            else torch.zeros((0, 4), dtype=torch.float64)
        )
        s, lab = s.to(torch.float64).reshape(-1), lab.reshape(-1)
        if not (b.shape[0] == s.shape[0] == lab.shape[0]):
            raise ValueError(
                f"model {t}: boxes_list[{t}], scores_list[{t}] and labels_list[{t}] must have the "
                "same "
                f"length, got {b.shape[0]}, {s.shape[0]}, {lab.shape[0]}"
            )
        check_finite(**{f"boxes_list[{t}]": b, f"scores_list[{t}]": s})
        if lab.is_floating_point():
            check_finite(**{f"labels_list[{t}]": lab})
        parts.append((b, s, lab.to(torch.float64), torch.full_like(s, t), weights[t].expand_as(s)))
    b, s, lab, model, w = (torch.cat(p) for p in zip(*parts))
    # corners in order (the reference package swaps inverted corners the same way)
    b = torch.stack(
        [
            torch.minimum(b[:, 0], b[:, 2]),
            torch.minimum(b[:, 1], b[:, 3]),
            torch.maximum(b[:, 0], b[:, 2]),
            torch.maximum(b[:, 1], b[:, 3]),
        ],
        1,
    )
    integer_labels = not any(lab.is_floating_point() for lab in labels_l)
    return b, s, lab, model, w, weights, integer_labels


def _iou_with(fused: Tensor, box: Tensor) -> Tensor:
    w = (torch.minimum(fused[:, 2], box[2]) - torch.maximum(fused[:, 0], box[0])).clamp(min=0)
    h = (torch.minimum(fused[:, 3], box[3]) - torch.maximum(fused[:, 1], box[1])).clamp(min=0)
    inter = w * h
    union = (
        (fused[:, 2] - fused[:, 0]) * (fused[:, 3] - fused[:, 1])
        + (box[2] - box[0]) * (box[3] - box[1])
        - inter
    )
    return inter / union  # zero-area boxes are skipped, so union > 0


def weighted_boxes_fusion(
    boxes_list: Sequence,
    scores_list: Sequence,
    labels_list: Sequence,
    weights: Optional[Sequence[float]] = None,
    iou_threshold: float = 0.55,
    skip_box_threshold: float = 0.0,
    conf_type: str = "avg",
    allows_overflow: bool = False,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Weighted Boxes Fusion (Solovyev et al. 2021, Algorithm "WBF"), with the options of the
    authors' package ``ensemble-boxes`` (``weighted_boxes_fusion``).

    ``boxes_list[m]`` (N_m, 4) ``x1, y1, x2, y2``, ``scores_list[m]`` (N_m,), ``labels_list[m]``
    (N_m,): the predictions of model ``m`` for one image (tensors, arrays or lists); ``weights``
    one weight per model (default 1). Boxes are in any absolute frame (pixels or normalized
    alike): unlike the reference package, coordinates are not clipped to [0, 1]; for boxes inside
    [0, 1] the two agree. Inverted corners are swapped and zero-area boxes skipped, as in the
    reference; boxes scored below ``skip_box_threshold`` are dropped.

    Per label, all models' boxes in one list sorted by weighted score ``s * weight_m`` (ties: model
    order, then input order); each box joins the fused box of its label with the highest IoU if
    that IoU is ``> iou_threshold``, else starts a new cluster. A fused box is the
    ``s``-weighted mean of its cluster's boxes (recomputed after each join, so later boxes match
    against it); its score, with ``T`` boxes in the cluster, ``W`` the sum of the model weights
    and ``w_c`` the sum of the weights of the cluster's boxes:

    - ``"avg"``: mean weighted score ``* min(T, M) / W`` (``M`` models; the paper's
      ``min(T, N) / N`` rescaling for unit weights), ``* T / W`` with ``allows_overflow``;
    - ``"max"``: largest weighted score ``/ max weight``;
    - ``"box_and_model_avg"``: sum of weighted scores ``/ w_c`` ``*`` (sum of the weights of the
      distinct models in the cluster) ``/ W``;
    - ``"absent_model_aware_avg"``: sum of weighted scores ``/ (w_c +`` weights of the models
      absent from the cluster ``)``.

    Returns ``(boxes (K, 4), scores (K,), labels (K,))``, sorted by score (ties: label, then
    cluster order); boxes and scores float64, labels int64 for integer labels, else float64.
    Sequential by nature (a box's cluster depends on the clusters before it): a Python loop over
    the boxes, each step vectorized over the fused boxes of its label.
    """
    iou_threshold = check_real(iou_threshold, "iou_threshold")
    skip_box_threshold = check_real(skip_box_threshold, "skip_box_threshold")
    if conf_type not in CONF_TYPES:
        raise ValueError(
            f"conf_type must be one of {', '.join(map(repr, CONF_TYPES))}, got {conf_type!r}"
        )
    b, s, lab, model, w, weights, integer_labels = _model_inputs(
        boxes_list, scores_list, labels_list, weights
    )
    use = (s >= skip_box_threshold) & ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0)
    b, s, lab, model, w = b[use], s[use] * w[use], lab[use], model[use], w[use]
    out_boxes, out_scores, out_labels = [], [], []
    total_w, max_w, num_models = float(weights.sum()), float(weights.max()), weights.numel()
    for label in torch.unique(lab).tolist():
        sel = torch.nonzero(lab == label).squeeze(1)
        sel = sel[torch.argsort(s[sel], descending=True, stable=True)]
        fused = b.new_zeros((0, 4))
        members: List[List[int]] = []
        for i in sel.tolist():
            best = -1
            if members:
                iou = _iou_with(fused, b[i])
                j = int(torch.argmax(iou))
                best = j if float(iou[j]) > iou_threshold else -1
            if best < 0:
                members.append([i])
                fused = torch.cat([fused, b[i : i + 1]])
            else:
                members[best].append(i)
                idx = torch.tensor(members[best])
                fused[best] = (s[idx, None] * b[idx]).sum(0) / s[idx].sum()
        for k, idx_list in enumerate(members):
            idx = torch.tensor(idx_list)
            conf, t, w_c = s[idx], len(idx_list), float(w[idx].sum())
            models = torch.unique(model[idx]).long()
            if conf_type == "max":
                score = float(conf.max()) / max_w
            elif conf_type == "box_and_model_avg":
                score = float(conf.sum()) / w_c * float(weights[models].sum()) / total_w
            elif conf_type == "absent_model_aware_avg":
                absent = torch.ones(num_models, dtype=torch.bool)
                absent[models] = False
                score = float(conf.sum()) / (w_c + float(weights[absent].sum()))
            else:
                score = (
                    float(conf.mean()) * (t if allows_overflow else min(t, num_models)) / total_w
                )
            out_boxes.append(fused[k])
            out_scores.append(score)
            out_labels.append(label)
    label_dtype = torch.int64 if integer_labels else torch.float64
    if not out_boxes:
        return b.new_zeros((0, 4)), b.new_zeros(0), torch.zeros(0, dtype=label_dtype)
    scores = torch.tensor(out_scores, dtype=torch.float64)
    order = torch.argsort(scores, descending=True, stable=True)
    labels = torch.tensor(out_labels, dtype=torch.float64).to(label_dtype)
    return torch.stack(out_boxes)[order], scores[order], labels[order]
