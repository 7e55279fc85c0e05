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


def test_chosen_longer_rate_counts_decided_pairs_only():
    from ppo.train.step import chosen_longer_rate

    first, second = np.array([5, 9, 4, 7]), np.array([3, 9, 8, 1])
    first_is_chosen = np.array([True, True, True, False])
    # pair 0: chosen 5 > 3 (1); pair 1: equal (0.5); pair 2: chosen 4 < 8 (0); pair 3 not decided
    decided = np.array([True, True, True, False])
    assert chosen_longer_rate(first, second, first_is_chosen, decided) == pytest.approx(0.5)
    assert chosen_longer_rate(first, second, first_is_chosen, np.array([True, False, False, False])) == 1.0
    assert math.isnan(chosen_longer_rate(first, second, first_is_chosen, np.zeros(4, bool)))


@pytest.mark.slow
def test_a_length_judges_run_logs_its_length_bias(tiny_model_dir, prompts_file, tmp_path):
    """judge=length with a far target prefers the longer answer: the run says so at every step
    (judge/chosen_longer_rate) and every evaluation carries the length-controlled win rate."""
    import json

    from conftest import run_cli, small_run_overrides

    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, **{
        "train.iters": 4, "train.batch_size": 4, "generation.max_completion_length": 24, "data.max_eval_prompts": 8,
        "train.progress": "true"}) + ["judge=length", "judge.target_words=1000", "judge.require_ending=false",
                                       f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    longer = [r["judge/chosen_longer_rate"] for r in rows if r.get("judge/chosen_longer_rate") is not None]
    # the tiny model mostly runs to the length cap (equal lengths count 0.5); where lengths differ, the
    # judge that counts words picked the longer one
    assert len(longer) == 4 and all(0.5 <= v <= 1 for v in longer) and max(longer) > 0.5
    evals = [r for r in rows if "eval/win_rate" in r]
    assert evals
    for r in evals:
        assert r["eval/win_rate_lc_low"] <= r["eval/win_rate_lc"] <= r["eval/win_rate_lc_high"]
        assert r["eval/length_ratio"] == pytest.approx(r["eval/mean_length"] / r["eval/ref_mean_length"])
    assert "length_controlled=" in result.stdout and "length-controlled win rate:" in result.stdout
