"""Pairwise judges: given (prompt, completion A, completion B), the probability that A is better."""

from ppo.judges.base import Pair, Verdicts

__all__ = ["Pair", "Verdicts"]
