"""judge=sentiment (VADER's compound score) and data=instructions (the shipped instruction prompts)."""

import fnmatch
import json
import math

import numpy as np
import pytest

from conftest import ROOT, compose, run_cli, small_run_overrides
from ppo.judges import Pair
from ppo.judges.pipeline import JudgePipeline, swap
from ppo.judges.rules import SentimentPreference
from ppo.resources import asset

POSITIVE = "I had a wonderful weekend with friends, and the weather was lovely."
NEGATIVE = "The weekend was awful and I felt tired and lonely."
NEUTRAL = "It was a weekend."
PROMPT = "Tell a friend about your weekend."


@pytest.fixture(scope="module")
def judge():
    return SentimentPreference()


def compound(judge, text):
    return judge.analyzer.polarity_scores(text)["compound"]


def test_the_positive_answer_wins_and_equal_scores_tie(judge):
    assert compound(judge, POSITIVE) > 0.5 and compound(judge, NEGATIVE) < -0.5 and compound(judge, NEUTRAL) == 0.0
    assert compound(judge, "The bus leaves at noon.") == 0.0
    pairs = [
        Pair(PROMPT, POSITIVE, NEGATIVE),
        Pair(PROMPT, NEGATIVE, POSITIVE),
        Pair(PROMPT, NEUTRAL, NEGATIVE),
        Pair(PROMPT, POSITIVE, POSITIVE),  # equal texts
        Pair(PROMPT, NEUTRAL, "The bus leaves at noon."),  # different texts, both 0.0
        Pair(PROMPT, "", ""),  # no answer at all (cut inside its reasoning): scores 0.0
    ]
    verdicts = judge(pairs)
    assert verdicts.p.tolist() == [1.0, 0.0, 1.0, 0.5, 0.5, 0.5]
    assert verdicts.diagnostics["score_a"][0] == pytest.approx(compound(judge, POSITIVE))


def test_a_completion_that_ends_beats_one_cut_at_the_cap(judge):
    cut_positive = Pair(PROMPT, POSITIVE + " and then", NEGATIVE, a_finished=False, b_finished=True)
    assert judge([cut_positive]).p.tolist() == [0.0]
    assert judge([swap(cut_positive)]).p.tolist() == [1.0]
    both_cut = Pair(PROMPT, POSITIVE, NEGATIVE, a_finished=False, b_finished=False)
    assert judge([both_cut]).p.tolist() == [1.0]  # both cut: the scores decide
    assert SentimentPreference(require_ending=False)([cut_positive]).p.tolist() == [1.0]


@pytest.mark.parametrize("sharpness", [None, 5.0])
def test_swapping_the_pair_flips_p(sharpness):
    judge = SentimentPreference(sharpness=sharpness)
    pairs = [Pair(PROMPT, POSITIVE, NEGATIVE), Pair(PROMPT, "The coffee was good.", "The coffee was fine, I guess."),
             Pair(PROMPT, NEUTRAL, NEGATIVE, a_finished=False)]
    p = judge(pairs).p
    np.testing.assert_allclose(judge([swap(x) for x in pairs]).p, 1.0 - p)
    # The pipeline's orders: "both" averages (A, B) with 1 - (B, A); "fixed" shows the pair as given.
    for order in ("both", "fixed"):
        pipeline = JudgePipeline(judge, order=order)
        np.testing.assert_allclose(pipeline(pairs).p, p)
        np.testing.assert_allclose(JudgePipeline(judge, order=order)([swap(x) for x in pairs]).p, 1.0 - p)


def test_sharpness_gives_a_soft_p_from_the_compound_gap(judge):
    soft = SentimentPreference(sharpness=5.0)
    a, b = "The coffee was good.", "The coffee was fine, I guess."
    gap = compound(judge, a) - compound(judge, b)
    assert 0.0 < gap < 0.5
    p = soft([Pair(PROMPT, a, b)]).p[0]
    assert p == pytest.approx(1.0 / (1.0 + math.exp(-5.0 * gap))) and 0.5 < p < 0.9
    assert soft([Pair(PROMPT, POSITIVE, NEGATIVE)]).p[0] > 0.99  # a wide gap is near certain
    assert soft([Pair(PROMPT, POSITIVE, POSITIVE)]).p[0] == 0.5
    # tie_threshold (the pipeline's) turns a small gap into a tie: zero advantage.
    assert JudgePipeline(soft, tie_threshold=0.9)([Pair(PROMPT, a, b)]).p[0] == 0.5


def test_the_analyzer_is_built_once_per_judge(monkeypatch):
    import vaderSentiment.vaderSentiment as vader

    built = []

    class Counting(vader.SentimentIntensityAnalyzer):
        def __init__(self, *args, **kwargs):
            built.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vader, "SentimentIntensityAnalyzer", Counting)
    judge = SentimentPreference()
    for _ in range(3):
        judge([Pair(PROMPT, POSITIVE, NEGATIVE), Pair(PROMPT, NEUTRAL, POSITIVE)])
    assert len(built) == 1


def test_the_lexicon_needs_no_network(judge):
    """VADER's lexicon is read from inside its wheel; importing it pulls in no HTTP client."""
    import subprocess
    import sys

    code = ("import sys; from ppo.judges.rules import SentimentPreference; "
            "j = SentimentPreference(); print(j.analyzer.polarity_scores('good')['compound'], 'requests' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["0.4404", "False"]


def test_judge_sentiment_composes_and_builds():
    from ppo.judges import build_judge

    cfg = compose(["judge=sentiment"])
    judge = build_judge(cfg.judge)
    assert isinstance(judge.inner, SentimentPreference)
    assert judge.inner.require_ending and judge.inner.sharpness is None
    assert judge.order == "both" and judge.tie_threshold == 0.0
    verdicts = judge([Pair(PROMPT, POSITIVE, NEGATIVE), Pair(PROMPT, NEGATIVE, POSITIVE, a_finished=True, b_finished=False)])
    assert verdicts.p.tolist() == [1.0, 1.0]
    assert verdicts.diagnostics["judge/order_agreement"] == 1.0
    soft = build_judge(compose(["judge=sentiment", "judge.sharpness=5", "judge.order=fixed"]).judge)
    assert soft.inner.sharpness == 5.0 and soft.order == "fixed" and 0.99 < soft([Pair(PROMPT, POSITIVE, NEGATIVE)]).p[0] < 1.0


def _instruction_rows():
    return [json.loads(line) for line in asset("instruction_prompts.jsonl").read_text(encoding="utf-8").splitlines()]


def test_the_instruction_prompts_file():
    rows = _instruction_rows()
    prompts = [r["prompt"] for r in rows]
    assert len(prompts) >= 250 and all(set(r) == {"prompt"} for r in rows)
    assert len({p.lower().rstrip(".?!") for p in prompts}) == len(prompts)  # no duplicates
    assert all(p.strip() == p and p[0].isupper() and p[-1] in ".?" and len(p) <= 100 for p in prompts)
    readme = asset("README.md").read_text()
    assert f"{len(prompts)} instructions" in readme and "MIT" in readme
    assert "MIT" in (ROOT / "conf" / "data" / "instructions.yaml").read_text()


def test_the_assets_ship_in_the_wheel_and_the_sdist():
    """tests/test_wheel.py builds and installs the wheel (slow); this checks the globs that decide it."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ppo"]
    manifest = [line.split()[1:] for line in (ROOT / "MANIFEST.in").read_text().splitlines() if line.startswith("include ")]
    manifest = [pattern for patterns in manifest for pattern in patterns]
    for name in ("instruction_prompts.jsonl", "demo_prompts.jsonl", "README.md"):
        assert asset(name).is_file()
        assert any(fnmatch.fnmatch(f"demo/assets/{name}", pattern) for pattern in package_data), name
        assert any(fnmatch.fnmatch(f"ppo/demo/assets/{name}", pattern) for pattern in manifest), name


def test_data_instructions_holds_out_64_disjoint_prompts(tiny_model_dir):
    from mlx_lm import load

    from ppo.train.data import load_prompts

    tokenizer = load(str(tiny_model_dir))[1]
    cfg = compose(["data=instructions"])
    assert cfg.data.path == str(asset("instruction_prompts.jsonl"))
    for seed in (0, 1):
        splits = load_prompts(cfg.data, tokenizer, seed=seed)
        train, held_out = {p.text for p in splits.train}, {p.text for p in splits.eval}
        assert len(held_out) == cfg.data.max_eval_prompts == 64 and len(train) == len(_instruction_rows()) - 64
        assert not train & held_out and len(train) + len(held_out) >= 250
        assert splits.skipped_rows == 0 and splits.truncated_prompts == 0


@pytest.mark.slow
def test_ppo_train_with_the_sentiment_judge_on_the_instructions(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    overrides = [o for o in small_run_overrides(tiny_model_dir, "unused", **{"train.iters": 2}) if not o.startswith("data.path=")]
    result = run_cli(["judge=sentiment", "data=instructions", *overrides, f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and "eval/win_rate" in summary["eval"]
    records = [json.loads(line) for line in (run_dir / "judgments.jsonl").read_text().splitlines()]
    assert {r["judge"] for r in records} == {"SentimentPreference"}
    assert {r["phase"] for r in records} >= {"train", "eval"}
    assert all(r["orders"] == ["ab", "ba"] and r["p"] in (0.0, 0.5, 1.0) for r in records)
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "ppo.judges.rules.SentimentPreference" in config and "instruction_prompts.jsonl" in config


def test_a_missing_vader_is_one_line_with_the_fix(monkeypatch):
    import sys

    from ppo.errors import ConfigError

    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"^judge=sentiment needs the vaderSentiment package: pip install vaderSentiment==3.3.2"):
        SentimentPreference()
