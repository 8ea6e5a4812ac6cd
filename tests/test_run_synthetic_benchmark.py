"""tools/run_synthetic_benchmark.py with training faked: the table, resuming and failed runs."""

import importlib.util
import json
import os
import types

import pytest


@pytest.fixture()
def tool(repo_root):
    path = os.path.join(repo_root, "tools", "run_synthetic_benchmark.py")
    spec = importlib.util.spec_from_file_location("run_synthetic_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_training(calls, failing):
    """A stand-in for ``subprocess.run`` of tools/train_net.py: records the call, then writes a
    final evaluation (AP = 10 + seed) into OUTPUT_DIR's metrics.json, or fails for ``failing``."""

    def run(cmd, cwd, stdout, stderr):
        value = lambda key: cmd[cmd.index(key) + 1]  # noqa: E731
        config, seed, out = value("--config-file"), int(value("SEED")), value("OUTPUT_DIR")
        calls.append((os.path.basename(config), seed))
        if failing in config:
            return types.SimpleNamespace(returncode=1)
        with open(os.path.join(out, "metrics.json"), "w") as f:
            f.write(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
            f.write(json.dumps({"iteration": 9, "bbox/AP": 10.0 + seed, "bbox/AP50": 20.0, "bbox/AIC": 0.4}) + "\n")
        return types.SimpleNamespace(returncode=0)

    return run


def test_table_resume_and_failed_runs(tool, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(tool.subprocess, "run", fake_training(calls, failing="diverges"))
    configs = ["configs/synthetic/works.yaml", "configs/synthetic/diverges.yaml"]
    argv = ["--configs", *configs, "--seeds", "0", "1", "--output", str(tmp_path)]

    assert tool.main(argv) == 1  # a failed run makes the exit status 1
    assert sorted(calls) == [("diverges.yaml", 0), ("diverges.yaml", 1), ("works.yaml", 0), ("works.yaml", 1)]
    assert os.path.exists(tmp_path / "diverges_seed0" / tool.FAILED_MARK)
    table = (tmp_path / "results.md").read_text()
    assert "| works | 2 | 10.5 ± 0.7 | 20.0 ± 0.0 |" in table  # mean ± stdev over the two seeds
    assert "| diverges | 0 (seed 0, 1 failed) | - |" in table
    assert "0.400 ± 0.000" in table  # AIC is a fraction: three decimals

    calls.clear()
    assert tool.main(argv) == 1  # finished and failed runs are both reused
    assert calls == []
    assert tool.main([*argv, "--retry-failed"]) == 1
    assert sorted(calls) == [("diverges.yaml", 0), ("diverges.yaml", 1)]
