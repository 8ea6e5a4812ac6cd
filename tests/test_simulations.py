"""Tests of ``benchmarks/simulate_regression.py`` (the papers' regression simulations) in quick mode.

Checked: the outputs are finite and the CSV / PNG files are written, and three properties that
follow from the math of the losses, not from numbers the code produced:

- Peng & Yu's SOT (eq. 28) multiplies the gradient of Smooth-EIoU by ``U_e`` (an area, ~ s^2)
  while the gradient itself scales like 1 / s: with SOT the update of a box scaled by ``s`` is
  the update of the unscaled box times ``s``, so the loss curves at scales 1, 2, 4 coincide; without
  SOT the relative update shrinks like 1 / s^2 and the curves differ.
- Smooth-EIoU ``(1 - EIoU)^2`` has zero gradient at the optimum (the convexification technique,
  eq. 23-24) and converges; ``1 - EIoU`` keeps a gradient of magnitude ~1 there, so with a fixed
  step it keeps oscillating (their Fig. 4c).
- Every loss of the simulation is minimized at ``B = B_gt``: with a small step, gradient descent
  on it raises the mean IoU of anchors that all overlap their targets (setup 2).
"""

import csv
import os

import numpy as np
import pytest
import torch

from conftest import load_tool

sim = load_tool("simulate_regression")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_setups_match_the_paper():
    # setup 1: 7 x 7 anchors per point, 7 targets; setup 2: 3 x 3 anchors, 3 targets (Zhang sec. 5.1)
    a1, t1, m1 = sim.make_setup(1, num_points=3, coord_scale=1.0, dtype=torch.float64)
    assert (m1["anchors_per_point"], m1["targets"], m1["pairs"]) == (49, 7, 7 * 3 * 49)
    a2, t2, m2 = sim.make_setup(2, num_points=5, coord_scale=1.0, dtype=torch.float64)
    assert (m2["anchors_per_point"], m2["targets"], m2["pairs"]) == (9, 3, 3 * 5 * 9)
    for t in (t1, t2):  # targets: area 100, centred at (10, 10)
        area = (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])
        torch.testing.assert_close(area, torch.full_like(area, 100.0))
        torch.testing.assert_close((t[:, 0] + t[:, 2]) / 2, torch.full_like(area, 10.0))
    # anchor areas are the paper's scales; setup 2 centres lie in the 2.5-wide square around (10, 10)
    areas2 = ((a2[:, 2] - a2[:, 0]) * (a2[:, 3] - a2[:, 1])).round(decimals=6).unique()
    torch.testing.assert_close(areas2, torch.tensor([50.0, 100.0, 150.0], dtype=torch.float64))
    cx = (a2[:, 0] + a2[:, 2]) / 2
    assert bool(((cx >= 8.75) & (cx <= 11.25)).all())
    # the coordinate scale divides every coordinate
    a1s, t1s, _ = sim.make_setup(1, num_points=3, coord_scale=10.0, dtype=torch.float64)
    torch.testing.assert_close(a1s * 10, a1)


def test_step_schedule_is_algorithm_1():
    # mu = 0.1 for t <= 0.8 T, 0.01 for t <= 0.9 T, 0.001 after (T = 200)
    assert sim.step_size(160, 200) == pytest.approx(0.1)
    assert sim.step_size(161, 200) == pytest.approx(0.01)
    assert sim.step_size(180, 200) == pytest.approx(0.01)
    assert sim.step_size(181, 200) == pytest.approx(0.001)


def test_sot_makes_smooth_eiou_scale_invariant():
    iters = 60
    scales = (1.0, 2.0, 4.0)
    with_sot = [sim.toy_regression(s, s / 2, sot=True, iterations=iters)["loss"] for s in scales]
    without = [sim.toy_regression(s, s / 2, sot=False, iterations=iters)["loss"] for s in scales]
    for curve in with_sot + without:
        assert np.isfinite(curve).all()
    # with SOT: identical up to the eps = 1e-7 of the EIoU denominator
    np.testing.assert_allclose(with_sot[1], with_sot[0], atol=1e-6)
    np.testing.assert_allclose(with_sot[2], with_sot[0], atol=1e-6)
    # without SOT: the larger the boxes, the slower (relative step ~ 1 / s^2)
    assert np.abs(without[1] - without[0]).max() > 0.05
    assert np.abs(without[2] - without[0]).max() > 0.05
    assert without[2][-1] > without[1][-1] > without[0][-1]


def test_convexified_loss_converges_linear_one_oscillates():
    lr = 0.1
    smooth = sim.toy_regression(1.0, 0.5, power=2.0, sot=True, iterations=100, lr=lr)
    linear = sim.toy_regression(1.0, 0.5, power=1.0, sot=True, iterations=100, lr=lr)
    assert 1 - smooth["eiou"][-1] < 1e-5
    # near the optimum each step of the linear loss moves x by about lr: it cannot settle
    assert np.abs(1 - linear["eiou"][-10:]).max() > lr / 4


def test_small_steps_raise_mean_iou_for_every_loss():
    meta, results = sim.run_zhang(2, None, num_points=8, iterations=30, lr=0.01, log=lambda *a: None)
    assert set(results) == set(sim.LOSSES)
    for name, r in results.items():
        assert r["nonfinite_at"] is None, name
        for key in ("error_sum", "iou_mean", "frac_iou_ge_0.9"):
            assert np.isfinite(r[key]).all(), (name, key)
        assert r["iou_mean"][0] > 0  # every pair of setup 2 overlaps its target
        assert r["iou_mean"][-1] > r["iou_mean"][0], name
        assert r["error_sum"][-1] < r["error_sum"][0], name


def test_quick_run_writes_csv_and_png(tmp_path):
    out = tmp_path / "sim"
    zhang, toy, written = sim.main([
        "--quick", "--output", str(out), "--setups", "2",
        "--losses", "iou", "focal_efficient_iou", "smooth_extended_iou_sot", "smooth_l1",
    ])
    names = {os.path.basename(p) for p in written}
    for expected in ("zhang_setup2_curves.csv", "zhang_setup2_iou_quantiles.csv",
                     "zhang_setup2_error.png", "zhang_setup2_iou_box.png", "zhang_setup2_high_iou.png",
                     "peng_toy.csv", "peng_fig4c.png", "peng_fig5a.png", "peng_fig5b.png",
                     "summary.txt"):
        assert expected in names
        assert (out / expected).stat().st_size > 0
    for p in written:
        assert os.path.getsize(p) > 0
        if p.endswith(".png"):
            with open(p, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # CSV: one row per loss and iteration (0..T), all numbers finite
    with open(out / "zhang_setup2_curves.csv") as f:
        rows = list(csv.DictReader(f))
    meta, results = zhang[2]
    assert len(rows) == len(results) * (meta["iterations"] + 1)
    for row in rows:
        for key in ("error_sum", "iou_mean", "frac_iou_ge_0.9"):
            assert np.isfinite(float(row[key]))
    with open(out / "peng_toy.csv") as f:
        toy_rows = list(csv.DictReader(f))
    assert {r["experiment"] for r in toy_rows} == {"fig4c", "fig5a", "fig5b"}
    assert all(np.isfinite(float(r["loss"])) for r in toy_rows)
