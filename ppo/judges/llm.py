"""A local LLM judge: P(A better) from the next-token probabilities of two labels.

Why this shape: the anchors generate a verdict one prompt at a time and parse it, which
is slow and fails on any unexpected text. Here every pair becomes one judging prompt
(rubric as system message, prompt and both completions in the user message, the
assistant turn opened with thinking off), the prompts go through batched right-padded
forward passes, and p = softmax over the logits of the two label tokens at each row's last
real position. Nothing is generated, so nothing can fail to parse. The rubric and chat
framing every prompt starts with are computed once per run (PrefixCache); on a
multi-core CPU each batch is split over two MLX CPU streams (LLMJudge.label_logits).

The judge can share the policy's weights: pass ``preloaded=(model, tokenizer)`` and
``model_context=ppo.train.models.adapters_disabled``; the judge then reads the frozen base
model (adapters switched off for the duration of the forward) and loads no second copy.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable

import mlx.core as mx
import numpy as np

from ppo.platform.blas import single_threaded_blas
from ppo.errors import ConfigError
from ppo.judges.base import Pair, Verdicts
from ppo.judges.prompting import check_labels, judging_messages, rubric, special_pattern


def _special_strings(tokenizer) -> tuple[str, ...]:
    hf = getattr(tokenizer, "_tokenizer", tokenizer)
    special = set(getattr(hf, "all_special_tokens", []) or [])
    special.update(t.content for t in (getattr(hf, "added_tokens_decoder", None) or {}).values())
    return tuple(special)


def label_token_ids(tokenizer, labels: tuple[str, str]) -> list[int]:
    """The single token each label is, as it appears at the start of the assistant turn."""
    ids = []
    for label in labels:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            raise ConfigError(f"invalid judge.labels: {label!r} is {len(encoded)} tokens for this tokenizer; use single-token labels such as '1' and '2'")
        ids.append(encoded[0])
    return ids


def _body_and_head(model):
    """(hidden-state body, output head) of an mlx-lm model, looked up at call time, or None.

    Running the head only at the last position of each row avoids a (rows, length, vocab)
    logits tensor (gigabytes for a 150K vocabulary). Checked once against the full forward.
    """
    body = getattr(model, "model", None)
    if body is None or not callable(body):
        return None
    if getattr(model, "lm_head", None) is not None:
        return body, model.lm_head
    embed = getattr(body, "embed_tokens", None)
    if embed is not None and hasattr(embed, "as_linear"):
        return body, embed.as_linear
    return None


# A shared prefix shorter than this is not worth a separate prefill.
MIN_SHARED_PREFIX = 8


def _shared_prefix(rows: list[list[int]]) -> int:
    """Tokens all rows start with (the rubric and chat framing), leaving each row >= 1 token."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


class PrefixCache:
    """The KV cache of the judging prompt's fixed head (rubric and chat framing), one row,
    computed once and reused by every later call.

    `head` is what every judging prompt starts with, whatever the pair. A call's shared
    prefix that starts with it prefills only the rest; one that does not is prefilled in
    full. The head is always computed by the same forward, so results do not depend on
    which calls came before (a resumed run judges bit for bit like an uninterrupted one).
    Valid because a judge's weights never change during a run (a judge that shares the
    policy reads its frozen base: ppo.train.models.frozen_base).
    """

    def __init__(self, head: list[int] | None = None):
        self.head = list(head or [])
        self._layers: list[tuple[mx.array, mx.array]] | None = None

    def prefill(self, forward, model, prefix: list[int], batch: int):
        """A KV cache holding `prefix` once per row; None when the model's cache is not a
        plain KV cache (sliding windows, state-space layers)."""
        from mlx_lm.models.cache import KVCache, make_prompt_cache

        cache = make_prompt_cache(model)
        if not all(type(c) is KVCache for c in cache):
            return None
        start = 0
        if len(self.head) >= MIN_SHARED_PREFIX and prefix[: len(self.head)] == self.head:
            if self._layers is None:
                forward(mx.array([self.head]), cache=cache)
                self._layers = [(c.keys[..., : c.offset, :], c.values[..., : c.offset, :]) for c in cache]
                mx.eval(self._layers)
            for c, (keys, values) in zip(cache, self._layers):
                c.keys, c.values, c.offset = keys, values, len(self.head)
            start = len(self.head)
        if start < len(prefix):
            forward(mx.array([prefix[start:]]), cache=cache)
        for c in cache:
            c.keys = mx.repeat(c.keys[..., : c.offset, :], batch, axis=0)
            c.values = mx.repeat(c.values[..., : c.offset, :], batch, axis=0)
        return cache


def last_position_logits(model, rows: list[list[int]], pad_id: int, fast: bool = True,
                         prefix_cache: PrefixCache | None = None) -> mx.array:
    """Logits at each row's last real token for right-padded rows, float32 (rows, vocab).

    Right padding cannot change earlier positions of a causal model, so no mask is needed.
    The prefix every row shares (rubric and chat framing: most of a judging prompt) is run
    once and its KV cache reused by all rows (and, through `prefix_cache`, by later
    calls), so each pair costs only its own tokens.
    """
    parts = _body_and_head(model) if fast else None
    forward = parts[0] if parts is not None else model
    cache, shared = None, _shared_prefix(rows)
    if prefix_cache is not None and all(len(r) > len(prefix_cache.head) and r[: len(prefix_cache.head)] == prefix_cache.head for r in rows):
        shared = max(shared, len(prefix_cache.head))  # a lone row still reuses the head
    if shared >= MIN_SHARED_PREFIX:
        cache = (prefix_cache or PrefixCache()).prefill(forward, model, rows[0][:shared], len(rows))
    if cache is not None:
        rows = [r[shared:] for r in rows]
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    last = mx.array(np.array([len(r) - 1 for r in rows], dtype=np.int32))[:, None, None]
    out = forward(mx.array(ids), cache=cache)
    if parts is None:
        return mx.take_along_axis(out, last, axis=1).squeeze(1).astype(mx.float32)
    return parts[1](mx.take_along_axis(out, last, axis=1).squeeze(1)).astype(mx.float32)


class LLMJudge:
    """Any mlx-lm chat model as a pairwise judge (see the module docstring).

    ``model``: hub id or local folder (``judge.model``); ``system``: the rubric
    (``judge.system``, empty = :data:`ppo.judges.prompting.DEFAULT_RUBRIC`); ``labels``: the
    two single-token answers for "first" and "second"; ``batch_size``: rows per forward;
    ``dtype``: a ``model.dtype`` choice the judge's own model is cast to (the trainer passes
    its ``model.dtype``: ppo.judges.factory.build_judge); a preloaded model keeps its own.
    """

    kind = "llm"

    def __init__(
        self,
        model: str = "Qwen/Qwen3-0.6B",
        system: str = "",
        labels=("1", "2"),
        batch_size: int = 16,
        trust_remote_code: bool = False,
        preloaded: tuple | None = None,
        model_context: Callable | None = None,
        dtype: str = "auto",
    ):
        self.system = rubric(system)
        self.labels = check_labels(labels)
        if not isinstance(batch_size, int) or not 1 <= batch_size <= 4096:
            raise ConfigError(f"invalid judge.batch_size={batch_size!r}: must be an integer from 1 to 4096 (prompts "
                              "scored at once; more exhausts memory)")
        self.batch_size = batch_size
        self.model_name = model
        if preloaded is not None:
            self.model, self.tokenizer = preloaded
        else:
            from ppo.train.config import MODEL_DTYPES
            from ppo.train.models import load_model, quantized_cpu_warning

            if dtype not in MODEL_DTYPES:
                raise ConfigError(f"invalid judge.dtype={dtype!r}: choose auto, float32, bfloat16 or float16 (default: model.dtype)")
            try:
                self.model, self.tokenizer = load_model(model, trust_remote_code, dtype)
            except ConfigError as err:
                raise ConfigError(f"judge.model={model}: {err}") from None
            self.model.eval()
            quantized_cpu_warning([self.model], f"judge.model={model} loads with quantized layers",
                                  "a float (unquantized) checkpoint of the judge")
        self.context = model_context or (lambda m: contextlib.nullcontext(m))
        self.label_ids = label_token_ids(self.tokenizer, self.labels)
        self._special = special_pattern(_special_strings(self.tokenizer))
        pad = getattr(self.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._fast = self._fast_path_matches()
        self._streams = [mx.default_stream(mx.default_device())]
        if mx.default_device() == mx.cpu and (os.cpu_count() or 1) > 1:
            self._streams.append(mx.new_stream(mx.cpu))
        probes = [self.encode(Pair(text, "yes", "no")) for text in ("Alpha?", "Zulu!")]
        self._prefix_cache = PrefixCache(probes[0][: _shared_prefix(probes)])

    def encode(self, pair: Pair) -> list[int]:
        """Token ids of the judging prompt, ending where the label token would come."""
        messages = judging_messages(pair, self.system, self.labels, self._special)
        kwargs = dict(add_generation_prompt=True, enable_thinking=False, tokenize=True)
        try:
            ids = self.tokenizer.apply_chat_template(messages, **kwargs)
        except Exception:  # templates without a system role (e.g. Gemma): rubric joins the user turn
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            ids = self.tokenizer.apply_chat_template(merged, **kwargs)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _fast_path_matches(self) -> bool:
        """Whether body + head equals the model's own forward (some models post-process logits)."""
        probe = [self.encode(Pair("Say hi.", "hi", "hello"))]
        with self.context(self.model) as m:
            full = last_position_logits(m, probe, self.pad_id, fast=False)
            fast = last_position_logits(m, probe, self.pad_id, fast=True)
        return bool(mx.allclose(full, fast, rtol=1e-3, atol=1e-3).item())

    def label_logits(self, pairs: list[Pair]) -> np.ndarray:
        """(pairs, 2) logits of the two labels; rows sorted by length so padding stays small.

        On a multi-core CPU each batch is split in two halves computed on two MLX CPU
        streams with one BLAS thread each: MLX runs a stream's element-wise operations on
        one core, and a small model's forward is mostly those (benchmarks/profile_step.py,
        variant streams: forward 1.4-1.7x). Which rows share a half depends only on the
        pairs, so answers stay reproducible.
        """
        rows = [self.encode(x) for x in pairs]
        out = np.zeros((len(rows), 2), dtype=np.float64)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        labels = mx.array(self.label_ids)
        blas = single_threaded_blas() if len(self._streams) > 1 else contextlib.nullcontext()
        with self.context(self.model) as m, blas:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                halves = np.array_split(np.array(chunk), min(len(self._streams), len(chunk)))
                picked = []
                for stream, half in zip(self._streams, halves):
                    with mx.stream(stream):
                        logits = last_position_logits(m, [rows[i] for i in half], self.pad_id, self._fast, self._prefix_cache)
                        picked.append(logits[:, labels])
                mx.eval(picked)
                for half, values in zip(halves, picked):
                    out[half] = np.array(values)
        return out

    def __call__(self, pairs: list[Pair]) -> Verdicts:
        if not pairs:
            return Verdicts(p=np.zeros(0))
        logits = self.label_logits(list(pairs))
        p = 1.0 / (1.0 + np.exp(logits[:, 1] - logits[:, 0]))  # softmax over the two labels
        return Verdicts(p=p, diagnostics={})
