from setuptools import find_packages, setup

setup(
    name="iou_aware",
    version="0.1.0",
    description="IoU-aware losses, heads, NMS and evaluation for Detectron2 detectors",
    python_requires=">=3.10",
    packages=find_packages(include=["iou_aware", "iou_aware.*"]),
    # Detectron2 itself is installed by tools/setup_env.sh (it is not published on the index by
    # its authors); these are its runtime needs and ours. Versions are pinned in constraints.txt.
    install_requires=[
        "torch",
        "torchvision",
        "numpy<2",
        "setuptools<81",
        "fvcore",
        "pyyaml",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "omegaconf",
        "hydra-core",
        "tensorboard",
        "matplotlib",
        "Pillow",
        "termcolor",
        "yacs",
        "tabulate",
        "cloudpickle",
        "tqdm",
        "packaging",
        "black",
    ],
    # ensemble-boxes: the Weighted Boxes Fusion reference that tests/test_nms_variants.py compares with
    extras_require={"dev": ["pytest", "pytest-timeout", "ensemble-boxes"]},
)
