"""One PPO step in two phases, each a function with typed inputs and outputs.

    collect(...)  prompts -> k completions each (policy) -> judge every pair -> the rule's pairs
                  -> chosen / rejected
                  -> log-probs under the reference (and at sampling time)   -> Collected
    update(...)   loss -> gradients (mean over micro-batches) -> optimizer step(s) -> Updated

`train_step` runs both for one step (with gradient accumulation over micro-batches) and
merges their metrics. The loop (`ppo.train.loop`) only calls it; the benchmarks time these
same functions, passing variants in as arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from ppo.errors import TrainingDiverged
from ppo.judges import Pair, advantages_from_verdicts
from ppo.metrics import STEP_COUNTS
from ppo.train.completions import CompletionReader
from ppo.train.data import Prompt
from ppo.train.distributed import SINGLE_PROCESS, World
from ppo.train.loss import (approx_kl, dpo_loss, implicit_rewards, logprob_gap_advantages, missing_eos_penalties,
                            ppo_loss, ppo_token_loss, sequence_kl)
from ppo.train.models import reference_model
from ppo.train.pairs import round_robin, select_pairs
from ppo.train.rollout import Completions, mean_token_entropy, sample_pairs
from ppo.train.samples import sample_rows
from ppo.train.scoring import ScoringBatch, build_scoring_batch, reduce_logps, share_frozen_layers, token_logps

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
    # (2B, T) per-token log-probs at sampling time, scored before any update when the loss needs
    # them (`needs_sampling_logps`: minibatches, where a later minibatch's first forward comes after
    # an update, and token-level ratios); they then stand in for old_logps. None otherwise.
    old_token_logps: mx.array | None = None
    # loss.missing_eos_penalty of each kept pair's chosen / rejected completion (0 where it ended
    # with its EOS); None when the penalty is off.
    chosen_penalty: mx.array | None = None
    rejected_penalty: mx.array | None = None
    # The KL weight of this step (the adaptive controller's live beta); None: loss.beta.
    beta: float | None = None

    @property
    def num_pairs(self) -> int:
        return int(self.chosen.shape[0])

    def select(self, pairs: np.ndarray) -> "JudgedBatch":
        """The batch of the pairs `pairs` (indices into this batch's kept pairs), chosen and rejected
        together: their 2k rows, chosen first, trimmed to the longest of them (right padding never
        influences earlier positions, so the trim changes no log-prob but the rounding)."""
        idx = mx.array(np.asarray(pairs, dtype=np.int32))
        rows = mx.concatenate([self.chosen[idx], self.rejected[idx]])
        b = self.batch
        mask = b.completion_mask[rows]
        prompt_lengths = b.prompt_lengths[rows]
        completion_lengths = np.array(mask.sum(axis=1)).astype(np.int64)
        width = int((np.array(prompt_lengths) + completion_lengths).max())
        batch = ScoringBatch(b.input_ids[rows, :width], mask[:, :width], prompt_lengths, int(completion_lengths.max()),
                             None if b.shared_hidden is None else b.shared_hidden[rows, :width - 1], b.shared_layers_of)
        k = len(pairs)

        def take(x, per_token=True):
            return None if x is None else (x[rows, :width] if per_token else x[rows])

        def take_pairs(x):
            return None if x is None else x[idx]

        return JudgedBatch(
            batch=batch, chosen=mx.arange(k), rejected=mx.arange(k) + k, advantages=self.advantages[idx],
            ref_token_logps=take(self.ref_token_logps), old_logps=take(self.old_logps, per_token=False),
            old_token_logps=take(self.old_token_logps), chosen_penalty=take_pairs(self.chosen_penalty),
            rejected_penalty=take_pairs(self.rejected_penalty), beta=self.beta)


def needs_sampling_logps(loss_cfg) -> bool:
    """Whether `collect` scores the sampling-time per-token log-probs (JudgedBatch.old_token_logps)."""
    return loss_cfg.minibatches > 1 or (loss_cfg.type == "ppo_clip" and loss_cfg.ratio_level == "token")


@dataclass
class Collected:
    """What `collect` returns for one micro-batch. `judged` is None when the judge could
    decide no pair (nothing to learn from); `metrics` carry the phase timings."""

    judged: JudgedBatch | None
    metrics: dict
    # samples.jsonl rows of the first `keep_samples` pairs (ppo.train.samples).
    samples: list[dict] = field(default_factory=list)


@dataclass
class Updated:
    """What `update` returns: the loss metrics of every micro-batch forward, and the time."""

    loss_metrics: list[dict] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Sampling:
    """How completions are sampled and paired (from `generation.*` and the tokenizer)."""

    eos_token_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float = 1.0
    samples_per_prompt: int = 2  # k completions per prompt, all pairs judged (ppo.train.pairs)
    pair_rule: str = "best_vs_worst"  # which judged pairs enter the loss (ppo.train.pairs)

    @classmethod
    def from_config(cls, gen_cfg, tokenizer) -> "Sampling":
        return cls(list(tokenizer.eos_token_ids), gen_cfg.max_completion_length, gen_cfg.temperature, gen_cfg.top_p,
                   gen_cfg.samples_per_prompt, gen_cfg.pair_rule)

    def kwargs(self) -> dict:
        """The decode's settings (`ppo.train.rollout.sample`); the k and the rule are collect's."""
        return dict(eos_token_ids=self.eos_token_ids, max_tokens=self.max_tokens, temperature=self.temperature,
                    top_p=self.top_p)


def judge_metrics(diagnostics: dict) -> dict:
    """The judge's per-batch metrics; the cache hit rate is left out, since it depends on
    what this process happens to remember (it differs between a resumed and a straight run)."""
    return {k: v for k, v in diagnostics.items() if k.startswith("judge/") and k != "judge/cache_hit_rate"}


def token_entropy_metric(groups) -> dict:
    """`entropy` (TRL's name): the policy's entropy in nats per sampled token, over every token of
    every completion of the micro-batch (all k samples of each prompt, each up to and including its
    EOS: the tokens the loss's completion mask holds), at temperature 1 (the distribution the loss
    scores). A falling entropy is a policy growing sure of itself; a collapse to near 0 is one that
    stopped exploring. {} when the sampler did not measure it (a benchmark's stand-in)."""
    if all(g.entropy_sums is None for g in groups):
        return {}
    return {"entropy": mean_token_entropy(groups)}


def chosen_longer_rate(first_lengths: np.ndarray, second_lengths: np.ndarray, first_is_chosen: np.ndarray,
                       decided: np.ndarray) -> float:
    """How often the judge chose the longer completion, over the pairs it decided (not ties): 1
    when the chosen one has more tokens, 0 when fewer, 0.5 when both are as long. 0.5 on average
    is a judge blind to length; near 1 a judge that mostly rewards length. NaN when no pair was
    decided."""
    if not decided.any():
        return math.nan
    chosen = np.where(first_is_chosen, first_lengths, second_lengths)[decided]
    rejected = np.where(first_is_chosen, second_lengths, first_lengths)[decided]
    return float(np.mean(np.sign(chosen - rejected) * 0.5 + 0.5))


def collect(policy: nn.Module, reference: nn.Module | None, tokenizer, judge, prompts: list[Prompt], *, step: int,
            sampling: Sampling, loss_cfg, dropout: float = 0.0, sample_fn: Callable = sample_pairs,
            token_logps_fn: Callable = token_logps, reader: CompletionReader | None = None,
            keep_samples: int = 0) -> Collected:
    """Rollout, judge and score one micro-batch of prompts.

    `sample_fn(model, prompt_ids, samples_per_prompt=k, **sampling)` returns k `Completions`, the
    g-th holding every prompt's g-th sample (k = `sampling.samples_per_prompt`), and
    `token_logps_fn(model, batch)` scores them; a benchmark passes its variants here. The judge
    compares every pair of a prompt's k completions and `sampling.pair_rule` picks the pairs of
    the loss (`ppo.train.pairs`). Rows of the scoring batch: with k = 2 every completion, rows
    0..B-1 the first ones and B..2B-1 the second (the classic layout); with k > 2 only the
    completions in a loss pair, in the order of their rollout rows (prompt b's g-th sample: g*B + b),
    since the others never reach the loss. `reader` decides what the judge reads of each
    completion (default: the answer without its reasoning block); the scoring uses every sampled
    token. `keep_samples`: samples.jsonl rows for that many of the rule's pairs (undecided ones included).
    """
    prompt_ids = [list(p.tokens) for p in prompts]
    k, n = sampling.samples_per_prompt, len(prompts)

    # 1. Rollout: k completions per prompt, one batched decode, ids kept, and the policy's entropy
    # at every sampled token taken from the decode's own logits (no forward of its own).
    policy.eval()
    groups = tuple(sample_fn(policy, prompt_ids, samples_per_prompt=k, entropy=True, **sampling.kwargs()))
    if len(groups) != k:
        raise ValueError(f"sample_fn returned {len(groups)} completions per prompt; generation.samples_per_prompt={k}")
    rollout_seconds = sum(g.seconds for g in groups)
    token_ids = [t for g in groups for t in g.token_ids]  # row g*B + b: prompt b's g-th sample
    finished = [f for g in groups for f in g.finished]

    # 2. Judge: P(first is better) for every pair of a prompt's completions (a round robin), then
    # the rule's pairs -> chosen / rejected and the advantage.
    judge_start = time.perf_counter()
    reader = reader or CompletionReader(tokenizer)
    decoded = [t for g in groups for t in reader.texts(prompt_ids, g.token_ids)]
    games = round_robin(k)
    pairs = [Pair(p.text, decoded[i * n + b], decoded[j * n + b], finished[i * n + b], finished[j * n + b], p.id)
             for i, j in games for b, p in enumerate(prompts)]
    verdicts = judge(pairs, step=step)
    judge_seconds = time.perf_counter() - judge_start
    selected = select_pairs(np.asarray(verdicts.p).reshape(len(games), n), k, sampling.pair_rule)
    a_rows, b_rows = selected.rows(n)
    first_is_chosen, confidence, valid = advantages_from_verdicts(selected.p)
    keep = np.flatnonzero(valid)  # pairs the judge could not decide are left out of the loss
    chosen_rows = np.where(first_is_chosen, a_rows, b_rows)[keep]
    rejected_rows = np.where(first_is_chosen, b_rows, a_rows)[keep]

    # 3. Score: reference (and sampling-time) log-probs, frozen before any update.
    score_start = time.perf_counter()
    scored = np.arange(k * n) if k == 2 else np.unique(np.concatenate([chosen_rows, rejected_rows]))
    position = np.full(k * n, -1, dtype=np.int64)  # rollout row -> row of the scoring batch
    position[scored] = np.arange(len(scored))
    judged = None
    if len(scored):
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        batch = build_scoring_batch([prompt_ids[r % n] for r in scored], [token_ids[r] for r in scored], pad_id)
        # The layers below the first adapter compute alike for the reference and the policy: run once
        # here, and the update's forwards start above them (ppo.train.scoring, share_frozen_layers).
        batch = share_frozen_layers(batch, policy, reference)
        with reference_model(policy, reference) as ref:
            ref_token_logps = mx.stop_gradient(token_logps_fn(ref, batch))
        old_logps = old_token_logps = None
        if needs_sampling_logps(loss_cfg):  # the policy is still in eval mode (no dropout): as sampled
            old_token_logps = mx.stop_gradient(token_logps_fn(policy, batch))
        elif loss_cfg.ratio == "rollout" and dropout > 0:  # else: see JudgedBatch
            old_logps = mx.stop_gradient(reduce_logps(token_logps_fn(policy, batch), batch.completion_mask,
                                                      loss_cfg.logprob_reduction))
        # Materialise now: the update must not see later weights. (batch.shared_hidden is evaluated with the
        # reference's log-probs when the scorer used it; a compiled scorer does not, and it stays unevaluated.)
        mx.eval(ref_token_logps, old_logps, old_token_logps)
    if len(keep):
        penalties = (None, None)
        if loss_cfg.missing_eos_penalty > 0:
            ended = mx.array(np.array(finished, dtype=np.float32))
            penalties = missing_eos_penalties(loss_cfg.missing_eos_penalty, ended[mx.array(chosen_rows)],
                                              ended[mx.array(rejected_rows)])
        judged = JudgedBatch(
            batch=batch,
            chosen=mx.array(position[chosen_rows]),
            rejected=mx.array(position[rejected_rows]),
            advantages=mx.array(confidence[keep]),
            ref_token_logps=ref_token_logps,
            old_logps=old_logps,
            old_token_logps=old_token_logps,
            chosen_penalty=penalties[0],
            rejected_penalty=penalties[1],
        )
    lengths = np.array([len(t) for t in token_ids])
    samples = []
    if keep_samples > 0:  # the rule's pairs, as judged (a: the lower sample index)
        def side(rows):
            return Completions([token_ids[r] for r in rows], [finished[r] for r in rows], 0.0, 0)

        samples = sample_rows(step, "train", tokenizer, [prompts[b] for b in selected.prompt], side(a_rows), side(b_rows),
                              [decoded[r] for r in a_rows], [decoded[r] for r in b_rows], selected.p, limit=keep_samples)
    metrics = {
        "completions/mean_length": lengths.mean(),
        "completions/eos_rate": np.mean(finished),
        **token_entropy_metric(groups),
        **judge_metrics(verdicts.diagnostics),
        "judge/chosen_longer_rate": chosen_longer_rate(lengths[a_rows], lengths[b_rows], first_is_chosen,
                                                       valid & (confidence > 0)),
        "tokens_per_second": sum(g.num_tokens for g in groups) / max(rollout_seconds, 1e-9),
        "timing/rollout_seconds": rollout_seconds,
        "timing/judge_seconds": judge_seconds,
        "timing/score_seconds": time.perf_counter() - score_start,
    }
    if k > 2:  # with k = 2 every decided pair enters the loss: judge/pairs less the invalid ones
        metrics["judge/loss_pairs"] = float(len(keep))
    return Collected(judged, samples=samples, metrics=metrics)


def make_loss_fn(loss_cfg, token_logps_fn: Callable = token_logps):
    """loss(model, judged) -> (loss, (metrics, logps)) for the configured loss_type and options.
    `token_logps_fn` is the scorer (a benchmark passes its variant; see `collect`)."""
    reduction = loss_cfg.logprob_reduction

    def loss_fn(model, judged: JudgedBatch):
        token_logps_ = token_logps_fn(model, judged.batch)
        mask = judged.batch.completion_mask
        logps = reduce_logps(token_logps_, mask, reduction)
        ref_logps = reduce_logps(judged.ref_token_logps, mask, reduction)
        c, r = judged.chosen, judged.rejected
        args = (logps[c], logps[r], ref_logps[c], ref_logps[r])
        beta = loss_cfg.beta if judged.beta is None else judged.beta
        if loss_cfg.type == "ppo_clip":
            kl_per_sequence = None
            if loss_cfg.kl_estimator != "k1" or loss_cfg.ratio_level == "token":
                kl_all = sequence_kl(token_logps_, judged.ref_token_logps, mask, estimator=loss_cfg.kl_estimator, reduction=reduction)
                kl_per_sequence = mx.concatenate([kl_all[c], kl_all[r]])
            penalties = dict(chosen_penalty=judged.chosen_penalty, rejected_penalty=judged.rejected_penalty)
            if loss_cfg.ratio_level == "token":
                base = judged.ref_token_logps if loss_cfg.ratio == "reference" else judged.old_token_logps
                advantages = (judged.advantages if loss_cfg.advantage == "judge"
                              else logprob_gap_advantages(logps[c], logps[r]))
                loss, metrics = ppo_token_loss(
                    token_logps_[c], token_logps_[r], base[c], base[r], mask[c], mask[r],
                    epsilon=loss_cfg.epsilon, beta=beta, advantages=advantages, kl_per_sequence=kl_per_sequence,
                    max_log_ratio=loss_cfg.max_log_ratio, **penalties)
            else:
                old = None  # the sampling-time log-probs, the baseline of loss.ratio=rollout
                if loss_cfg.ratio == "rollout":
                    old = judged.old_logps
                    if judged.old_token_logps is not None:
                        old = reduce_logps(judged.old_token_logps, mask, reduction)
                    if old is None:
                        old = mx.stop_gradient(logps)
                loss, metrics = ppo_loss(
                    *args,
                    epsilon=loss_cfg.epsilon,
                    beta=beta,
                    advantages=judged.advantages if loss_cfg.advantage == "judge" else None,
                    old_chosen_logps=None if old is None else old[c],
                    old_rejected_logps=None if old is None else old[r],
                    kl_per_sequence=kl_per_sequence,
                    max_log_ratio=loss_cfg.max_log_ratio,
                    **penalties,
                )
        else:
            loss, metrics = dpo_loss(*args, beta=beta, loss_type=loss_cfg.type, delta=loss_cfg.delta,
                                     weights=judged.advantages)
        if judged.old_token_logps is not None:  # how far the update has moved the policy since sampling
            rows = mx.concatenate([c, r])
            metrics["approx_kl"] = approx_kl(token_logps_[rows], judged.old_token_logps[rows], mask[rows],
                                             loss_cfg.max_log_ratio)
        metrics.update(implicit_rewards(*args, beta=beta))
        return loss, ({"loss": loss, **metrics}, mx.stop_gradient(logps))

    return loss_fn


def check_finite_metrics(metrics: dict) -> None:
    """Raise TrainingDiverged naming the first non-finite loss metric ("loss" first)."""
    for key in sorted(metrics, key=lambda k: k != "loss"):
        value = metrics[key]
        if value is not None and not math.isfinite(value):
            raise TrainingDiverged(key, value)


def check_finite_tree(what: str, tree) -> None:
    """Raise TrainingDiverged naming the first array of `tree` holding a NaN or an inf."""
    leaves = tree_flatten(tree)
    if not leaves:
        return
    finite = mx.stack([mx.isfinite(v).all() for _, v in leaves])
    if bool(finite.all().item()):
        return
    name, value = leaves[int(np.argmin(np.array(finite)))]
    bad = np.array(value.astype(mx.float32))
    raise TrainingDiverged(f"{what} {name}", float(bad[~np.isfinite(bad)].flat[0]))


def update(policy: nn.Module, optimizer, loss_and_grad: Callable, judged_batches: list[JudgedBatch], *,
           epochs: int, rollout_ratio: bool, world: World = SINGLE_PROCESS, minibatches: int = 1,
           shuffle_seed: tuple[int, ...] = (0,)) -> Updated:
    """`epochs` x `minibatches` optimizer steps, each on the mean gradient of the micro-batches
    (and of the ranks, with more than one process: every rank applies the same averaged step).

    minibatches=1: every epoch is one step on all pairs. minibatches=M > 1: every epoch shuffles
    each micro-batch's pairs (chosen and rejected together; numpy's generator seeded by
    `shuffle_seed` + (epoch,), so a run and its resume shuffle alike), splits them into M nearly
    equal parts (`np.array_split`), and takes M steps, step m on part m of every micro-batch. Every
    rank takes all M steps: a rank whose part is empty (the judge decided fewer pairs than M)
    contributes no gradient to that step but still joins its all-reduce.

    `loss_and_grad`: `nn.value_and_grad(policy, make_loss_fn(loss_cfg))`. With
    `rollout_ratio` (loss.ratio=rollout) and no sampling-time log-probs scored by `collect`,
    the first epoch's log-probs become the sampling-time ones of the later epochs.
    """
    start = time.perf_counter()
    out = Updated()
    policy.train()
    # Every rank must reach the gradient all-reduce, even one whose judge decided no pair.
    for epoch in range(epochs if judged_batches or world.size > 1 else 0):
        if minibatches == 1:
            if not _optimizer_step(policy, optimizer, loss_and_grad, judged_batches, rollout_ratio, world, out):
                break  # no rank had a judged pair: nothing to learn from this step
            continue
        rng = np.random.default_rng([*shuffle_seed, epoch])
        parts = [np.array_split(rng.permutation(judged.num_pairs), minibatches) for judged in judged_batches]
        for m in range(minibatches):
            batches = [judged.select(p[m]) for judged, p in zip(judged_batches, parts) if len(p[m])]
            _optimizer_step(policy, optimizer, loss_and_grad, batches, rollout_ratio, world, out)
    out.seconds = time.perf_counter() - start
    return out


def _optimizer_step(policy: nn.Module, optimizer, loss_and_grad: Callable, judged_batches: list[JudgedBatch],
                    rollout_ratio: bool, world: World, out: Updated) -> bool:
    """One optimizer step on the mean gradient of `judged_batches` and of the ranks; False when no
    rank had a pair (no step taken). The loss metrics of every forward are appended to `out`."""
    grads_sum = None
    for judged in judged_batches:
        (_, (loss_metrics, logps)), grads = loss_and_grad(policy, judged)
        if rollout_ratio and judged.old_logps is None and judged.old_token_logps is None:
            judged.old_logps = logps  # the first epoch's log-probs are the sampling-time ones
        grads_sum = grads if grads_sum is None else tree_map(mx.add, grads_sum, grads)
        mx.eval(grads_sum, loss_metrics)  # one graph per micro-batch keeps memory flat
        out.loss_metrics.append({k: v.item() for k, v in loss_metrics.items()})
    local = None if grads_sum is None else tree_map(lambda g: g / len(judged_batches), grads_sum)
    grads = world.average_gradients(local, like=policy.trainable_parameters())
    if grads is None:
        return False
    # Before the optimizer applies them, so the weights stay finite. On the averaged
    # gradients, which every rank holds alike: all ranks stop at the same step.
    for metrics in out.loss_metrics:
        check_finite_metrics(metrics)
    check_finite_tree("gradient", grads)
    optimizer.update(policy, grads)
    mx.eval(policy.trainable_parameters(), optimizer.state)  # the step is done before the next rollout
    check_finite_tree("weight", policy.trainable_parameters())
    return True


def mean_dicts(dicts: list[dict], sums: tuple[str, ...] = ()) -> dict:
    """Key-wise mean over dicts, skipping missing and NaN values (NaN when none is left); the
    keys in `sums` are summed instead."""
    out = {}
    for k in sorted({k for d in dicts for k in d}):
        values = [d[k] for d in dicts if k in d and d[k] is not None and not math.isnan(d[k])]
        out[k] = (float(np.sum(values)) if k in sums else float(np.mean(values))) if values else math.nan
    return out


def train_step(policy: nn.Module, reference: nn.Module | None, tokenizer, judge, optimizer, loss_and_grad: Callable,
               next_prompts: Callable[[], list[Prompt]], *, step: int, sampling: Sampling, loss_cfg,
               grad_accumulation_steps: int = 1, dropout: float = 0.0, world: World = SINGLE_PROCESS,
               sample_fn: Callable = sample_pairs, token_logps_fn: Callable = token_logps,
               reader: CompletionReader | None = None, samples_out: list | None = None, max_samples: int = 0,
               seed: int = 0, beta: float | None = None) -> dict:
    """Collect `grad_accumulation_steps` micro-batches, update once on them; this rank's metrics.

    `next_prompts()` returns this rank's share of the next global batch. `sample_fn` and
    `token_logps_fn` go to `collect`; the loss's scorer is the one `loss_and_grad` was built
    with (`make_loss_fn(loss_cfg, token_logps_fn)`). With a `samples_out` list, samples.jsonl
    rows of this rank's first `max_samples` pairs are appended to it. `seed` (the run's) and `step`
    seed the minibatch shuffle; `beta`: the KL weight of this step (the adaptive controller's), None
    for loss.beta."""
    step_start = time.perf_counter()
    keep = max_samples if samples_out is not None else 0
    collected = []
    for _ in range(grad_accumulation_steps):
        collected.append(collect(policy, reference, tokenizer, judge, next_prompts(), step=step, sampling=sampling,
                                 loss_cfg=loss_cfg, dropout=dropout, sample_fn=sample_fn, token_logps_fn=token_logps_fn,
                                 reader=reader, keep_samples=keep))
        keep -= len(collected[-1].samples)
    if samples_out is not None:
        samples_out.extend(row for c in collected for row in c.samples)
    judged = [c.judged for c in collected if c.judged is not None]
    for j in judged:
        j.beta = beta
    updated = update(policy, optimizer, loss_and_grad, judged, epochs=loss_cfg.ppo_epochs,
                     rollout_ratio=loss_cfg.ratio == "rollout", world=world, minibatches=loss_cfg.minibatches,
                     shuffle_seed=(seed, step))
    metrics = mean_dicts([c.metrics for c in collected] + updated.loss_metrics, sums=STEP_COUNTS)
    metrics["timing/update_seconds"] = updated.seconds
    metrics["timing/step_seconds"] = time.perf_counter() - step_start
    return metrics
