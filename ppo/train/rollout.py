"""Sampling completions from the policy, batched across the whole batch of prompts.

Uses mlx-lm's `BatchGenerator` (continuous batching: a finished row leaves the batch,
the others go on). We drive it directly instead of calling `batch_generate` because we
need each completion's finish reason: `batch_generate` drops the EOS token, and the EOS
that ended a completion must be scored like any other sampled token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mlx_lm.generate import BatchGenerator
from mlx_lm.sample_utils import make_sampler

from ppo.platform.blas import single_threaded_blas


@dataclass
class Completions:
    """Sampled completions, in the order of the prompts they answer."""

    token_ids: list[list[int]]  # sampled ids, the ending EOS included
    finished: list[bool]  # True when the completion ended with EOS (not cut at the cap)
    seconds: float
    num_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / max(self.seconds, 1e-9)


def sample(
    model,
    prompts: list[list[int]],
    *,
    eos_token_ids: list[int] | set[int],
    max_tokens: int,
    temperature: float,
    top_p: float = 1.0,
    batch_size: int = 64,
) -> Completions:
    """One completion per prompt, all prompts decoded together, stopping at EOS."""
    tic = time.perf_counter()
    generator = BatchGenerator(
        model,
        max_tokens=max_tokens,
        stop_tokens=[[t] for t in eos_token_ids],
        sampler=make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0),
        completion_batch_size=batch_size,
        prefill_batch_size=batch_size,
    )
    uids = generator.insert(prompts)
    tokens = {uid: [] for uid in uids}
    finished = {}
    try:
        with single_threaded_blas():
            while responses := generator.next_generated():
                for response in responses:
                    tokens[response.uid].append(response.token)
                    if response.finish_reason is not None:
                        finished[response.uid] = response.finish_reason == "stop"
    finally:
        generator.close()
    token_ids = [tokens[uid] for uid in uids]
    return Completions(
        token_ids=token_ids,
        finished=[finished.get(uid, False) for uid in uids],
        seconds=time.perf_counter() - tic,
        num_tokens=sum(len(t) for t in token_ids),
    )


def sample_pairs(model, prompts: list[list[int]], **kwargs) -> tuple[Completions, Completions]:
    """Two completions per prompt from one batched decode of 2B rows: (first, second)."""
    both = sample(model, prompts + prompts, **kwargs)
    n = len(prompts)

    def half(rows: slice) -> Completions:
        ids = both.token_ids[rows]
        return Completions(ids, both.finished[rows], both.seconds / 2, sum(len(t) for t in ids))

    return half(slice(0, n)), half(slice(n, 2 * n))
