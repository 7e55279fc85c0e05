"""eval_judge=NAME: a held-out judge that judges the evaluation pairs only, reported beside the training judge."""

import json

import pytest

from conftest import compose, run_cli, small_run_overrides
from ppo.errors import ConfigError
from ppo.train.validation import validate


def test_every_eval_judge_composes_with_its_name():
    for name in ("rule", "length", "sentiment", "llm", "http", "replay"):
        cfg = compose([f"eval_judge={name}"])
        assert cfg.eval_judge.name == name and "_target_" in cfg.eval_judge
        assert cfg.eval_judge.order == compose([f"judge={name}"]).judge.order  # the judge group's own settings
    assert compose([]).eval_judge is None


@pytest.mark.parametrize("override, message", [
    ("eval_judge.name=a/b", "invalid eval_judge.name='a/b'"),
    ("eval_judge._target_=ppo.judges.human.HumanJudge", "a person cannot be the held-out judge"),
])
def test_bad_eval_judge_is_one_line(override, message):
    cfg = compose(["eval_judge=length", override])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_run_reports_both_judges_everywhere(tiny_model_dir, prompts_file, tmp_path):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, **{"train.progress": "true"}) + [
        "eval_judge=length", "eval_judge.target_words=3", "eval_judge.require_ending=false", f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/win_rate" in r]
    assert len(evals) == 2
    for r in evals:
        assert r["eval/length/pairs"] == r["eval/pairs"]  # the same pairs, judged twice
        assert r["eval/length/win_rate_low"] <= r["eval/length/win_rate"] <= r["eval/length/win_rate_high"]
        assert "eval/length/win_rate_lc" in r
    assert not any(k.startswith("eval/length/") for r in rows if "eval/win_rate" not in r for k in r)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"]["eval/length/win_rate"] == evals[-1]["eval/length/win_rate"]
    # its own records, never mixed with the training judge's (which a replay reads)
    held = [json.loads(line) for line in (run_dir / "judgments_eval_length.jsonl").read_text().splitlines()]
    assert held and all(r.get("phase") == "eval" for r in held)
    assert "eval_win_rate[length]=" in result.stdout
    assert "held-out judge length (never trained against)" in result.stdout
    report = (run_dir / "report.md").read_text()
    assert "held-out judge win rate" in report and f"length {evals[-1]['eval/length/win_rate']:.3f}" in report


def _run_with_held_out(root, name, train_rate, held_rate, pairs=200):
    from ppo.metrics import wilson_interval
    from test_report import make_run

    run = make_run(root, name, 0.2, 0.1, [0.5, train_rate], [0.1] * 10, [0.1] * 10, pairs=pairs)
    summary = json.loads((run / "summary.json").read_text())
    low, high = wilson_interval(held_rate, pairs)
    summary["eval"].update({"eval/length/win_rate": held_rate, "eval/length/win_rate_low": low,
                            "eval/length/win_rate_high": high, "eval/length/pairs": pairs})
    (run / "summary.json").write_text(json.dumps(summary))


def test_the_report_flags_a_run_that_beats_only_its_training_judge(tmp_path, capsys):
    from ppo.tools.report import load_runs, main

    root = tmp_path / "sweep"
    _run_with_held_out(root, "gamed", 0.85, 0.45)  # 0.79-0.89 against 0.38-0.52
    _run_with_held_out(root, "honest", 0.60, 0.55)  # intervals overlap
    runs = {r.name: r for r in load_runs(root)}
    assert runs["gamed"].gamed_judges == ["length"] and runs["honest"].gamed_judges == []
    main([str(root)])
    report = (root / "report.md").read_text()
    assert "**Judge gaming?** in 1 of 2 runs (`gamed`)" in report
    rows = {line.split("`")[1]: line for line in report.splitlines() if line.startswith("| `")}
    assert "length 0.450 (0.38-0.52) **judge gaming?**" in rows["gamed"]
    assert "length 0.550" in rows["honest"] and "judge gaming?" not in rows["honest"]
