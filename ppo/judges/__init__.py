"""Pairwise judges: given (prompt, completion A, completion B), the probability that A is better.

Kinds (``conf/judge/``): rule, length, llm, http, human, replay. The trainer builds one
with :func:`build_judge`, which wraps the configured judge in :class:`JudgePipeline`
(answer order, cache, ties, metrics, judgments.jsonl).
"""

from ppo.judges.base import JudgeQuit, JudgeUnavailable, Pair, Verdicts, advantages_from_verdicts
from ppo.judges.factory import build_judge
from ppo.judges.pipeline import JudgePipeline

__all__ = ["Pair", "Verdicts", "JudgeQuit", "JudgeUnavailable", "JudgePipeline", "advantages_from_verdicts", "build_judge"]
