"""``add_iou_aware_config(cfg)``: every key this project adds to a Detectron2 config.

Defaults reproduce stock Detectron2 exactly: an unchanged config trains the stock detector.
``validate_iou_aware_config(cfg)`` (called when an IoU-aware model is built) rejects invalid values
and combinations with a message that names the key.
"""

import math

from detectron2.config import CfgNode as CN

NMS_TYPES = ("standard", "score_fused", "iou_guided", "soft")
CLS_LOSSES = ("", "iou_balanced", "harmonic")
PARAMETERIZATIONS = ("deltas", "corners")
ALPHA_IOU_PENALTIES = ("none", "giou", "diou", "ciou")
HARMONIC_DETACH = ("auto", "none", "both")


def add_iou_aware_config(cfg):
    """Add the project's keys (with defaults) to ``cfg`` in place and return it."""
    add_training_safety_config(cfg)
    # --- The built-in synthetic dataset (iou_aware.data.synthetic) -------------------------------
    # Registered as synthetic_shapes_train / synthetic_shapes_val when DATASETS.TRAIN/TEST name them;
    # generated on first use under ROOT (default: $IOU_AWARE_DATASETS/synthetic_shapes, with
    # IOU_AWARE_DATASETS defaulting to ./datasets), one sub-folder per size/seed.
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.ROOT = ""  # "" = default location
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 1000  # training images
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 100  # validation images
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 128  # square images, pixels
    cfg.DATASETS.SYNTHETIC.SEED = 0  # generator seed (train and val derive their own)

    # --- IoU-aware detectors: META_ARCHITECTURE "IoUAwareRetinaNet" or ROI_HEADS.NAME "IoUAwareROIHeads"
    _C = cfg.MODEL.IOU_AWARE = CN()

    # Box regression loss: "" = the detector's stock loss (RetinaNet.BBOX_REG_LOSS_TYPE /
    # ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE), or any name of iou_aware.losses.BOX_LOSSES:
    # smooth_l1 iou giou diou ciou efficient_iou focal_efficient_iou alpha_iou harmonic_iou
    # smooth_extended_iou focal_l1 iou_balanced_smooth_l1
    _C.BOX_LOSS = ""
    _C.BOX_LOSS_WEIGHT = 1.0  # multiplies the box loss (ROI heads: on top of BBOX_REG_LOSS_WEIGHT)
    # How box regression is parameterized: "deltas" (stock Box2BoxTransform: centre/size deltas) or
    # "corners" (Peng & Yu sec. IV, Algorithm 1: the four corner offsets divided by sqrt(anchor or
    # proposal area)); with "corners" the IoU-type losses are computed in that normalized space.
    _C.BOX_PARAMETERIZATION = "deltas"
    # beta of smooth_l1 / iou_balanced_smooth_l1 / the smooth-L1 part of harmonic_iou (Wang eq. 11);
    # < 0 = the detector's own beta (RETINANET.SMOOTH_L1_LOSS_BETA / ROI_BOX_HEAD.SMOOTH_L1_BETA)
    _C.SMOOTH_L1_BETA = -1.0
    # iou: "linear" (1 - IoU), "square" (1 - IoU^2), "log" (-ln IoU)
    _C.IOU_MODE = "linear"
    # alpha_iou (He et al. eq. 1-4): power alpha, penalty none|giou|diou|ciou, penalty power
    # (< 0 = same as ALPHA), BOX_COX = (1 - IoU^alpha) / alpha (eq. 1)
    _C.ALPHA_IOU = CN()
    _C.ALPHA_IOU.ALPHA = 3.0
    _C.ALPHA_IOU.PENALTY = "none"
    _C.ALPHA_IOU.ALPHA_PENALTY = -1.0
    _C.ALPHA_IOU.BOX_COX = False
    # focal_efficient_iou (Zhang et al. eq. 10-11): IoU^gamma weight (detached)
    _C.FOCAL_EIOU = CN()
    _C.FOCAL_EIOU.GAMMA = 0.5
    # focal_l1 (Zhang et al. eq. 8-9): beta sets the curvature (alpha = e * beta); see focal_l1_loss
    _C.FOCAL_L1 = CN()
    _C.FOCAL_L1.BETA = 0.8
    # smooth_extended_iou (Peng & Yu eq. 23, 28): (1 - EIoU)^POWER, SOT = steady optimization
    _C.SMOOTH_EIOU = CN()
    _C.SMOOTH_EIOU.POWER = 2.0
    _C.SMOOTH_EIOU.SOT = True
    # harmonic_iou (Wang & Zhang eq. 10-11): (1 + IoU)^GAMMA (1 - IoU), GAMMA <= 1; with
    # ADD_SMOOTH_L1 the box loss is the full localization loss smooth_l1 + ALPHA * HIoU (eq. 11)
    _C.HIOU = CN()
    _C.HIOU.GAMMA = 0.8
    _C.HIOU.ALPHA = 1.5
    _C.HIOU.ADD_SMOOTH_L1 = True
    # iou_balanced_smooth_l1 (Wu & Li eq. 3-5): weight LOC_WEIGHT * IoU^LAMBDA (detached), or with
    # NORMALIZE the eq. 5 factor that keeps the loss sum unchanged
    _C.IOU_BALANCED_LOC = CN()
    _C.IOU_BALANCED_LOC.LAMBDA = 1.5
    # Wu & Li Table 4: with LAMBDA 1.5 the weight that keeps the first-step loss sum is 3.049
    _C.IOU_BALANCED_LOC.LOC_WEIGHT = 3.049
    _C.IOU_BALANCED_LOC.NORMALIZE = False

    # Classification loss: "" = stock (focal / softmax CE), "iou_balanced" (Wu & Li eq. 1-2),
    # "harmonic" (Wang & Zhang eq. 12-13 with the box loss above as the localization loss)
    _C.CLS_LOSS = ""
    _C.IOU_BALANCED_CLS = CN()
    _C.IOU_BALANCED_CLS.ETA = 1.5  # IoU^eta weight of positives, normalized to keep their loss sum
    _C.HARMONIC = CN()
    # Which harmonic factors carry gradient: "none" = differentiate through both (eq. 4-7),
    # "both" = both detached (plain weights), "auto" = "none" for RetinaNet (sigmoid focal loss),
    # "both" for Faster R-CNN (softmax CE makes the gradient w.r.t. the box loss negative at start)
    _C.HARMONIC.DETACH_FACTORS = "auto"
    _C.HARMONIC.TC_LOSS = False  # add the Task-Contrastive loss (eq. 8)
    _C.HARMONIC.TC_MARGIN = 0.2
    _C.HARMONIC.TC_WEIGHT = 1.0

    # IoU head (Peng & Yu sec. III-E): one layer on the box branch's features, sigmoid output, trained
    # on positives with the KL loss (eq. 31-32) against the IoU of the decoded box with its GT
    _C.IOU_HEAD = CN()
    _C.IOU_HEAD.ENABLED = False
    _C.IOU_HEAD.LOSS_WEIGHT = 1.0
    _C.IOU_HEAD.CLASS_AGNOSTIC = True  # one IoU per box; False = one per class (ROI heads only)

    # NMS at inference: "standard" (stock per-class NMS), "score_fused" (score^(1-a) * iou^a, then NMS),
    # "iou_guided" (IoU-Net Alg. 1: rank by predicted IoU, keep the cluster's best score),
    # "soft" (Bodla et al.). IoU threshold: the detector's NMS_THRESH_TEST.
    # score_fused and iou_guided need IOU_HEAD.ENABLED.
    _C.NMS = CN()
    _C.NMS.TYPE = "standard"
    _C.NMS.FUSION_ALPHA = 0.5  # score_fused: a in [0, 1]
    _C.NMS.SOFT_METHOD = "gaussian"  # soft: "gaussian" or "linear"
    _C.NMS.SOFT_SIGMA = 0.5  # soft, gaussian
    _C.NMS.SOFT_SCORE_THRESH = 0.001  # soft: drop boxes whose decayed score falls below
    return cfg


def add_registered_keys(node, registry):
    """Add every config key that ``registry`` (an ``iou_aware.registry.Registry``) declares under
    ``node`` (``cfg.MODEL.IOU_AWARE``), with its default; sub-nodes are created as needed. A key
    that already exists keeps its value."""
    for p in registry.all_params():
        *path, leaf = p.key.split(".")
        sub = node
        for part in path:
            if part not in sub:
                sub[part] = CN()
            sub = sub[part]
        if leaf not in sub:
            sub[leaf] = p.default


def _get_key(node, key):
    for part in key.split("."):
        node = node[part]
    return node


def registered_values(node, registry, name):
    """``{dotted key: value}`` of the keys that entry ``name`` of ``registry`` declares."""
    return {p.key: _get_key(node, p.key) for p in registry.get(name).params}


def validate_registered_keys(node, registry):
    """Run every declared key's check; raise ValueError naming ``MODEL.IOU_AWARE.<key>``."""
    for p in registry.all_params():
        if p.check is not None:
            value = _get_key(node, p.key)
            err = p.check(value)
            if err:
                _fail(p.key, f"{err}, got {value!r}")


def _fail(key, msg):
    raise ValueError(f"MODEL.IOU_AWARE.{key}: {msg}")


def _choice(key, value, valid):
    if value not in valid:
        _fail(key, f"got {value!r}; valid values are: {', '.join(repr(v) for v in valid)}")


def validate_iou_aware_config(cfg):
    """Check ``cfg.MODEL.IOU_AWARE``; raise ValueError naming the offending key."""
    from .losses import BOX_LOSSES

    c = cfg.MODEL.IOU_AWARE
    if c.BOX_LOSS and c.BOX_LOSS not in BOX_LOSSES:
        _fail("BOX_LOSS", f"unknown loss {c.BOX_LOSS!r}; valid names are: '' (stock), "
              + ", ".join(sorted(BOX_LOSSES)))
    if c.BOX_LOSS_WEIGHT < 0:
        _fail("BOX_LOSS_WEIGHT", f"must be >= 0, got {c.BOX_LOSS_WEIGHT}")
    _choice("BOX_PARAMETERIZATION", c.BOX_PARAMETERIZATION, PARAMETERIZATIONS)
    _choice("IOU_MODE", c.IOU_MODE, ("linear", "square", "log"))
    _choice("ALPHA_IOU.PENALTY", c.ALPHA_IOU.PENALTY, ALPHA_IOU_PENALTIES)
    if c.ALPHA_IOU.ALPHA <= 0:
        _fail("ALPHA_IOU.ALPHA", f"must be > 0 (He et al. eq. 1), got {c.ALPHA_IOU.ALPHA}")
    if c.ALPHA_IOU.ALPHA_PENALTY == 0:
        _fail("ALPHA_IOU.ALPHA_PENALTY", "must be > 0 (He et al. eq. 3), or < 0 for the same as ALPHA")
    if c.ALPHA_IOU.BOX_COX and c.ALPHA_IOU.PENALTY != "none":
        _fail("ALPHA_IOU.BOX_COX", "the Box-Cox form is He et al. eq. 1, which has no penalty term: "
              f"set ALPHA_IOU.PENALTY 'none' (got {c.ALPHA_IOU.PENALTY!r})")
    if not math.exp(-1) - 1e-12 <= c.FOCAL_L1.BETA <= 1:
        _fail("FOCAL_L1.BETA", f"must be in [1/e, 1] (Zhang et al. eq. 8), got {c.FOCAL_L1.BETA}")
    if c.FOCAL_EIOU.GAMMA < 0:
        _fail("FOCAL_EIOU.GAMMA", f"must be >= 0, got {c.FOCAL_EIOU.GAMMA}")
    if not 0 < c.HIOU.GAMMA <= 1:
        _fail("HIOU.GAMMA", f"must be in (0, 1]: the HIoU loss is monotone only for gamma <= 1 "
              f"(Wang & Zhang sec. 3.2), got {c.HIOU.GAMMA}")
    if c.HIOU.ALPHA < 0:
        _fail("HIOU.ALPHA", f"must be >= 0, got {c.HIOU.ALPHA}")
    if c.SMOOTH_EIOU.POWER < 1:
        _fail("SMOOTH_EIOU.POWER", f"must be >= 1 (Peng & Yu eq. 23), got {c.SMOOTH_EIOU.POWER}")
    if c.IOU_BALANCED_LOC.LAMBDA < 0:
        _fail("IOU_BALANCED_LOC.LAMBDA", f"must be >= 0, got {c.IOU_BALANCED_LOC.LAMBDA}")
    if c.IOU_BALANCED_LOC.LOC_WEIGHT < 0:
        _fail("IOU_BALANCED_LOC.LOC_WEIGHT", f"must be >= 0, got {c.IOU_BALANCED_LOC.LOC_WEIGHT}")
    _choice("CLS_LOSS", c.CLS_LOSS, CLS_LOSSES)
    if c.IOU_BALANCED_CLS.ETA < 0:
        _fail("IOU_BALANCED_CLS.ETA", f"must be >= 0, got {c.IOU_BALANCED_CLS.ETA}")
    _choice("HARMONIC.DETACH_FACTORS", c.HARMONIC.DETACH_FACTORS, HARMONIC_DETACH)
    if c.HARMONIC.TC_LOSS and c.CLS_LOSS != "harmonic":
        _fail("HARMONIC.TC_LOSS", "the Task-Contrastive loss is part of the harmonic loss "
              "(Wang & Zhang eq. 12): set CLS_LOSS 'harmonic'")
    for key in ("TC_MARGIN", "TC_WEIGHT"):
        if c.HARMONIC[key] < 0:
            _fail(f"HARMONIC.{key}", f"must be >= 0 (Wang & Zhang eq. 8), got {c.HARMONIC[key]}")
    if c.IOU_HEAD.LOSS_WEIGHT < 0:
        _fail("IOU_HEAD.LOSS_WEIGHT", f"must be >= 0, got {c.IOU_HEAD.LOSS_WEIGHT}")
    _choice("NMS.TYPE", c.NMS.TYPE, NMS_TYPES)
    if c.NMS.TYPE in ("score_fused", "iou_guided") and not c.IOU_HEAD.ENABLED:
        _fail("NMS.TYPE", f"{c.NMS.TYPE!r} NMS ranks by the predicted IoU: it needs "
              "MODEL.IOU_AWARE.IOU_HEAD.ENABLED True")
    if not 0.0 <= c.NMS.FUSION_ALPHA <= 1.0:
        _fail("NMS.FUSION_ALPHA", f"must be in [0, 1], got {c.NMS.FUSION_ALPHA}")
    _choice("NMS.SOFT_METHOD", c.NMS.SOFT_METHOD, ("gaussian", "linear"))
    if c.NMS.SOFT_SIGMA <= 0:
        _fail("NMS.SOFT_SIGMA", f"must be > 0, got {c.NMS.SOFT_SIGMA}")


# ---------------------------------------------------------------------------------------------------
# Keys that apply to every detector (stock ones too), and the check that MODEL.IOU_AWARE is used.


def add_training_safety_config(cfg):
    """Datasets given as COCO-format files, and the divergence guard of ``iou_aware.engine.Trainer``."""
    # COCO-format datasets given as files: "NAME=JSON:IMAGE_ROOT" strings, each registered under
    # NAME (iou_aware.data.coco_files; checked when registered). tools/train_net.py's
    # --dataset NAME=JSON:IMAGE_ROOT appends to this list.
    cfg.DATASETS.COCO_FILES = []
    # Divergence guard (iou_aware.divergence.DivergenceGuard, a hook of iou_aware.engine.Trainer):
    # training stops with FloatingPointError when a loss, a prediction or a parameter is not
    # finite, or when a box loss (loss_box_reg, loss_rpn_loc) stays exactly 0 while positives exist
    # (the box branch gets no gradient: e.g. Focal-EIoU's IoU^gamma weight is 0 when no predicted
    # box overlaps its ground truth). No checkpoint is written once it has fired.
    cfg.SOLVER.DIVERGENCE_GUARD = CN()
    cfg.SOLVER.DIVERGENCE_GUARD.ENABLED = True
    # consecutive iterations with a box loss of exactly 0 and positives present before stopping;
    # 0 = never stop for that (a box loss whose weight is 0 in the config is never checked)
    cfg.SOLVER.DIVERGENCE_GUARD.ZERO_BOX_LOSS_ITERS = 5
    return cfg


def _changed_keys(node, default, prefix):
    """Dotted keys under ``node`` whose value differs from ``default`` (compared node by node)."""
    changed = []
    for key in sorted(set(node) | set(default)):
        full = f"{prefix}.{key}"
        value, ref = node.get(key), default.get(key)
        if isinstance(value, CN) and isinstance(ref, CN):
            changed += _changed_keys(value, ref, full)
        elif value != ref:
            changed.append(full)
    return changed


def uses_iou_aware_keys(cfg):
    """Whether the model of ``cfg`` reads ``MODEL.IOU_AWARE``: its meta-architecture is an IoU-aware
    detector (``IoUAwareRetinaNet``) or an R-CNN with IoU-aware ROI heads (``IoUAwareROIHeads``).
    None when the meta-architecture is not registered (the model build reports that)."""
    from detectron2.modeling import META_ARCH_REGISTRY, ROI_HEADS_REGISTRY, GeneralizedRCNN

    from .modeling import IoUAwareROIHeads
    from .modeling.common import IoUAwareMixin

    if cfg.MODEL.META_ARCHITECTURE not in META_ARCH_REGISTRY:
        return None
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    if issubclass(arch, IoUAwareMixin):
        return True
    if issubclass(arch, GeneralizedRCNN) and cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY:
        return issubclass(ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME), IoUAwareROIHeads)
    return False


def check_iou_aware_keys_used(cfg):
    """Raise ValueError when ``MODEL.IOU_AWARE`` keys differ from the defaults of
    :func:`add_iou_aware_config` but the model does not read them (a stock detector would train
    and run as if they were not given). The message names the keys and the model setting that
    would use them."""
    from detectron2.config import get_cfg
    from detectron2.modeling import GeneralizedRCNN, META_ARCH_REGISTRY, RetinaNet

    default = add_iou_aware_config(get_cfg()).MODEL.IOU_AWARE
    changed = _changed_keys(cfg.MODEL.IOU_AWARE, default, "MODEL.IOU_AWARE")
    if not changed or uses_iou_aware_keys(cfg) is not False:
        return
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    retinanet = "MODEL.META_ARCHITECTURE IoUAwareRetinaNet"
    rcnn = "MODEL.ROI_HEADS.NAME IoUAwareROIHeads"
    if issubclass(arch, RetinaNet):
        model, fix = f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}", retinanet
    elif issubclass(arch, GeneralizedRCNN):
        model, fix = f"MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME!r}", rcnn
    else:
        model = f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}"
        fix = f"{retinanet} (RetinaNet) or {rcnn} (Faster R-CNN)"
    given = ", ".join(f"{k} {_get_key(cfg, k)!r}" for k in changed)
    raise ValueError(
        f"{given}: the model does not read MODEL.IOU_AWARE ({model} is not IoU-aware), "
        f"so it would train and run without them. Set {fix} to use them, or remove them."
    )
