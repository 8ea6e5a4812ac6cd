"""Tests of the synthetic detection dataset (iou_aware/data/: shapes, coco_writer, register;
tools/generate_synthetic.py)."""

import contextlib
import io
import json
import logging
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image

from pycocotools import mask as pycocotools_mask
from pycocotools.coco import COCO

from conftest import load_tool
from iou_aware.data import coco_writer, register
from iou_aware.data import (
    CLASS_NAMES,
    SyntheticShapesParams,
    dataset_dir,
    generate_synthetic_dataset,
    mask_to_bbox,
    render_sample,
    sample_rng,
)

SIZE = (96, 112)  # (H, W): non-square, to catch x/y mix-ups


def _read_split(json_path, image_dir):
    with open(json_path, "rb") as f:
        blobs = {"annotations.json": f.read()}
    for name in sorted(os.listdir(image_dir)):
        with open(os.path.join(image_dir, name), "rb") as f:
            blobs[name] = f.read()
    return blobs


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    json_path, image_dir = generate_synthetic_dataset(str(root), "train", 12, SIZE, seed=3)
    return json_path, image_dir


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = _read_split(*generate_synthetic_dataset(str(tmp_path / "a"), "train", 5, SIZE, seed=7))
    b = _read_split(*generate_synthetic_dataset(str(tmp_path / "b"), "train", 5, SIZE, seed=7))
    assert a.keys() == b.keys() and len(a) == 6  # json + 5 PNGs
    for name in a:
        assert a[name] == b[name], name

    c = _read_split(*generate_synthetic_dataset(str(tmp_path / "c"), "train", 5, SIZE, seed=8))
    assert c["annotations.json"] != a["annotations.json"]
    assert all(c[name] != a[name] for name in a if name.endswith(".png"))

    # train and val of the same base seed use different streams
    v = _read_split(*generate_synthetic_dataset(str(tmp_path / "a"), "val", 5, SIZE, seed=7))
    a_imgs = {a[n] for n in a if n.endswith(".png")}
    assert not a_imgs & {v[n] for n in v if n.endswith(".png")}


def test_first_images_do_not_depend_on_image_count(tmp_path):
    short = _read_split(*generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=1))
    long = _read_split(*generate_synthetic_dataset(str(tmp_path), "val", 4, SIZE, seed=1))
    for name in ("val_000000.png", "val_000001.png"):
        assert short[name] == long[name]


def test_render_sample_is_deterministic():
    p = SyntheticShapesParams(image_size=SIZE)
    img1, objs1 = render_sample(sample_rng(0, "train", 5), p)
    img2, objs2 = render_sample(sample_rng(0, "train", 5), p)
    assert np.array_equal(img1, img2)
    assert [o.category_id for o in objs1] == [o.category_id for o in objs2]
    assert all(np.array_equal(o1.visible_mask, o2.visible_mask) for o1, o2 in zip(objs1, objs2))


# --------------------------------------------------------------------------------------------
# Valid COCO, tight boxes
# --------------------------------------------------------------------------------------------


def test_valid_coco_json(small_split):
    json_path, image_dir = small_split
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("error")
        coco = COCO(json_path)
    h, w = SIZE

    cats = coco.loadCats(coco.getCatIds())
    assert [c["id"] for c in cats] == list(range(1, len(CLASS_NAMES) + 1))
    assert [c["name"] for c in cats] == list(CLASS_NAMES)

    imgs = coco.loadImgs(coco.getImgIds())
    assert len(imgs) == 12
    for im in imgs:
        assert (im["height"], im["width"]) == (h, w)
        path = os.path.join(image_dir, im["file_name"])
        with Image.open(path) as pil:
            assert pil.mode == "RGB" and pil.size == (w, h)
        assert len(coco.getAnnIds(imgIds=[im["id"]])) >= 1  # every image has an object

    with open(json_path) as f:
        raw = json.load(f)
    ann_ids = [a["id"] for a in raw["annotations"]]
    assert len(ann_ids) == len(set(ann_ids)) and min(ann_ids) >= 1
    for ann in raw["annotations"]:
        x, y, bw, bh = ann["bbox"]
        assert all(isinstance(v, int) for v in ann["bbox"])
        assert x >= 0 and y >= 0 and bw >= 1 and bh >= 1
        assert x + bw <= w and y + bh <= h
        assert ann["iscrowd"] == 0
        assert 1 <= ann["category_id"] <= len(CLASS_NAMES)
        mask = pycocotools_mask.decode(ann["segmentation"]).astype(bool)
        assert mask.shape == (h, w)
        assert ann["area"] == int(mask.sum())
        # box == tight box of the visible mask, by our helper and by pycocotools' own
        assert ann["bbox"] == mask_to_bbox(mask)
        assert np.allclose(pycocotools_mask.toBbox(ann["segmentation"]), ann["bbox"])


def test_boxes_tight_to_visible_pixels_of_the_image(small_split):
    """Re-render each image: the PNG holds the rendered pixels, the json boxes are the tight
    boxes of the visible masks, the masks carry the object colour, occlusion rule holds."""
    json_path, image_dir = small_split
    with open(json_path) as f:
        raw = json.load(f)
    by_image = {}
    for ann in raw["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    p = SyntheticShapesParams(image_size=SIZE)
    n_occluded = 0
    for index, im in enumerate(raw["images"]):
        image, objects = render_sample(sample_rng(3, "train", index), p)
        png = np.asarray(Image.open(os.path.join(image_dir, im["file_name"])).convert("RGB"))
        assert np.array_equal(png, image)
        anns = by_image[im["id"]]
        assert len(anns) == len(objects)
        owned = np.zeros(SIZE, dtype=int)
        for ann, obj in zip(anns, objects):
            m = obj.visible_mask
            owned += m
            assert ann["category_id"] == obj.category_id
            x, y, bw, bh = ann["bbox"]
            # no visible pixel outside the box, and each of the 4 border lines touches one
            inside = np.zeros_like(m)
            inside[y : y + bh, x : x + bw] = True
            assert not (m & ~inside).any()
            assert m[y, x : x + bw].any() and m[y + bh - 1, x : x + bw].any()
            assert m[y : y + bh, x].any() and m[y : y + bh, x + bw - 1].any()
            # the visible pixels show the object's colour (up to the additive noise)
            mean = png[m].astype(float).mean(axis=0)
            assert np.abs(mean - np.array(obj.color)).max() < 12, (mean, obj.color)
            # occlusion rule
            assert ann["area"] >= p.min_visible_frac * obj.drawn_area
            n_occluded += ann["area"] < obj.drawn_area
        assert owned.max() <= 1  # visible masks are disjoint
    assert n_occluded > 0


def test_mask_to_bbox_convention():
    m = np.zeros((10, 20), dtype=bool)
    m[2:5, 7:8] = True  # rows 2..4, column 7
    assert mask_to_bbox(m) == [7, 2, 1, 3]
    rle = pycocotools_mask.encode(np.asfortranarray(m.astype(np.uint8)))
    assert list(pycocotools_mask.toBbox(rle)) == [7, 2, 1, 3]
    with pytest.raises(ValueError):
        mask_to_bbox(np.zeros((4, 4), dtype=bool))


def test_scale_and_aspect_ratio_spread():
    p = SyntheticShapesParams(image_size=(128, 128))
    boxes, classes, counts = [], set(), []
    for i in range(200):
        _, objects = render_sample(sample_rng(0, "spread", i), p)
        counts.append(len(objects))
        for o in objects:
            boxes.append(o.bbox)
            classes.add(o.category_id)
    b = np.array(boxes, dtype=float)
    long_side = np.maximum(b[:, 2], b[:, 3])
    aspect = long_side / np.minimum(b[:, 2], b[:, 3])
    assert classes == set(range(1, len(CLASS_NAMES) + 1))
    assert (aspect > 4).sum() >= 20  # thin objects, both orientations
    assert ((b[:, 2] / b[:, 3]) > 4).any() and ((b[:, 3] / b[:, 2]) > 4).any()
    # long sides are log-uniform over [12, 102] px before occlusion: about a quarter under 20 px
    assert (long_side < 20).sum() >= 50  # small objects
    assert (long_side > 64).sum() >= 10  # large objects (> half the image)
    assert min(counts) >= p.min_objects and p.max_objects - 1 <= max(counts) <= p.max_objects


# --------------------------------------------------------------------------------------------
# Folder naming and reuse
# --------------------------------------------------------------------------------------------


def test_folder_name_encodes_parameters(tmp_path):
    root = str(tmp_path)
    base = dataset_dir(root, "train", 10, SIZE, seed=0)
    assert os.path.basename(base).startswith(f"train_n10_{SIZE[0]}x{SIZE[1]}_seed0_")
    others = {
        dataset_dir(root, "val", 10, SIZE, seed=0),
        dataset_dir(root, "train", 11, SIZE, seed=0),
        dataset_dir(root, "train", 10, (SIZE[0], SIZE[1] + 1), seed=0),
        dataset_dir(root, "train", 10, SIZE, seed=1),
        dataset_dir(root, "train", 10, params=SyntheticShapesParams(SIZE, max_objects=3)),
    }
    assert base not in others and len(others) == 5


def test_existing_split_is_reused_and_overwrite_regenerates(tmp_path):
    json_path, image_dir = generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0)
    out_dir = os.path.dirname(json_path)
    with open(os.path.join(out_dir, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["num_images"] == 2 and manifest["seed"] == 0
    assert manifest["params"]["image_size"] == list(SIZE)
    os.utime(json_path, (0, 0))
    assert generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0) == (
        json_path,
        image_dir,
    )
    assert os.path.getmtime(json_path) == 0  # reused, not rewritten
    generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0, overwrite=True)
    assert os.path.getmtime(json_path) != 0
    # no temporary folders left behind
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(out_dir)]


# --------------------------------------------------------------------------------------------
# Crash safety: atomic json writes, corrupt or incomplete splits regenerated
# --------------------------------------------------------------------------------------------


def _crashing_dump(when=lambda obj: True):
    """A ``json.dump`` that writes part of its output and then fails, like a crash or a full disk
    in the middle of the write (for the objects ``when`` selects; the others are written)."""
    real_dump = json.dump

    def dump(obj, fp, **kwargs):
        if not when(obj):
            return real_dump(obj, fp, **kwargs)
        fp.write(json.dumps(obj, **kwargs)[:20])
        fp.flush()
        raise OSError("No space left on device (simulated)")

    return dump


def test_truncated_annotations_are_reported_and_regenerated(tmp_path):
    json_path, image_dir = generate_synthetic_dataset(str(tmp_path), "val", 3, SIZE, seed=0)
    good = _read_split(json_path, image_dir)
    with open(json_path, "r+b") as f:  # a crash after half of the file reached the disk
        f.truncate(len(good["annotations.json"]) // 2)
    with pytest.warns(RuntimeWarning, match=re.escape(json_path)):
        assert generate_synthetic_dataset(str(tmp_path), "val", 3, SIZE, seed=0) == (
            json_path,
            image_dir,
        )
    assert _read_split(json_path, image_dir) == good
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(os.path.dirname(json_path))]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda coco: {"images": coco["images"]}, "not a COCO annotation file"),
        (lambda coco: dict(coco, images=coco["images"][:1]), "1 images listed, 2 expected"),
    ],
)
def test_incomplete_annotations_are_reported_and_regenerated(tmp_path, damage, reason):
    json_path, image_dir = generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0)
    good = _read_split(json_path, image_dir)
    with open(json_path, "w") as f:
        json.dump(damage(json.loads(good["annotations.json"])), f)
    with pytest.warns(RuntimeWarning, match=re.escape(json_path) + ".*" + reason):
        generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0)
    assert _read_split(json_path, image_dir) == good


def test_missing_image_is_reported_and_regenerated(tmp_path):
    json_path, image_dir = generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0)
    good = _read_split(json_path, image_dir)
    os.remove(os.path.join(image_dir, "val_000001.png"))
    with pytest.warns(RuntimeWarning, match="'val_000001.png' listed but not in"):
        generate_synthetic_dataset(str(tmp_path), "val", 2, SIZE, seed=0)
    assert _read_split(json_path, image_dir) == good


def test_write_json_atomic_keeps_the_previous_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "annotations.json"
    coco_writer.write_json_atomic(str(path), {"images": [1, 2]}, separators=(",", ":"))
    assert path.read_text() == '{"images":[1,2]}'
    coco_writer.write_json_atomic(str(path), {"a": 1}, end="\n", indent=1)
    assert path.read_text() == '{\n "a": 1\n}\n'

    monkeypatch.setattr(coco_writer.json, "dump", _crashing_dump())
    with pytest.raises(OSError, match="simulated"):
        coco_writer.write_json_atomic(str(path), {"images": list(range(100))})
    assert path.read_text() == '{\n "a": 1\n}\n'  # the previous file, whole
    with pytest.raises(OSError, match="simulated"):
        coco_writer.write_json_atomic(str(tmp_path / "new.json"), {"images": list(range(100))})
    assert sorted(os.listdir(tmp_path)) == ["annotations.json"]  # no partial or temporary file


def test_crash_while_writing_the_annotations(tmp_path, monkeypatch):
    reference = _read_split(*generate_synthetic_dataset(str(tmp_path / "ref"), "val", 2, SIZE))
    root = tmp_path / "data"
    out_dir = dataset_dir(str(root), "val", 2, SIZE)
    crash = _crashing_dump(when=lambda obj: "annotations" in obj)

    # a first generation that crashes leaves no split folder (and no temporary one) behind
    with monkeypatch.context() as m:
        m.setattr(coco_writer.json, "dump", crash)
        with pytest.raises(OSError, match="simulated"):
            generate_synthetic_dataset(str(root), "val", 2, SIZE)
    assert os.listdir(root) == []
    # the next load generates the split
    json_path, image_dir = generate_synthetic_dataset(str(root), "val", 2, SIZE)
    assert os.path.dirname(json_path) == out_dir
    assert _read_split(json_path, image_dir) == reference

    # a regeneration that crashes keeps the previous complete split
    with monkeypatch.context() as m:
        m.setattr(coco_writer.json, "dump", crash)
        with pytest.raises(OSError, match="simulated"):
            generate_synthetic_dataset(str(root), "val", 2, SIZE, overwrite=True)
    assert _read_split(json_path, image_dir) == reference
    assert os.listdir(root) == [os.path.basename(out_dir)]


def test_params_that_would_allow_empty_boxes_are_refused():
    # an object without visible pixels would get a zero-width box: never written
    for key in ("min_visible_pixels", "min_visible_side"):
        with pytest.raises(ValueError, match=key):
            SyntheticShapesParams(SIZE, **{key: 0})


def test_default_root_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("IOU_AWARE_DATASETS", str(tmp_path))
    assert register.default_root() == os.path.join(str(tmp_path), "synthetic_shapes")
    monkeypatch.delenv("IOU_AWARE_DATASETS")
    assert register.default_root() == os.path.abspath(os.path.join("datasets", "synthetic_shapes"))


def test_cli(tmp_path, capsys):
    cli = load_tool("generate_synthetic")
    cli.main(
        ["--root", str(tmp_path), "--num-train", "2", "--num-val", "1", "--image-size", "48x64"]
    )
    out = capsys.readouterr().out
    train_json = os.path.join(
        dataset_dir(str(tmp_path), "train", 2, (48, 64), seed=0), "annotations.json"
    )
    val_json = os.path.join(
        dataset_dir(str(tmp_path), "val", 1, (48, 64), seed=0), "annotations.json"
    )
    assert train_json in out and val_json in out
    assert os.path.isfile(train_json) and os.path.isfile(val_json)


# --------------------------------------------------------------------------------------------
# Detectron2: load_coco_json without warnings, registration
# --------------------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _no_warnings():
    """Fail on any Python warning or any WARNING+ record of Detectron2's loggers.

    The handler is attached to the loggers directly, since Detectron2's ``setup_logger``
    (called by training code in the same process) stops propagation to the root logger.
    """
    handler = _Collect()
    loggers = [logging.getLogger(n) for n in ("detectron2", "detectron2.data.datasets.coco")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            yield
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def test_load_coco_json_without_warnings(small_split):
    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets.coco import load_coco_json
    from detectron2.structures import BoxMode

    json_path, image_dir = small_split
    name = "synthetic_shapes_test_load_only"
    try:
        with _no_warnings():
            dicts = load_coco_json(json_path, image_dir, name)
        assert len(dicts) == 12
        for d in dicts:
            assert os.path.isfile(d["file_name"])
            assert (d["height"], d["width"]) == SIZE
            assert d["annotations"]
            for a in d["annotations"]:
                assert a["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= a["category_id"] < len(CLASS_NAMES)
                assert isinstance(a["segmentation"], dict)
        assert MetadataCatalog.get(name).thing_classes == list(CLASS_NAMES)
    finally:
        MetadataCatalog.remove(name)


@pytest.fixture
def restore_registration():
    """Put back whatever synthetic_shapes_* registration existed before the test."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = list(register.SYNTHETIC_DATASET_NAMES.values())
    saved = {}
    for n in names:
        func = DatasetCatalog[n] if n in DatasetCatalog.list() else None
        meta = MetadataCatalog.get(n).as_dict() if n in MetadataCatalog.list() else None
        saved[n] = (func, meta, register._REGISTERED.get(n))
    yield
    for n, (func, meta, reg) in saved.items():
        if n in DatasetCatalog.list():
            DatasetCatalog.remove(n)
        if n in MetadataCatalog.list():
            MetadataCatalog.remove(n)
        if func is not None:
            DatasetCatalog.register(n, func)
        if meta is not None:
            meta.pop("name", None)
            MetadataCatalog.get(n).set(**meta)
        register._REGISTERED.pop(n, None)
        if reg is not None:
            register._REGISTERED[n] = reg


def test_registration_is_lazy_idempotent_and_loads(tmp_path, restore_registration):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BoxMode

    from iou_aware.data import register_synthetic_datasets

    root = tmp_path / "data"
    kwargs = dict(root=str(root), num_train=3, num_val=2, image_size=(64, 64), seed=5)
    register_synthetic_datasets(**kwargs)
    out = register_synthetic_datasets(**kwargs)  # idempotent
    assert not root.exists()  # registration generates nothing

    for name, n in (("synthetic_shapes_train", 3), ("synthetic_shapes_val", 2)):
        meta = MetadataCatalog.get(name)
        assert meta.json_file == out[name]
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == list(CLASS_NAMES)
        assert len(meta.thing_colors) == len(CLASS_NAMES)
        with _no_warnings():
            dicts = DatasetCatalog.get(name)  # generates on first use
        assert os.path.isfile(meta.json_file)
        assert os.path.dirname(meta.json_file) == os.path.dirname(meta.image_root)
        assert len(dicts) == n
        for d in dicts:
            assert set(d) >= {"file_name", "height", "width", "image_id", "annotations"}
            assert os.path.isfile(d["file_name"])
            assert d["file_name"].startswith(meta.image_root)
            assert (d["height"], d["width"]) == (64, 64)
            for a in d["annotations"]:
                assert a["bbox_mode"] == BoxMode.XYWH_ABS
                assert 0 <= a["category_id"] < len(CLASS_NAMES)
                assert a["iscrowd"] == 0
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
        assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(6)}
    train = DatasetCatalog.get("synthetic_shapes_train")
    val = DatasetCatalog.get("synthetic_shapes_val")
    assert {d["file_name"] for d in train}.isdisjoint({d["file_name"] for d in val})

    # Different parameters re-register (no stale dataset, no "different value" assertion).
    out2 = register_synthetic_datasets(**dict(kwargs, num_val=4))
    assert out2["synthetic_shapes_val"] != out["synthetic_shapes_val"]
    assert out2["synthetic_shapes_train"] == out["synthetic_shapes_train"]
    assert len(DatasetCatalog.get("synthetic_shapes_val")) == 4
    assert (
        register.ensure_synthetic_dataset("synthetic_shapes_val")[0]
        == out2["synthetic_shapes_val"]
    )


def test_registered_split_with_a_corrupt_json_is_regenerated_on_load(tmp_path, restore_registration):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from iou_aware.data import register_synthetic_datasets

    register_synthetic_datasets(root=str(tmp_path), num_train=2, num_val=1, image_size=(64, 64))
    dicts = DatasetCatalog.get("synthetic_shapes_val")
    json_file = MetadataCatalog.get("synthetic_shapes_val").json_file
    with open(json_file, "w") as f:
        f.write('{"images": [{"id": 1, "file_na')  # what a crash in the middle of a write leaves
    with pytest.warns(RuntimeWarning, match=re.escape(json_file)):
        assert DatasetCatalog.get("synthetic_shapes_val") == dicts
