"""The judge pipeline: answer order, position bias, cache, ties, record and replay, factory."""

import json
import math

import numpy as np
import pytest

from conftest import compose
from ppo.errors import ConfigError
from ppo.judges import JudgePipeline, JudgeUnavailable, Pair, Verdicts, build_judge
from ppo.judges.record import JudgmentLog, read_judgments
from ppo.judges.replay import ReplayJudge


class BiasedJudge:
    """Longer completion is better, plus a known bonus for whatever is shown first."""

    kind = "biased"

    def __init__(self, bias=2.0):
        self.bias, self.calls, self.seen = bias, 0, []

    def __call__(self, pairs):
        self.calls += 1
        self.seen += pairs
        d = np.array([len(x.a) - len(x.b) for x in pairs], dtype=np.float64)
        return Verdicts(p=1.0 / (1.0 + np.exp(-(0.5 * d + self.bias))))


PAIRS = [Pair("q", "a" * n, "b" * m, prompt_id=f"q{i}") for i, (n, m) in enumerate([(5, 3), (3, 5), (4, 4), (1, 9), (8, 2)])]


def test_both_orders_remove_a_known_position_bias():
    fixed = JudgePipeline(BiasedJudge(), order="fixed")(PAIRS)
    both = JudgePipeline(BiasedJudge(), order="both", on_order_disagreement="average")(PAIRS)
    assert fixed.diagnostics["judge/first_position_win_rate"] == 0.8  # unbiased: 0.5
    assert fixed.p[1] > 0.5  # ...and wins a pair it should lose
    unbiased = 1.0 / (1.0 + np.exp(-0.5 * np.array([len(x.a) - len(x.b) for x in PAIRS])))
    # averaging p_ab and 1 - p_ba keeps the winner of the unbiased judge everywhere
    assert np.array_equal(both.p > 0.5, unbiased > 0.5) and both.p[2] == pytest.approx(0.5)
    reverse = JudgePipeline(BiasedJudge(), order="both", on_order_disagreement="average")(
        [Pair(x.prompt, x.b, x.a, prompt_id=x.prompt_id) for x in PAIRS])
    assert np.array_equal(both.p, 1.0 - reverse.p)
    assert both.diagnostics["judge/order_agreement"] < 1.0  # the bias made the orders disagree sometimes
    # The default (on_order_disagreement=tie): the pairs whose orders disagree are ties, the rest as averaged.
    tie = JudgePipeline(BiasedJudge(), order="both")(PAIRS).p
    assert tie.tolist() == [0.5, 0.5, 0.5, both.p[3], both.p[4]]
    assert math.isnan(fixed.diagnostics["judge/order_agreement"])


def test_random_order_is_seeded_and_stable():
    a = JudgePipeline(BiasedJudge(), order="random", seed=3)(PAIRS).p
    b = JudgePipeline(BiasedJudge(), order="random", seed=3)(PAIRS).p
    np.testing.assert_array_equal(a, b)


def test_identical_pairs_judged_once_and_mirror_under_both():
    inner = BiasedJudge()
    judge = JudgePipeline(inner, order="both")
    pairs = [PAIRS[0], PAIRS[0], Pair("q", PAIRS[0].b, PAIRS[0].a)]
    v = judge(pairs)
    assert len(inner.seen) == 2  # one pair, two orders
    assert v.p[0] == v.p[1] and v.p[2] == 1.0 - v.p[0]  # exact: the mirror of the same judgment
    judge(pairs)
    assert len(inner.seen) == 2 and judge(pairs).diagnostics["judge/cache_hit_rate"] == 1.0


def test_invalid_is_not_cached_and_one_invalid_order_invalidates():
    class Flaky:
        calls = 0

        def __call__(self, pairs):
            Flaky.calls += 1
            return Verdicts(p=np.array([np.nan] + [0.9] * (len(pairs) - 1)))

    judge = JudgePipeline(Flaky(), order="both")
    v = judge([PAIRS[0]])
    assert np.isnan(v.p[0]) and v.diagnostics["judge/invalid_rate"] == 1.0
    judge([PAIRS[0]])
    assert Flaky.calls == 2


def test_tie_threshold_snaps_to_half():
    v = JudgePipeline(BiasedJudge(bias=0.0), order="both", tie_threshold=0.5)([Pair("q", "aa", "b"), Pair("q", "a" * 9, "b")])
    assert v.p[0] == 0.5 and v.p[1] > 0.9
    assert v.diagnostics["judge/tie_rate"] == 0.5


def test_record_and_replay_round_trip(tmp_path):
    path = tmp_path / "judgments.jsonl"
    judge = JudgePipeline(BiasedJudge(), order="random", seed=1, log=JudgmentLog(path))
    original = judge(PAIRS, step=7).p
    judge.close()
    records = read_judgments(path)
    assert len(records) == len(PAIRS) and records[0]["step"] == 7 and records[0]["prompt_id"] == "q0"
    assert {"a_sha256", "b_sha256", "orders", "p", "verdict", "latency_s", "judge"} <= set(records[0])
    assert records[0]["verdict"] == ("a" if original[0] > 0.5 else "b")
    replay = JudgePipeline(ReplayJudge(str(path)), order="fixed")
    np.testing.assert_allclose(replay(PAIRS).p, original, atol=1e-12)
    swapped = replay([Pair(x.prompt, x.b, x.a) for x in PAIRS]).p
    np.testing.assert_allclose(swapped, 1.0 - original, atol=1e-12)
    with pytest.raises(JudgeUnavailable, match="not in"):  # a judge failure: the trainer checkpoints (issue 23)
        replay([Pair("new", "x", "y")])
    lenient = JudgePipeline(ReplayJudge(str(path), on_missing="invalid"), order="fixed")
    v = lenient([Pair("new", "x", "y"), PAIRS[0]])
    assert np.isnan(v.p[0]) and v.p[1] == pytest.approx(original[0]) and v.diagnostics["judge/replay_missing"] == 1


def test_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "j.jsonl"
    JudgmentLog(path).write([{"p": 0.7, "x": 1}])
    with open(path, "a") as f:
        f.write('{"p": 0.')
    assert read_judgments(path) == [{"p": 0.7, "x": 1}]


def test_factory_pops_and_validates_wrapper_keys(tmp_path):
    judge = build_judge(compose(["judge=rule", "judge.order=fixed", "judge.tie_threshold=0.2"]).judge, run_dir=tmp_path)
    assert judge.order == "fixed" and judge.tie_threshold == 0.2
    v = judge([Pair("p", "a good dog", "a bad dog", prompt_id="p0")], step=1)
    assert v.p.tolist() == [1.0] and set(v.diagnostics) >= {
        "judge/first_position_win_rate", "judge/tie_rate", "judge/invalid_rate", "judge/order_agreement", "judge/seconds"}
    assert json.loads((tmp_path / "judgments.jsonl").read_text().splitlines()[0])["verdict"] == "a"
    assert build_judge(compose(["judge=rule"]).judge).order == "both"  # default
    for override, match in [("judge.order=sideways", "judge.order"), ("judge.tie_threshold=1.5", "judge.tie_threshold")]:
        with pytest.raises(ConfigError, match=match) as err:
            build_judge(compose(["judge=rule", override]).judge)
        assert "\n" not in str(err.value)


def test_group_configs_compose():
    for name in ("llm", "http", "human", "replay", "rule", "length"):
        assert "_target_" in compose([f"judge={name}"]).judge
    with pytest.raises(ConfigError, match="judge.path"):
        build_judge(compose(["judge=replay"]).judge)
    with pytest.raises(ConfigError, match="judge.system"):
        build_judge(compose(["judge=http", "judge.system=[1,2]"]).judge)
