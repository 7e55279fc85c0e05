"""The report's statistics (`ppo.tools.report.stats`) on their own: runs built in memory, numbers
checked against values worked out by hand from the textbook formulas (no scipy, no run folders).

Known values: the 95% Wilson interval of 8 wins in 10 is 0.490-0.943; of 26 in 40, 0.495-0.779.
Student's t 0.975 quantile is 12.706 with 1 degree of freedom (2 seeds), 4.303 with 2, 2.776 with 4
(5 seeds)."""

from pathlib import Path

import pytest

from ppo.tools.report.loading import Run
from ppo.tools.report.stats import (NON_NEGATIVE, RATE, UNBOUNDED, Cell, Stat, configurations, settings_without_effect,
                                    valid_range, verdict, verdict_text)


def run(name: str, win: float | None, pairs: float | None = None, seed: int = 0, beta: str = "0.1",
        status: str = "finished", **fields) -> Run:
    return Run(path=Path(name), name=name, epsilon=0.2, beta=float(beta), loss_type="ppo_clip", advantage="judge",
               seed=seed, status=status, final_win_rate=win, best_win_rate=win, pairs=pairs,
               configuration=(("loss.beta", beta),), **fields)


def test_two_seeds_multiply_their_spread_by_12_7_and_are_cut_to_the_rate_range():
    stat = Stat.of([0.5, 0.7], RATE)
    # s = 0.1414, s / sqrt(2) = 0.1, times t(1) = 12.706
    assert stat.mean == pytest.approx(0.6) and stat.half == pytest.approx(1.2706) and stat.n == 2
    assert stat.too_few and stat.clipped and stat.interval == (0.0, 1.0)
    assert stat.text() == "0.600 [0.000, 1.000] (2 seeds: too few)"


def test_five_seeds_use_the_t_multiplier_2_776():
    stat = Stat.of([0.5, 0.6, 0.7, 0.8, 0.9, None], RATE)  # a seed without a value is left out
    # s = 0.1581, s / sqrt(5) = 0.0707, times t(4) = 2.776
    assert stat.n == 5 and stat.mean == pytest.approx(0.7) and stat.half == pytest.approx(0.19629, abs=1e-5)
    assert not stat.too_few and not stat.clipped
    assert stat.text() == "0.700 ± 0.196 (5 seeds)"


def test_one_seed_has_no_spread_and_no_value_reads_a_dash():
    assert Stat.of([0.83]).text() == "0.830 (1 seed)" and Stat.of([0.83]).interval is None
    assert Stat.of([None]).text() == "-" and Stat.of([]).n == 0


def test_a_kl_mean_stays_as_measured_and_only_its_interval_is_cut_at_zero():
    stat = Stat.of([0.01, -0.01, 0.03], NON_NEGATIVE)
    # s = 0.02, s / sqrt(3) = 0.01155, times t(2) = 4.303
    assert stat.half == pytest.approx(0.049687, abs=1e-6)
    assert stat.interval == (0.0, pytest.approx(0.059687, abs=1e-6))
    assert stat.value_text() == "0.010 [0.000, 0.060]"


def test_valid_ranges():
    assert valid_range("eval/win_rate") == RATE and valid_range("eval/length/win_rate") == RATE
    assert valid_range("eval/length/win_rate_lc") == RATE and valid_range("kl") == NON_NEGATIVE
    assert valid_range("loss") == UNBOUNDED


def test_one_seed_reads_the_wilson_interval_of_its_pairs():
    cell = Cell.of((("loss.beta", "0.1"),), [run("a", 0.8, pairs=10)])
    assert cell.pooled == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert cell.interval == cell.pooled  # no t-interval with one seed
    # 0.8 + 0.227 would pass 1: Wilson's lopsided interval is written as it is
    assert cell.win_text() == "0.800 [0.490, 0.943] (1 seed; pairs)"
    assert cell.pooled_text() == "0.49-0.94 (10 pairs)"


def test_seeds_pool_their_pairs_and_the_interval_is_the_union_of_both():
    cell = Cell.of((), [run("a", 0.8, pairs=10, seed=0), run("b", 0.6, pairs=30, seed=1)])
    assert cell.pairs == 40 and cell.pooled_rate == pytest.approx(0.65)  # 8 + 18 wins of 40
    assert cell.pooled == (pytest.approx(0.4951, abs=1e-4), pytest.approx(0.7787, abs=1e-4))
    assert cell.win.half == pytest.approx(1.2706)  # two seeds: the t-interval is the wider one
    assert cell.interval == (0.0, 1.0)


def test_an_unfinished_run_is_not_pooled_with_finished_ones():
    cell = Cell.of((), [run("a", 0.8, pairs=10, seed=0), run("b", 0.1, pairs=10, seed=1, status="running-or-killed")])
    assert cell.finished and [r.name for r in cell.used] == ["a"] and cell.win.mean == 0.8


def test_the_verdict_names_a_winner_only_beyond_noise():
    def seeds(beta, wins):
        return [run(f"b{beta}s{i}", w, pairs=100, seed=i, beta=beta) for i, w in enumerate(wins)]

    apart = verdict(configurations(seeds("0.1", [0.80, 0.82, 0.84]) + seeds("0.5", [0.40, 0.42, 0.44])))
    assert apart.clear and apart.best.label == "beta=0.1" and apart.runner_up.label == "beta=0.5"
    assert "beats the runner-up beyond noise" in verdict_text(apart)

    close = verdict(configurations(seeds("0.1", [0.80, 0.82, 0.84]) + seeds("0.5", [0.78, 0.80, 0.82])))
    assert not close.clear and [c.label for c in close.top_group] == ["beta=0.1", "beta=0.5"]
    assert "No clear winner: top group of 2" in verdict_text(close)
    assert verdict(configurations([run("a", None)])).best is None


def test_a_setting_that_changed_nothing_is_named():
    rows = [{"step": 1, "kl": 0.1, "clip_fraction": 0.0}, {"step": 2, "kl": 0.2, "clip_fraction": 0.0}]

    def with_epsilon(eps, rows):
        r = run(f"eps{eps}", 0.6, pairs=10, rows=rows, clip_fraction=0.0)
        r.configuration = (("loss.epsilon", eps),)
        return r

    same = configurations([with_epsilon("0.1", rows), with_epsilon("0.3", [dict(r) for r in rows])])
    assert settings_without_effect(same) == [
        "epsilon 0.1 and 0.3 gave identical runs (every metric of every step, to the last digit), so epsilon changed "
        "nothing here (clip_fraction is 0 throughout: no ratio ever reached the clip range, so its width did not matter)"]
    different = configurations([with_epsilon("0.1", rows), with_epsilon("0.3", rows[:1])])
    assert settings_without_effect(different) == []
