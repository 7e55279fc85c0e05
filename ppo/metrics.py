"""Names of the metrics that more than one module reads (the loop writes them; evaluation,
the report, reproduction and the tests read them). TRL's names where one exists."""

from __future__ import annotations

import math

# Readings of the machine, not of the run: identical runs differ in them, so
# reproduction and determinism checks leave them out.
MEASUREMENT_PREFIXES = ("timing/", "tokens_per_second", "memory/", "judge/seconds")

LOSS = "loss"
KL = "kl"
CLIP_FRACTION = "clip_fraction"
EVAL_WIN_RATE = "eval/win_rate"
EVAL_WIN_RATE_LOW = "eval/win_rate_low"
EVAL_WIN_RATE_HIGH = "eval/win_rate_high"
EVAL_PAIRS = "eval/pairs"
EVAL_EOS_RATE = "eval/eos_rate"
EVAL_REF_EOS_RATE = "eval/ref_eos_rate"


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
