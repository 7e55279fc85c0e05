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

Layers the reference and the policy share are run once per batch. With LoRA or DoRA on the
last `finetune.num_layers` layers (16 of SmolLM2's 30 by default) and the reference being the
policy's own base, the layers below the first adapter compute the same hidden states for both
models. `share_frozen_layers` attaches those hidden states (after the first k layers) to the
scoring batch; the reference's scoring evaluates them, and the policy's forwards in the update
(and its sampling-time scoring) start from them at layer k. The update's backward never went
below the first adapter (nothing trainable lies there), so only its forward shrinks: by 14 of
30 layers at SmolLM2 (measured: benchmarks/bench_scoring.py). The values are bit for bit those
of the full forward (the same operations on the same inputs), checked once per model class,
configuration and k against the model's own body.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    # The hidden states (N, T-1, hidden) after the first `shared_layers` layers of the model body in
    # `shared_layers_of` (the layer objects themselves), attached by `share_frozen_layers`: a forward of
    # a model whose body holds those very layers first starts from them; any other model runs in full.
    shared_hidden: mx.array | None = None
    shared_layers_of: tuple = ()

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
    hidden = _body_hidden(body, batch)  # (N, T-1, H)
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


def _body_hidden(body, batch: ScoringBatch) -> mx.array:
    """body(inputs), started from `batch.shared_hidden` when the body's first layers are the ones
    it was computed by (`share_frozen_layers`)."""
    shared = batch.shared_layers_of
    layers = getattr(body, "layers", None)
    if batch.shared_hidden is None or not shared or not isinstance(layers, list) or len(layers) <= len(shared) \
            or any(a is not b for a, b in zip(layers, shared)):
        return body(batch.input_ids[:, :-1])
    return body.norm(_run_layers(batch.shared_hidden, layers[len(shared):]))


def _run_layers(hidden: mx.array, layers) -> mx.array:
    """mlx-lm's decoder loop without a cache: each layer on the previous one's output, causal mask."""
    from mlx_lm.models.base import create_attention_mask

    mask = create_attention_mask(hidden, None)
    for layer in layers:
        hidden = layer(hidden, mask, None)
    return hidden


# Per model class, args and k: whether norm(layers[k:](layers[:k](embed(x)))) is the body's forward, bit for bit.
_LAYER_SPLITS_CHECKED: dict[tuple[type, str, int], bool] = {}


def frozen_leading_layers(policy, reference) -> int:
    """How many leading layers of the policy's body the reference computes alike: the layers
    below the first one holding an adapter or a trainable parameter, when the reference is the
    policy's own base (`reference` None, or its starting adapters) and the embedding is frozen.
    0 otherwise (a separately loaded reference, full fine-tuning, or a model the layer split does
    not reproduce bit for bit)."""
    from mlx.utils import tree_flatten

    from ppo.train.models import StartingAdapters, _adapter_modules

    if (reference is not None and not isinstance(reference, StartingAdapters)) or windowed_attention(policy):
        return 0
    split = _body_and_head(policy)
    if split is None:
        return 0
    body, _ = split
    layers, embed, norm = (getattr(body, name, None) for name in ("layers", "embed_tokens", "norm"))
    if not isinstance(layers, list) or not isinstance(embed, nn.Module) or not isinstance(norm, nn.Module):
        return 0
    if tree_flatten(embed.trainable_parameters()) or _adapter_modules(embed):  # (named_modules holds the module itself)
        return 0
    k = 0
    while k < len(layers) - 1 and not tree_flatten(layers[k].trainable_parameters()) and not _adapter_modules(layers[k]):
        k += 1
    if k == 0:
        return 0
    key = (type(policy), repr(getattr(policy, "args", None)), k)
    if key not in _LAYER_SPLITS_CHECKED:
        training = policy.training
        policy.eval()
        try:
            probe = mx.array([[0, 1, 2, 1]], dtype=mx.int32)
            split_forward = norm(_run_layers(_run_layers(embed(probe), layers[:k]), layers[k:]))
            _LAYER_SPLITS_CHECKED[key] = bool(mx.array_equal(split_forward, body(probe)).item())
        except Exception:  # noqa: BLE001 - a body the split does not fit runs whole
            _LAYER_SPLITS_CHECKED[key] = False
        finally:
            policy.train(training)
    return k if _LAYER_SPLITS_CHECKED[key] else 0


def windowed_attention(model) -> bool:
    """Whether some layer of `model` attends over a sliding window (Gemma 2/3, Llama with
    `layer_types`, ...): its mask is then not the plain causal one `_run_layers` builds, and the
    short probe of `frozen_leading_layers` could not tell, since a window longer than the probe
    masks nothing there."""
    args = getattr(model, "args", None)
    if getattr(args, "sliding_window", None) or getattr(args, "sliding_window_pattern", None):
        return True
    return any(kind != "full_attention" for kind in (getattr(args, "layer_types", None) or ()))


def share_frozen_layers(batch: ScoringBatch, policy, reference) -> ScoringBatch:
    """`batch` with the hidden states of the policy's frozen leading layers attached
    (`frozen_leading_layers`; lazily: the first forward that uses them computes them), or
    `batch` itself when there are none."""
    k = frozen_leading_layers(policy, reference)
    if k == 0:
        return batch
    body, _ = _body_and_head(policy)
    hidden = _run_layers(body.embed_tokens(batch.input_ids[:, :-1]), body.layers[:k])
    return replace(batch, shared_hidden=hidden, shared_layers_of=tuple(body.layers[:k]))


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
