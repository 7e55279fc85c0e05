"""Names of the metrics that more than one module reads (the loop writes them; evaluation,
the report, reproduction and the tests read them). TRL's names where one exists."""

from __future__ import annotations

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
