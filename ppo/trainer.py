"""The training loop: the one place where a PPO step happens, top to bottom.

    prompts -> two completions each (policy) -> judge -> chosen / rejected
            -> log-probs (policy with gradient, reference without) -> loss -> optimizer step
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ppo import checkpoint
from ppo.config import ConfigError, validate
from ppo.data import PromptSampler, load_prompts
from ppo.evaluation import evaluate
from ppo.judges.base import Pair, advantages_from_verdicts
from ppo.loss import dpo_loss, implicit_rewards, ppo_loss
from ppo.models import load_policy_and_reference, reference_model
from ppo.rollout import sample_pairs
from ppo.scoring import build_scoring_batch, sequence_logps
from ppo.tracking import Tracker

log = logging.getLogger(__name__)

# The seed's health rule for clip_fraction: 0 for a while = not moving; > 30% = too far.
CLIP_FRACTION_HIGH = 0.3
CLIP_FRACTION_IDLE_STEPS = 20


def make_optimizer(train_cfg) -> optim.Optimizer:
    lr = train_cfg.learning_rate
    if train_cfg.optimizer == "adam":
        return optim.Adam(learning_rate=lr)
    if train_cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=train_cfg.weight_decay)
    return optim.SGD(learning_rate=lr, weight_decay=train_cfg.weight_decay)


@dataclass
class HealthMonitor:
    """Warns once per episode when clip_fraction says the policy is idle or moving too far."""

    idle_steps: int = 0
    warned: set = field(default_factory=set)

    def check(self, step: int, clip_fraction: float) -> None:
        self.idle_steps = self.idle_steps + 1 if clip_fraction == 0.0 else 0
        if self.idle_steps == CLIP_FRACTION_IDLE_STEPS and "idle" not in self.warned:
            log.warning("step %d: clip_fraction has been 0 for %d steps: the policy is not moving "
                        "(raise train.learning_rate or check the judge's advantages)", step, self.idle_steps)
            self.warned.add("idle")
        if clip_fraction > CLIP_FRACTION_HIGH and "high" not in self.warned:
            log.warning("step %d: clip_fraction %.2f > %.0f%%: the policy moves too far per step "
                        "(lower train.learning_rate or raise loss.epsilon)", step, clip_fraction, 100 * CLIP_FRACTION_HIGH)
            self.warned.add("high")


def judge_pairs(judge, prompts, first, second, first_text, second_text) -> tuple[np.ndarray, dict]:
    pairs = [
        Pair(p.text, a, b, fa, fb, p.id)
        for p, a, b, fa, fb in zip(prompts, first_text, second_text, first.finished, second.finished)
    ]
    verdicts = judge(pairs)
    return np.asarray(verdicts.p, dtype=np.float64), verdicts.diagnostics


def make_loss_fn(cfg, reduction: str):
    """loss(model, batch, chosen, rejected, ref_logps, advantages) for the configured loss_type."""
    loss_cfg = cfg.loss

    def loss_fn(model, batch, chosen, rejected, ref_logps, advantages):
        logps = sequence_logps(model, batch, reduction)
        args = (logps[chosen], logps[rejected], ref_logps[chosen], ref_logps[rejected])
        if loss_cfg.type == "ppo_clip":
            loss, metrics = ppo_loss(
                *args,
                epsilon=loss_cfg.epsilon,
                beta=loss_cfg.beta,
                advantages=advantages if loss_cfg.advantage == "judge" else None,
                max_log_ratio=loss_cfg.max_log_ratio,
            )
        else:
            loss, metrics = dpo_loss(*args, beta=loss_cfg.beta, loss_type=loss_cfg.type, delta=loss_cfg.delta, weights=advantages)
        metrics.update(implicit_rewards(*args, beta=loss_cfg.beta))
        return loss, metrics

    return loss_fn


def train(cfg, run_dir: Path) -> dict:
    """Train PPO as `cfg` says, writing every output into `run_dir`. Returns the summary."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    mx.random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    policy, reference, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)
    splits = load_prompts(cfg.data, tokenizer, cfg.seed)
    sampler = PromptSampler(splits.train, cfg.train.batch_size, cfg.seed, cfg.data.shuffle)
    judge = instantiate(cfg.judge, _convert_="all")
    optimizer = make_optimizer(cfg.train)
    loss_and_grad = nn.value_and_grad(policy, make_loss_fn(cfg, "sum"))
    tracker = Tracker(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True))
    health = HealthMonitor()
    gen_kwargs = dict(
        eos_token_ids=tokenizer.eos_token_ids,
        max_tokens=cfg.generation.max_completion_length,
        temperature=cfg.generation.temperature,
        top_p=cfg.generation.top_p,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decode = lambda ids: tokenizer._tokenizer.batch_decode(ids, skip_special_tokens=True)  # noqa: E731

    window: list[dict] = []
    last_eval: dict = {}
    best_win_rate = -math.inf
    progress = _progress(cfg.train.progress, cfg.train.iters)
    exit_code = 1
    try:
        for step in range(1, cfg.train.iters + 1):
            step_start = time.perf_counter()
            grads_sum, step_metrics = None, []
            for _ in range(cfg.train.grad_accumulation_steps):
                prompts = sampler.next_batch()
                prompt_ids = [list(p.tokens) for p in prompts]

                # 1. Rollout: two completions per prompt, one batched decode, ids kept.
                policy.eval()
                first, second = sample_pairs(policy, prompt_ids, **gen_kwargs)
                rollout_seconds = first.seconds + second.seconds

                # 2. Judge: P(first is better) -> chosen / rejected and the advantage.
                judge_start = time.perf_counter()
                p, _ = judge_pairs(judge, prompts, first, second, decode(first.token_ids), decode(second.token_ids))
                judge_seconds = time.perf_counter() - judge_start
                first_is_chosen, confidence, valid = advantages_from_verdicts(p, cfg.loss.tie_threshold)

                # 3. Score: rows 0..B-1 are the first completions, B..2B-1 the second.
                update_start = time.perf_counter()
                batch = build_scoring_batch(prompt_ids * 2, first.token_ids + second.token_ids, pad_id)
                n = len(prompts)
                keep = np.flatnonzero(valid)
                chosen = mx.array(np.where(first_is_chosen, np.arange(n), np.arange(n) + n)[keep])
                rejected = mx.array(np.where(first_is_chosen, np.arange(n) + n, np.arange(n))[keep])
                advantages = mx.array(confidence[keep])
                with reference_model(policy, reference) as ref:
                    ref_logps = mx.stop_gradient(sequence_logps(ref, batch))
                mx.eval(ref_logps)  # frozen before the policy's forward

                # 4. Loss and gradient (pairs the judge could not decide are left out).
                metrics = {}
                if len(keep):
                    policy.train()
                    (loss, metrics), grads = loss_and_grad(policy, batch, chosen, rejected, ref_logps, advantages)
                    grads_sum = grads if grads_sum is None else _tree_add(grads_sum, grads)
                    mx.eval(loss, metrics, grads_sum)
                    metrics = {"loss": loss, **metrics}
                lengths = np.array([len(t) for t in first.token_ids + second.token_ids])
                metrics.update({
                    "completions/mean_length": lengths.mean(),
                    "completions/eos_rate": np.mean(first.finished + second.finished),
                    "judge/invalid_rate": 1.0 - valid.mean(),
                    "judge/tie_rate": float(np.mean((confidence == 0) & valid)),
                    "judge/first_position_win_rate": float(np.mean(p[valid] > 0.5)) if valid.any() else math.nan,
                    "tokens_per_second": (first.num_tokens + second.num_tokens) / max(rollout_seconds, 1e-9),
                    "timing/rollout_seconds": rollout_seconds,
                    "timing/judge_seconds": judge_seconds,
                    "timing/update_seconds": time.perf_counter() - update_start,
                })
                step_metrics.append({k: float(v.item() if isinstance(v, mx.array) else v) for k, v in metrics.items()})

            # 5. One optimizer step on the accumulated gradient.
            if grads_sum is not None:
                accumulated = sum(1 for m in step_metrics if "loss" in m)
                optimizer.update(policy, _tree_scale(grads_sum, 1.0 / accumulated))
                mx.eval(policy.trainable_parameters(), optimizer.state)

            metrics = _mean_dicts(step_metrics)
            metrics["learning_rate"] = float(optimizer.learning_rate.item())
            metrics["timing/step_seconds"] = time.perf_counter() - step_start
            metrics["memory/peak_gb"] = mx.get_peak_memory() / 1e9
            if "clip_fraction" in metrics:
                health.check(step, metrics["clip_fraction"])
            window.append(metrics)

            if step % cfg.train.steps_per_eval == 0 or step == cfg.train.iters:
                last_eval = evaluate(policy, reference, tokenizer, judge, splits.eval, cfg.generation)
                if last_eval:
                    best_win_rate = max(best_win_rate, last_eval["eval/win_rate"])
            if step % cfg.train.steps_per_report == 0 or step == cfg.train.iters:
                reported = _mean_dicts(window)
                if step % cfg.train.steps_per_eval == 0 or step == cfg.train.iters:
                    reported.update(last_eval)
                tracker.log(step, reported)
                window = []
                if progress:
                    progress.update(reported, step)
            if step % cfg.train.save_every == 0 or step == cfg.train.iters:
                checkpoint.save_adapters(run_dir, policy, cfg)
        exit_code = 0
    finally:
        if progress:
            progress.close()
        summary = _summary(cfg, run_dir, started, step_metrics_last=window or [], last_eval=last_eval,
                           best_win_rate=best_win_rate, exit_code=exit_code, skipped_rows=splits.skipped_rows)
        tracker.finish(summary, exit_code)
    return summary


def _summary(cfg, run_dir, started, step_metrics_last, last_eval, best_win_rate, exit_code, skipped_rows) -> dict:
    from ppo.provenance import provenance

    final = {}
    metrics_file = run_dir / "metrics.jsonl"
    if metrics_file.exists():
        lines = metrics_file.read_text().splitlines()
        final = json.loads(lines[-1]) if lines else {}
    summary = {
        "status": "finished" if exit_code == 0 else "failed",
        "final": final,
        "eval": last_eval,
        "best_eval_win_rate": best_win_rate if math.isfinite(best_win_rate) else None,
        "skipped_rows": skipped_rows,
        "wall_seconds": time.perf_counter() - started,
        **provenance(),
    }
    checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def _tree_add(a, b):
    from mlx.utils import tree_map

    return tree_map(lambda x, y: x + y, a, b)


def _tree_scale(tree, factor: float):
    from mlx.utils import tree_map

    return tree_map(lambda x: x * factor, tree)


def _mean_dicts(dicts: list[dict]) -> dict:
    keys = {k for d in dicts for k in d}
    out = {}
    for k in sorted(keys):
        values = [d[k] for d in dicts if k in d and d[k] is not None and not math.isnan(d[k])]
        out[k] = float(np.mean(values)) if values else math.nan
    return out


class _Progress:
    """A rich progress bar showing loss, clip_fraction and kl."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]ppo"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"), transient=False,
        )
        self._task = self._progress.add_task("train", total=total, stats="")
        self._progress.start()

    def update(self, metrics: dict, step: int) -> None:
        keys = ("loss", "clip_fraction", "kl", "eval/win_rate")
        stats = "  ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in keys if k in metrics and not math.isnan(metrics[k]))
        self._progress.update(self._task, completed=step, stats=stats)

    def close(self) -> None:
        self._progress.stop()


def _progress(enabled: bool, total: int):
    return _Progress(total) if enabled else None


__all__ = ["train", "ConfigError"]
