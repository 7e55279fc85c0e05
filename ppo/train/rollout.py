"""Sampling completions from the policy, batched across the whole batch of prompts.

The prompts are prefilled by mlx-lm (`PromptProcessingBatch`: right-padded, then its
`BatchKVCache` turned to left padding) and decoded by the short loop below, which samples
the same tokens as mlx-lm's `BatchGenerator` for the same seed (tests/test_decode.py): the
same caches, the same forward, the same sampler, called on the same rows in the same order,
so the global random key advances exactly as it does there. A finished row leaves the batch
as it does there. Why a loop of our own instead of `BatchGenerator` (measured:
`benchmarks/bench_ladder.py`, `benchmarks/README.md`, "The decode loop"):

- it keeps each completion's finish reason and its EOS, which `batch_generate` drops and
  which must be scored like any other sampled token;
- it samples from the raw logits when the sampler is plain temperature sampling. mlx-lm
  normalises every step's logits (`logits - logsumexp`, a full-vocabulary pass) before its
  sampler, and Gumbel-max sampling (`argmax(logits / temp + noise)`) needs no normalisation:
  a per-row shift changes no argmax except by float rounding, so the tokens equal mlx-lm's
  unless two tokens' perturbed scores tie to the last bit. Nucleus sampling (top_p < 1)
  reads probabilities and keeps mlx-lm's normalisation;
- it builds no per-row response objects, token buffers or cache extracts per step, which
  bound the decode of small models;
- it never runs the forward after the last step when every row stops at the length cap
  (it still builds that step's sampler call, so the random key advances as in mlx-lm);
- with `entropy=True` it measures the policy's entropy at every sampled token from the logits
  the step already holds (`token_entropy`), which no mlx-lm generator returns: the logged
  `entropy` metric costs one pass over those logits and no forward of its own.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import mlx.core as mx
from mlx_lm.generate import PromptProcessingBatch
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.sample_utils import make_sampler

from ppo.platform.blas import single_threaded_blas

# From this many multiply-adds in the LM head of one decode step (rows x hidden x vocab) on,
# decoding uses every BLAS thread; below it one thread, since waking a second thread for each
# small product costs more than it saves. Measured on the 2-core CPU, quiet, ms per decode
# step, one thread / all (benchmarks/README.md, "The decode loop"): the 4.2M toy model with
# 4 rows (4.2M MACs) 3.9 / 4.1, 8 rows (8.4M) 5.1 / 4.7, 16 rows (16.8M) 7.3 / 7.2; the 82M
# rung with 16 rows (403M) 85 / 60, the 256M rung (2.5G) 320 / 201.
MULTI_THREAD_DECODE_MACS = 8 * 1024 * 1024


@dataclass
class Completions:
    """Sampled completions, in the order of the prompts they answer."""

    token_ids: list[list[int]]  # sampled ids, the ending EOS included
    finished: list[bool]  # True when the completion ended with EOS (not cut at the cap)
    seconds: float
    num_tokens: int
    # With sample(entropy=True): per completion, the sum over its tokens (the ending EOS included,
    # as the loss's completion mask counts them) of the policy's entropy at that token, in nats.
    entropy_sums: list[float] | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / max(self.seconds, 1e-9)


def mean_token_entropy(groups) -> float:
    """The policy's entropy per sampled token (nats) over every completion of `groups`
    (`Completions` sampled with entropy=True): summed over tokens, divided by their count; NaN
    when no group measured it or no token was sampled."""
    measured = [g for g in groups if g.entropy_sums is not None]
    tokens = sum(len(t) for g in measured for t in g.token_ids)
    return sum(sum(g.entropy_sums) for g in measured) / tokens if tokens else math.nan


def token_entropy(logits: mx.array) -> mx.array:
    """H(softmax(logits)) per row, in nats, in float32: log Z - sum(e * (l - m)) / Z with
    e = exp(l - m), m the row's max and Z = sum(e), so one exp over the vocabulary (not the two
    of logsumexp then softmax). At temperature 1: the distribution the loss's log-probs are taken
    from (ppo.train.scoring), not the temperature-scaled one the tokens were drawn from."""
    shifted = logits.astype(mx.float32)
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    e = mx.exp(shifted)
    z = e.sum(axis=-1)
    return mx.log(z) - (e * shifted).sum(axis=-1) / z


def sample(
    model,
    prompts: list[list[int]],
    *,
    eos_token_ids: list[int] | set[int],
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    batch_size: int = 64,
    one_blas_thread: bool | None = None,
    entropy: bool = False,
    decode_step=None,
) -> Completions:
    """One completion per prompt, stopping at EOS or after `max_tokens` tokens.

    At most `batch_size` rows decode together (the KV cache grows with the rows); more
    prompts are decoded in consecutive groups of `batch_size`. `one_blas_thread`: decode
    with one BLAS thread (True) or all of them (False); None chooses by the model's size
    (MULTI_THREAD_DECODE_MACS). `entropy`: also measure the policy's entropy at every sampled
    token (`Completions.entropy_sums`); the sampled tokens are the same either way. `decode_step`:
    a `ppo.train.compiled.CompiledDecodeStep` to decode through (train.compile_decode); None
    decodes eagerly through mlx-lm's caches.
    """
    if any(len(p) < 1 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    tic = time.perf_counter()
    token_ids: list[list[int]] = []
    finished: list[bool] = []
    entropy_sums: list[float] | None = [] if entropy else None
    if one_blas_thread is None:
        one_blas_thread = decodes_with_one_blas_thread(model, min(len(prompts), batch_size))
    eos = set(eos_token_ids)
    with single_threaded_blas() if one_blas_thread else contextlib.nullcontext():
        for start in range(0, len(prompts), batch_size):
            ids, ended, entropies = _decode(model, prompts[start:start + batch_size], eos=eos, max_tokens=max_tokens,
                                            temperature=temperature, top_p=top_p, entropy=entropy,
                                            decode_step=decode_step)
            token_ids += ids
            finished += ended
            if entropy_sums is not None:
                entropy_sums += entropies
    return Completions(token_ids=token_ids, finished=finished, seconds=time.perf_counter() - tic,
                       num_tokens=sum(len(t) for t in token_ids), entropy_sums=entropy_sums)


def sample_pairs(model, prompts: list[list[int]], samples_per_prompt: int = 2, **kwargs) -> tuple[Completions, ...]:
    """k = `samples_per_prompt` completions per prompt from one batched decode of k x B rows (the
    prompts repeated k times): a tuple of k `Completions`, the g-th holding every prompt's g-th
    sample. k = 2 (default) is the classic pair (first, second)."""
    k, n = samples_per_prompt, len(prompts)
    if k < 2:
        raise ValueError(f"samples_per_prompt must be >= 2, got {k}")
    every = sample(model, prompts * k, **kwargs)

    def group(g: int) -> Completions:
        ids = every.token_ids[g * n:(g + 1) * n]
        entropies = None if every.entropy_sums is None else every.entropy_sums[g * n:(g + 1) * n]
        return Completions(ids, every.finished[g * n:(g + 1) * n], every.seconds / k, sum(len(t) for t in ids),
                           entropies)

    return tuple(group(g) for g in range(k))


def _decode(model, prompts: list[list[int]], *, eos: set[int], max_tokens: int, temperature: float,
            top_p: float, entropy: bool = False,
            decode_step=None) -> tuple[list[list[int]], list[bool], list[float]]:
    """Prefill every prompt but its last token, then decode all rows together. Like mlx-lm's
    `GenerationBatch`, step k's forward and sample are queued before step k-1's tokens are
    read back (the host check overlaps the next forward), and a row that just produced EOS
    or reached the cap is in step k's forward and sample, and leaves the batch after.
    Returns the tokens, whether each row ended with EOS, and (with `entropy`) each row's sum of
    the policy's entropy at its sampled tokens (else zeros): the entropy of the distribution each
    token is drawn from is filtered with it, so a row's sum covers exactly its own tokens, up to
    and including its EOS, and nothing after."""
    nucleus = 0.0 < top_p < 1.0
    sampler = make_sampler(temp=temperature, top_p=top_p if nucleus else 0.0)

    prefill = PromptProcessingBatch(model, uids=list(range(len(prompts))),
                                    caches=[make_prompt_cache(model) for _ in prompts])
    prefill.prompt([p[:-1] for p in prompts])
    cache = prefill.prompt_cache
    compiled = None
    if decode_step is not None:
        from ppo.train.compiled import decode_cache_supported

        if decode_cache_supported(cache):
            compiled = decode_step.start(cache, max_tokens)

    def forward(inputs: mx.array) -> mx.array:
        if compiled is not None:
            return decode_step(model, compiled, inputs)
        return model(inputs[:, None], cache=cache)[:, -1, :]

    def forward_and_sample(inputs: mx.array, run: bool = True) -> tuple[mx.array, mx.array | None]:
        logits = forward(inputs) if run else mx.zeros((inputs.shape[0], 1))
        entropies = token_entropy(logits) if entropy else None  # draws nothing from the random key
        if nucleus:
            logits = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        return sampler(logits), entropies

    def queue(*arrays) -> None:
        mx.async_eval(*(a for a in arrays if a is not None))

    tokens: list[list[int]] = [[] for _ in prompts]
    ended = [False] * len(prompts)
    entropy_sums = [0.0] * len(prompts)
    rows = list(range(len(prompts)))  # the prompt index of each row still decoding
    sampled, entropies = forward_and_sample(mx.array([p[-1] for p in prompts]))
    queue(sampled, entropies)
    for step in range(1, max_tokens + 1):
        current, current_entropies = sampled, entropies
        # After the cap's step no row goes on: the sampler is still called (the random key
        # advances as in mlx-lm), on a stand-in, and nothing is computed.
        sampled, entropies = forward_and_sample(current, run=step < max_tokens)
        if step < max_tokens:
            queue(sampled, entropies)
        keep = []
        for i, (row, token) in enumerate(zip(rows, current.tolist())):
            tokens[row].append(token)
            if token in eos:
                ended[row] = True
            elif step < max_tokens:
                keep.append(i)
        if current_entropies is not None:
            for row, h in zip(rows, current_entropies.tolist()):
                entropy_sums[row] += h
        if not keep:
            break
        if len(keep) < len(rows):
            kept = mx.array(keep)
            if compiled is not None:
                decode_step.filter(compiled, kept)
            else:
                for c in cache:
                    c.filter(keep)
            sampled = sampled[kept]
            entropies = None if entropies is None else entropies[kept]
            rows = [rows[i] for i in keep]
    return tokens, ended, entropy_sums


def decodes_with_one_blas_thread(model, rows: int) -> bool:
    """True when one decode step's LM head (rows x hidden x vocab multiply-adds) is below
    MULTI_THREAD_DECODE_MACS; a model whose args do not say decodes with one thread."""
    args = getattr(getattr(model, "language_model", model), "args", None)
    return rows * getattr(args, "hidden_size", 0) * getattr(args, "vocab_size", 0) < MULTI_THREAD_DECODE_MACS
