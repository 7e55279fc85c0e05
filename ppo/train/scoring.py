"""Per-token and per-sequence log-probabilities of sampled completions.

Sequences are right-padded (prompt, completion, padding): in a causal model padding on
the right cannot influence any earlier position, so one padded forward is exact without
an attention mask. Only completion tokens are scored (the EOS that ended a completion
included); prompt and padding are masked out.

The LM head and the log-softmax run only where a completion token is predicted: the
transformer body runs over every position, then the hidden states of the completion
positions are gathered into a (rows, longest completion) block, and only that block is
multiplied by the head and normalised over the vocabulary. At the ladder's rungs
(benchmarks/bench_ladder.py) that skips the prompt positions and the padding, about a
fifth of the head's FLOPs and of the full-vocabulary passes, whose `exp` is the MLX CPU
backend's slowest operation (benchmarks/README.md). It applies to models whose forward is
`head(model.model(inputs))` (most mlx-lm models), checked once per model class and
configuration against the model's own forward, bit for bit; any other model is scored
through its own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np


@dataclass
class ScoringBatch:
    """Token ids of 2B sequences, right-padded, and which positions are completion tokens."""

    input_ids: mx.array  # (N, T) int32
    completion_mask: mx.array  # (N, T) float32, 1 on completion tokens (EOS included)
    prompt_lengths: mx.array  # (N,) int32: row i's completion starts at position prompt_lengths[i]
    longest_completion: int

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
    return ScoringBatch(mx.array(ids), mx.array(mask), mx.array([len(p) for p in prompts], dtype=mx.int32),
                        max(len(c) for c in completions))


def token_logps(model, batch: ScoringBatch) -> mx.array:
    """log pi(x_t | x_<t) of every token, 0 where the mask is 0. Shape (N, T).

    The target log-prob is the gathered logit minus the logsumexp of its row, which
    avoids materialising a full log-softmax over the vocabulary.
    """
    split = _body_and_head(model)
    if split is None:
        return _token_logps_full(model, batch)
    body, head = split
    hidden = body(batch.input_ids[:, :-1])  # (N, T-1, H)
    # Completion token t of row i is predicted at position t-1: gather the block
    # [prompt_length - 1, prompt_length - 1 + longest completion) of every row (a row's
    # shorter completion reads into its padding, clipped at the last position; masked below).
    offsets = mx.arange(batch.longest_completion, dtype=mx.int32)[None, :]
    positions = mx.minimum(batch.prompt_lengths[:, None] - 1 + offsets, hidden.shape[1] - 1)  # (N, C)
    logits = head(mx.take_along_axis(hidden, positions[..., None], axis=1)).astype(mx.float32)  # (N, C, V)
    targets = mx.take_along_axis(batch.input_ids, positions + 1, axis=1)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    block = (picked - mx.logsumexp(logits, axis=-1)) * mx.take_along_axis(batch.completion_mask, positions + 1, axis=1)
    # Back to the (N, T) frame: token t of row i sits at block column t - prompt_length.
    columns = mx.arange(batch.input_ids.shape[1], dtype=mx.int32)[None, :] - batch.prompt_lengths[:, None]
    columns = mx.clip(columns, 0, batch.longest_completion - 1)
    return mx.take_along_axis(block, columns, axis=1) * batch.completion_mask


def _token_logps_full(model, batch: ScoringBatch) -> mx.array:
    """token_logps through the model's own forward: the head at every position."""
    logits = model(batch.input_ids[:, :-1]).astype(mx.float32)
    targets = batch.input_ids[:, 1:]
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    logps = picked - mx.logsumexp(logits, axis=-1)
    mask = batch.completion_mask[:, 1:]
    # Position 0 is always a prompt token, so dropping it loses nothing.
    return mx.pad(logps * mask, [(0, 0), (1, 0)])


# Per model class and args: whether its forward is head(model.model(inputs)), checked bit for bit.
_SPLITS_CHECKED: dict[tuple[type, str], bool] = {}


def _body_and_head(model):
    """(body, head) of an mlx-lm causal LM whose forward is `head(model.model(inputs))`, or
    None. The first model of each class and configuration (its `args`) is checked once, in
    eval mode (no dropout), against its own forward on a short input: a model that scales,
    caps or otherwise changes its logits after the head is scored through its own forward."""
    body = getattr(model, "model", None)
    if not isinstance(body, nn.Module):
        return None
    lm_head = getattr(model, "lm_head", None)
    tied = getattr(getattr(model, "args", None), "tie_word_embeddings", lm_head is None)
    if tied and hasattr(getattr(body, "embed_tokens", None), "as_linear"):
        head = body.embed_tokens.as_linear
    elif not tied and isinstance(lm_head, nn.Module):
        head = lm_head
    else:
        return None
    key = (type(model), repr(getattr(model, "args", None)))
    if key not in _SPLITS_CHECKED:
        training = model.training
        model.eval()
        try:
            probe = mx.array([[0, 1, 2, 1]], dtype=mx.int32)
            _SPLITS_CHECKED[key] = bool(mx.array_equal(head(body(probe)), model(probe)).item())
        except Exception:  # noqa: BLE001 - any model the split does not fit is scored whole
            _SPLITS_CHECKED[key] = False
        finally:
            model.train(training)
    return (body, head) if _SPLITS_CHECKED[key] else None


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
