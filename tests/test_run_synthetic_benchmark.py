"""benchmarks/run_synthetic_benchmark.py with training faked: the table, resuming and failed runs."""

import json
import os
import types

import pytest

from conftest import load_tool

MAX_ITER = 10


@pytest.fixture()
def tool():
    return load_tool("run_synthetic_benchmark")


class FakeTraining:
    """Stands in for ``subprocess.run`` of tools/train_net.py. Like Detectron2 it writes the run's
    config.yaml and appends to metrics.json. By config name: "works" ends with a final evaluation
    (AP = 10 + seed); "diverges" evaluates half-way, then exits 1 (until ``fixed``); "noeval" exits
    0 without an evaluation."""

    def __init__(self):
        self.calls, self.fixed = [], False

    def __call__(self, cmd, cwd, stdout, stderr):
        value = lambda key: cmd[cmd.index(key) + 1]  # noqa: E731
        name, seed, out = os.path.basename(value("--config-file")), int(value("SEED")), value("OUTPUT_DIR")
        self.calls.append((name, seed))
        with open(os.path.join(out, "config.yaml"), "w") as f:
            f.write(f"SOLVER:\n  MAX_ITER: {MAX_ITER}\n")

        def log(iteration, ap):
            with open(os.path.join(out, "metrics.json"), "a") as f:
                f.write(json.dumps({"iteration": iteration, "total_loss": 1.0}) + "\n")
                if ap is not None:
                    record = {"iteration": iteration, "bbox/AP": ap, "bbox/AP50": 20.0, "bbox/AIC": 0.4}
                    f.write(json.dumps(record) + "\n")

        if name == "diverges.yaml" and not self.fixed:
            log(MAX_ITER // 2 - 1, 5.0)
            return types.SimpleNamespace(returncode=1)
        if name == "noeval.yaml":
            log(MAX_ITER - 1, None)
            return types.SimpleNamespace(returncode=0)
        log(MAX_ITER, 10.0 + seed)
        return types.SimpleNamespace(returncode=0)


def test_table_resume_and_failed_runs(tool, tmp_path, monkeypatch):
    fake = FakeTraining()
    monkeypatch.setattr(tool.subprocess, "run", fake)
    configs = [f"configs/synthetic/{n}.yaml" for n in ("works", "diverges", "noeval")]
    argv = ["--configs", *configs, "--seeds", "0", "1", "--output", str(tmp_path)]

    assert tool.main(argv) == 1  # failed runs make the exit status 1
    assert len(fake.calls) == 6
    for name in ("diverges", "noeval"):
        assert os.path.exists(tmp_path / f"{name}_seed0" / tool.FAILED_MARK)
    table = (tmp_path / "results.md").read_text()
    assert "| works | 2 | 10.5 ± 0.7 | 20.0 ± 0.0 |" in table  # mean ± stdev over the two seeds
    assert "0.400 ± 0.000" in table  # AIC is a fraction: three decimals
    # the half-way evaluation of the diverged run is not taken as its result
    assert "| diverges | 0 (seed 0, 1 failed) | - |" in table
    assert "| noeval | 0 (seed 0, 1 failed) | - |" in table

    fake.calls.clear()
    assert tool.main(argv) == 1  # finished and failed runs are both reused
    assert fake.calls == []
    # --report-only trains nothing and lists what is missing
    more = ["--configs", configs[0], "configs/synthetic/new.yaml", "--seeds", "0", "1", "--output", str(tmp_path)]
    assert tool.main([*more, "--report-only"]) == 0 and fake.calls == []
    table = (tmp_path / "results.md").read_text()
    assert "| works | 2 | 10.5 ± 0.7 |" in table and "| new | 0 (seed 0, 1 not run) | - |" in table

    fake.fixed = True  # a retry that now succeeds replaces the failure
    assert tool.main([*argv, "--configs", configs[1], "--retry-failed"]) == 0
    assert sorted(fake.calls) == [("diverges.yaml", 0), ("diverges.yaml", 1)]
    assert "| diverges | 2 | 10.5 ± 0.7 |" in (tmp_path / "results.md").read_text()
    # the failed attempt's records were set aside, not mixed into the new metrics.json
    assert [p for p in os.listdir(tmp_path / "diverges_seed0") if p.startswith("metrics.json.attempt-")]


def test_interrupted_run_is_run_again(tool, tmp_path, monkeypatch):
    # an interrupted run left a half-way evaluation and no exit status: it is not final
    run_dir = tmp_path / "works_seed0"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"SOLVER:\n  MAX_ITER: {MAX_ITER}\n")
    (run_dir / "metrics.json").write_text(json.dumps({"iteration": 4, "bbox/AP": 1.0}) + "\n")
    assert tool.final_evaluation(str(run_dir)) is None
    fake = FakeTraining()
    monkeypatch.setattr(tool.subprocess, "run", fake)
    argv = ["--configs", "configs/synthetic/works.yaml", "--seeds", "0", "--output", str(tmp_path)]
    assert tool.main(argv) == 0 and fake.calls == [("works.yaml", 0)]
    assert tool.final_evaluation(str(run_dir))["bbox/AP"] == 10.0


def test_cell_format(tool):
    assert tool.fmt("AP", [12.21]) == "12.2"  # one seed: no spread
    assert tool.fmt("AP", [11.0, 12.0]) == "11.5 ± 0.7"
    assert tool.fmt("AIC", [0.4, 0.41, float("nan")]) == "0.405 ± 0.007"  # nan (no value) ignored
    assert tool.fmt("AP", [None]) == "-"


def test_stale_run_is_set_aside_and_run_again(tool, tmp_path, monkeypatch):
    # a finished run whose saved config.yaml disagrees with what its config file sets now
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "Base.yaml").write_text("SOLVER:\n  MAX_ITER: 10\n  STEPS: (5, 8)\nMODEL:\n  X: 1.0\n")
    (configs / "m.yaml").write_text('_BASE_: "Base.yaml"\nMODEL:\n  X: 2.5  # changed after the run\n')
    run_dir = tmp_path / "out" / "m_seed0"
    run_dir.mkdir(parents=True)
    saved = "SOLVER:\n  MAX_ITER: 10\n  STEPS:\n  - 5\n  - 8\nMODEL:\n  X: 1.0\n  Y: 3\nSEED: 0\n"
    (run_dir / "config.yaml").write_text(saved)
    (run_dir / "metrics.json").write_text(json.dumps({"iteration": 9, "bbox/AP": 1.0}) + "\n")
    config = str(configs / "m.yaml")
    assert tool.changed_settings(config, str(run_dir)) == [("MODEL.X", 1.0, 2.5)]
    # tuples written in a config file equal the lists Detectron2 dumps; keys the file does not set
    # (MODEL.Y) are not compared; --opts count as set
    (configs / "m.yaml").write_text('_BASE_: "Base.yaml"\n')
    assert tool.changed_settings(config, str(run_dir)) == []
    assert tool.changed_settings(config, str(run_dir), ["MODEL.Y", "4"]) == [("MODEL.Y", 3, "4")]
    assert tool.changed_settings(config, str(run_dir), ["MODEL.Y", "3"]) == []
    (configs / "m.yaml").write_text('_BASE_: "Base.yaml"\nMODEL:\n  X: 2.5\n')

    fake = FakeTraining()
    monkeypatch.setattr(tool.subprocess, "run", fake)
    argv = ["--configs", config, "--seeds", "0", "--output", str(tmp_path / "out")]
    assert tool.main([*argv, "--report-only"]) == 0 and fake.calls == []
    assert "| m | 0 (seed 0 stale: config changed) | - |" in (tmp_path / "out" / "results.md").read_text()
    assert tool.main(argv) == 0 and fake.calls == [("m.yaml", 0)]
    assert tool.final_evaluation(str(run_dir))["bbox/AP"] == 10.0
    (aside,) = [p for p in os.listdir(tmp_path / "out") if p.startswith("m_seed0.stale-")]
    assert (tmp_path / "out" / aside / "config.yaml").read_text() == saved
