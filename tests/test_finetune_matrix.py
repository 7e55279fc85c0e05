"""Every fine-tune type on every base precision starts exactly at the reference."""

import json

import pytest

from conftest import compose, small_run_overrides


@pytest.mark.slow
@pytest.mark.parametrize("quantize", ["none", "4", "8"])
@pytest.mark.parametrize("finetune", ["lora", "dora", "full"])
def test_ratio_is_exactly_one_at_the_first_step(tmp_path, tiny_model_dir, prompts_file, finetune, quantize):
    """The trainer in this process (the command line around it is tested elsewhere; nine
    processes cost more than the nine runs)."""
    from ppo.train.loop import train

    run_dir = tmp_path / "run"
    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 100}) + [
        f"finetune={finetune}", f"model.quantize={quantize}", "model.quantize_group_size=32",
        "train.learning_rate=1e-3"])
    train(cfg, run_dir)
    first, second = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert first["ratio/mean"] == 1.0 and first["ratio/max"] == 1.0
    assert first["clip_fraction"] == 0.0 and first["kl"] == 0.0
    assert second["kl"] != 0.0  # and the update moved the policy

    from mlx_lm import load

    load(str(tiny_model_dir), adapter_path=str(run_dir))  # the adapters load in mlx-lm
