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
