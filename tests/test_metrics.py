"""learn.metrics: masked MSE/MAE/IoU/F1 against numpy, n/a leads, skill, the block-bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glacierflow.learn import metrics


def test_metrics_equal_a_numpy_reference_on_fixed_samples() -> None:
    rng = np.random.default_rng(7)
    target = rng.random((5, 3, 1, 6, 6))
    pred = {"m": rng.random(target.shape), "persistence": rng.random(target.shape), "seasonal": target + 0.1}
    mask = (rng.random(target.shape) > 0.3).astype(np.float32)
    res = metrics.score(pred, target, mask)
    sel = mask.astype(bool)
    for name, p in pred.items():
        assert res[name]["mse"] == pytest.approx(np.mean((p[sel] - target[sel]) ** 2), rel=1e-12)
        assert res[name]["mae"] == pytest.approx(np.mean(np.abs(p[sel] - target[sel])), rel=1e-12)
        ps, ts = p[sel] >= 0.3, target[sel] >= 0.3
        assert res[name]["iou"] == pytest.approx((ps & ts).sum() / (ps | ts).sum(), rel=1e-12)
        assert res[name]["f1"] == pytest.approx(2 * (ps & ts).sum() / (ps.sum() + ts.sum()), rel=1e-12)
        for k in range(3):
            s = sel[:, k]
            assert res[name]["per_lead"]["mse"][k] == pytest.approx(np.mean((p[:, k][s] - target[:, k][s]) ** 2))
            assert res[name]["per_lead"]["mae"][k] == pytest.approx(np.mean(np.abs(p[:, k][s] - target[:, k][s])))
    assert res["seasonal"]["mse"] == pytest.approx(0.01)
    assert res["m"]["skill"]["seasonal"] == pytest.approx(1 - res["m"]["mse"] / 0.01)
    assert res["m"]["per_lead"]["skill"]["seasonal"][1] == pytest.approx(
        1 - res["m"]["per_lead"]["mse"][1] / res["seasonal"]["per_lead"]["mse"][1])
    assert res["persistence"]["skill"]["persistence"] == 0.0
    # batches accumulate to the same figures as one pass (torch tensors work too)
    sums = None
    for i in range(0, 5, 2):
        sums = metrics.add_sums(sums, metrics.metric_sums(torch.tensor(pred["m"][i:i + 2]),
                                                             torch.tensor(target[i:i + 2]), mask[i:i + 2]))
    assert metrics.finish(sums)["mse"] == pytest.approx(res["m"]["mse"], rel=1e-6)


def test_a_lead_without_observed_pixels_is_none_and_the_overall_figure_stays_finite() -> None:
    rng = np.random.default_rng(1)
    target = rng.random((4, 3, 1, 5, 5))
    mask = np.ones_like(target)
    mask[:, 0] = 0  # nothing observed at t+1 (a cloudy season)
    res = metrics.score({"m": target + 0.2, "seasonal": target + 0.1}, target, mask, baselines=("seasonal",))
    assert res["m"]["per_lead"]["mse"][0] is None and res["m"]["per_lead"]["skill"]["seasonal"][0] is None
    assert res["m"]["mse"] == pytest.approx(0.04) and np.isfinite(res["m"]["skill"]["seasonal"])
    nothing = metrics.finish({k: np.zeros(3) for k in ("se", "ae", "n")})
    assert nothing["mse"] is None and nothing["iou"] is None


def test_block_bootstrap_interval() -> None:
    rng = np.random.default_rng(3)
    units = 4 * 9  # 4 start dates x 9 spatial blocks
    origin, block = np.repeat(np.arange(4), 9), np.tile(np.arange(9), 4)
    base = rng.random((units, 2)) + 0.5
    lo_hi, per = metrics.bootstrap_skill(0.7 * base, base, origin, block)
    assert lo_hi == pytest.approx([0.3, 0.3]) and per[1] == pytest.approx([0.3, 0.3])  # a constant ratio: no spread
    noisy = base * rng.uniform(0.4, 1.2, size=base.shape)
    point = 1 - noisy.sum() / base.sum()
    (lo, hi), _ = metrics.bootstrap_skill(noisy, base, origin, block)
    assert lo < point < hi and hi - lo < 0.5
    # one start date far worse than the others widens the interval: dates are what is resampled
    bad = noisy.copy()
    bad[origin == 0] *= 3
    (lo2, hi2), _ = metrics.bootstrap_skill(bad, base, origin, block)
    assert hi2 - lo2 > 2 * (hi - lo)
    assert metrics.bootstrap_skill(noisy, np.zeros_like(base), origin, block) == (None, [None, None])
