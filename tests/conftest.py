import importlib.util
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)


@pytest.fixture(scope="session")
def repo_root():
    return REPO


def load_tool(name):
    """Import ``tools/<name>.py`` (the tools folder is not a package) as a fresh module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_synthetic_opts(tmp_path_factory):
    """Config overrides for a tiny synthetic dataset in a temporary folder (shared by the session)."""
    root = tmp_path_factory.mktemp("datasets")
    return [
        "DATASETS.SYNTHETIC.ROOT", str(root),
        "DATASETS.SYNTHETIC.NUM_TRAIN", "16",
        "DATASETS.SYNTHETIC.NUM_VAL", "6",
        "DATALOADER.NUM_WORKERS", "0",
        "SOLVER.IMS_PER_BATCH", "2",
        "TEST.EVAL_PERIOD", "0",
    ]
