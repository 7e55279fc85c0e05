"""Shared fixtures: tiny real models built by ppo.demo.tiny, real Hydra composition."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parent.parent


def sigint_as_default() -> None:
    """`preexec_fn` of a child a test sends SIGINT to: a shell that starts pytest in the background
    without job control ignores SIGINT, the child would inherit that (as background jobs should)
    and never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight qwen3 model with a ChatML tokenizer (built once per session)."""
    from ppo.demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", hidden=64, layers=2, vocab=512, seed=0)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    from ppo.demo import corpus

    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = list(dict.fromkeys(corpus.prompts(200, seed=7)))[:40]
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    return path


def compose(overrides: list[str]):
    """conf/train.yaml composed by Hydra exactly as ppo-train does."""
    from ppo.train.config import compose_train

    return compose_train(overrides)


def adapted_model(model_dir: Path, *overrides: str):
    """(cfg, model with LoRA on one layer, Adam at 1e-3): what checkpoint tests save and load."""
    from mlx_lm import load

    from ppo.train.models import add_adapters
    from ppo.train.optimizer import make_optimizer

    cfg = compose([f"model.path={model_dir}", "finetune.num_layers=1", *overrides])
    model, _ = load(str(model_dir))
    add_adapters(model, cfg.finetune)
    return cfg, model, make_optimizer(cfg.train, 1e-3)


def small_run_overrides(model_dir: Path, data_path: Path, **extra) -> list[str]:
    base = {
        "model.path": str(model_dir),
        "data.path": str(data_path),
        "train.iters": 4,
        "train.batch_size": 2,
        "generation.max_completion_length": 12,
        "train.steps_per_eval": 2,
        "train.progress": "false",
        "data.max_eval_prompts": 4,
        "logger": "none",
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_cli(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 300):
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "ppo.tools.cli", *args], cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
