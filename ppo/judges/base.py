"""The judge interface shared by every judge kind.

A judge is any callable ``judge(pairs: list[Pair]) -> Verdicts``, built from
``conf/judge/*.yaml`` by Hydra's ``_target_``. The trainer never asks which kind it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Re-exported: a judge of your own raises these (see ppo/errors.py).
from ppo.errors import JudgeQuit, JudgeUnavailable  # noqa: F401


@dataclass(frozen=True)
class Pair:
    """One comparison: a prompt and two completions, with whether each ended by itself."""

    prompt: str
    a: str
    b: str
    a_finished: bool = True
    b_finished: bool = True
    prompt_id: str = ""


@dataclass
class Verdicts:
    """Per pair: p = P(A is better) in [0, 1], NaN where the judge could not decide.

    An invalid verdict is excluded from the loss; it is never counted as a win for
    either side.
    """

    p: np.ndarray
    diagnostics: dict = field(default_factory=dict)

    @property
    def valid(self) -> np.ndarray:
        return ~np.isnan(self.p)


def advantages_from_verdicts(p: np.ndarray, tie_threshold: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Turn P(A better) into (a_is_chosen, confidence a, valid) per pair.

    The chosen completion's advantage is the judge's confidence a = |2p - 1| in [0, 1]
    (1 for a hard verdict); the rejected one gets -a. A pair whose confidence is at or
    below ``tie_threshold`` is a tie and an invalid verdict (NaN) is dropped: both carry
    zero advantage.
    """
    valid = ~np.isnan(p)
    p_filled = np.where(valid, p, 0.5)
    a_is_chosen = p_filled >= 0.5
    confidence = np.abs(2.0 * p_filled - 1.0)
    confidence = np.where(confidence > tie_threshold, confidence, 0.0)
    return a_is_chosen, confidence.astype(np.float32), valid


def text_hash(text: str) -> str:
    """sha256 of a text (UTF-8): how prompts and completions are named in the record."""
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()
