"""The GPU run (benchmarks/gpu/): its CPU quick mode end to end, the stop after a failed import
check, and the wheel-folder helpers of prepare.sh."""

import base64
import csv
import hashlib
import importlib.util
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(REPO, "benchmarks", "gpu")
STEP_NAMES = ["tests", "kernels", "training", "amp", "ddp"]
OUT_FILES = ["amp.csv", "log.txt", "losses.csv", "nms.csv", "steps.csv", "summary.md", "tests.csv",
             "training.csv"]


def load(name):
    spec = importlib.util.spec_from_file_location(f"gpu_{name}", os.path.join(GPU, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_cpu_run_writes_every_file_and_every_step_passes(tmp_path):
    from iou_aware.losses import BOX_LOSS_REGISTRY

    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "benchmarks/gpu/run.sh", str(out), "--device", "cpu", "--quick"], cwd=REPO,
        env=dict(os.environ, IOU_AWARE_PYTHON=sys.executable), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == OUT_FILES  # at most 8 files, flat
    assert all((out / f).is_file() for f in OUT_FILES)

    steps = read_csv(out / "steps.csv")
    assert [r["step"] for r in steps] == STEP_NAMES
    assert all(r["status"] == "pass" for r in steps), steps
    summary = (out / "summary.md").read_text()
    assert "**5 of 5 steps passed**" in summary
    for name in STEP_NAMES:
        assert f"| {name} |" in summary and f"===== step {name}: pass" in (out / "log.txt").read_text()

    assert {r["outcome"] for r in read_csv(out / "tests.csv")} == {"skipped"}  # no CUDA here
    losses = set(BOX_LOSS_REGISTRY.names())
    assert {r["loss"] for r in read_csv(out / "losses.csv")} >= losses | {"tv_giou", "tv_diou", "tv_ciou"}
    variants = {r["variant"] for r in read_csv(out / "nms.csv")}
    assert {"torchvision.batched_nms", "score_fused_nms", "iou_guided_nms"} <= variants
    training = read_csv(out / "training.csv")
    assert {(r["detector"], r["method"]) for r in training} >= {
        ("RetinaNet", "stock"), ("Faster R-CNN", "stock"), ("RetinaNet", "smooth_eiou_iouhead_nms_soft")}
    assert all(float(r["train_ratio"]) > 0 and float(r["infer_ratio"]) > 0 for r in training)
    amp = read_csv(out / "amp.csv")
    assert sorted(r["box_loss"] for r in amp) == sorted(losses)  # every box loss once (--quick)
    assert {r["detector"] for r in amp} == {"RetinaNet", "Faster R-CNN"}
    assert all(r["status"] == "pass" and r["losses_finite"] == "True" for r in amp), amp


def test_a_failed_import_check_stops_the_run(tmp_path, monkeypatch):
    run = load("run")
    calls = []

    def fake_run_step(step, args, scratch, budget):
        calls.append(step.name)
        failed = step.name == "tests"
        return {"step": step.name, "status": "fail" if failed else "pass", "figures": "pip package x is missing",
                "details": "", "seconds": 0.1, "cpu_s": 0.0, "budget_s": 1, "rc": 3 if failed else 0,
                "stop": failed, "log": "log text"}

    monkeypatch.setattr(run, "run_step", fake_run_step)
    assert run.main([str(tmp_path), "--device", "cpu"]) == 1
    assert calls == ["tests"]
    steps = read_csv(tmp_path / "steps.csv")
    assert [(r["step"], r["status"]) for r in steps] == [("tests", "fail")] + [(n, "not run") for n in STEP_NAMES[1:]]
    assert "pip package x is missing" in (tmp_path / "summary.md").read_text()


def test_import_check_names_the_missing_pip_package(monkeypatch):
    steps = load("steps")
    monkeypatch.setattr(steps, "IMPORTS", {"torch": "torch", "no_such_module_xyz": "no-such-package"})
    monkeypatch.setattr(steps, "DEEP_IMPORTS", [])
    problems = steps.check_imports()
    assert len(problems) == 1
    assert "pip package no-such-package is missing" in problems[0] and "no_such_module_xyz" in problems[0]


def _wheel(path, files):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return str(path)


def _meta(name, version, requires=()):
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    return "\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n"


def test_repacked_detectron2_wheel_is_pure_python(tmp_path):
    wheels = load("wheels")
    info = "sal_detectron2-0.7.2.dist-info"
    src = _wheel(tmp_path / "sal_detectron2-0.7.2-cp310-none-any.whl", {
        "detectron2/__init__.py": "__version__ = '0.7.2'\n",
        "detectron2/_C.cpython-310-x86_64-linux-gnu.so": b"\x7fELF",
        "detectron2/layers/nms.py": "x = 1\n",
        "tools/train_net.py": "print('shadow')\n",
        f"{info}/METADATA": _meta("sal-detectron2", "0.7.2", ["numpy<2"]),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n",
        f"{info}/top_level.txt": "detectron2\ntools\n",
        f"{info}/RECORD": "stale\n",
    })
    (tmp_path / "out").mkdir()
    out = wheels.repack_detectron2(src, str(tmp_path / "out"))
    assert os.path.basename(out) == "sal_detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert names == {"detectron2/__init__.py", "detectron2/layers/nms.py", f"{info}/METADATA",
                         f"{info}/WHEEL", f"{info}/top_level.txt", f"{info}/RECORD"}
        assert "Tag: py3-none-any" in z.read(f"{info}/WHEEL").decode()
        assert z.read(f"{info}/top_level.txt").decode().split() == ["detectron2"]
        record = {row[0]: row[1:] for row in csv.reader(z.read(f"{info}/RECORD").decode().splitlines())}
        assert set(record) == names
        for name in names - {f"{info}/RECORD"}:
            data = z.read(name)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert record[name] == [f"sha256={digest}", str(len(data))], name


def test_wheel_check_finds_unmet_and_doubled_requirements(tmp_path, capsys):
    wheels = load("wheels")

    def add(folder, name, version, requires=()):
        dist = f"{name.replace('-', '_')}-{version}"
        _wheel(folder / f"{dist}-py3-none-any.whl", {f"{dist}.dist-info/METADATA": _meta(name, version, requires)})

    good = tmp_path / "good"
    good.mkdir()
    add(good, "hydra-core", "1.3.8", ["antlr4-python3-runtime==4.9.*", "packaging", 'pywin32; sys_platform == "win32"'])
    add(good, "antlr4-python3-runtime", "4.9.3")
    add(good, "sal-detectron2", "0.7.2", ["numpy<2", "black", 'timm; extra == "all"'])
    assert wheels.check(str(good)) == 0
    assert "accepted" in capsys.readouterr().out  # numpy<2 and black, with their reasons

    bad = tmp_path / "bad"
    bad.mkdir()
    add(bad, "hydra-core", "1.3.8", ["antlr4-python3-runtime==4.9.*", "not-on-the-machine"])
    add(bad, "antlr4-python3-runtime", "4.11.0")
    add(bad, "yacs", "0.1.8")
    add(bad, "yacs", "0.1.7")
    assert wheels.check(str(bad)) == 1
    err = capsys.readouterr().err
    assert "antlr4-python3-runtime==4.9.*" in err and "carried antlr4-python3-runtime 4.11.0" in err
    assert "not-on-the-machine: neither carried nor on the GPU machine" in err
    assert "yacs: two versions" in err


@pytest.mark.parametrize("argv", [[], ["--device"]])
def test_run_sh_usage_errors(argv, tmp_path):
    proc = subprocess.run(["bash", "benchmarks/gpu/run.sh", *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and ("usage" in proc.stderr or "needs" in proc.stderr)


@pytest.mark.cuda
def test_cuda_marker_runs_only_where_torch_sees_a_device():
    """tests/conftest.py skips ``@pytest.mark.cuda`` tests without CUDA; the GPU run selects them."""
    import torch

    assert torch.cuda.is_available()
