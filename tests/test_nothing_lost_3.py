"""Nothing lost, nothing falsely finished, round 2 (issue 23), continued: open-ended mappings,
W&B after a kill, ppo-reproduce that compares, Ctrl-C in a search or a sweep, bounds on every
numeric setting that can hang, overflow or exhaust memory, unreadable inputs and unwritable folders."""

import json
from pathlib import Path

import pytest

from conftest import compose, run_cli, small_run_overrides
from ppo.errors import ConfigError
from test_nothing_lost import _one_line_error, _overrides  # round 1's helpers


# Item 13: the README's own `+data.chat_template_kwargs.reasoning_effort=low`.

def test_a_new_chat_template_setting_is_accepted_and_a_typo_next_to_it_is_not(tiny_model_dir, prompts_file):
    from ppo.train.config import schema_paths, validate

    base = small_run_overrides(tiny_model_dir, prompts_file)
    cfg = compose(base + ["+data.chat_template_kwargs.reasoning_effort=low"])
    validate(cfg)
    assert dict(cfg.data.chat_template_kwargs) == {"enable_thinking": False, "reasoning_effort": "low"}
    assert "data.chat_template_kwargs" in schema_paths()
    assert not [p for p in schema_paths() if p.startswith("data.chat_template_kwargs.")]  # never "did you mean" one
    with pytest.raises(ConfigError, match=r"unknown key data\.chat_template_kwarg: .*did you mean data\.chat_template_kwargs"):
        validate(compose(base + ["+data.chat_template_kwarg.reasoning_effort=low"]))


@pytest.mark.slow
def test_a_run_passes_a_new_chat_template_setting_and_says_how_to_add_one(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 1})
                     + ["+data.chat_template_kwargs.reasoning_effort=low"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reasoning_effort: low" in (run_dir / ".hydra" / "config.yaml").read_text()

    without_plus = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "other", **{"train.iters": 1})
                           + ["data.chat_template_kwargs.reasoning_effort=low"])
    _one_line_error(without_plus, "data.chat_template_kwargs.reasoning_effort is not set yet: add it with "
                                  "+data.chat_template_kwargs.reasoning_effort=low")
