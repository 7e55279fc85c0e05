"""The training loop, top to bottom: set up, resume, then for every step collect and update
(`ppo.train.step.train_step`), evaluate, report, save.

Reproducibility: MLX's random state is re-seeded from (seed, step) at the start of every
step, so a run resumed from a checkpoint samples exactly what the uninterrupted run did.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from omegaconf import OmegaConf

from ppo.errors import (ConfigError, JudgeQuit, JudgeUnavailable, RunFolderWriteError, TrainingAborted,
                        TrainingDiverged, TrainingInterrupted, TrainingStopped)
from ppo.health import HealthMonitor
from ppo.io import (JUDGMENTS_FILE, METRICS_FILE, SUMMARY_FILE, atomic_write_json, eval_judgments_file, is_write_error, read_json,
                    read_jsonl, write_error_reason)
from ppo.judges import build_judge
from ppo.judges.pipeline import reliability
from ppo.judges.record import read_judgments
from ppo.train import checkpoint, inputs, run_folder
from ppo.train.compiled import CompiledDecodeStep, CompiledScorer, make_loss_and_grad
from ppo.train.completions import CompletionReader
from ppo.train.data import PromptSampler, load_prompts
from ppo.train.distributed import World, check_batch, reduce_metrics
from ppo.train.evaluation import HeldOutJudge, evaluate, evaluation_enabled
from ppo.train.loss import adaptive_kl_beta
from ppo.train.models import float_dtype, frozen_base, load_policy_and_reference
from ppo.train.optimizer import learning_rate_at, learning_rate_schedule, make_optimizer
from ppo.train.progress import Progress
from ppo.train.pairs import trained_completions_per_prompt
from ppo.train.rollout import sample_pairs
from ppo.train.step import Sampling, make_loss_fn, mean_dicts, train_step
from ppo.train.stopping import stop_requests
from ppo.train.tracking import SilentTracker, Tracker
from ppo.train.validation import validate

log = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the loop carries from step to step besides weights, optimizer and data position;
    saved in every checkpoint (`TrainerState.extra`), so a resume continues it exactly."""

    # Metrics of the steps since the last report (averaged into the next report).
    window: list[dict] = field(default_factory=list)
    # The newest evaluation's metrics.
    last_eval: dict = field(default_factory=dict)
    # The best eval/win_rate so far.
    best_win_rate: float | None = None
    # The clip_fraction health rule's streak and warnings.
    health: HealthMonitor = field(default_factory=HealthMonitor)
    # With several processes: whether every rank ended with bit-identical weights (not checkpointed).
    ranks_in_sync: bool | None = None
    # loss.kl_control=adaptive: the KL weight the next step uses (None with fixed). Checkpointed as a
    # JSON float, which reads back bit for bit, so a resumed run continues the same beta sequence.
    kl_beta: float | None = None

    def to_checkpoint(self) -> dict:
        return {"window": self.window, "last_eval": self.last_eval, "best_win_rate": self.best_win_rate,
                "health": self.health.__dict__, **({"kl_beta": self.kl_beta} if self.kl_beta is not None else {})}

    @classmethod
    def from_checkpoint(cls, extra: dict) -> "RunState":
        return cls(extra["window"], extra["last_eval"], extra["best_win_rate"], HealthMonitor(**extra["health"]),
                   kl_beta=extra.get("kl_beta"))

    def record_eval(self, metrics: dict) -> None:
        self.last_eval = metrics
        win_rate = metrics.get("eval/win_rate")
        if win_rate is not None and not math.isnan(win_rate):
            self.best_win_rate = max(self.best_win_rate or -1.0, win_rate)


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """MLX's seed for one step of one rank (ranks sample their own prompts with their own streams)."""
    entropy = [seed, step] if rank == 0 else [seed, step, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def train(cfg, run_dir: Path) -> dict:
    """Train PPO as `cfg` says, writing every output into `run_dir`. Returns the summary.

    The run folder is claimed first (`ppo.train.run_folder`): one process at a time, and
    with train.resume=never an earlier run's outputs are moved aside, never mixed in."""
    validate(cfg)
    train_cfg = cfg.train
    world = World.current(timeout=train_cfg.rank_timeout)  # one process unless launched by mlx.launch
    world.continue_with = run_folder.continue_command(run_dir)
    check_batch(train_cfg.batch_size, world, cfg.loss.minibatches)
    run_dir = Path(run_dir)
    with run_folder.claim(cfg, run_dir):
        try:
            return _train(cfg, run_dir, world)
        except Exception as err:
            # A full disk or another I/O error anywhere (metrics, judgments, set-up): one line.
            # Checkpoint saves report their own (CheckpointError); MLX's writes raise RuntimeError.
            if not is_write_error(err):
                raise
            raise run_folder_write_error(err, run_dir) from None


def run_folder_write_error(err: BaseException, run_dir: Path) -> RunFolderWriteError:
    """The one line for a failed write during a run: the file (writes to an open file are given
    its name by ppo.io.naming_file), else the run folder, the reason, and what is kept."""
    return RunFolderWriteError(
        f"I/O error on {getattr(err, 'filename', None) or run_dir} ({write_error_reason(err, run_dir)}); "
        f"{_kept_checkpoint(run_dir)}; fix it (free space, permissions), then continue: "
        f"{run_folder.continue_command(run_dir)}")


def _kept_checkpoint(run_dir: Path, which: str = "newest") -> str:
    newest = checkpoint.latest(run_dir)
    return f"the {which} checkpoint {newest.name} is intact" if newest else "no checkpoint had been saved"


def warn_judge_invalid(step: int, reported: dict, judge_kind: str | None = None, steps: list[dict] = ()) -> None:
    """A judge that answers nothing usable trains nothing: say so at every report step. A person's
    skips (judge=human, key s) are their own choice, not a broken prompt or server: they get a line
    that counts them (over `steps`, the report window's rows) and says what happens to a skipped pair."""
    if judge_kind == "human":
        skipped, pairs = skipped_pairs(steps)
        if skipped:
            log.info("step %d: you skipped %d of %d pairs; a skipped pair is left out of the loss (it teaches nothing; "
                     "t, a tie, keeps it with zero advantage)", step, skipped, pairs)
        return
    rate = reported.get("judge/invalid_rate")
    if rate is not None and not math.isnan(rate) and rate >= 0.5:
        log.warning("step %d: judge/invalid_rate=%.2f: the judge gave no usable verdict for %s of the pairs, which "
                    "teach nothing; check the judge's prompt, labels or server", step, rate, "all" if rate >= 1 else "most")


def skipped_pairs(steps: list[dict]) -> tuple[int, int]:
    """(invalid verdicts, pairs judged) over the training steps' rows: each row holds the step's
    judge/pairs (every micro-batch, every rank) and judge/invalid_rate."""
    skipped = pairs = 0.0
    for row in steps:
        n, rate = row.get("judge/pairs"), row.get("judge/invalid_rate")
        if n is not None and rate is not None and math.isfinite(n) and math.isfinite(rate):
            pairs += n
            skipped += rate * n
    return round(skipped), round(pairs)


@dataclass
class Session:
    """Everything `set_up` builds for one run: what each step, evaluation and save needs."""

    cfg: Any
    run_dir: Path
    world: World
    fingerprint: dict
    policy: nn.Module
    reference: nn.Module | None
    tokenizer: Any
    splits: Any
    sampler: PromptSampler
    judge: Any
    optimizer: Any
    lr_schedule: Any
    loss_and_grad: Any
    sampling: Sampling
    reader: CompletionReader
    evaluating: bool
    # The float dtype the policy's base computes in (model.dtype resolved), recorded in summary.json.
    model_dtype: str | None = None
    # Evaluation-only judges (eval_judge): the same evaluation pairs, eval/NAME/win_rate.
    held_out: tuple = ()
    # The content of the inputs (ppo.train.inputs), saved in every checkpoint.
    inputs: dict = field(default_factory=dict)
    # The reference / sampling-time scorer and the decode step: compiled or eager (train.compile_scoring,
    # train.compile_decode; ppo.train.compiled). None: eager.
    scorer: Any = None
    decode_step: Any = None


def set_up(cfg, run_dir: Path, world: World, fingerprint: dict) -> Session:
    """Models, prompts, judge and optimizer, in the order that keeps runs reproducible."""
    train_cfg = cfg.train
    mx.random.seed(cfg.seed)
    policy, reference, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)  # checks the reference fits
    if train_cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(policy.layers[0])
    splits = load_prompts(cfg.data, tokenizer, cfg.seed, train_cfg.max_seq_length - cfg.generation.max_completion_length)
    base = frozen_base(policy, reference, cfg.model, cfg.finetune)
    judge = build_judge(cfg.judge, run_dir=run_dir, seed=cfg.seed, tokenizer=tokenizer, base_path=cfg.model.path,
                        base=base, world=world, dtype=cfg.model.dtype)
    held_out = build_held_out_judges(cfg, run_dir, world, tokenizer, base)
    lr_schedule = learning_rate_schedule(train_cfg, updates_per_step(cfg.loss))
    return Session(
        cfg=cfg, run_dir=run_dir, world=world, fingerprint=fingerprint, policy=policy, reference=reference,
        tokenizer=tokenizer, splits=splits,
        sampler=PromptSampler(splits.train, train_cfg.batch_size, cfg.seed, cfg.data.shuffle),
        judge=judge, optimizer=make_optimizer(train_cfg, lr_schedule), lr_schedule=lr_schedule,
        loss_and_grad=make_loss_and_grad(policy, make_loss_fn(cfg.loss), train_cfg.compile_update),
        scorer=CompiledScorer() if train_cfg.compile_scoring else None,
        decode_step=CompiledDecodeStep() if train_cfg.compile_decode else None,
        sampling=Sampling.from_config(cfg.generation, tokenizer),
        reader=CompletionReader.for_judge(judge, tokenizer),  # what the judge reads of a completion
        evaluating=evaluation_enabled(judge, train_cfg, len(splits.eval)),
        model_dtype=float_dtype(policy),
        held_out=held_out,
    )


def build_held_out_judges(cfg, run_dir: Path, world: World, tokenizer, base) -> tuple[HeldOutJudge, ...]:
    """The eval_judge group's judge (none when eval_judge is null), recording into
    judgments_eval_NAME.jsonl; its `name` key names its metrics and is not the judge's own."""
    if cfg.get("eval_judge") is None:
        return ()
    judge_cfg = OmegaConf.to_container(cfg.eval_judge, resolve=True)
    name = judge_cfg.pop("name")
    judge = build_judge(judge_cfg, run_dir=run_dir, seed=cfg.seed, tokenizer=tokenizer, base_path=cfg.model.path,
                        base=base, world=world, dtype=cfg.model.dtype, log_file=eval_judgments_file(name))
    return (HeldOutJudge(name, judge, CompletionReader.for_judge(judge, tokenizer)),)


def resume(run: Session) -> tuple[int, RunState, checkpoint.TrainerState | None]:
    """The newest complete checkpoint of the run folder (or the one named), read by every rank:
    (the step to continue after, the loop's state, the checkpoint's trainer state or None)."""
    train_cfg = run.cfg.train
    resume_from = None if train_cfg.resume == "never" else (
        checkpoint.latest(run.run_dir) if train_cfg.resume == "auto" else Path(train_cfg.resume))
    saved = checkpoint.load(resume_from, run.policy, run.optimizer, run.fingerprint) if resume_from is not None else None
    if saved is not None:
        run.sampler.position = saved.data_position
        log.info("resumed from %s (step %d)", resume_from, saved.step)
    start_step = saved.step if saved else 0
    run.world.check_same("checkpoints (a rank could not read the run folder's newest one)", str(start_step))
    state = RunState.from_checkpoint(saved.extra) if saved else RunState()
    if run.cfg.loss.kl_control == "adaptive" and state.kl_beta is None:
        state.kl_beta = float(run.cfg.loss.beta)  # the controller starts at loss.beta
    return start_step, state, saved


def checked_inputs(cfg, run_dir: Path) -> dict:
    """The content of the inputs, now that every model is loaded (a hub id's snapshot is in the
    cache), refused by every rank when it differs from the checkpoint about to be resumed."""
    current = inputs.input_fingerprint(cfg)
    resume_from = run_folder.resume_point(cfg, run_dir)
    if resume_from is not None:
        inputs.check_unchanged(checkpoint.read_state(resume_from).inputs, current, resume_from,
                               cfg.train.resume_with_changed_inputs)
    return current


def make_tracker(run: Session, saved) -> Tracker | SilentTracker:
    """Only rank 0 writes the run folder: metrics, samples, summary, W&B."""
    if not run.world.is_main:
        return SilentTracker()
    return Tracker(run.cfg.logger, run.run_dir, OmegaConf.to_container(run.cfg, resolve=True),
                   resume_step=saved.step if saved else None, wandb_id=saved.wandb_id if saved else None)


def updates_per_step(loss_cfg) -> int:
    """Optimizer updates per training step: loss.ppo_epochs x loss.minibatches."""
    return loss_cfg.ppo_epochs * loss_cfg.minibatches


def compiled_variants(run: Session) -> dict:
    """train_step's `token_logps_fn` and `sample_fn` where train.compile_scoring / compile_decode are on."""
    variants = {}
    if run.scorer is not None:
        variants["token_logps_fn"] = run.scorer
    if run.decode_step is not None:
        variants["sample_fn"] = functools.partial(sample_pairs, decode_step=run.decode_step)
    return variants


def collect_and_update(run: Session, step: int, tracker, state: RunState | None = None) -> dict:
    """One training step on every rank: `train_step`, then the metrics reduced over the ranks.
    With loss.kl_control=adaptive the step uses `state.kl_beta` (logged as kl/beta), then the
    controller sets the next step's from the step's kl, reduced alike on every rank."""
    cfg, world = run.cfg, run.world
    beta = state.kl_beta if state is not None else None
    train_cfg = cfg.train
    rows = [] if step % train_cfg.steps_per_report == 0 or step == train_cfg.iters else None
    metrics = train_step(run.policy, run.reference, run.tokenizer, run.judge, run.optimizer, run.loss_and_grad,
                         lambda: world.share(run.sampler.next_batch()),
                         step=step, sampling=run.sampling, loss_cfg=cfg.loss,
                         grad_accumulation_steps=train_cfg.grad_accumulation_steps,
                         dropout=cfg.finetune.dropout, world=world, reader=run.reader, samples_out=rows,
                         max_samples=train_cfg.samples_per_report, seed=cfg.seed, beta=beta,
                         **compiled_variants(run))
    if world.size > 1:  # the time this rank waited for the others (the slowest rank's is logged)
        metrics["timing/collective_seconds"] = world.take_wait_seconds()
    metrics = reduce_metrics(world.gather_objects(metrics))
    if beta is not None:
        metrics["kl/beta"] = beta
        state.kl_beta = adaptive_kl_beta(beta, metrics.get("kl", math.nan), target_kl=cfg.loss.target_kl,
                                         horizon=cfg.loss.kl_horizon,
                                         n_steps=trained_completions_per_prompt(cfg.generation) * train_cfg.batch_size
                                         * train_cfg.grad_accumulation_steps)
    run.judge.flush()
    tracker.log_samples(step, rows or [])  # rank 0's pairs (other ranks' trackers write nothing)
    metrics["learning_rate"] = learning_rate_at(run.lr_schedule, step * updates_per_step(cfg.loss) - 1)
    metrics["memory/peak_gb"] = mx.get_peak_memory() / 1e9
    return metrics


def run_evaluation(run: Session, state: RunState, step: int, tracker) -> None:
    """eval/* against the reference (when evaluating is on), and its samples rows."""
    if not run.evaluating:
        return
    rows: list[dict] = []
    state.record_eval(evaluate(run.policy, run.reference, run.tokenizer, run.judge, run.splits.eval,
                               run.cfg.generation, step=step, world=run.world, reader=run.reader, samples_out=rows,
                               samples_per_prompt=run.cfg.train.eval_samples_per_prompt, held_out=run.held_out))
    run.judge.flush()
    for held_out in run.held_out:
        held_out.judge.flush()
    tracker.log_samples(step, rows)


def save(run: Session, state: RunState, step: int, tracker) -> None:
    """A checkpoint of `step` (rank 0 writes it; every rank holds the same weights)."""
    if not run.world.is_main:
        return
    saved = checkpoint.TrainerState(step, run.sampler.position, tracker.wandb_id, run.fingerprint, state.to_checkpoint(),
                                    inputs=run.inputs)
    checkpoint.save(run.run_dir, run.policy, run.optimizer, saved, run.cfg, keep=run.cfg.train.keep_checkpoints)


def _train(cfg, run_dir: Path, world: World) -> dict:
    train_cfg = cfg.train
    run_dir.mkdir(parents=True, exist_ok=True)
    # Every setting, not only the fingerprint's: ranks that disagree on train.iters or on how
    # long to wait would meet at different collectives and hang until train.rank_timeout.
    world.check_same_config(checkpoint.flat_config(cfg))
    fingerprint = checkpoint.config_fingerprint(cfg)
    if (done := checkpoint.finished_summary(cfg, run_dir)) is not None:  # a finished sweep job: skip it
        return done
    started = time.perf_counter()
    run = set_up(cfg, run_dir, world, fingerprint)
    run.inputs = checked_inputs(cfg, run_dir)
    start_step, state, saved = resume(run)
    tracker = make_tracker(run, saved)
    progress = Progress(train_cfg.iters, start_step, enabled=train_cfg.progress and world.is_main,
                        steps_per_eval=train_cfg.steps_per_eval if run.evaluating else None)

    status, step = "failed", start_step
    position_at_step_start, updated = run.sampler.position, True
    try:
        mark_running(run_dir, world, start_step)
        if train_cfg.eval_at_start and start_step == 0:
            mx.random.seed(step_seed(cfg.seed, 0, world.rank))
            with progress.evaluation():
                run_evaluation(run, state, 0, tracker)
            tracker.log(0, state.last_eval)
            progress.update(state.last_eval, 0)
        with stop_requests() as stop:
            for step in range(start_step + 1, train_cfg.iters + 1):
                mx.random.seed(step_seed(cfg.seed, step, world.rank))
                position_at_step_start, updated = run.sampler.position, False
                metrics = collect_and_update(run, step, tracker, state)
                updated = True
                if "clip_fraction" in metrics:
                    state.health.check(step, metrics)
                state.window.append(metrics)

                # Evaluate, report, save.
                is_last = step == train_cfg.iters
                is_eval = step % train_cfg.steps_per_eval == 0 or is_last
                if is_eval:
                    with progress.evaluation():
                        run_evaluation(run, state, step, tracker)
                if step % train_cfg.steps_per_report == 0 or is_last:
                    reported = mean_dicts(state.window) | (state.last_eval if is_eval else {})
                    tracker.log(step, reported)
                    warn_judge_invalid(step, reported, run.judge.kind, state.window)
                    state.window = []
                    progress.update(reported, step)
                stopping = world.stop_signal(stop.signum if stop else None)
                if stopping or step % train_cfg.save_every == 0 or is_last:
                    with stop.saving():
                        save(run, state, step, tracker)
                if stopping:
                    raise TrainingInterrupted(stopping, step, run_folder.continue_command(run_dir))
        if world.size > 1:
            state.ranks_in_sync = world.in_sync(run.policy.trainable_parameters())
            if not state.ranks_in_sync:
                log.error("the ranks' weights differ at the end of the run (report this as a bug)")
        status = "finished"
    except (TrainingInterrupted, KeyboardInterrupt):  # KeyboardInterrupt: a Ctrl-C in the step-0 evaluation
        status = "interrupted"
        raise
    except TrainingAborted as err:
        # The running step is dropped (not saved): the newest complete checkpoint is the resume point.
        status, aborted_step = "interrupted", step
        if not updated:
            step -= 1
        newest = checkpoint.latest(run_dir)
        raise err.during(aborted_step, f"{newest.name} (step {checkpoint.read_state(newest).step})" if newest else None,
                         run_folder.continue_command(run_dir)) from None
    except TrainingDiverged as err:
        # Raised before the step's update is kept: nothing non-finite is saved.
        status = "diverged"
        raise err.at(step, _kept_checkpoint(run_dir, "last finite")) from None
    except (JudgeQuit, JudgeUnavailable) as err:
        # Stopped while judging: before this step's update the previous step's state is
        # exact (the data position is rewound); after it (in evaluation), this step's is.
        status = "interrupted"
        if not updated:
            run.sampler.position = position_at_step_start
            step -= 1
        save(run, state, step, tracker)
        raise TrainingStopped(f"{err}; checkpoint of step {step} saved; to continue from it, run: "
                              f"{run_folder.continue_command(run_dir)}") from None
    finally:
        run.judge.close()
        for held_out in run.held_out:
            held_out.judge.close()
        progress.close()
        try:
            summary = write_summary(run_dir, started, state, status, step, run.splits, world, run.model_dtype, run.judge)
        except OSError as err:
            # Not raised from here: it would hide the error that ended the run, if any.
            summary_error, summary = err, {"status": status, "step": step}
        else:
            summary_error = None
        tracker.finish(summary, 0 if status == "finished" else 1)
    if summary_error is not None:
        raise RunFolderWriteError(f"trained to step {step} but could not write {run_dir / SUMMARY_FILE} "
                                  f"({write_error_reason(summary_error, run_dir)}); {_kept_checkpoint(run_dir)}; "
                                  f"free space, then continue: {run_folder.continue_command(run_dir)}")
    return summary


def judge_summary(run_dir: Path, judge) -> dict:
    """The whole run's judge reliability (order agreement, first-position win rate with its
    interval, tie rate, the "guessing" verdict: `ppo.judges.pipeline.reliability`), from
    judgments.jsonl, which holds every rank's records; {} without a judge."""
    if judge is None:
        return {}
    records = read_judgments(run_dir / JUDGMENTS_FILE) if (run_dir / JUDGMENTS_FILE).exists() else []
    return {"judge/kind": judge.kind, "judge/order": judge.order, "judge/on_order_disagreement": judge.on_order_disagreement,
            **reliability(records, kind=judge.kind, order_mode=judge.order)}


def mark_running(run_dir: Path, world: World, step: int) -> None:
    """An earlier attempt's summary.json (a run finished at step 6, now extended; an interrupted
    one) says `running` while this attempt trains, so a run killed before it writes its own
    summary (SIGKILL, a lost rank under mlx.launch) never looks finished."""
    summary = read_json(run_dir / SUMMARY_FILE) if world.is_main else None
    if summary and summary.get("status") != "running":
        atomic_write_json(run_dir / SUMMARY_FILE, {**summary, "status": "running", "step": step})


def write_summary(run_dir: Path, started: float, state: RunState, status: str, step: int, splits,
                  world: World, model_dtype: str | None = None, judge=None) -> dict:
    from ppo.train.provenance import provenance

    rows = read_jsonl(run_dir / METRICS_FILE)
    summary = {
        "status": status,
        "step": step,
        "final": rows[-1] if rows else {},
        "eval": state.last_eval,
        "best_eval_win_rate": state.best_win_rate,
        "judge": judge_summary(run_dir, judge) if world.is_main else {},
        "skipped_rows": splits.skipped_rows,
        "truncated_prompts": splits.truncated_prompts,
        "wall_seconds": time.perf_counter() - started,
        "model_dtype": model_dtype,  # what the policy computed in (model.dtype resolved on this backend)
        **({"world_size": world.size, "ranks_in_sync": state.ranks_in_sync} if world.size > 1 else {}),
        **provenance(),
    }
    if world.is_main:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    return summary


__all__ = ["train", "RunState", "ConfigError", "TrainingInterrupted", "TrainingStopped"]
