"""ppo-compare on two real tiny runs: the win rate of A over B, its intervals, the pairs file,
a run against itself, and one-line errors for runs that cannot be compared."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli, small_run_overrides
from ppo.metrics import length_controlled_win_rate, wilson_interval
from ppo.tools.compare import judge_config
from ppo.tools.compare import main as compare_main

LENGTH_JUDGE = ["judge=length", "judge.target_words=4", "train.learning_rate=1e-3"]


def _compare(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ppo.tools.compare", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, prompts_file):
    """Two finished tiny runs of the same base model, data and seed (4 held-out prompts), trained apart."""
    root = tmp_path_factory.mktemp("compare")
    for name, extra in (("run_a", ["train.iters=4"]), ("run_b", ["train.iters=2", "loss.beta=0.5"])):
        result = run_cli(small_run_overrides(tiny_model_dir, prompts_file) + LENGTH_JUDGE + extra
                         + [f"hydra.run.dir={root / name}"])
        assert result.returncode == 0, result.stderr[-3000:]
    return root / "run_a", root / "run_b"


def _score(row) -> float:
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[row["verdict"]]


def test_two_runs_win_rate_interval_and_pairs(runs, tmp_path):
    run_a, run_b = runs
    out = tmp_path / "pairs.jsonl"
    result = _compare(run_a, run_b, "--samples-per-prompt", 2, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 4 held-out prompts x 2 draws, every pair judged in both orders, rows shaped like samples.jsonl's
    assert len(rows) == 8 and len({(r["prompt_id"], r["draw"]) for r in rows}) == 8
    assert all(r["orders"] == ["ab", "ba"] and len(r["p_shown"]) == 2 and r["phase"] == "compare" for r in rows)
    assert {"prompt", "a", "b", "a_judged", "b_judged", "a_finished", "b_finished", "p", "verdict"} <= set(rows[0])
    assert any(r["verdict"] != "tie" for r in rows)  # the length judge decides pairs here
    # the printed numbers are the rows' numbers
    scores = [_score(r) for r in rows]
    rate = sum(scores) / len(scores)
    low, high = wilson_interval(rate, len(scores))
    printed = re.search(r"win rate of A over B: ([\d.]+) \(95% interval ([\d.]+)-([\d.]+), 8 pairs", result.stdout)
    assert printed, result.stdout
    assert (printed[1], printed[2], printed[3]) == (f"{rate:.3f}", f"{low:.2f}", f"{high:.2f}")
    lc = length_controlled_win_rate(scores, [r["a_length"] for r in rows], [r["b_length"] for r in rows])
    printed = re.search(r"length-controlled win rate: ([\d.]+) \(95% interval ([\d.]+)-([\d.]+)\)", result.stdout)
    assert printed and (printed[1], printed[2], printed[3]) == (
        f"{lc['win_rate_lc']:.3f}", f"{lc['win_rate_lc_low']:.2f}", f"{lc['win_rate_lc_high']:.2f}"), result.stdout
    a_mean = sum(r["a_length"] for r in rows) / 8
    assert f"mean length (tokens): A {a_mean:.1f}" in result.stdout
    assert str(out) in result.stdout


def test_a_run_against_itself_ties_every_pair(runs, tmp_path):
    run_a, _ = runs
    result = _compare(run_a, run_a, "--judge", "length", "--judge", "judge.target_words=6", "--json",
                      "--max-prompts", 3, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    out = tmp_path / f"compare_{run_a.name}_vs_{run_a.name}.jsonl"  # the default: the current folder
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["out"] == str(out) and len(rows) == 3
    # the same policy from the same random key writes the same completions: every pair a tie, 0.5 exactly
    assert all(r["a"] == r["b"] and r["verdict"] == "tie" for r in rows)
    assert summary["win_rate"] == 0.5 and summary["ties"] == summary["pairs"] == 3
    assert abs(summary["win_rate_lc"] - 0.5) < 1e-9
    assert summary["judge"] == "ppo.judges.rules.LengthPreference" and summary["judge_order"] == "both"


def test_judge_overrides_read_like_a_hydra_command_line():
    from omegaconf import OmegaConf

    base = OmegaConf.create({"_target_": "ppo.judges.rules.WordListPreference", "order": "random", "require_ending": True})
    assert judge_config(base, [])["order"] == "both"  # pairs are judged in both orders unless said otherwise
    node = judge_config(base, ["judge.target_words=7", "length", "order=fixed"])  # the choice first, then keys
    assert node["_target_"] == "ppo.judges.rules.LengthPreference"
    assert node["target_words"] == 7 and node["order"] == "fixed"
    assert judge_config(base, ["judge=length", "+extra=[1, 2]"])["extra"] == [1, 2]


def test_runs_that_cannot_be_compared_are_one_line_errors(runs, tiny_model_dir, tmp_path, capsys):
    run_a, run_b = runs
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"  # a run that stopped before its first checkpoint
    (unfinished / ".hydra").mkdir(parents=True)
    shutil.copy(run_a / ".hydra" / "config.yaml", unfinished / ".hydra" / "config.yaml")
    sweep = tmp_path / "sweep"
    shutil.copytree(run_b, sweep / "job-0")

    def edited(name, old, new):  # a copy of run B whose saved config says otherwise
        folder = tmp_path / name
        shutil.copytree(run_b, folder)
        config = folder / ".hydra" / "config.yaml"
        text = config.read_text()
        assert old in text
        config.write_text(text.replace(old, new))
        return folder

    other_base = edited("other-base", f"path: {tiny_model_dir}\n", f"path: {tmp_path / 'another-model'}\n")
    other_seed = edited("other-seed", "\nseed: 0\n", "\nseed: 5\n")
    for args, needle in [
        ([tmp_path / "missing", run_b], "does not exist"),
        ([tmp_path / "empty", run_b], "is not a run folder"),
        ([unfinished, run_b], "has no saved policy"),
        ([sweep, run_b], "is a sweep folder"),
        ([run_a, other_base], "different base models"),
        ([run_a, other_seed], "different held-out prompts"),
        ([run_a, run_b, "--judge", "no_such_judge"], "no such judge"),
        ([run_a, run_b, "--judge", "target_wordz=3"], "has no key 'target_wordz'"),
        ([run_a, run_b, "--out", tmp_path / "no-folder" / "x.jsonl"], "does not exist"),
    ]:
        code = compare_main([str(a) for a in args])  # in-process: each fails before sampling anything
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert needle in err and err.startswith("error: ") and err.strip().count("\n") == 0, (args, err)
