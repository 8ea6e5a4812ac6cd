#!/usr/bin/env python
"""Helpers of ``benchmarks/gpu/prepare.sh`` for the wheel folder that travels to the GPU machine.

    python benchmarks/gpu/wheels.py repack-detectron2 SRC_WHEEL DEST_DIR
    python benchmarks/gpu/wheels.py check DIR

``repack-detectron2``: the index's ``sal-detectron2`` wheel is tagged for CPython 3.10 only because
it bundles ``detectron2/_C.cpython-310-*.so`` (Detectron2's C++/CUDA ops, built for another torch;
the project uses none of them: boxes go through torchvision's ops). The repacked wheel keeps the
pure-Python ``detectron2`` package and its metadata, drops ``_C`` and the wheel's top-level
``tools`` package (Detectron2's own scripts, which would shadow this repository's ``tools/``), and
is tagged ``py3-none-any`` with a regenerated RECORD.

``check``: every wheel's ``Requires-Dist`` (extras and markers that do not apply to CPython 3.12 on
Linux skipped) must be met by a wheel in DIR (name and version), by a package the GPU machine
already has (``ON_GPU_MACHINE``), or be one of ``ACCEPTED`` (printed with the reason); each name must
appear once. Exits 1 with the list of problems otherwise.
"""

import base64
import csv
import hashlib
import io
import os
import re
import sys
import zipfile
from email.parser import Parser

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

# Packages of the GPU machine's image that the project and its carried wheels import, with the
# version where it was read there (Python 3.12.3, torch 2.11.0+cu130); None: present, version unread.
ON_GPU_MACHINE = {
    "numpy": "2.5.2", "torch": "2.11.0", "torchvision": "0.26.0", "pyyaml": None, "tqdm": None,
    "pillow": None, "tabulate": None, "portalocker": None, "typing-extensions": None,
    "packaging": None, "matplotlib": None, "cloudpickle": None, "tensorboard": None,
    "opencv-python-headless": None, "pytest": None, "pytest-timeout": None, "setuptools": None,
}
# Requirements of a carried wheel left unmet on purpose, with the reason.
ACCEPTED = {
    ("sal-detectron2", "black"): "imported only by detectron2.config.LazyConfig.save (LazyConfig "
    "files); the project uses yacs configs",
    ("sal-detectron2", "numpy"): "Detectron2 at a59f0563 uses none of the aliases numpy 2 removed "
    "(np.bool, np.int, np.float, np.object...); its one call whose meaning numpy 2 changed, "
    "np.array(mask, copy=False) in layers/mask_ops.py, is in paste_mask_in_image_old, a legacy mask "
    "function that box detection never calls. The GPU machine's numpy 2 is used as is",
}
TARGET_ENV = dict(default_environment(), python_version="3.12", python_full_version="3.12.3",
                  implementation_name="cpython", platform_python_implementation="CPython",
                  sys_platform="linux", platform_system="Linux", platform_machine="x86_64")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repack_detectron2(src: str, dest_dir: str) -> str:
    name, version, _, _ = parse_wheel_filename(os.path.basename(src))
    dist = f"{str(name).replace('-', '_')}-{version}"
    out = os.path.join(dest_dir, f"{dist}-py3-none-any.whl")
    records = []
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            path = info.filename
            top = path.split("/", 1)[0]
            if info.is_dir() or path.endswith("/RECORD") and top.endswith(".dist-info"):
                continue
            if top == "tools" or re.match(r"detectron2/_C\.[^/]*\.so$", path):
                continue
            if top not in ("detectron2", f"{dist}.dist-info"):
                raise SystemExit(f"{src}: unexpected top-level entry {path!r}; check the wheel")
            data = zin.read(path)
            if path == f"{dist}.dist-info/WHEEL":
                data = (b"Wheel-Version: 1.0\nGenerator: iou_aware benchmarks/gpu/wheels.py\n"
                        b"Root-Is-Purelib: true\nTag: py3-none-any\n")
            elif path == f"{dist}.dist-info/top_level.txt":
                data = b"detectron2\n"
            zout.writestr(path, data)
            records.append((path, _record_hash(data), str(len(data))))
        if not any(p.startswith("detectron2/") for p, _, _ in records):
            raise SystemExit(f"{src}: no detectron2/ package in the wheel")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows(records + [(f"{dist}.dist-info/RECORD", "", "")])
        zout.writestr(f"{dist}.dist-info/RECORD", buf.getvalue())
    return out


def _metadata(path: str):
    with zipfile.ZipFile(path) as z:
        meta = [n for n in z.namelist() if re.match(r"[^/]+\.dist-info/METADATA$", n)]
        if len(meta) != 1:
            raise SystemExit(f"{path}: expected one */METADATA, found {meta}")
        return Parser().parsestr(z.read(meta[0]).decode("utf-8"))


def check(folder: str) -> int:
    wheels = sorted(f for f in os.listdir(folder) if f.endswith(".whl"))
    if not wheels:
        print(f"error: no wheel in {folder}", file=sys.stderr)
        return 1
    carried, problems = {}, []
    for w in wheels:
        name, version, _, _ = parse_wheel_filename(w)
        if name in carried:
            problems.append(f"{name}: two versions ({carried[name][0]} and {version}); keep one")
        carried[name] = (version, os.path.join(folder, w))
    for name, (version, path) in sorted(carried.items()):
        for line in _metadata(path).get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(dict(TARGET_ENV, extra="")):
                continue
            dep = canonicalize_name(req.name)
            if dep in carried:
                met = carried[dep][0] in req.specifier
                have = f"carried {dep} {carried[dep][0]}"
            elif dep in ON_GPU_MACHINE:
                there = ON_GPU_MACHINE[dep]
                met = there is None or req.specifier.contains(there, prereleases=True)
                have = f"the GPU machine's {dep} {there}"
            else:
                met, have = False, "neither carried nor on the GPU machine"
            if met:
                continue
            if (name, dep) in ACCEPTED:
                print(f"  {name}: '{req}' ({have}) accepted: {ACCEPTED[(name, dep)]}")
            else:
                problems.append(f"{name} needs {req}: {have}")
    print(f"  {len(carried)} wheels: " + ", ".join(f"{n} {v}" for n, (v, _) in sorted(carried.items())))
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["repack-detectron2"] and len(argv) == 3:
        print(repack_detectron2(argv[1], argv[2]))
        return 0
    if argv[:1] == ["check"] and len(argv) == 2:
        return check(argv[1])
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
