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


SCRIPT_FOLDERS = ("tools", "benchmarks")


def load_tool(name):
    """Import the script ``tools/<name>.py`` or ``benchmarks/<name>.py`` as a fresh module."""
    paths = [os.path.join(REPO, folder, f"{name}.py") for folder in SCRIPT_FOLDERS]
    found = [p for p in paths if os.path.isfile(p)]
    if len(found) != 1:
        raise FileNotFoundError(f"expected one script {name}.py in {SCRIPT_FOLDERS}, found {found}")
    spec = importlib.util.spec_from_file_location(name, found[0])
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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``@pytest.mark.cuda`` are skipped where torch sees no CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)
