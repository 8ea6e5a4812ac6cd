"""The README's "Add your own loss or NMS" example, run as a user would: its code block is executed
as a module of its own (nothing in the package changes), the new names are selected by config keys,
and both detectors train one step and run inference with them."""

import math
import os
import re
import sys
import types

import pytest
import torch

from iou_aware.engine import Trainer, setup_cfg
from iou_aware.losses import BOX_LOSS_REGISTRY
from iou_aware.nms import NMS_REGISTRY

CONFIGS = {
    "retinanet": ("configs/synthetic/retinanet_R18_FPN.yaml", ["MODEL.META_ARCHITECTURE", "IoUAwareRetinaNet"]),
    "rcnn": ("configs/synthetic/faster_rcnn_R18_FPN.yaml", ["MODEL.ROI_HEADS.NAME", "IoUAwareROIHeads"]),
}


def readme_block(repo_root, heading, lang):
    """The first ```lang block under ``## heading`` in README.md."""
    with open(os.path.join(repo_root, "README.md")) as f:
        text = f.read()
    section = text.split(f"## {heading}\n", 1)
    assert len(section) == 2, f"README.md has no '## {heading}' section"
    body = re.split(r"\n## ", section[1], maxsplit=1)[0]
    match = re.search(rf"```{lang}\n(.*?)```", body, re.S)
    assert match, f"no ```{lang} block under '## {heading}'"
    return match.group(1), body


@pytest.fixture
def user_module(repo_root):
    """Execute the README's python block as the user's own module; unregister afterwards."""
    code, body = readme_block(repo_root, "Add your own loss or NMS", "python")
    module = types.ModuleType("my_iou_aware_extension")
    sys.modules[module.__name__] = module
    exec(compile(code, "README.md:add-your-own", "exec"), module.__dict__)
    yield module, body
    BOX_LOSS_REGISTRY.unregister("l1_boxes")
    NMS_REGISTRY.unregister("standard_min_score")
    sys.modules.pop(module.__name__, None)


def readme_overrides(body):
    """The KEY VALUE overrides the README shows for selecting the example (inline code)."""
    match = re.search(r"`(MODEL\.IOU_AWARE\.BOX_LOSS l1_boxes[^`]*)`", body)
    assert match, "the README does not show the overrides that select the example"
    return match.group(1).split()


@pytest.mark.parametrize("detector", sorted(CONFIGS))
def test_readme_example_trains_and_infers(repo_root, tiny_synthetic_opts, tmp_path, user_module, detector):
    module, body = user_module
    overrides = readme_overrides(body)
    assert overrides[overrides.index("MODEL.IOU_AWARE.NMS.TYPE") + 1] == "standard_min_score"
    config, arch = CONFIGS[detector]
    calls = {"loss": [], "nms": []}
    loss_fn, nms_fn = module.l1_boxes_loss, module.standard_min_score_nms

    def loss_spy(*a, **k):
        calls["loss"].append(k.get("power"))
        return loss_fn(*a, **k)

    def nms_spy(*a, **k):
        calls["nms"].append(k.get("min_score"))
        return nms_fn(*a, **k)

    # the same entries (keys, defaults, metadata) with a spy in place of the function
    for registry, name, spy in ((BOX_LOSS_REGISTRY, "l1_boxes", loss_spy),
                                (NMS_REGISTRY, "standard_min_score", nms_spy)):
        entry = registry.get(name)
        registry.register(name, spy, params=entry.params, replace=True, **entry.meta)
    cfg = setup_cfg(os.path.join(repo_root, config),
                    [*tiny_synthetic_opts, *arch, *overrides, "SOLVER.MAX_ITER", "1",
                     "OUTPUT_DIR", str(tmp_path), "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",
                     "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"])
    min_score = float(overrides[overrides.index("MODEL.IOU_AWARE.NMS.MIN_SCORE") + 1])
    assert cfg.MODEL.IOU_AWARE.L1_BOXES.POWER == float(overrides[overrides.index("MODEL.IOU_AWARE.L1_BOXES.POWER") + 1])
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()  # one step, then the final evaluation runs inference through the new NMS
    assert calls["loss"] and set(calls["loss"]) == {cfg.MODEL.IOU_AWARE.L1_BOXES.POWER}
    assert calls["nms"] and set(calls["nms"]) == {min_score}
    storage_losses = trainer.storage.latest()
    assert math.isfinite(storage_losses["total_loss"][0])
    model = trainer.model.eval()
    images = torch.rand(3, 128, 128) * 255
    with torch.no_grad():
        out = model([{"image": images, "height": 128, "width": 128}])[0]["instances"]
    assert (out.scores >= min_score).all()
