"""The length-controlled win rate (ppo.metrics.length_controlled_win_rate) against its model."""

import math

import numpy as np
import pytest

from ppo.metrics import LC_PRIOR, length_controlled_win_rate


def _lengths(seed=0, n=64):
    rng = np.random.default_rng(seed)
    return rng.integers(10, 40, n), rng.integers(5, 30, n)


def test_length_only_judge_is_controlled_to_a_coin():
    policy, reference = _lengths()
    scores = np.where(policy > reference, 1.0, np.where(policy < reference, 0.0, 0.5))
    lc = length_controlled_win_rate(scores, policy, reference)
    assert scores.mean() > 0.65
    assert lc["win_rate_lc_low"] < 0.5 < lc["win_rate_lc_high"]
    assert abs(lc["win_rate_lc"] - 0.5) < 0.1
    assert lc["length_coefficient"] > 2


def test_a_judge_blind_to_length_keeps_its_win_rate():
    policy, reference = _lengths(1, 400)
    scores = (np.random.default_rng(2).random(400) < 0.75).astype(float)
    lc = length_controlled_win_rate(scores, policy, reference)
    assert abs(lc["win_rate_lc"] - scores.mean()) < 0.05
    assert abs(lc["length_coefficient"]) < 0.5


def test_fit_is_the_penalised_maximum_likelihood():
    """An independent optimiser (scipy, float64) on the documented objective finds the same theta."""
    optimize = pytest.importorskip("scipy.optimize")
    policy, reference = _lengths(3)
    rng = np.random.default_rng(4)
    scores = rng.choice([0.0, 0.5, 1.0], size=64, p=[0.3, 0.1, 0.6])
    d = policy - reference
    feature = np.tanh(d / d.std())

    def objective(w):
        z = w[0] + w[1] * feature
        return float(np.sum(np.logaddexp(0, z) - scores * z) + LC_PRIOR / 2 * np.dot(w, w))

    theta, phi = optimize.minimize(objective, np.zeros(2), method="Nelder-Mead",
                                   options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 10000}).x
    lc = length_controlled_win_rate(scores, policy, reference)
    assert lc["win_rate_lc"] == pytest.approx(1 / (1 + math.exp(-theta)), abs=1e-6)
    assert lc["length_coefficient"] == pytest.approx(phi, abs=1e-5)
    assert lc["win_rate_lc_low"] < lc["win_rate_lc"] < lc["win_rate_lc_high"]


def test_equal_lengths_leave_only_the_shrunk_raw_rate():
    lc = length_controlled_win_rate([1.0] * 10, [5] * 10, [5] * 10)
    assert lc["length_coefficient"] == 0.0
    assert 0.5 < lc["win_rate_lc"] < 1.0


def test_nothing_to_fit():
    assert length_controlled_win_rate([], [], []) is None
