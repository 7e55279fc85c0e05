"""Held-out evaluation: the judge compares the policy's completion with the reference's.

Each held-out prompt is drawn `train.eval_samples_per_prompt` times (a policy completion and a
reference completion per draw, each pair judged), so eval/pairs counts every draw and the
interval narrows with it: one draw of 64 prompts gives about +-0.1 at 95%, four draws about
+-0.05. Draws of one prompt share the prompt, so they are not fully independent: the interval
over pairs is a lower bound on the prompt-to-prompt spread, and seeds (ppo-report's
across-seed interval) carry the training noise that no number of draws removes.

The judge pipeline handles answer order (`judge.order=both` by default judges each pair
both ways, so position bias cannot move the win rate). A tie (p = 0.5) counts as half a
win; a pair the judge could not decide is left out and counted.

Length: `eval/length_ratio` is the policy's mean completion length over the reference's (in
tokens), and `eval/win_rate_lc` the length-controlled win rate, the win rate the judge would
give at equal lengths (`ppo.metrics.length_controlled_win_rate`, AlpacaEval 2's model), with its
95% interval and `eval/length_coefficient`, how strongly the verdicts followed length.

A held-out judge (`eval_judge=NAME`, never trained against) judges the same pairs: its
`eval/NAME/win_rate` beside the training judge's `eval/win_rate` tells learning from gaming.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ppo.metrics import length_controlled_win_rate, wilson_interval
from ppo.train.completions import CompletionReader
from ppo.train.data import Prompt
from ppo.train.distributed import SINGLE_PROCESS, World
from ppo.judges.base import Pair
from ppo.train.models import reference_model
from ppo.train.rollout import sample
from ppo.train.samples import sample_rows

log = logging.getLogger(__name__)


def evaluation_enabled(judge, train_cfg, n_prompts: int) -> bool:
    """Whether this run evaluates against the reference (when off, said once).

    Off when a person judges and has not asked to judge evaluation pairs too: each evaluation
    would put every held-out pair to them, on top of the training pairs. A judge that replays a
    recorded run (`recorded_evaluation`: judge=replay) follows that run's setting, so replaying a
    human-judged run asks only for pairs its judgments.jsonl holds."""
    if not n_prompts:
        return True
    recorded = getattr(getattr(judge, "inner", judge), "recorded_evaluation", None)
    if recorded is not None:
        if not recorded:
            log.info("judge=replay: evaluation against the reference is off, as in the recorded run (%s holds no "
                     "evaluation pairs)", getattr(getattr(judge, "inner", judge), "path", "the recorded file"))
        return bool(recorded)
    if getattr(judge, "kind", None) != "human" or train_cfg.human_eval:
        return True
    log.info("judge=human: evaluation against the reference is off (it would ask you about %d more pairs per "
             "evaluation); set train.human_eval=true to judge them too", n_prompts)
    return False


def win_rate_interval(wins: np.ndarray) -> tuple[float, float]:
    """95% normal-approximation interval of the mean of per-pair scores in [0, 1].

    Kept as recorded in metrics.jsonl (`eval/win_rate_low/high`, the golden runs); what a
    person reads (progress lines, the final line, ppo-report, the W&B summary) is the Wilson
    interval from eval/win_rate and eval/pairs (`ppo.metrics.wilson_interval`), which never
    collapses to zero width."""
    n = len(wins)
    if n == 0:
        return (math.nan, math.nan)
    mean = float(wins.mean())
    half = 1.96 * float(wins.std(ddof=1 if n > 1 else 0)) / math.sqrt(n)
    return (max(0.0, mean - half), min(1.0, mean + half))


@dataclass(frozen=True)
class HeldOutJudge:
    """An evaluation-only judge (eval_judge=NAME): it judges the same pairs as the training judge,
    reading the completions its own way, and its win rate is logged as eval/NAME/win_rate."""

    name: str
    judge: object
    reader: CompletionReader


def evaluate(policy, reference, tokenizer, judge, prompts: list[Prompt], gen_cfg, step: int | None = None,
             world: World = SINGLE_PROCESS, reader: CompletionReader | None = None,
             samples_out: list | None = None, samples_per_prompt: int = 1,
             held_out: tuple[HeldOutJudge, ...] = ()) -> dict:
    """eval/win_rate of the policy against the reference on held-out prompts.

    With more than one process each rank evaluates its own share of `prompts` and the
    per-pair results are gathered, so every rank returns the same global metrics.
    `reader`: what the judge reads of a completion (default: the answer without its
    reasoning block). With a `samples_out` list, one samples.jsonl row per pair (every
    rank's, gathered) is appended to it (a: the policy, b: the reference).
    `samples_per_prompt`: draws per prompt; every draw's pair counts in eval/pairs.
    `held_out`: judges that judge the same pairs for evaluation only (`held_out_metrics`)."""
    local = _judge_share(policy, reference, tokenizer, judge, world.split_evenly(prompts), gen_cfg, step,
                         reader, samples_per_prompt, held_out) if prompts else {}
    parts = world.gather_objects(local)
    if not any(parts):
        return {}
    merged = {k: [x for part in parts if part for x in part[k]] for k in next(part for part in parts if part)}
    if samples_out is not None:
        samples_out.extend(merged["samples"])
    wins, valid = win_scores(merged["p"])
    low, high = win_rate_interval(wins)
    ours_length = np.asarray(merged["ours_length"], dtype=np.float64)
    theirs_length = np.asarray(merged["theirs_length"], dtype=np.float64)
    controlled = length_controlled_win_rate(wins, ours_length[valid], theirs_length[valid]) or {}
    return {
        "eval/win_rate": float(wins.mean()) if len(wins) else math.nan,
        "eval/win_rate_low": low,
        "eval/win_rate_high": high,
        "eval/win_rate_lc": controlled.get("win_rate_lc", math.nan),
        "eval/win_rate_lc_low": controlled.get("win_rate_lc_low", math.nan),
        "eval/win_rate_lc_high": controlled.get("win_rate_lc_high", math.nan),
        "eval/length_coefficient": controlled.get("length_coefficient", math.nan),
        "eval/length_ratio": float(ours_length.mean() / theirs_length.mean()) if theirs_length.mean() else math.nan,
        "eval/pairs": int(valid.sum()),
        "eval/eos_rate": float(np.mean(merged["ours_finished"])),
        "eval/ref_eos_rate": float(np.mean(merged["theirs_finished"])),
        "eval/mean_length": float(np.mean(merged["ours_length"])),
        "eval/ref_mean_length": float(np.mean(merged["theirs_length"])),
        **{k: v for h in held_out for k, v in held_out_metrics(h.name, merged[f"p/{h.name}"], ours_length,
                                                                  theirs_length).items()},
    }


def win_scores(p: list) -> tuple[np.ndarray, np.ndarray]:
    """(the decided pairs' scores, which pairs were decided) from per-pair P(policy better), None
    or NaN where undecided: a win 1, a tie (p = 0.5) half a win, a loss 0."""
    p = np.asarray(p, dtype=np.float64)  # None reads as NaN
    valid = ~np.isnan(p)
    return np.where(p[valid] > 0.5, 1.0, np.where(p[valid] < 0.5, 0.0, 0.5)), valid


def held_out_metrics(name: str, p: list, ours_length: np.ndarray, theirs_length: np.ndarray) -> dict:
    """eval/NAME/win_rate of a held-out judge with its 95% Wilson interval, its pairs, and its
    length-controlled win rate. The interval is Wilson's (what a person reads everywhere), not the
    normal approximation that eval/win_rate_low/high keep for the golden runs."""
    wins, valid = win_scores(p)
    rate = float(wins.mean()) if len(wins) else math.nan
    low, high = wilson_interval(rate, len(wins)) or (math.nan, math.nan)
    controlled = length_controlled_win_rate(wins, ours_length[valid], theirs_length[valid]) or {}
    return {f"eval/{name}/win_rate": rate, f"eval/{name}/win_rate_low": low, f"eval/{name}/win_rate_high": high,
            f"eval/{name}/pairs": int(valid.sum()),
            f"eval/{name}/win_rate_lc": controlled.get("win_rate_lc", math.nan),
            f"eval/{name}/win_rate_lc_low": controlled.get("win_rate_lc_low", math.nan),
            f"eval/{name}/win_rate_lc_high": controlled.get("win_rate_lc_high", math.nan)}


def _judge_share(policy, reference, tokenizer, judge, prompts: list[Prompt], gen_cfg, step: int | None,
                 reader: CompletionReader | None = None, samples_per_prompt: int = 1,
                 held_out: tuple[HeldOutJudge, ...] = ()) -> dict:
    """Sample policy and reference on `prompts` and judge them, `samples_per_prompt` times:
    per-pair lists (JSON-ready, so ranks can gather them), draw after draw.

    One draw is one batch of the share's prompts, as a single-draw evaluation always was: the
    memory of a draw does not grow with the number of draws, and one draw consumes the random
    stream exactly as before (a run with one draw computes what it always did)."""
    if not prompts:
        return {}
    kwargs = dict(
        eos_token_ids=tokenizer.eos_token_ids,
        max_tokens=gen_cfg.max_completion_length,
        temperature=gen_cfg.temperature,
        top_p=gen_cfg.top_p,
    )
    ids = [list(p.tokens) for p in prompts]
    policy.eval()
    reader = reader or CompletionReader(tokenizer)
    out: dict = {k: [] for k in ("p", "ours_finished", "theirs_finished", "ours_length", "theirs_length", "samples",
                                 *(f"p/{h.name}" for h in held_out))}
    for _ in range(samples_per_prompt):
        ours = sample(policy, ids, **kwargs)
        with reference_model(policy, reference) as ref:
            theirs = sample(ref, ids, **kwargs)
        ours_text, theirs_text = reader.texts(ids, ours.token_ids), reader.texts(ids, theirs.token_ids)

        pairs = [Pair(p.text, a, b, fa, fb, p.id) for p, a, b, fa, fb in zip(prompts, ours_text, theirs_text, ours.finished, theirs.finished)]
        p = np.asarray(judge(pairs, step=step, phase="eval").p, dtype=np.float64)
        out["p"] += [None if np.isnan(x) else float(x) for x in p]
        for h in held_out:  # the same pairs, after the training judge (its random draws come first)
            held_pairs = [Pair(p_.text, a, b, fa, fb, p_.id) for p_, a, b, fa, fb in zip(
                prompts, h.reader.texts(ids, ours.token_ids), h.reader.texts(ids, theirs.token_ids), ours.finished,
                theirs.finished)]
            out[f"p/{h.name}"] += [None if np.isnan(x) else float(x)
                                   for x in np.asarray(h.judge(held_pairs, step=step, phase="eval").p, dtype=np.float64)]
        out["ours_finished"] += [bool(f) for f in ours.finished]
        out["theirs_finished"] += [bool(f) for f in theirs.finished]
        out["ours_length"] += [len(t) for t in ours.token_ids]
        out["theirs_length"] += [len(t) for t in theirs.token_ids]
        out["samples"] += sample_rows(step, "eval", tokenizer, prompts, ours, theirs, ours_text, theirs_text, p)
    return out
