"""The seed's health rule for clip_fraction, used by the trainer (warnings) and the report (verdicts).

clip_fraction about 0 = the policy is not moving; above 30% = it moves too far per step.
"Not moving" also needs every ratio to stay at 1 (within IDLE_RATIO_TOLERANCE): with
per-token mean log-probs a moving policy can keep every ratio inside the clip range, so
clip_fraction alone would call it idle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Above this share of ratios outside 1 +- epsilon the policy moves too far per step.
CLIP_FRACTION_HIGH = 0.3
# "About 0": below one clipped ratio in a thousand.
CLIP_FRACTION_IDLE = 1e-3
# Ratios within this of 1 count as "not moving".
IDLE_RATIO_TOLERANCE = 1e-3
# The trainer warns after this many idle steps in a row.
IDLE_STEPS = 20


def is_idle(clip_fraction: float, ratio_spread: float | None) -> bool:
    """`ratio_spread`: max |ratio - 1| (None when the run did not log ratio/min and ratio/max)."""
    return clip_fraction < CLIP_FRACTION_IDLE and (ratio_spread is None or ratio_spread < IDLE_RATIO_TOLERANCE)


def verdict(clip_fraction: float | None, ratio_spread: float | None = None) -> str:
    """The report's word for a run's clip_fraction (averaged over its last steps)."""
    if clip_fraction is None:
        return "n/a"
    if clip_fraction < CLIP_FRACTION_IDLE:
        return "not moving" if is_idle(clip_fraction, ratio_spread) else "healthy (small steps)"
    if clip_fraction > CLIP_FRACTION_HIGH:
        return "moving too far"
    return "healthy"


@dataclass
class HealthMonitor:
    """Warns once per run when clip_fraction says the policy is idle or moving too far.

    Its fields are saved in checkpoints, so a resumed run neither repeats a warning nor
    forgets an idle streak."""

    idle_steps: int = 0
    warned: list = field(default_factory=list)

    def check(self, step: int, metrics: dict) -> None:
        clip_fraction = metrics["clip_fraction"]
        spread = max(abs(metrics["ratio/max"] - 1.0), abs(metrics["ratio/min"] - 1.0))
        self.idle_steps = self.idle_steps + 1 if is_idle(clip_fraction, spread) else 0
        if self.idle_steps == IDLE_STEPS and "idle" not in self.warned:
            log.warning("step %d: clip_fraction has been 0 for %d steps and every ratio stays at 1: the policy is not "
                        "moving (raise train.learning_rate or check the judge's advantages)", step, self.idle_steps)
            self.warned.append("idle")
        if clip_fraction > CLIP_FRACTION_HIGH and "high" not in self.warned:
            log.warning("step %d: clip_fraction %.2f > %.0f%%: the policy moves too far per step "
                        "(lower train.learning_rate or raise loss.epsilon)", step, clip_fraction, 100 * CLIP_FRACTION_HIGH)
            self.warned.append("high")
