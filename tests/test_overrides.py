"""Overrides that fail say so in one line with the fix (issue 24, item 7): an unknown key with or
without `+` ("did you mean"), a bad value or option; `ppo-train --version` is this package's
version; `ppo-reproduce RUN group=option` and list-valued judge settings work as documented."""

import json

import pytest
from omegaconf import OmegaConf

from conftest import compose, run_cli, small_run_overrides
from ppo.errors import ReproduceError


def _one_line_error(result, needle: str) -> str:
    assert result.returncode != 0, result.stdout[-2000:]
    text = result.stdout + result.stderr
    assert "Traceback" not in text and "HYDRA_FULL_ERROR" not in text, text[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and needle in errors[0], result.stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("override,needle", [
    ("train.eval_every=3", "error: unknown key train.eval_every: the config schema has no such key; "
                           "did you mean train.steps_per_eval?"),
    ("loss.epsilom=0.2", "did you mean loss.epsilon?"),
    ("train.beta=0.2", "did you mean loss.beta?"),
    ("train.iters=abc", "invalid train.iters=abc: Value 'abc' of type 'str' could not be converted to Integer"),
    ("judge=nope", "the judge group has no option 'nope'; choose one of http, human, length, llm, replay, rule"),
    ("epsilon=0.2", "epsilon is a config group: choose one of classic, loose, tight; a value of its own goes to "
                    "loss.epsilon=0.2"),
    ("train.iters=1,2", "add -m to sweep"),
])
def test_a_bad_override_without_plus_is_one_line_with_the_fix(override, needle):
    _one_line_error(run_cli([override, "logger=none", "--cfg", "job"]), needle)


def test_an_unknown_key_with_plus_is_one_line_with_did_you_mean(tmp_path, tiny_model_dir, prompts_file):
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file) + ["+train.eval_every=3", f"hydra.run.dir={tmp_path / 'run'}"])
    _one_line_error(result, "unknown key train.eval_every: the config schema has no such key; did you mean train.steps_per_eval?")


def test_version_is_this_packages():
    from ppo import resources

    result = run_cli(["--version"])
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"ppo-mlx {resources.version()}") and not line.startswith("Hydra"), line


def test_a_list_valued_judge_setting_can_be_overridden():
    from ppo.judges.factory import build_judge

    cfg = compose(["judge=rule", "judge.positive=[good,kind]", "eval_judge=rule", "eval_judge.negative=[bad]"])
    judge = build_judge(cfg.judge).inner
    assert judge.positive == {"good", "kind"} and "sad" in judge.negative  # the default negatives stay
    held_out = OmegaConf.to_container(cfg.eval_judge, resolve=True)
    held_out.pop("name")  # names its metrics, not the judge's own (ppo.train.loop.build_held_out_judges)
    assert build_judge(held_out).inner.negative == {"bad"}
    default = build_judge(compose(["judge=rule"]).judge).inner
    assert len(default.positive) == 28 and "happy" in default.positive  # the demo's lexicon, as before
    resolved = run_cli(["judge.positive=[good,kind]", "--cfg", "job", "--resolve"])
    assert resolved.returncode == 0, resolved.stderr
    assert "positive:\n  - good\n  - kind\n" in resolved.stdout


# ppo-reproduce: the saved config with group=option and key=value overrides.

def _saved(*overrides):
    return OmegaConf.to_container(compose(["judge=rule", *overrides]), resolve=False)


def test_reproduce_takes_group_options():
    from ppo.tools.reproduce import build_config

    cfg = build_config(_saved("loss.beta=0.3"), ["logger=none", "judge=length", "epsilon=tight", "ppo_form=textbook"])
    assert cfg.logger.kind == "none"
    assert cfg.judge._target_ == "ppo.judges.rules.LengthPreference" and "positive" not in cfg.judge  # replaced whole
    assert cfg.judge.order == "both"  # the group's own defaults (the judge pipeline) come with it
    assert cfg.loss.epsilon == 0.1 and cfg.loss.ratio == "rollout" and cfg.loss.beta == 0.3  # the rest stays
    cfg = build_config(_saved("eval_judge=length"), ["eval_judge=null"])
    assert cfg.eval_judge is None
    assert build_config(_saved(), ["eval_judge=sentiment"]).eval_judge.name == "sentiment"


def test_reproduce_takes_a_list_valued_judge_setting_also_over_an_older_runs_word_list_node():
    from ppo.tools.reproduce import build_config

    older = _saved()
    older["judge"]["positive"] = {"_target_": "ppo.demo.corpus.lexicon", "kind": "positive"}  # saved before issue 24
    for saved in (_saved(), older):
        cfg = build_config(saved, ["judge.positive=[good,kind]"])
        assert list(cfg.judge.positive) == ["good", "kind"]


@pytest.mark.parametrize("override,needle", [
    ("judge=nope", "the judge group has no option 'nope'; choose one of"),
    ("experiment=demo", "run `ppo-train experiment=demo` for a new run"),
    ("train.eval_every=3", "did you mean train.steps_per_eval?"),
])
def test_reproduce_refuses_with_the_fix(override, needle):
    from ppo.tools.reproduce import build_config

    with pytest.raises(ReproduceError, match=None) as info:
        build_config(_saved(), [override])
    assert needle in str(info.value)


@pytest.mark.slow
def test_reproduce_runs_with_group_overrides(tmp_path, tiny_model_dir, prompts_file):
    import subprocess
    import sys

    from conftest import ROOT

    original = tmp_path / "run"
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2}) + [f"hydra.run.dir={original}"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "again"
    result = subprocess.run([sys.executable, "-m", "ppo.tools.reproduce", str(original), "logger=none", "judge=length",
                             "judge.target_words=5", f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = OmegaConf.load(out / ".hydra" / "config.yaml")
    assert saved.judge._target_ == "ppo.judges.rules.LengthPreference" and saved.judge.target_words == 5
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
