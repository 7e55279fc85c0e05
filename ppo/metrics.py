"""Names of the metrics that more than one module reads (the loop writes them; evaluation,
the report, reproduction and the tests read them). TRL's names where one exists."""

from __future__ import annotations

import math

# Readings of the machine, not of the run: identical runs differ in them, so
# reproduction and determinism checks leave them out.
MEASUREMENT_PREFIXES = ("timing/", "tokens_per_second", "memory/", "judge/seconds")

# Counts of one training step: summed over its micro-batches (train.grad_accumulation_steps) and
# over the ranks, where every other metric is a mean, so that judge/pairs is the pairs the judge
# decided in the whole step, as its name says. Its rates need no weighting: every micro-batch of
# every rank judges the same number of pairs (train.batch_size / processes prompts, k(k-1)/2 each).
STEP_COUNTS = ("judge/pairs", "judge/loss_pairs", "judge/invalid_attempts", "judge/replay_missing")

LOSS = "loss"
KL = "kl"
CLIP_FRACTION = "clip_fraction"
EVAL_WIN_RATE = "eval/win_rate"
# One interval method per key name. metrics.jsonl and summary.json keep eval/win_rate_low/high as
# the run wrote them, the 95% normal approximation of the per-pair scores (the golden runs compare
# them digit for digit; it collapses to zero width at 0 or 1). What a person reads is the 95%
# Wilson interval, computed from eval/win_rate and eval/pairs (`wilson_interval`): the console,
# ppo-report and ppo-compare print it as words, and W&B's summary holds it as
# eval/win_rate_wilson_low/high, so that W&B's eval/win_rate_low/high stay the logged normal
# approximation. A held-out judge's eval/NAME/win_rate_low/high are Wilson's (they never had another).
EVAL_WIN_RATE_LOW = "eval/win_rate_low"
EVAL_WIN_RATE_HIGH = "eval/win_rate_high"
EVAL_WIN_RATE_WILSON_LOW = "eval/win_rate_wilson_low"
EVAL_WIN_RATE_WILSON_HIGH = "eval/win_rate_wilson_high"
EVAL_PAIRS = "eval/pairs"
EVAL_EOS_RATE = "eval/eos_rate"
EVAL_REF_EOS_RATE = "eval/ref_eos_rate"


def kl_unit(logprob_reduction: str | None) -> str:
    """What the run's `kl` is measured over: "per token" when log-probs are averaged over the
    completion's tokens (loss.logprob_reduction=mean: ppo_form=textbook), "per sequence" when
    they are summed (sum: the seed's form), whatever the estimator (k1 or k3) sums or averages.
    "" when unknown (a run folder without its config)."""
    return {"mean": "per token", "sum": "per sequence"}.get(str(logprob_reduction), "")


def held_out_names(metrics: dict) -> list[str]:
    """The held-out evaluation judges whose win rate `metrics` holds (eval/NAME/win_rate), sorted."""
    return sorted(k.split("/")[1] for k in metrics if k.count("/") == 2 and k.startswith("eval/") and k.endswith("/win_rate"))


def comparable(row: dict) -> dict:
    """A metrics.jsonl row without the keys that measure the machine."""
    return {k: v for k, v in row.items() if not k.startswith(MEASUREMENT_PREFIXES)}


def wilson_interval(rate: float | None, pairs: float | None, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a win rate over `pairs` judged pairs (a tie scores 0.5).

    Unlike the normal approximation it never collapses to zero width (4 wins in 4 pairs:
    0.51-1.00, not 1.00-1.00) and never leaves [0, 1]. None when there is nothing to bound."""
    if rate is None or pairs is None or not math.isfinite(rate) or not pairs or pairs < 1:
        return None
    n = float(pairs)
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(0.0, rate * (1 - rate)) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


# Student's t 0.975 quantiles for 1..30 degrees of freedom (two-sided 95%); beyond 30 the
# Cornish-Fisher expansion around 1.96 is within 1e-4. A table, so the report needs no scipy.
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
          2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


def t_half_width(values: list[float]) -> float | None:
    """Half-width of the 95% t-interval of the mean of `values` (independent seeds): t * s / sqrt(n)
    with the sample standard deviation s. None below two values: one seed has no spread to measure."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return t_quantile_975(n - 1) * s / math.sqrt(n)


# The L2 weight of the length-controlled fit: a Gaussian prior N(0, 1/LC_PRIOR) on its two
# coefficients, standard deviation 3.2 on the logit scale (weakly informative, about the 2.5 scale
# Gelman et al. 2008 recommend for logistic coefficients). It keeps the fit finite when the
# verdicts are separable (a judge that reads nothing but length, or a policy that wins every
# pair); elsewhere it moves the fit by far less than its standard error (the demo's final
# evaluation: 0.782 with it, 0.783 with a weight of 0.01). A weight of 1 was tried first: on a
# length-only judge's run it held the length coefficient at 3.7 and left 0.69 where 0.54 is
# the fit's answer at 0.1 (docs/concepts/evaluation.md). AlpacaEval 2 regularises too (cross-validated).
LC_PRIOR = 0.1


def length_controlled_win_rate(scores, policy_lengths, reference_lengths, z: float = 1.96) -> dict | None:
    """The win rate the judge would give if the policy's answers were as long as the reference's.

    AlpacaEval 2's length-controlled win rate (Dubois et al. 2024, "Length-Controlled
    AlpacaEval: A Simple Way to Debias Automatic Evaluators", arXiv:2404.04475), without its
    per-instruction difficulty term (one policy, one baseline, few prompts). A logistic model of
    the judge's preference for the policy's answer,

        logit P(policy wins pair i) = theta + phi * tanh(d_i / sd(d)),   d_i = len_policy_i - len_ref_i

    (lengths in tokens, sd the population standard deviation of d over the pairs), is fitted by
    maximum likelihood with the verdict scores as soft labels (win 1, tie 0.5, loss 0) and an L2
    weight `LC_PRIOR` on (theta, phi), by Newton's method. The length-controlled win rate is the
    model's prediction at zero length difference, sigmoid(theta); its 95% interval is
    sigmoid(theta +- z * se(theta)) with se from the inverse Hessian of the penalised fit. `phi`
    is how strongly the judge follows length (0: not at all).

    When every pair has the same length difference the length term cannot be fitted: phi is 0
    and the result is the (lightly shrunk) raw win rate. None without pairs.
    """
    import numpy as np

    y = np.asarray(scores, dtype=np.float64)
    d = np.asarray(policy_lengths, dtype=np.float64) - np.asarray(reference_lengths, dtype=np.float64)
    if y.size == 0 or y.shape != d.shape:
        return None
    spread = float(d.std())
    feature = np.tanh(d / spread) if spread > 0 else np.zeros_like(d)
    x = np.stack([np.ones_like(d), feature], axis=1)
    w = np.zeros(2)
    prior = LC_PRIOR * np.eye(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + prior @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + prior
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if float(np.abs(step).max()) < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(x @ w)))
    hessian = (x * (p * (1 - p))[:, None]).T @ x + prior
    se = math.sqrt(float(np.linalg.inv(hessian)[0, 0]))
    theta, phi = float(w[0]), float(w[1])

    def sigmoid(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    return {"win_rate_lc": sigmoid(theta), "win_rate_lc_low": sigmoid(theta - z * se),
            "win_rate_lc_high": sigmoid(theta + z * se), "length_coefficient": phi}
