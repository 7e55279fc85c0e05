"""ppo-train end to end: real Hydra, a tiny real model, real files in the run directory."""

import json

import pytest

from conftest import run_cli, small_run_overrides

NAMED_METRICS = [
    "loss", "policy_loss", "kl", "kl_penalty", "clip_fraction", "ratio/mean", "ratio/max", "advantage/mean",
    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "completions/mean_length",
    "completions/eos_rate", "tokens_per_second", "timing/step_seconds", "memory/peak_gb", "learning_rate",
    "judge/tie_rate", "judge/invalid_rate", "entropy",
]


# Readings of the machine, not of the run: they vary between identical runs.
from ppo.metrics import MEASUREMENT_PREFIXES as MEASUREMENTS  # noqa: E402


def _read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_writes_all_outputs(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file) + [
        "judge=rule", "loss.epsilon=0.2", "loss.beta=0.1", "loss.advantage=judge", "seed=3",
        "generation.temperature=0.9", f"hydra.run.dir={run_dir}",
    ]
    result = run_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("metrics.jsonl", "summary.json", "adapters.safetensors", "adapter_config.json", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name
    rows = _read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for name in NAMED_METRICS:
            assert name in row and row[name] is not None, name
    assert rows[0]["clip_fraction"] == 0.0 and rows[0]["ratio/mean"] == pytest.approx(1.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and "eval/win_rate" in summary["eval"]
    assert summary["packages"]["mlx"] and summary["command"]

    from mlx_lm import load

    model, _ = load(str(tiny_model_dir), adapter_path=str(run_dir))
    assert model is not None

    import subprocess
    import sys

    fused = tmp_path / "fused"
    fuse = subprocess.run([sys.executable, "-m", "mlx_lm", "fuse", "--model", str(tiny_model_dir), "--adapter-path", str(run_dir),
                           "--save-path", str(fused)], capture_output=True, text=True, timeout=120)
    assert fuse.returncode == 0, fuse.stderr[-2000:]
    assert load(str(fused))[0] is not None


@pytest.mark.slow
def test_same_seed_same_metrics(tmp_path, tiny_model_dir, prompts_file):
    def run(name, seed):
        run_dir = tmp_path / name
        result = run_cli(small_run_overrides(tiny_model_dir, prompts_file) + [f"seed={seed}", f"hydra.run.dir={run_dir}"])
        assert result.returncode == 0, result.stderr[-3000:]
        return [{k: v for k, v in r.items() if not k.startswith(MEASUREMENTS)} for r in _read_metrics(run_dir)]

    assert run("a", 5) == run("b", 5)


@pytest.mark.parametrize(
    "override,needle",
    [
        ("loss.epsilon=1.5", "loss.epsilon"),
        ("loss.epsilon=0", "loss.epsilon"),
        ("loss.beta=-0.1", "loss.beta"),
        ("generation.temperature=0", "generation.temperature"),
        ("model.path=/does/not/exist", "/does/not/exist"),
        ("data.path=/does/not/exist.jsonl", "/does/not/exist.jsonl"),
        ("no_such_key=1", "no_such_key"),
        ("loss.epsilon=abc", "loss.epsilon"),
        ("loss.advantage=magic", "loss.advantage"),
    ],
)
def test_bad_input_gets_one_clear_error(tmp_path, tiny_model_dir, prompts_file, override, needle):
    overrides = small_run_overrides(tiny_model_dir, prompts_file) + [override, f"hydra.run.dir={tmp_path}/r"]
    result = run_cli(overrides)
    assert result.returncode != 0
    assert needle in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_textbook_ppo_options_run(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file) + [
        "loss.ratio=rollout", "loss.ppo_epochs=2", "loss.logprob_reduction=mean", "loss.kl_estimator=k3",
        "train.grad_accumulation_steps=2", "train.lr_schedule=cosine", "train.warmup_steps=1", f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _read_metrics(run_dir)
    assert len(rows) == 4 and all(r["kl"] is not None and r["kl"] >= 0 for r in rows)  # k3 is never negative
    assert rows[0]["learning_rate"] < rows[1]["learning_rate"]  # warm-up


@pytest.mark.slow
def test_unreachable_judge_stops_with_a_checkpoint(tmp_path, tiny_model_dir, prompts_file):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file) + [
        "judge=http", f"judge.base_url=http://127.0.0.1:{port}", "judge.retries=1", "judge.timeout=1", "judge.backoff=0.01",
        f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides)
    assert result.returncode == 3
    assert f"127.0.0.1:{port}" in result.stderr and "checkpoint of step 0 saved" in result.stderr
    assert "Traceback" not in result.stderr
    assert (run_dir / "checkpoints" / "step-0000000" / "state.json").exists()


def test_first_epoch_logps_equal_a_separate_sampling_time_forward(tiny_model_dir):
    """loss.ratio=rollout reuses the first update's log-probs as the sampling-time ones:
    they must equal an eval-mode forward of the policy before the update."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm import load

    from conftest import compose
    from ppo.train.models import add_adapters
    from ppo.train.scoring import build_scoring_batch, reduce_logps, token_logps
    from ppo.train.step import JudgedBatch, make_loss_fn

    cfg = compose([f"model.path={tiny_model_dir}", "loss.ratio=rollout", "loss.logprob_reduction=mean"])
    model, _ = load(str(tiny_model_dir))
    add_adapters(model, cfg.finetune)
    batch = build_scoring_batch([[1, 5, 6], [1, 7]] * 2, [[10, 11, 2], [12, 2], [13], [14, 15]], pad_id=0)
    model.eval()
    separate = reduce_logps(token_logps(model, batch), batch.completion_mask, "mean")
    judged = JudgedBatch(batch, mx.array([0, 1]), mx.array([2, 3]), mx.array([1.0, 1.0]), token_logps(model, batch), None)
    model.train()
    (_, (metrics, logps)), _ = nn.value_and_grad(model, make_loss_fn(cfg.loss))(model, judged)
    np.testing.assert_array_equal(np.array(logps), np.array(separate))
    assert metrics["ratio/mean"].item() == 1.0


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_run(tmp_path, tiny_model_dir, prompts_file):
    def run(name, *extra):
        run_dir = tmp_path / name
        result = run_cli(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2}) + [*extra, f"hydra.run.dir={run_dir}"])
        assert result.returncode == 0, result.stderr[-3000:]
        return [{k: v for k, v in r.items() if not k.startswith(MEASUREMENTS)} for r in _read_metrics(run_dir)]

    assert run("plain") == run("checkpointed", "train.grad_checkpoint=true")


@pytest.mark.slow
def test_eval_samples_per_prompt_multiplies_the_judged_pairs(tmp_path, tiny_model_dir, prompts_file):
    # 4 held-out prompts drawn 3 times: 12 judged pairs per evaluation, each a samples.jsonl row,
    # and the draws are fresh samples (not one completion counted three times).
    run_dir = tmp_path / "run"
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2}) + [
        "train.eval_samples_per_prompt=3", "generation.temperature=1.5", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = [r for r in _read_metrics(run_dir) if "eval/win_rate" in r]
    assert evaluated and all(r["eval/pairs"] == 12 for r in evaluated)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval"]["eval/pairs"] == 12
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["phase"] == "eval" and r["step"] == 2]
    assert len(last) == 12
    by_prompt: dict = {}
    for r in last:
        by_prompt.setdefault(r["prompt_id"], []).append(r["a"])
    assert len(by_prompt) == 4 and all(len(draws) == 3 for draws in by_prompt.values())
    assert any(len(set(draws)) > 1 for draws in by_prompt.values())  # fresh draws at temperature 1.5


def test_eval_samples_per_prompt_must_be_positive(tiny_model_dir, prompts_file):
    from conftest import compose

    from ppo.errors import ConfigError
    from ppo.train.validation import validate

    with pytest.raises(ConfigError, match="train.eval_samples_per_prompt"):
        validate(compose(small_run_overrides(tiny_model_dir, prompts_file) + ["train.eval_samples_per_prompt=0"]))
