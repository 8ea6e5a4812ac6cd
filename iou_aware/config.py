"""``add_iou_aware_config(cfg)``: every key this project adds to a Detectron2 config.

Defaults reproduce stock Detectron2 exactly: an unchanged config trains the stock detector.
``validate_iou_aware_config(cfg)`` (called when an IoU-aware model is built) rejects invalid values
and combinations with a message that names the key; ``validate_tta_config(cfg)`` (called by
``iou_aware.engine.setup_cfg`` and the TTA wrapper) checks ``TEST.AUG.MERGE_TYPE``.
"""

from detectron2.config import CfgNode as CN

from .nms import NMS_REGISTRY, nms_needs_ious

CLS_LOSSES = ("", "iou_balanced", "harmonic", "quality_focal", "varifocal")
PARAMETERIZATIONS = ("deltas", "corners")
HARMONIC_DETACH = ("auto", "none", "both")


def add_iou_aware_config(cfg):
    """Add the project's keys (with defaults) to ``cfg`` in place and return it."""
    add_training_safety_config(cfg)
    # --- The built-in synthetic dataset (iou_aware.data) ----------------------------------------
    # Registered as synthetic_shapes_train / synthetic_shapes_val when DATASETS.TRAIN/TEST name them;
    # generated on first use under ROOT (default: $IOU_AWARE_DATASETS/synthetic_shapes, with
    # IOU_AWARE_DATASETS defaulting to ./datasets), one sub-folder per size/seed.
    cfg.DATASETS.SYNTHETIC = CN()
    cfg.DATASETS.SYNTHETIC.ROOT = ""  # "" = default location
    cfg.DATASETS.SYNTHETIC.NUM_TRAIN = 1000  # training images
    cfg.DATASETS.SYNTHETIC.NUM_VAL = 100  # validation images
    cfg.DATASETS.SYNTHETIC.IMAGE_SIZE = 128  # square images, pixels
    cfg.DATASETS.SYNTHETIC.SEED = 0  # generator seed (train and val derive their own)

    # --- IoU-aware detectors: META_ARCHITECTURE "IoUAwareRetinaNet" / "IoUAwareFCOS", or ROI_HEADS.NAME
    # "IoUAwareROIHeads"; set on any other model these keys are refused (check_iou_aware_keys_used)
    _C = cfg.MODEL.IOU_AWARE = CN()

    # Box regression loss: "" = the detector's stock loss (RetinaNet.BBOX_REG_LOSS_TYPE /
    # ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE), or any name of iou_aware.losses.BOX_LOSSES (built in:
    # smooth_l1 iou giou diou ciou efficient_iou focal_efficient_iou alpha_iou harmonic_iou
    # smooth_extended_iou focal_l1 iou_balanced_smooth_l1; more with register_box_loss)
    _C.BOX_LOSS = ""
    _C.BOX_LOSS_WEIGHT = 1.0  # multiplies the box loss (ROI heads: on top of BBOX_REG_LOSS_WEIGHT)
    # How box regression is parameterized: "deltas" (stock Box2BoxTransform: centre/size deltas) or
    # "corners" (Peng & Yu sec. IV, Algorithm 1: the four corner offsets divided by sqrt(anchor or
    # proposal area)); with "corners" the IoU-type losses are computed in that normalized space.
    _C.BOX_PARAMETERIZATION = "deltas"
    # Every box loss's own keys, declared where the loss is registered (iou_aware.losses), with their
    # defaults, help and checks: SMOOTH_L1_BETA, IOU_MODE, ALPHA_IOU.*, FOCAL_EIOU.*, FOCAL_L1.*,
    # SMOOTH_EIOU.*, HIOU.*, IOU_BALANCED_LOC.*, and those of losses registered before this call
    from .losses import BOX_LOSS_REGISTRY

    add_registered_keys(_C, BOX_LOSS_REGISTRY)

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

    # NMS at inference: any name of iou_aware.nms.NMS_REGISTRY: "standard" (stock per-class NMS),
    # "score_fused" (score^(1-a) * iou^a, then NMS), "iou_guided" (IoU-Net Alg. 1: rank by predicted
    # IoU, keep the cluster's best score), "soft" (Bodla et al.), "diou" (DIoU-NMS), "cluster"
    # (Cluster-NMS and its variants), "matrix" (Matrix NMS), "weighted" (weighted NMS: merged
    # boxes), "score_voting" (NMS, then PAA's score voting of the kept boxes), or one added with
    # iou_aware.nms.register_nms. IoU threshold: the detector's NMS_THRESH_TEST. Types registered
    # with needs_ious (score_fused, iou_guided) need IOU_HEAD.ENABLED. The keys of every registered
    # type (NMS.FUSION_ALPHA, NMS.SOFT_METHOD, NMS.SOFT_SIGMA, NMS.SOFT_SCORE_THRESH, ...) are added
    # with their defaults; their help texts are in iou_aware/nms/registry.py.
    _C.NMS = CN()
    _C.NMS.TYPE = "standard"
    # For every type, in this order (docs/nms.md, "Order of the inference steps"): candidates above
    # the detector's SCORE_THRESH_TEST, at most TOPK_CANDIDATES_TEST per level (dense detectors);
    # the NMS of NMS.TYPE at NMS_THRESH_TEST, per class unless CLASS_AGNOSTIC; then the output
    # scores (which soft, Matrix and score-fused NMS change) at least OUTPUT_SCORE_THRESH; then the
    # DETECTIONS_PER_IMAGE best.
    _C.NMS.CLASS_AGNOSTIC = False  # suppress across classes (each box keeps its own class)
    _C.NMS.OUTPUT_SCORE_THRESH = 0.0  # drop NMS outputs whose output score is below this
    add_registered_keys(_C, NMS_REGISTRY)
    _add_one_stage_keys(cfg)

    # --- Test-time augmentation (iou_aware.modeling.tta.IoUAwareTTA; every detector) --------------
    # TEST.AUG.{ENABLED, MIN_SIZES, MAX_SIZE, FLIP} are Detectron2's: with ENABLED, tools/train_net.py
    # also evaluates every TEST dataset with TTA after training and with --eval-only (result keys
    # suffixed "_TTA"). MERGE_TYPE: how the augmentations' detections (mapped back to the original
    # image) are merged: "standard" (Detectron2's own merge: per-class NMS), any name of
    # iou_aware.nms.NMS_REGISTRY (with its MODEL.IOU_AWARE.NMS.* keys), "" = the model's
    # MODEL.IOU_AWARE.NMS.TYPE, or "wbf" (Weighted Boxes Fusion, Solovyev et al. 2021). The merge
    # sees the copies' output scores: types that change scores (score_fused, soft, matrix) change
    # them a second time. IoU threshold: the detector's NMS_THRESH_TEST.
    cfg.TEST.AUG.MERGE_TYPE = "standard"
    return cfg


# --- One-stage quality ranking: IoUAwareFCOS and the joint classification-quality losses ---------
ONE_STAGE_CLS_LOSSES = ("quality_focal", "varifocal")
ONE_STAGE_ARCHITECTURES = ("IoUAwareRetinaNet", "IoUAwareFCOS")
QUALITY_TYPES = ("centerness", "iou", "none")
QUALITY_LOSSES = ("bce", "kl")


def _add_one_stage_keys(cfg):
    """``MODEL.FCOS`` (what Detectron2's FCOS takes, with its defaults) and the one-stage keys of
    ``MODEL.IOU_AWARE``."""
    # IoUAwareFCOS (META_ARCHITECTURE "IoUAwareFCOS"): defaults of detectron2.modeling.meta_arch.fcos
    # and its model-zoo config (common/models/fcos.py). The backbone is BACKBONE.NAME
    # "build_fcos_resnet_fpn_backbone" (P6 and P7 from P5); detections per image: TEST.DETECTIONS_PER_IMAGE.
    _F = cfg.MODEL.FCOS = CN()
    _F.NUM_CLASSES = 80
    _F.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _F.NUM_CONVS = 4  # 3x3 convs of each head tower, with FPN.OUT_CHANNELS channels
    _F.NORM = "GN"  # norm of the head towers ("" = none)
    _F.PRIOR_PROB = 0.01  # initial foreground probability of the classifier
    _F.FOCAL_LOSS_ALPHA = 0.25
    _F.FOCAL_LOSS_GAMMA = 2.0
    _F.CENTER_SAMPLING_RADIUS = 1.5  # positives lie within this many strides of a box centre
    _F.SCORE_THRESH_TEST = 0.2  # on the ranking score (stock: sqrt(cls * centerness))
    _F.TOPK_CANDIDATES_TEST = 1000  # per level, before NMS
    _F.NMS_THRESH_TEST = 0.6

    _C = cfg.MODEL.IOU_AWARE
    # CLS_LOSS of the one-stage detectors (IoUAwareRetinaNet, IoUAwareFCOS), replacing the focal
    # loss: "quality_focal" (Li et al., GFL) or "varifocal" (Zhang et al., VarifocalNet). The target
    # of a positive's ground-truth class is the IoU of its decoded box with its ground truth
    # (detached), 0 elsewhere; the classification score becomes the joint class-quality score.
    _C.QFL = CN()
    _C.QFL.BETA = 2.0  # |y - sigma|^beta
    _C.VFL = CN()
    _C.VFL.ALPHA = 0.75  # weight of the negatives
    _C.VFL.GAMMA = 2.0  # p^gamma on the negatives
    # IoUAwareFCOS's quality branch (one 3x3 conv on the box tower): "centerness" (stock FCOS),
    # "iou" (the IoU of the decoded box with its ground truth, detached) or "none" (no branch).
    # Trained on positives with QUALITY_LOSS "bce" (stock) or "kl" (Peng & Yu eq. 31-32, same
    # gradient); at inference candidates rank by cls^(1-a) * quality^a, a = NMS.FUSION_ALPHA
    # (stock FCOS: a = 0.5, sqrt(cls * centerness)). With "iou", NMS.TYPE "score_fused" and
    # "iou_guided" use the predicted IoU.
    _C.QUALITY = "centerness"
    _C.QUALITY_LOSS = "bce"
    _C.QUALITY_LOSS_WEIGHT = 1.0


def predicts_iou(cfg) -> bool:
    """Whether the configured detector predicts the IoU of its boxes (IoU head or FCOS's IoU
    quality branch)."""
    c = cfg.MODEL.IOU_AWARE
    if cfg.MODEL.META_ARCHITECTURE == "IoUAwareFCOS":
        return c.QUALITY == "iou"
    return c.IOU_HEAD.ENABLED


def _validate_one_stage_keys(cfg):
    c = cfg.MODEL.IOU_AWARE
    arch = cfg.MODEL.META_ARCHITECTURE
    if c.CLS_LOSS in ONE_STAGE_CLS_LOSSES and arch not in ONE_STAGE_ARCHITECTURES:
        _fail("CLS_LOSS", f"{c.CLS_LOSS!r} is a sigmoid classification loss of the one-stage detectors: "
              f"set MODEL.META_ARCHITECTURE to one of {', '.join(ONE_STAGE_ARCHITECTURES)} (got {arch!r})")
    if c.QFL.BETA < 0:
        _fail("QFL.BETA", f"must be >= 0, got {c.QFL.BETA}")
    for key in ("ALPHA", "GAMMA"):
        if c.VFL[key] < 0:
            _fail(f"VFL.{key}", f"must be >= 0, got {c.VFL[key]}")
    _choice("QUALITY", c.QUALITY, QUALITY_TYPES)
    if c.QUALITY != "centerness" and arch != "IoUAwareFCOS":
        _fail("QUALITY", f"is the quality branch of IoUAwareFCOS: set MODEL.META_ARCHITECTURE "
              f"'IoUAwareFCOS' (got {arch!r}), or use MODEL.IOU_AWARE.IOU_HEAD")
    _choice("QUALITY_LOSS", c.QUALITY_LOSS, QUALITY_LOSSES)
    if c.QUALITY_LOSS_WEIGHT < 0:
        _fail("QUALITY_LOSS_WEIGHT", f"must be >= 0, got {c.QUALITY_LOSS_WEIGHT}")
    if arch == "IoUAwareFCOS":
        if c.IOU_HEAD.ENABLED:
            _fail("IOU_HEAD.ENABLED", "IoUAwareFCOS predicts the IoU with its quality branch: set "
                  "MODEL.IOU_AWARE.QUALITY 'iou' instead")
        if c.BOX_PARAMETERIZATION != "deltas":
            _fail("BOX_PARAMETERIZATION", "IoUAwareFCOS regresses its own stride-normalized distances "
                  f"to the box sides: leave it 'deltas' (got {c.BOX_PARAMETERIZATION!r})")


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


def _missing_key(what="function"):
    return (f"is not in the config: a {what} declaring it was registered after the config was built; "
            "import the module that registers it before add_iou_aware_config (iou_aware.engine.setup_cfg)")


def _get_key(node, key):
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"MODEL.IOU_AWARE.{key} {_missing_key()}")
        node = node[part]
    return node


def registered_values(node, registry, name):
    """``{dotted key: value}`` of the keys that entry ``name`` of ``registry`` declares."""
    return {p.key: _get_key(node, p.key) for p in registry.get(name).params}


def validate_registered_keys(node, registry):
    """Check that every key ``registry`` declares is in the config and passes its check; raise
    ValueError naming ``MODEL.IOU_AWARE.<key>``."""
    for p in registry.all_params():
        try:
            value = _get_key(node, p.key)
        except KeyError:
            _fail(p.key, _missing_key(registry.what))
        err = p.check(value) if p.check is not None else None
        if err:
            _fail(p.key, f"{err}, got {value!r}")


def _fail(key, msg):
    raise ValueError(f"MODEL.IOU_AWARE.{key}: {msg}")


def _choice(key, value, valid):
    if value not in valid:
        _fail(key, f"got {value!r}; valid values are: {', '.join(repr(v) for v in valid)}")


def validate_iou_aware_config(cfg):
    """Check ``cfg.MODEL.IOU_AWARE``; raise ValueError naming the offending key."""
    from .losses import BOX_LOSS_REGISTRY

    c = cfg.MODEL.IOU_AWARE
    _validate_one_stage_keys(cfg)
    if c.BOX_LOSS and c.BOX_LOSS not in BOX_LOSS_REGISTRY:
        _fail("BOX_LOSS", f"unknown loss {c.BOX_LOSS!r}; valid names are: '' (stock), "
              + ", ".join(sorted(BOX_LOSS_REGISTRY)))
    if c.BOX_LOSS_WEIGHT < 0:
        _fail("BOX_LOSS_WEIGHT", f"must be >= 0, got {c.BOX_LOSS_WEIGHT}")
    _choice("BOX_PARAMETERIZATION", c.BOX_PARAMETERIZATION, PARAMETERIZATIONS)
    validate_registered_keys(c, BOX_LOSS_REGISTRY)
    if c.ALPHA_IOU.BOX_COX and c.ALPHA_IOU.PENALTY != "none":
        _fail("ALPHA_IOU.BOX_COX", "the Box-Cox form is He et al. eq. 1, which has no penalty term: "
              f"set ALPHA_IOU.PENALTY 'none' (got {c.ALPHA_IOU.PENALTY!r})")
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
    if c.NMS.TYPE not in NMS_REGISTRY:
        _fail("NMS.TYPE", f"unknown NMS type {c.NMS.TYPE!r}; valid names are: "
              + ", ".join(repr(n) for n in sorted(NMS_REGISTRY))
              + " (iou_aware.nms.register_nms adds more; register before building the config)")
    if nms_needs_ious(c.NMS.TYPE) and not predicts_iou(cfg):
        _fail("NMS.TYPE", f"{c.NMS.TYPE!r} NMS uses the predicted IoUs: it needs "
              "MODEL.IOU_AWARE.IOU_HEAD.ENABLED True (IoUAwareFCOS: MODEL.IOU_AWARE.QUALITY 'iou')")
    if not isinstance(c.NMS.CLASS_AGNOSTIC, bool):
        _fail("NMS.CLASS_AGNOSTIC", f"must be True or False, got {c.NMS.CLASS_AGNOSTIC!r}")
    if not 0.0 <= c.NMS.OUTPUT_SCORE_THRESH <= 1.0:
        _fail("NMS.OUTPUT_SCORE_THRESH", f"must be in [0, 1], got {c.NMS.OUTPUT_SCORE_THRESH}")
    validate_registered_keys(c, NMS_REGISTRY)


# ---------------------------------------------------------------------------------------------------
# Test-time augmentation: TEST.AUG.MERGE_TYPE

TTA_WBF = "wbf"


def merge_type_needs_ious(name) -> bool:
    """Whether the TTA merge type ``name`` (a registered NMS type) uses the predicted IoUs."""
    return name != TTA_WBF and name in NMS_REGISTRY and nms_needs_ious(name)


def validate_tta_config(cfg):
    """Check ``TEST.AUG``: a known MERGE_TYPE, one the model can feed (IoU-using types need an IoU
    prediction), and at least one size; raise ValueError naming the key and the valid values."""
    a = cfg.TEST.AUG
    merge = a.MERGE_TYPE
    if merge != TTA_WBF and merge and merge not in NMS_REGISTRY:
        valid = ["'' (the model's MODEL.IOU_AWARE.NMS.TYPE)", f"{TTA_WBF!r} (Weighted Boxes Fusion)",
                 *(repr(n) for n in sorted(NMS_REGISTRY))]
        raise ValueError(f"TEST.AUG.MERGE_TYPE: unknown merge type {merge!r}; valid values are: "
                         + ", ".join(valid) + " (iou_aware.nms.register_nms adds more)")
    if merge_type_needs_ious(merge) and not predicts_iou(cfg):
        raise ValueError(f"TEST.AUG.MERGE_TYPE {merge!r} merges by the predicted IoUs: it needs "
                         "MODEL.IOU_AWARE.IOU_HEAD.ENABLED True (IoUAwareFCOS: MODEL.IOU_AWARE.QUALITY "
                         "'iou'); or choose a merge type without IoUs, e.g. 'standard' or 'wbf'")
    if len(a.MIN_SIZES) == 0 or min(a.MIN_SIZES) < 1:
        raise ValueError(f"TEST.AUG.MIN_SIZES: one or more short-side sizes >= 1, got {tuple(a.MIN_SIZES)}")


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
