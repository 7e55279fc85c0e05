"""Scoring and the update's loss-and-gradient under `mx.compile` (train.compile_scoring,
train.compile_update).

`mx.compile` traces a function once per input signature (shapes and dtypes) and replays the
traced graph with elementwise chains fused and without rebuilding it in Python. On this CPU
the Python forward of a 30-layer model and the dispatch of its many small operations weigh as
much as the arithmetic (benchmarks/README.md, "Compiled scoring, update and decode").

- Recompiles are bounded by padding every batch's sequence length and its completion block
  to multiples of `COMPILE_BUCKET` on the right: right padding never influences an earlier
  position of a causal model and the padded positions are masked out, so the values are
  those of the unpadded batch up to float rounding (the sums run over more, zero, terms).
  Each distinct (graph, shapes) pair is one compile and is counted (`compiles`).
- The model's arrays are captured inputs, read afresh at every call, so updated weights are
  seen. The model's structure is not: mlx-lm's LoRA layers are swapped for their base layers
  while the reference scores (`ppo.train.models.adapters_disabled`), so each graph is keyed
  by the model's parameter names and its train/eval mode, and traced once per structure.
- The loss-and-gradient is `nn.value_and_grad` of the loss compiled as mlx-lm's tuner and
  MLX's training examples compile a step: the model's state (which value_and_grad writes its
  traced parameters into) and the random state (LoRA dropout) are inputs and outputs.
- Scalars that vary between steps (the adaptive KL's beta) are passed as arrays: a Python
  float would be frozen into the graph.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ppo.train import scoring
from ppo.train.scoring import ScoringBatch, token_logps

# Sequence lengths and completion blocks are padded to multiples of this: at most
# max_seq_length / 32 shapes per row count. 32 wastes at most 31 positions a row, which at the
# ladder's 64-token completions costs less than one recompile (measured in bench_compile.py).
COMPILE_BUCKET = 32


def bucketed(length: int, bucket: int = COMPILE_BUCKET) -> int:
    return -(-length // bucket) * bucket


def _pad_columns(x: mx.array | None, width: int) -> mx.array | None:
    if x is None or x.shape[1] == width:
        return x
    return mx.pad(x, [(0, 0), (0, width - x.shape[1])])


def pad_scoring_batch(batch: ScoringBatch, bucket: int = COMPILE_BUCKET) -> ScoringBatch:
    """The batch right-padded to bucketed width and completion block (padding id 0, mask 0)."""
    width = bucketed(batch.input_ids.shape[1], bucket)
    return ScoringBatch(_pad_columns(batch.input_ids, width), _pad_columns(batch.completion_mask, width),
                        batch.prompt_lengths, bucketed(batch.longest_completion, bucket))


def model_structure(model: nn.Module) -> tuple:
    """What a traced graph of `model` depends on besides its arrays' values: its parameter
    names (adapters on or off) and shapes, and whether it is in training mode (dropout)."""
    return (model.training, tuple((k, v.shape, v.dtype) for k, v in tree_flatten(model.parameters())))


class _Graphs:
    """Compiled graphs keyed by what they were traced for; `compiles` counts the traces (each
    (graph, shape) once), so a benchmark or test can see that recompiles stay bounded."""

    def __init__(self, bucket: int = COMPILE_BUCKET):
        self.bucket = bucket
        self._graphs: dict = {}
        self._signatures: set = set()

    @property
    def compiles(self) -> int:
        return len(self._signatures)


class CompiledScorer(_Graphs):
    """`ppo.train.scoring.token_logps` under `mx.compile`, a drop-in `token_logps_fn`: one
    graph per model structure, completion block and input shape."""

    def __call__(self, model: nn.Module, batch: ScoringBatch) -> mx.array:
        # The body/head split is checked eagerly (it reads a value back), once per model class.
        scoring._body_and_head(model)
        padded = pad_scoring_batch(batch, self.bucket)
        key = (id(model), model_structure(model), padded.longest_completion)
        graph = self._graphs.get(key)
        if graph is None:
            width = padded.longest_completion

            def score(input_ids, mask, prompt_lengths, model=model, width=width):
                return token_logps(model, ScoringBatch(input_ids, mask, prompt_lengths, width))

            graph = self._graphs[key] = mx.compile(score, inputs=[model.state])
        self._signatures.add((key, padded.input_ids.shape))
        out = graph(padded.input_ids, padded.completion_mask, padded.prompt_lengths)
        return out[:, : batch.input_ids.shape[1]]


# The JudgedBatch fields of shape (rows, length): padded with the scoring batch.
_PER_TOKEN = ("ref_token_logps", "old_token_logps")


class CompiledLossAndGrad(_Graphs):
    """`nn.value_and_grad(policy, loss_fn)` under `mx.compile`, with the signature `update` calls:
    (model, judged) -> ((loss, (metrics, logps)), grads)."""

    def __init__(self, policy: nn.Module, loss_fn: Callable, bucket: int = COMPILE_BUCKET):
        super().__init__(bucket)
        self.policy = policy
        self._value_and_grad = nn.value_and_grad(policy, loss_fn)
        self._state = [policy.state, mx.random.state]

    def __call__(self, model: nn.Module, judged):
        from ppo.train.step import JudgedBatch

        if model is not self.policy:
            raise ValueError("a compiled loss-and-gradient differentiates the policy it was built for")
        scoring._body_and_head(model)
        batch = pad_scoring_batch(judged.batch, self.bucket)
        width = batch.input_ids.shape[1]
        names = [f.name for f in fields(JudgedBatch) if f.name != "batch"]
        values = {n: getattr(judged, n) for n in names}
        if values["beta"] is not None:
            values["beta"] = mx.array(values["beta"], dtype=mx.float32)
        for n in _PER_TOKEN:
            values[n] = _pad_columns(values[n], width)
        present = tuple(n for n in names if values[n] is not None)
        key = (model_structure(model), batch.longest_completion, present)
        graph = self._graphs.get(key)
        if graph is None:
            longest = batch.longest_completion

            def step(input_ids, mask, prompt_lengths, *arrays, longest=longest, present=present):
                rebuilt = JudgedBatch(batch=ScoringBatch(input_ids, mask, prompt_lengths, longest),
                                      **{n: None for n in names if n not in present}, **dict(zip(present, arrays)))
                return self._value_and_grad(self.policy, rebuilt)

            graph = self._graphs[key] = mx.compile(step, inputs=self._state, outputs=self._state)
        arrays = [values[n] for n in present]
        self._signatures.add((key, batch.input_ids.shape, tuple(a.shape for a in arrays)))
        return graph(batch.input_ids, batch.completion_mask, batch.prompt_lengths, *arrays)


def make_loss_and_grad(policy: nn.Module, loss_fn: Callable, compiled: bool) -> Callable:
    """The update's loss-and-gradient: compiled (`CompiledLossAndGrad`) or eager."""
    return CompiledLossAndGrad(policy, loss_fn) if compiled else nn.value_and_grad(policy, loss_fn)


def make_scorer(compiled: bool) -> Callable:
    """The scorer of the reference and sampling-time log-probs: compiled or eager."""
    return CompiledScorer() if compiled else token_logps


class DecodeCache:
    """One layer's KV cache for the decode phase, every field an array, so a decode step can be
    compiled (mlx-lm's `BatchKVCache` keeps its write position as a Python int and grows its
    buffers by slices, which a traced graph would freeze). It has the interface mlx-lm's
    attention layers call (`offset`, `update_and_fetch`, `make_mask`) and the same layout:
    rows left-padded, `left_padding` columns of padding, the next token written at column
    `idx` of a buffer of fixed width. The mask hides the padding and the columns not written
    yet, so the attention sees what mlx-lm's cache returns (its softmax runs over more,
    masked, columns: the values equal up to float rounding)."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array, left_padding: mx.array, idx: mx.array):
        self.keys, self.values, self.offset, self.left_padding, self.idx = keys, values, offset, left_padding, idx

    @classmethod
    def from_batch_cache(cls, cache, width: int) -> "DecodeCache":
        """The prefilled `BatchKVCache`'s written columns in a zero buffer `width` columns wide."""
        written = cache._idx  # mlx-lm 0.32 keeps the written width private; its `state` differs between releases
        pad = [(0, 0), (0, 0), (0, width - written), (0, 0)]
        keys, values = cache.keys[..., :written, :], cache.values[..., :written, :]
        return cls(mx.pad(keys, pad), mx.pad(values, pad), cache.offset, cache.left_padding,
                   mx.array(written, dtype=mx.int32))

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.idx.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        return self.keys, self.values

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        if N != 1:
            raise ValueError("DecodeCache decodes one token per step")
        columns = mx.arange(self.keys.shape[2])[None, None, None, :]
        # mlx-lm's BatchKVCache.make_mask: causal up to the column being written, no padding
        return (columns <= self.idx) & (columns >= self.left_padding[:, None, None, None])

    def filter(self, rows: mx.array) -> None:
        self.keys, self.values = self.keys[rows], self.values[rows]
        self.offset, self.left_padding = self.offset[rows], self.left_padding[rows]


def decode_cache_supported(cache: list) -> bool:
    """Whether every layer's prefilled cache is a plain `BatchKVCache` (the layout `DecodeCache`
    copies); other caches (rotating, quantized, state-space) decode eagerly."""
    from mlx_lm.models.cache import BatchKVCache

    return bool(cache) and all(type(c) is BatchKVCache for c in cache)


class CompiledDecodeStep(_Graphs):
    """The single-token decode step (the model's forward on the last sampled tokens with the KV
    cache) under `mx.compile`, the caches passed in and returned as arrays. One graph per model
    structure, row count and buffer width (`compiles`): rows that leave the batch change the
    row count, so a decode of B rows traces at most B graphs per width."""

    def start(self, cache: list, max_tokens: int) -> list[DecodeCache]:
        """`DecodeCache`s holding the prefilled caches, wide enough for `max_tokens` more."""
        width = bucketed(cache[0]._idx + max_tokens, self.bucket)
        caches = [DecodeCache.from_batch_cache(c, width) for c in cache]
        # One offset, padding and position for all layers (they advance together).
        for c in caches[1:]:
            c.offset, c.left_padding, c.idx = caches[0].offset, caches[0].left_padding, caches[0].idx
        return caches

    def __call__(self, model: nn.Module, caches: list[DecodeCache], inputs: mx.array) -> mx.array:
        """The last position's logits of `inputs` (rows,) after the cached tokens; the caches
        advance by one column."""
        key = (id(model), model_structure(model))
        graph = self._graphs.get(key)
        if graph is None:
            def step(tokens, offset, left_padding, idx, *buffers, model=model):
                n = len(buffers) // 2
                layers = [DecodeCache(buffers[i], buffers[n + i], offset, left_padding, idx) for i in range(n)]
                logits = model(tokens[:, None], cache=layers)[:, -1, :]
                return (logits, offset + 1, idx + 1, *[c.keys for c in layers], *[c.values for c in layers])

            graph = self._graphs[key] = mx.compile(step, inputs=[model.state])
        first = caches[0]
        self._signatures.add((key, inputs.shape, first.keys.shape))
        logits, offset, idx, *buffers = graph(inputs, first.offset, first.left_padding, first.idx,
                                              *[c.keys for c in caches], *[c.values for c in caches])
        n = len(caches)
        for i, c in enumerate(caches):
            c.keys, c.values, c.offset, c.idx = buffers[i], buffers[n + i], offset, idx
        return logits

    @staticmethod
    def filter(caches: list[DecodeCache], rows: mx.array) -> None:
        first = caches[0]
        first.filter(rows)
        for c in caches[1:]:
            c.keys, c.values = c.keys[rows], c.values[rows]
            c.offset, c.left_padding = first.offset, first.left_padding
