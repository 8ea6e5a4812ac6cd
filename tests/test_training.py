"""End-to-end training plumbing on the synthetic dataset: configs train, evaluate, checkpoint,
resume, run multi-process on CPU, and the demo writes its outputs."""

import json
import math
import os
import subprocess
import sys

import pytest

from iou_aware.engine import Trainer, setup_cfg

SYNTHETIC_CONFIGS = ["configs/synthetic/retinanet_R18_FPN.yaml", "configs/synthetic/faster_rcnn_R18_FPN.yaml"]
IOU_AWARE_CONFIG = "configs/synthetic/retinanet_R18_FPN_smooth_eiou_iouhead.yaml"


def read_metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_script(repo_root, *args, timeout=600):
    proc = subprocess.run(
        [sys.executable, *args], cwd=repo_root, capture_output=True, text=True, timeout=timeout
    )
    return proc


def train(repo_root, config, opts, output_dir, max_iter=2, resume=False):
    cfg = setup_cfg(
        os.path.join(repo_root, config),
        [*opts, "SOLVER.MAX_ITER", str(max_iter), "OUTPUT_DIR", str(output_dir)],
    )
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    start = trainer.start_iter
    trainer.train()
    return cfg, start


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS)
def test_two_iterations_finite_losses_and_evaluation(repo_root, tiny_synthetic_opts, tmp_path, config):
    train(repo_root, config, tiny_synthetic_opts, tmp_path)
    records = read_metrics(tmp_path)
    # Detectron2's PeriodicWriter writes every 20 iterations and after the last one
    losses = [r for r in records if "total_loss" in r]
    assert [r["iteration"] for r in losses] == [1]
    for r in losses:
        loss_values = {k: v for k, v in r.items() if k.startswith("loss") or k == "total_loss"}
        assert len(loss_values) >= 3
        assert all(math.isfinite(v) for v in loss_values.values()), loss_values
    # the final evaluation (EvalHook after the last iteration) went through the IoU-aware evaluator
    evals = [r for r in records if "bbox/AP" in r]
    assert evals, "no evaluation record in metrics.json"
    for key in ("bbox/AP50", "bbox/AP75", "bbox/AP95", "bbox/mAP75:95"):
        assert key in evals[-1]
    assert os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.parametrize("config", [SYNTHETIC_CONFIGS[0], IOU_AWARE_CONFIG])
def test_eval_only_and_resume(repo_root, tiny_synthetic_opts, tmp_path, config):
    opts = [*tiny_synthetic_opts, "SOLVER.CHECKPOINT_PERIOD", "1"]
    _, start = train(repo_root, config, opts, tmp_path, max_iter=2)
    assert start == 0
    assert os.path.isfile(tmp_path / "model_0000000.pth")

    # resume continues at the iteration after the last checkpoint (model_final = iteration 1)
    _, start = train(repo_root, config, opts, tmp_path, max_iter=4, resume=True)
    assert start == 2
    iters = [r["iteration"] for r in read_metrics(tmp_path) if "total_loss" in r]
    assert iters == [1, 3]  # the last iteration of each run (PeriodicWriter)

    # --eval-only on the saved checkpoint, through the command-line tool
    proc = run_script(
        repo_root, "tools/train_net.py", "--config-file", config, "--eval-only",
        *opts, "OUTPUT_DIR", str(tmp_path / "eval"), "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
        "MODEL.RETINANET.SCORE_THRESH_TEST", "0.0",  # a 4-iteration model scores below 0.05
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "AP95" in proc.stdout + proc.stderr
    if config == IOU_AWARE_CONFIG:  # detections carry the IoU head's prediction
        assert "pred_iou_pearson" in proc.stdout + proc.stderr
    assert os.path.isfile(tmp_path / "eval" / "inference" / "synthetic_shapes_val" / "coco_instances_results.json")


def test_two_process_cpu_training(repo_root, tiny_synthetic_opts, tmp_path):
    """launch() with 2 processes on CPU (gloo): needs the CPU-safe DDP wrapper."""
    proc = run_script(
        repo_root, "tools/train_net.py", "--num-gpus", "2", "--config-file", SYNTHETIC_CONFIGS[0],
        *tiny_synthetic_opts, "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
        "OUTPUT_DIR", str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    iters = [r["iteration"] for r in read_metrics(tmp_path) if "total_loss" in r]
    assert iters == [1]


def test_demo_writes_images_and_json(repo_root, tiny_synthetic_opts, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    config = SYNTHETIC_CONFIGS[0]
    cfg, _ = train(repo_root, config, tiny_synthetic_opts, tmp_path / "run", max_iter=1)
    DatasetCatalog.get("synthetic_shapes_val")
    images = MetadataCatalog.get("synthetic_shapes_val").image_root
    out = tmp_path / "demo"
    proc = run_script(
        repo_root, "tools/demo.py", "--config-file", config, "--input", images, "--output", str(out),
        "--max-images", "3", "--confidence-threshold", "0.0",
        "--opts", *tiny_synthetic_opts, "MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(pngs) == 3
    with open(out / "detections.json") as f:
        dets = json.load(f)
    assert len(dets) == 3
    for records in dets.values():
        for r in records:
            assert len(r["bbox_xyxy"]) == 4 and 0.0 <= r["score"] <= 1.0


def test_demo_nms_override_and_side_by_side(repo_root, tiny_synthetic_opts, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    train(repo_root, IOU_AWARE_CONFIG, tiny_synthetic_opts, tmp_path / "run", max_iter=1)
    DatasetCatalog.get("synthetic_shapes_val")
    images = MetadataCatalog.get("synthetic_shapes_val").image_root
    out = tmp_path / "demo"
    proc = run_script(
        repo_root, "tools/demo.py", "--config-file", IOU_AWARE_CONFIG, "--input", images, "--output", str(out),
        "--max-images", "2", "--confidence-threshold", "0.0", "--nms", "score_fused", "--side-by-side",
        "--scale", "1",  # panels at the input's size
        "--opts", *tiny_synthetic_opts, "MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "detections.json") as f:
        dets = json.load(f)
    assert len(dets) == 2
    for pair in dets.values():
        assert set(pair) == {"left", "right"}
        for r in pair["right"]:
            assert 0.0 <= r["pred_iou"] <= 1.0
    import cv2

    img = cv2.imread(next(iter(dets)))
    panel = cv2.imread(str(out / sorted(p for p in os.listdir(out) if p.endswith(".png"))[0]))
    assert panel.shape[1] == 2 * img.shape[1]

    bad = run_script(
        repo_root, "tools/demo.py", "--config-file", SYNTHETIC_CONFIGS[0], "--input", images, "--output",
        str(out), "--nms", "iou_guided", "--opts", *tiny_synthetic_opts,
        "MODEL.META_ARCHITECTURE", "IoUAwareRetinaNet", "MODEL.WEIGHTS", str(tmp_path / "run" / "model_final.pth"),
    )
    assert bad.returncode == 2 and "MODEL.IOU_AWARE.NMS.TYPE" in bad.stderr


def test_demo_clear_errors(repo_root, tiny_synthetic_opts, tmp_path):
    config = SYNTHETIC_CONFIGS[0]
    missing_weights = run_script(
        repo_root, "tools/demo.py", "--config-file", config, "--input", str(tmp_path), "--output",
        str(tmp_path / "o"), "--opts", *tiny_synthetic_opts, "MODEL.WEIGHTS", str(tmp_path / "nope.pth"),
    )
    assert missing_weights.returncode == 2
    assert "Model weights not found" in missing_weights.stderr and "nope.pth" in missing_weights.stderr

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    missing_images = run_script(
        repo_root, "tools/demo.py", "--config-file", config, "--input", str(tmp_path / "no_such_dir"),
        "--output", str(tmp_path / "o"), "--opts", *tiny_synthetic_opts, "MODEL.WEIGHTS", str(weights),
    )
    assert missing_images.returncode == 2
    assert "No image found at" in missing_images.stderr and "no_such_dir" in missing_images.stderr


def test_launch_more_processes_than_gpus(monkeypatch):
    """--num-gpus above the visible GPUs: a clear error, or with IOU_AWARE_SHARE_GPUS=1 processes
    that share the GPUs over gloo; with enough GPUs (or none) Detectron2's launch unchanged."""
    import iou_aware.engine as engine

    calls = []
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(engine, "d2_launch", lambda *a, **k: calls.append(("d2", a, k)))
    monkeypatch.setattr(engine.mp, "start_processes", lambda fn, **k: calls.append(("shared", fn, k)))
    monkeypatch.delenv(engine.SHARE_GPUS_ENV, raising=False)

    def main():
        pass

    with pytest.raises(SystemExit, match=r"--num-gpus 2: only 1 CUDA device.*IOU_AWARE_SHARE_GPUS=1"):
        engine.launch(main, 2, dist_url="auto")
    assert calls == []

    monkeypatch.setenv(engine.SHARE_GPUS_ENV, "1")
    engine.launch(main, 2, dist_url="auto", args=("x",))
    kind, fn, kwargs = calls.pop()
    assert kind == "shared" and fn is engine._shared_gpu_worker and kwargs["nprocs"] == 2
    main_func, world_size, num_procs, machine_rank, dist_url, args = kwargs["args"]
    assert (main_func, world_size, num_procs, machine_rank, args) == (main, 2, 2, 0, ("x",))
    assert dist_url.startswith("tcp://127.0.0.1:") and dist_url != "tcp://127.0.0.1:"

    engine.launch(main, 1, dist_url="auto")  # enough GPUs: Detectron2's launch
    assert calls.pop()[0] == "d2"
    monkeypatch.setattr(engine.torch.cuda, "is_available", lambda: False)
    engine.launch(main, 2, dist_url="auto")  # CPU processes (gloo): Detectron2's launch
    assert calls.pop()[0] == "d2"


def test_ddp_device_ids_follow_the_model():
    import torch

    from iou_aware.engine import ddp_device_ids

    assert ddp_device_ids(torch.device("cpu")) is None
    assert ddp_device_ids(torch.device("cuda", 0)) == [0]
    assert ddp_device_ids(torch.device("cuda", 1)) == [1]  # not the local rank: shared GPUs
