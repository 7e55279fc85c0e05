"""The training loop: the one place where a PPO step happens, top to bottom.

    prompts -> two completions each (policy) -> judge -> chosen / rejected
            -> log-probs (policy with gradient, reference without) -> loss -> optimizer step

Reproducibility: MLX's random state is re-seeded from (seed, step) at the start of every
step, so a run resumed from a checkpoint samples exactly what the uninterrupted run did.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map
from omegaconf import OmegaConf

from ppo import checkpoint
from ppo.config import ConfigError, validate
from ppo.data import PromptSampler, load_prompts
from ppo.evaluation import evaluate
from ppo.judges import JudgeQuit, JudgeUnavailable, Pair, advantages_from_verdicts, build_judge
from ppo.loss import dpo_loss, implicit_rewards, ppo_loss, sequence_kl
from ppo.models import frozen_base, load_policy_and_reference, reference_model
from ppo.resume_sweep import finished_summary
from ppo.rollout import sample_pairs
from ppo.scoring import ScoringBatch, build_scoring_batch, reduce_logps, token_logps
from ppo.tracking import Tracker

log = logging.getLogger(__name__)

# The seed's health rule for clip_fraction: 0 for a while = not moving; > 30% = too far.
CLIP_FRACTION_HIGH = 0.3
CLIP_FRACTION_IDLE_STEPS = 20


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was saved; `train.resume=auto` continues."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} after step {step}; checkpoint saved, resume with train.resume=auto")
        self.exit_code = 128 + signum


class TrainingStopped(Exception):
    """The judge cannot go on (a person quit, a server is down); a checkpoint was saved."""

    exit_code = 3


def judge_metrics(diagnostics: dict) -> dict:
    """The judge's per-batch metrics; the cache hit rate is left out, since it depends on
    what this process happens to remember (it differs between a resumed and a straight run)."""
    return {k: v for k, v in diagnostics.items() if k.startswith("judge/") and k != "judge/cache_hit_rate"}


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def learning_rate_schedule(train_cfg, updates_per_step: int = 1):
    """A constant, cosine or linear learning rate with an optional linear warm-up.

    The optimizer counts updates (loss.ppo_epochs per step); the config counts steps.
    """
    lr = train_cfg.learning_rate
    steps, warmup = train_cfg.iters * updates_per_step, train_cfg.warmup_steps * updates_per_step
    decay_steps = max(steps - warmup, 1)
    if train_cfg.lr_schedule == "cosine":
        schedule = optim.cosine_decay(lr, decay_steps, train_cfg.min_learning_rate)
    elif train_cfg.lr_schedule == "linear":
        schedule = optim.linear_schedule(lr, train_cfg.min_learning_rate, decay_steps)
    elif not warmup:
        return lr
    else:
        schedule = optim.linear_schedule(lr, lr, 1)  # constant, as a schedule join_schedules accepts
    if not warmup:
        return schedule
    return optim.join_schedules([optim.linear_schedule(0.0, lr, warmup), schedule], [warmup])


def learning_rate_at(schedule, update: int) -> float:
    """The learning rate of optimizer update number `update` (0-based), as the optimizer applies it."""
    return float(mx.array(schedule(update))) if callable(schedule) else float(schedule)


def make_optimizer(train_cfg, lr) -> optim.Optimizer:
    if train_cfg.optimizer == "adam":
        return optim.Adam(learning_rate=lr)
    if train_cfg.optimizer == "adamw":
        return optim.AdamW(learning_rate=lr, weight_decay=train_cfg.weight_decay)
    return optim.SGD(learning_rate=lr, weight_decay=train_cfg.weight_decay)


# Ratios within this of 1 count as "not moving" (a policy that moves leaves some ratio
# further out, even when none leaves the clip range, as with per-token mean log-probs).
IDLE_RATIO_TOLERANCE = 1e-3


@dataclass
class HealthMonitor:
    """Warns once per episode when clip_fraction says the policy is idle or moving too far.

    The seed's rule: clip_fraction at 0 for a while = not moving; above 30% = moving too
    far. "Not moving" also requires every ratio to stay within 1e-3 of 1, since with mean
    log-probs a moving policy can keep every ratio inside the clip range.
    """

    idle_steps: int = 0
    warned: list = field(default_factory=list)

    def check(self, step: int, metrics: dict) -> None:
        clip_fraction = metrics["clip_fraction"]
        still = abs(metrics["ratio/max"] - 1.0) < IDLE_RATIO_TOLERANCE and abs(metrics["ratio/min"] - 1.0) < IDLE_RATIO_TOLERANCE
        self.idle_steps = self.idle_steps + 1 if clip_fraction == 0.0 and still else 0
        if self.idle_steps == CLIP_FRACTION_IDLE_STEPS and "idle" not in self.warned:
            log.warning("step %d: clip_fraction has been 0 for %d steps and every ratio stays at 1: the policy is not "
                        "moving (raise train.learning_rate or check the judge's advantages)", step, self.idle_steps)
            self.warned.append("idle")
        if clip_fraction > CLIP_FRACTION_HIGH and "high" not in self.warned:
            log.warning("step %d: clip_fraction %.2f > %.0f%%: the policy moves too far per step "
                        "(lower train.learning_rate or raise loss.epsilon)", step, clip_fraction, 100 * CLIP_FRACTION_HIGH)
            self.warned.append("high")


@dataclass
class JudgedBatch:
    """One micro-batch after rollout and judging: everything an update needs, all constants."""

    batch: ScoringBatch
    chosen: mx.array  # row of each kept pair's chosen completion
    rejected: mx.array
    advantages: mx.array  # judge confidence of each kept pair
    ref_token_logps: mx.array  # (2B, T), no gradient
    old_logps: mx.array | None  # per-sequence log-probs at sampling time (loss.ratio=rollout)
    # None with loss.ratio=rollout: the first update's own log-probs are the sampling-time
    # ones (no update has happened since sampling, and without dropout train = eval mode),
    # so they are taken from that forward instead of a separate one.


def make_loss_fn(loss_cfg):
    """loss(model, judged) -> (loss, metrics) for the configured loss_type and options."""
    reduction = loss_cfg.logprob_reduction

    def loss_fn(model, judged: JudgedBatch):
        token_logps_ = token_logps(model, judged.batch)
        mask = judged.batch.completion_mask
        logps = reduce_logps(token_logps_, mask, reduction)
        ref_logps = reduce_logps(judged.ref_token_logps, mask, reduction)
        c, r = judged.chosen, judged.rejected
        args = (logps[c], logps[r], ref_logps[c], ref_logps[r])
        if loss_cfg.type == "ppo_clip":
            kl_per_sequence = None
            if loss_cfg.kl_estimator != "k1":
                kl_all = sequence_kl(token_logps_, judged.ref_token_logps, mask, estimator=loss_cfg.kl_estimator, reduction=reduction)
                kl_per_sequence = mx.concatenate([kl_all[c], kl_all[r]])
            old = judged.old_logps
            if old is None and loss_cfg.ratio == "rollout":
                old = mx.stop_gradient(logps)
            loss, metrics = ppo_loss(
                *args,
                epsilon=loss_cfg.epsilon,
                beta=loss_cfg.beta,
                advantages=judged.advantages if loss_cfg.advantage == "judge" else None,
                old_chosen_logps=None if old is None else old[c],
                old_rejected_logps=None if old is None else old[r],
                kl_per_sequence=kl_per_sequence,
                max_log_ratio=loss_cfg.max_log_ratio,
            )
        else:
            loss, metrics = dpo_loss(*args, beta=loss_cfg.beta, loss_type=loss_cfg.type, delta=loss_cfg.delta,
                                     weights=judged.advantages)
        metrics.update(implicit_rewards(*args, beta=loss_cfg.beta))
        return loss, ({"loss": loss, **metrics}, mx.stop_gradient(logps))

    return loss_fn


@contextlib.contextmanager
def stop_requests():
    """SIGINT / SIGTERM set a flag the loop checks after each step (so a step is never torn)."""
    requested: list[int] = []
    handler = lambda signum, frame: requested.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(cfg, run_dir: Path) -> dict:
    """Train PPO as `cfg` says, writing every output into `run_dir`. Returns the summary."""
    validate(cfg)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (done := finished_summary(cfg, run_dir)) is not None:  # a finished sweep job: skip it
        return done
    started = time.perf_counter()
    train_cfg, gen_cfg = cfg.train, cfg.generation

    mx.random.seed(cfg.seed)
    policy, reference, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)
    if train_cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(policy.layers[0])
    splits = load_prompts(cfg.data, tokenizer, cfg.seed, train_cfg.max_seq_length - gen_cfg.max_completion_length)
    sampler = PromptSampler(splits.train, train_cfg.batch_size, cfg.seed, cfg.data.shuffle)
    judge = build_judge(cfg.judge, run_dir=run_dir, seed=cfg.seed, tokenizer=tokenizer, base_path=cfg.model.path,
                        base=frozen_base(policy, reference, cfg.model, cfg.finetune))
    lr_schedule = learning_rate_schedule(train_cfg, cfg.loss.ppo_epochs)
    optimizer = make_optimizer(train_cfg, lr_schedule)
    loss_and_grad = nn.value_and_grad(policy, make_loss_fn(cfg.loss))

    # Resume: the newest complete checkpoint of this run folder (or the one named).
    fingerprint = checkpoint.config_fingerprint(cfg)
    resume_from = None if train_cfg.resume == "never" else (
        checkpoint.latest(run_dir) if train_cfg.resume == "auto" else Path(train_cfg.resume))
    state = None
    if resume_from is not None:
        state = checkpoint.load(resume_from, policy, optimizer, fingerprint)
        sampler.position = state.data_position
        log.info("resumed from %s (step %d)", resume_from, state.step)
    start_step = state.step if state else 0
    running = state.extra if state else {"window": [], "last_eval": {}, "best_win_rate": None, "health": {}}
    health = HealthMonitor(**running["health"])

    tracker = Tracker(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True),
                      resume_step=start_step if state else None, wandb_id=state.wandb_id if state else None)
    gen_kwargs = dict(eos_token_ids=tokenizer.eos_token_ids, max_tokens=gen_cfg.max_completion_length,
                      temperature=gen_cfg.temperature, top_p=gen_cfg.top_p)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decode = lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True)  # noqa: E731
    progress = _Progress(train_cfg.iters, start_step) if train_cfg.progress else None

    def save(step: int) -> None:
        extra = {**running, "health": health.__dict__}
        st = checkpoint.TrainerState(step, sampler.position, tracker.wandb_id, fingerprint, extra)
        checkpoint.save(run_dir, policy, optimizer, st, cfg, keep=train_cfg.keep_checkpoints)

    status, step = "failed", start_step
    try:
        if train_cfg.eval_at_start and start_step == 0:
            mx.random.seed(step_seed(cfg.seed, 0))
            running["last_eval"] = evaluate(policy, reference, tokenizer, judge, splits.eval, gen_cfg, step=0)
            tracker.log(0, running["last_eval"])
        with stop_requests() as stop:
            for step in range(start_step + 1, train_cfg.iters + 1):
                mx.random.seed(step_seed(cfg.seed, step))
                position_at_step_start, updated = sampler.position, False
                step_start = time.perf_counter()
                judged_batches, micro_metrics = [], []
                for _ in range(train_cfg.grad_accumulation_steps):
                    prompts = sampler.next_batch()
                    prompt_ids = [list(p.tokens) for p in prompts]

                    # 1. Rollout: two completions per prompt, one batched decode, ids kept.
                    policy.eval()
                    first, second = sample_pairs(policy, prompt_ids, **gen_kwargs)
                    rollout_seconds = first.seconds + second.seconds

                    # 2. Judge: P(first is better) -> chosen / rejected and the advantage.
                    judge_start = time.perf_counter()
                    pairs = [Pair(p.text, a, b, fa, fb, p.id) for p, a, b, fa, fb in zip(
                        prompts, decode(first.token_ids), decode(second.token_ids), first.finished, second.finished)]
                    verdicts = judge(pairs, step=step)
                    judge_seconds = time.perf_counter() - judge_start
                    first_is_chosen, confidence, valid = advantages_from_verdicts(verdicts.p)

                    # 3. Score: rows 0..B-1 hold the first completions, B..2B-1 the second.
                    #    Reference (and sampling-time) log-probs are frozen before any update.
                    score_start = time.perf_counter()
                    batch = build_scoring_batch(prompt_ids * 2, first.token_ids + second.token_ids, pad_id)
                    n, keep = len(prompts), np.flatnonzero(valid)
                    with reference_model(policy, reference) as ref:
                        ref_token_logps = mx.stop_gradient(token_logps(ref, batch))
                    old_logps = None
                    if cfg.loss.ratio == "rollout" and cfg.finetune.dropout > 0:  # else: see JudgedBatch
                        old_logps = mx.stop_gradient(reduce_logps(token_logps(policy, batch), batch.completion_mask,
                                                                  cfg.loss.logprob_reduction))
                    mx.eval(ref_token_logps, old_logps)
                    if len(keep):  # pairs the judge could not decide are left out of the loss
                        judged_batches.append(JudgedBatch(
                            batch=batch,
                            chosen=mx.array(np.where(first_is_chosen, np.arange(n), np.arange(n) + n)[keep]),
                            rejected=mx.array(np.where(first_is_chosen, np.arange(n) + n, np.arange(n))[keep]),
                            advantages=mx.array(confidence[keep]),
                            ref_token_logps=ref_token_logps,
                            old_logps=old_logps,
                        ))
                    lengths = np.array([len(t) for t in first.token_ids + second.token_ids])
                    micro_metrics.append({
                        "completions/mean_length": lengths.mean(),
                        "completions/eos_rate": np.mean(first.finished + second.finished),
                        **judge_metrics(verdicts.diagnostics),
                        "tokens_per_second": (first.num_tokens + second.num_tokens) / max(rollout_seconds, 1e-9),
                        "timing/rollout_seconds": rollout_seconds,
                        "timing/judge_seconds": judge_seconds,
                        "timing/score_seconds": time.perf_counter() - score_start,
                    })

                # 4. Update: loss.ppo_epochs optimizer steps, each on the mean gradient of the micro-batches.
                update_start = time.perf_counter()
                policy.train()
                for _ in range(cfg.loss.ppo_epochs if judged_batches else 0):
                    grads_sum = None
                    for judged in judged_batches:
                        (_, (loss_metrics, logps)), grads = loss_and_grad(policy, judged)
                        if cfg.loss.ratio == "rollout" and judged.old_logps is None:
                            judged.old_logps = logps  # the first epoch's log-probs are the sampling-time ones
                        grads_sum = grads if grads_sum is None else tree_map(mx.add, grads_sum, grads)
                        mx.eval(grads_sum, loss_metrics)
                        micro_metrics.append({k: v.item() for k, v in loss_metrics.items()})
                    optimizer.update(policy, tree_map(lambda g: g / len(judged_batches), grads_sum))
                    mx.eval(policy.trainable_parameters(), optimizer.state)
                updated = True
                metrics = _mean_dicts(micro_metrics)
                metrics["timing/update_seconds"] = time.perf_counter() - update_start
                metrics["learning_rate"] = learning_rate_at(lr_schedule, step * cfg.loss.ppo_epochs - 1)
                metrics["timing/step_seconds"] = time.perf_counter() - step_start
                metrics["memory/peak_gb"] = mx.get_peak_memory() / 1e9
                if "clip_fraction" in metrics:
                    health.check(step, metrics)
                running["window"].append(metrics)

                # 6. Evaluate, report, save.
                is_last = step == train_cfg.iters
                if step % train_cfg.steps_per_eval == 0 or is_last:
                    running["last_eval"] = evaluate(policy, reference, tokenizer, judge, splits.eval, gen_cfg, step=step)
                    win_rate = running["last_eval"].get("eval/win_rate")
                    if win_rate is not None and not math.isnan(win_rate):
                        running["best_win_rate"] = max(running["best_win_rate"] or -1.0, win_rate)
                if step % train_cfg.steps_per_report == 0 or is_last:
                    reported = _mean_dicts(running["window"])
                    if step % train_cfg.steps_per_eval == 0 or is_last:
                        reported.update(running["last_eval"])
                    tracker.log(step, reported)
                    running["window"] = []
                    if progress:
                        progress.update(reported, step)
                if stop or step % train_cfg.save_every == 0 or is_last:
                    save(step)
                if stop:
                    raise TrainingInterrupted(stop[0], step)
        status = "finished"
    except TrainingInterrupted:
        status = "interrupted"
        raise
    except (JudgeQuit, JudgeUnavailable) as err:
        # Stopped while judging: before this step's update the previous step's state is
        # exact (the data position is rewound); after it (in evaluation), this step's is.
        status = "interrupted"
        if not updated:
            sampler.position = position_at_step_start
            step -= 1
        save(step)
        raise TrainingStopped(f"{err}; checkpoint of step {step} saved, resume with train.resume=auto") from None
    finally:
        judge.close()
        if progress:
            progress.close()
        summary = _summary(run_dir, started, running, status, step, splits)
        tracker.finish(summary, 0 if status == "finished" else 1)
    return summary


def _summary(run_dir: Path, started: float, running: dict, status: str, step: int, splits) -> dict:
    from ppo.provenance import provenance

    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
    summary = {
        "status": status,
        "step": step,
        "final": json.loads(lines[-1]) if lines else {},
        "eval": running["last_eval"],
        "best_eval_win_rate": running["best_win_rate"],
        "skipped_rows": splits.skipped_rows,
        "truncated_prompts": splits.truncated_prompts,
        "wall_seconds": time.perf_counter() - started,
        **provenance(),
    }
    checkpoint.atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=float))
    return summary


def _mean_dicts(dicts: list[dict]) -> dict:
    out = {}
    for k in sorted({k for d in dicts for k in d}):
        values = [d[k] for d in dicts if k in d and d[k] is not None and not math.isnan(d[k])]
        out[k] = float(np.mean(values)) if values else math.nan
    return out


class _Progress:
    """A rich progress bar showing loss, clip_fraction, kl and the eval win rate."""

    def __init__(self, total: int, completed: int = 0):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]ppo"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
        )
        self._task = self._progress.add_task("train", total=total, completed=completed, stats="")
        self._progress.start()

    def update(self, metrics: dict, step: int) -> None:
        keys = ("loss", "clip_fraction", "kl", "eval/win_rate")
        stats = "  ".join(f"{k.split('/')[-1]}={metrics[k]:.3g}" for k in keys if k in metrics and not math.isnan(metrics[k]))
        self._progress.update(self._task, completed=step, stats=stats)

    def close(self) -> None:
        self._progress.stop()


__all__ = ["train", "ConfigError", "TrainingInterrupted", "TrainingStopped"]
