"""Your own dataset without Python: COCO-format files named in the config.

``DATASETS.COCO_FILES`` is a list of ``"NAME=JSON:IMAGE_ROOT"`` strings (``tools/train_net.py
--dataset NAME=JSON:IMAGE_ROOT`` appends to it): each registers the COCO-format annotation file
JSON, whose ``file_name`` entries are relative to the folder IMAGE_ROOT, as the Detectron2 dataset
NAME, to be used in ``DATASETS.TRAIN`` / ``DATASETS.TEST``. Relative paths start at the current
folder.

Everything is checked when the dataset is registered, and each error names the entry, the file
and what to do: the json must exist and parse; ``categories`` must be a non-empty list with unique
ids; every image needs ``id``, ``file_name``, ``width``, ``height`` and must exist under
IMAGE_ROOT; every annotation's ``category_id`` must be one of ``categories``, its ``image_id`` one
of ``images``, and its ``bbox`` ([x, y, width, height], pixels) non-empty and inside its image
(up to ``BOX_TOLERANCE`` pixels). The datasets a config trains or tests on must share one category
list that fits the model's number of classes.

Loading uses Detectron2's ``load_coco_json`` (categories sorted by id become the contiguous
classes 0..K-1). The evaluator reads the json itself when every annotation has ``area`` and
``iscrowd``; otherwise Detectron2 converts the dataset (areas from the boxes).
"""

import json
import logging
import os
from typing import Dict, List, Sequence, Tuple

logger = logging.getLogger("detectron2")

KEY = "DATASETS.COCO_FILES"
EXAMPLE = "my_train=data/my_shapes/train.json:data/my_shapes/images"
BOX_TOLERANCE = 1.0  # pixels a box may extend past the image border (rounding in annotation tools)

_REGISTERED: Dict[str, Tuple[str, str]] = {}  # name -> (json, image root) registered here


def parse_spec(spec: str) -> Tuple[str, str, str]:
    """``"NAME=JSON:IMAGE_ROOT"`` -> (name, json, image root). The json/root separator is the
    ``:`` after ``.json`` when there is one, else the last ``:``."""
    name, sep, rest = str(spec).partition("=")
    if ".json:" in rest:
        cut = rest.index(".json:") + len(".json")
    else:
        cut = rest.rfind(":")
    json_file, root = (rest[:cut], rest[cut + 1:]) if cut > 0 else ("", "")
    if not sep or not name.strip() or not json_file or not root:
        raise ValueError(f"{KEY} / --dataset: {spec!r} is not NAME=JSON:IMAGE_ROOT (for example {EXAMPLE})")
    return name.strip(), json_file, root


def _fail(spec, msg):
    raise ValueError(f"{KEY} / --dataset {spec!r}: {msg}")


def _examples(items: List[str], n=3) -> str:
    return "; ".join(items[:n]) + (f" (and {len(items) - n} more)" if len(items) > n else "")


def read_coco_file(spec: str, json_file: str, image_root: str) -> Dict:
    """Parse and check one COCO-format file (see the module docstring); return the parsed json."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{KEY} / --dataset {spec!r}: annotation file {json_file!r} does not "
                                f"exist (relative paths start at {os.getcwd()!r})")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"{KEY} / --dataset {spec!r}: image folder {image_root!r} does not "
                                f"exist (relative paths start at {os.getcwd()!r})")
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        _fail(spec, f"{json_file!r} is not valid json: {e}")
    if not isinstance(data, dict):
        _fail(spec, f"{json_file!r} must hold a json object with images, annotations, categories")

    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        _fail(spec, f"{json_file!r} has no 'categories' list: add one entry {{\"id\": ..., \"name\": ...}} "
              "per class")
    cat_ids = [c.get("id") if isinstance(c, dict) else None for c in categories]
    if any(not isinstance(i, int) for i in cat_ids) or any(
            not isinstance(c.get("name"), str) for c in categories):
        _fail(spec, f"{json_file!r}: every category needs an integer 'id' and a 'name'")
    if len(set(cat_ids)) != len(cat_ids):
        _fail(spec, f"{json_file!r}: category ids are not unique: {sorted(cat_ids)}")

    images = data.get("images")
    if not isinstance(images, list) or not images:
        _fail(spec, f"{json_file!r} has no 'images' list")
    sizes, missing = {}, []
    for img in images:
        fields = {k: img.get(k) for k in ("id", "file_name", "width", "height")} if isinstance(img, dict) else {}
        if not fields or any(v is None for v in fields.values()) or not all(
                isinstance(fields[k], (int, float)) for k in ("width", "height")):
            _fail(spec, f"{json_file!r}: image entry {img!r} needs 'id', 'file_name', 'width' and 'height' "
                  "(numbers, pixels)")
        if fields["id"] in sizes:
            _fail(spec, f"{json_file!r}: image id {fields['id']!r} appears twice")
        sizes[fields["id"]] = (fields["file_name"], float(fields["width"]), float(fields["height"]))
        if not os.path.isfile(os.path.join(image_root, fields["file_name"])):
            missing.append(repr(os.path.join(image_root, fields["file_name"])))
    if missing:
        _fail(spec, f"{len(missing)} of the {len(images)} images of {json_file!r} do not exist under the "
              f"image folder {image_root!r}: {_examples(missing)}. Check IMAGE_ROOT (file_name is relative to it)")

    annotations = data.get("annotations")
    if annotations is None:
        logger.warning("%s %r: %r has no annotations (a test set)", KEY, spec, json_file)
        annotations = []
    known_cats = set(cat_ids)
    bad_cat, bad_img, bad_box = [], [], []
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        _fail(spec, f"{json_file!r}: 'annotations' must be a list of objects")
    for ann in annotations:
        where = f"annotation {ann.get('id')!r}"
        if ann.get("image_id") not in sizes:
            bad_img.append(f"{where}: image_id {ann.get('image_id')!r}")
            continue
        file_name, width, height = sizes[ann["image_id"]]
        where += f" of {file_name!r}"
        if ann.get("category_id") not in known_cats:
            bad_cat.append(f"{where}: category_id {ann.get('category_id')!r}")
        box = ann.get("bbox")
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
            bad_box.append(f"{where}: bbox {box!r} is not [x, y, width, height]")
            continue
        x, y, w, h = (float(v) for v in box)
        t = BOX_TOLERANCE
        if not (w > 0 and h > 0):
            bad_box.append(f"{where}: bbox {box} has no area")
        elif x < -t or y < -t or x + w > width + t or y + h > height + t:
            bad_box.append(f"{where}: bbox {box} ([x, y, width, height]) is outside the "
                           f"{width:g}x{height:g} image")
    if bad_cat:
        _fail(spec, f"{len(bad_cat)} annotations of {json_file!r} have a category_id that is not in its "
              f"categories (ids {sorted(known_cats)}): {_examples(bad_cat)}. Add the category or fix the ids")
    if bad_img:
        _fail(spec, f"{len(bad_img)} annotations of {json_file!r} name an image_id that is not in its "
              f"images: {_examples(bad_img)}")
    if bad_box:
        _fail(spec, f"{len(bad_box)} boxes of {json_file!r} are invalid: {_examples(bad_box)}. COCO boxes "
              "are [x, y, width, height] in pixels of the image given by width/height")
    return data


def _classes(data) -> List[Tuple[int, str]]:
    return [(c["id"], c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]


def register_coco_files(specs: Sequence[str], used: Sequence[str] = (), num_classes=None) -> Dict[str, str]:
    """Register each ``"NAME=JSON:IMAGE_ROOT"`` of ``specs`` with Detectron2 (checked first).

    ``used``: the dataset names the config trains/tests on; those must share one category list of
    at most ``num_classes = (config key, value)`` classes. Registering a name again (same process)
    replaces the previous registration made here; a name Detectron2 already knows otherwise
    (e.g. ``coco_2017_train``) is refused. Returns ``{name: json}``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.coco import load_coco_json

    parsed = [(spec, *parse_spec(spec)) for spec in specs]
    names = [p[1] for p in parsed]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{KEY} / --dataset: the dataset name(s) {dupes} are given more than once")
    classes, out = {}, {}
    for spec, name, json_file, root in parsed:
        if name in DatasetCatalog.list() and name not in _REGISTERED:
            _fail(spec, f"the name {name!r} is already a registered dataset: choose another NAME")
        data = read_coco_file(spec, json_file, root)
        classes[name] = _classes(data)
        json_abs, root_abs = os.path.abspath(json_file), os.path.abspath(root)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, lambda j=json_abs, r=root_abs, n=name: load_coco_json(j, r, n))
        meta = dict(
            image_root=root_abs, evaluator_type="coco",
            thing_classes=[n for _, n in classes[name]],
            thing_dataset_id_to_contiguous_id={i: k for k, (i, _) in enumerate(classes[name])},
        )
        if all("area" in a and "iscrowd" in a for a in data.get("annotations") or []):
            meta["json_file"] = json_abs
        MetadataCatalog.get(name).set(**meta)
        _REGISTERED[name] = (json_abs, root_abs)
        out[name] = json_abs

    used_here = [n for n in dict.fromkeys(used) if n in classes]
    for n in used_here[1:]:
        if classes[n] != classes[used_here[0]]:
            raise ValueError(
                f"{KEY} / --dataset: datasets {used_here[0]!r} and {n!r} (DATASETS.TRAIN / DATASETS.TEST) "
                f"have different categories ({classes[used_here[0]]} vs {classes[n]}): give both json "
                "files the same 'categories' list")
    if used_here and num_classes is not None:
        key, value = num_classes
        n = len(classes[used_here[0]])
        if n > value:
            raise ValueError(f"{KEY} / --dataset: {used_here[0]!r} has {n} categories but {key} is {value}: "
                             f"set {key} {n}")
        if n < value:
            logger.warning("%s: %r has %d categories but %s is %d: the model has %d unused classes",
                           KEY, used_here[0], n, key, value, value - n)
    return out
