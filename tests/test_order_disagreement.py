"""judge.on_order_disagreement: a pair whose two orders pick different answers is a tie.

The position-following judge below is what SmolLM2-135M was as its own judge
(docs/how-to/real-models.md, "`judge=llm` on the real model"): the answer shown first wins in both
orders, with a small lean to the longer answer.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import compose, run_cli, small_run_overrides
from ppo.judges import JudgePipeline, Pair, Verdicts, build_judge
from ppo.judges.pipeline import GUESSING_AGREEMENT, reliability
from ppo.judges.record import JudgmentLog, read_judgments
from ppo.errors import ConfigError


class FirstPosition:
    """Prefers whatever is shown first (P(first) 0.8-0.9), leaning a little to the longer answer.

    Extra config keys (the judge=length file this is swapped into) are ignored."""

    kind = "first_position"

    def __init__(self, **_):
        pass

    def __call__(self, pairs):
        return Verdicts(p=np.array([0.9 if len(x.a) > len(x.b) else 0.8 for x in pairs], dtype=np.float64))


class Biased:
    """Longer is better plus a bonus for the first position (the orders disagree on close pairs)."""

    def __call__(self, pairs):
        d = np.array([len(x.a) - len(x.b) for x in pairs], dtype=np.float64)
        return Verdicts(p=1.0 / (1.0 + np.exp(-(0.5 * d + 2.0))))


PAIRS = [Pair("q", "a" * n, "b" * m, prompt_id=f"q{i}") for i, (n, m) in enumerate([(5, 3), (3, 5), (4, 4), (1, 9), (8, 2), (2, 3)])]


def test_a_first_position_judge_is_all_ties_under_both(tmp_path):
    judge = JudgePipeline(FirstPosition(), log=JudgmentLog(tmp_path / "j.jsonl"))
    assert judge.on_order_disagreement == "tie"  # the default
    v = judge(PAIRS, step=1)
    assert v.p.tolist() == [0.5] * len(PAIRS)
    assert v.diagnostics["judge/tie_rate"] == 1.0 and v.diagnostics["judge/order_agreement"] == 0.0
    assert v.diagnostics["judge/first_position_win_rate"] == 1.0
    judge.close()
    records = read_judgments(tmp_path / "j.jsonl")
    assert all(r["verdict"] == "tie" and r["order_disagreement"] is True and r["on_order_disagreement"] == "tie"
               for r in records)
    assert records[0]["p_raw"] == pytest.approx(0.55)  # the average, kept for the record


def test_average_keeps_the_rule_before_the_option():
    average = JudgePipeline(FirstPosition(), on_order_disagreement="average")(PAIRS).p
    # (p_ab + 1 - p_ba) / 2: 0.9 and 0.8 -> 0.55 for the longer A; equal lengths -> 0.5
    np.testing.assert_allclose(average, [0.55, 0.45, 0.5, 0.45, 0.55, 0.45])
    tie = JudgePipeline(Biased())(PAIRS)
    avg = JudgePipeline(Biased(), on_order_disagreement="average")(PAIRS)
    p_ab = Biased()(PAIRS).p
    p_ba = Biased()([Pair(x.prompt, x.b, x.a) for x in PAIRS]).p
    disagree = (p_ab - 0.5) * ((1.0 - p_ba) - 0.5) < 0
    assert disagree.any() and not disagree.all()
    np.testing.assert_allclose(avg.p, (p_ab + 1.0 - p_ba) / 2, atol=1e-15)
    np.testing.assert_array_equal(tie.p[~disagree], avg.p[~disagree])  # agreeing pairs: bit for bit the same
    assert (tie.p[disagree] == 0.5).all() and (avg.p[disagree] != 0.5).any()


def test_one_order_at_exactly_half_is_no_disagreement():
    class HalfWhenAFirst:
        def __call__(self, pairs):
            return Verdicts(p=np.array([0.5 if x.a.startswith("a") else 0.1 for x in pairs]))

    v = JudgePipeline(HalfWhenAFirst())([Pair("q", "aa", "bb")])
    assert v.p[0] == pytest.approx(0.7)  # (0.5 + 0.9) / 2: the order that decided leans the average
    assert v.diagnostics["judge/order_agreement"] == 0.0  # ...but the orders did not agree


def test_mirror_stays_exact_and_a_resume_recomputes_under_the_current_rule(tmp_path):
    judge = JudgePipeline(Biased())
    v = judge(PAIRS)
    np.testing.assert_array_equal(judge([Pair(x.prompt, x.b, x.a) for x in PAIRS]).p, 1.0 - v.p)
    path = tmp_path / "j.jsonl"
    first = JudgePipeline(Biased(), on_order_disagreement="average", log=JudgmentLog(path), kind="b")
    first(PAIRS)
    first.close()
    resumed = JudgePipeline(Biased(), on_order_disagreement="tie", kind="b")
    assert resumed.preload(path) == len(PAIRS)
    hits = resumed(PAIRS)
    assert hits.diagnostics["judge/cache_hit_rate"] == 1.0
    np.testing.assert_array_equal(hits.p, v.p)  # the tie rule, not the recorded averages


def test_factory_key_validation_and_old_checkpoints_resume(tmp_path):
    from ppo.judges.factory import WRAPPER_DEFAULTS
    from ppo.train.checkpoint import config_fingerprint, fingerprint_differences

    assert WRAPPER_DEFAULTS["on_order_disagreement"] == "tie"
    assert build_judge(compose(["judge=rule"]).judge).on_order_disagreement == "tie"
    assert build_judge(compose(["judge=rule", "judge.on_order_disagreement=average"]).judge).on_order_disagreement == "average"
    with pytest.raises(ConfigError, match="judge.on_order_disagreement") as err:
        build_judge(compose(["judge=rule", "judge.on_order_disagreement=coin"]).judge)
    assert "\n" not in str(err.value)
    current = config_fingerprint(compose(["judge=rule"]))
    older = {k: v for k, v in current.items() if k != "judge.on_order_disagreement"}  # made before the key existed
    assert fingerprint_differences(older, current) == []
    average = config_fingerprint(compose(["judge=rule", "judge.on_order_disagreement=average"]))
    assert fingerprint_differences(current, average) == ["judge.on_order_disagreement"]


def test_reliability_counts_answered_pairs_and_says_guessing():
    records = [{"judge": "x", "order_mode": "both", "orders": ["ab", "ba"], "p_shown": [0.9, 0.8], "p": 0.5, "cached": False}] * 3
    records += [{"judge": "x", "order_mode": "both", "orders": ["ab", "ba"], "p_shown": [0.9, 0.2], "p": 0.85, "cached": False}]
    records += [{"judge": "x", "order_mode": "both", "orders": ["ab", "ba"], "p_shown": [0.9, 0.8], "p": 0.5, "cached": True}]
    records += [{"judge": "y", "order_mode": "both", "orders": ["ab", "ba"], "p_shown": [0.9, 0.2], "p": 0.85}]
    r = reliability(records, kind="x", order_mode="both")
    assert r["judge/pairs"] == 4 and r["judge/order_agreement"] == 0.25 and r["judge/order_disagreement_rate"] == 0.75
    assert r["judge/tie_rate"] == 0.75 and r["judge/first_position_win_rate"] == 7 / 8
    assert r["judge/first_position_win_rate_low"] < 7 / 8 < r["judge/first_position_win_rate_high"]
    assert r["judge/guessing"] is True and r["judge/verdict"].startswith("guessing")
    assert reliability(records, kind="y")["judge/guessing"] is False  # agreement 1.0 >= GUESSING_AGREEMENT
    fixed = reliability([{"judge": "x", "orders": ["ab"], "p_shown": [0.9], "p": 0.9}])
    assert fixed["judge/guessing"] is None and fixed["judge/order_agreement"] is None and "not measured" in fixed["judge/verdict"]
    assert 0.5 < GUESSING_AGREEMENT < 1.0


@pytest.mark.slow
def test_first_position_judge_run_wins_exactly_half_and_the_report_says_guessing(tiny_model_dir, prompts_file, tmp_path):
    """A real ppo-train run on the tiny model with the position-following judge under order=both."""
    run_dir = tmp_path / "run"
    tests_dir = str(Path(__file__).resolve().parent)  # where FirstPosition is imported from
    args = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 2}) + [
        "judge=length", "judge._target_=test_order_disagreement.FirstPosition", f"hydra.run.dir={run_dir}"]
    result = run_cli(args, cwd=tmp_path, env={"PYTHONPATH": tests_dir})
    assert result.returncode == 0, result.stderr[-3000:]
    records = read_judgments(run_dir / "judgments.jsonl")
    assert records and all(r["p"] == 0.5 and r["verdict"] == "tie" and r["order_disagreement"] for r in records)
    assert {r["phase"] for r in records} == {"train", "eval"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"]["eval/win_rate"] == 0.5 and summary["eval"]["eval/pairs"] > 0
    judge = summary["judge"]
    assert judge["judge/order_agreement"] == 0.0 and judge["judge/tie_rate"] == 1.0
    assert judge["judge/first_position_win_rate"] == 1.0 and judge["judge/first_position_win_rate_low"] > 0.5
    assert judge["judge/guessing"] is True and judge["judge/on_order_disagreement"] == "tie"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(row["judge/tie_rate"] == 1.0 for row in rows if "judge/tie_rate" in row)

    from ppo.tools.report import main as report_main

    assert report_main([str(run_dir)]) == 0
    report = (run_dir / "report.md").read_text()
    assert "## Judge reliability" in report and "**Judge:** guessing in the run" in report
    row = next(line for line in report.splitlines() if line.startswith("| `") and "first_position" in line)
    assert "**guessing**" in row and "| 0.00 |" in row and "| 1.00 |" in row
