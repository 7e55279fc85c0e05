"""Per-token and per-sequence log-probabilities of sampled completions.

Sequences are right-padded (prompt, completion, padding): in a causal model padding on
the right cannot influence any earlier position, so one padded forward is exact without
an attention mask. Only completion tokens are scored (the EOS that ended a completion
included); prompt and padding are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import numpy as np


@dataclass
class ScoringBatch:
    """Token ids of 2B sequences, right-padded, and which positions are completion tokens."""

    input_ids: mx.array  # (N, T) int32
    completion_mask: mx.array  # (N, T) float32, 1 on completion tokens (EOS included)

    @property
    def completion_lengths(self) -> mx.array:
        return self.completion_mask.sum(axis=1)


def build_scoring_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> ScoringBatch:
    """Concatenate each prompt with its sampled completion ids (never re-tokenized text)."""
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    width = max(lengths)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(prompts), width), dtype=np.float32)
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        ids[row, : len(prompt)] = prompt
        ids[row, len(prompt) : len(prompt) + len(completion)] = completion
        mask[row, len(prompt) : len(prompt) + len(completion)] = 1.0
    return ScoringBatch(mx.array(ids), mx.array(mask))


def token_logps(model, batch: ScoringBatch) -> mx.array:
    """log pi(x_t | x_<t) of every token, 0 where the mask is 0. Shape (N, T).

    The target log-prob is the gathered logit minus the logsumexp of its row, which
    avoids materialising a full log-softmax over the vocabulary.
    """
    logits = model(batch.input_ids[:, :-1]).astype(mx.float32)
    targets = batch.input_ids[:, 1:]
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    logps = picked - mx.logsumexp(logits, axis=-1)
    mask = batch.completion_mask[:, 1:]
    # Position 0 is always a prompt token, so dropping it loses nothing.
    return mx.pad(logps * mask, [(0, 0), (1, 0)])


def reduce_logps(per_token: mx.array, mask: mx.array, reduction: str = "sum") -> mx.array:
    """Per-sequence log-prob: the sum over completion tokens (the seed), or their mean."""
    total = (per_token * mask).sum(axis=1)
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mx.maximum(mask.sum(axis=1), 1.0)
    raise ValueError(f"unknown log-prob reduction {reduction!r}; choose sum or mean")


def sequence_logps(model, batch: ScoringBatch, reduction: str = "sum") -> mx.array:
    """Per-sequence log-probs of the completion tokens only. Shape (N,)."""
    return reduce_logps(token_logps(model, batch), batch.completion_mask, reduction)
