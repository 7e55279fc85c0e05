"""The decode loop (ppo.train.rollout) samples what mlx-lm's BatchGenerator samples.

The reference, benchmarks.common.mlx_lm_sample, drives mlx-lm's BatchGenerator the way the
harness did before it had a loop of its own: same prompts, stop tokens, cap and sampler. Rows finish at different steps
(a wide stop set), prompts have different lengths (left padding), and the global random key
must end where mlx-lm leaves it, so the draws after a rollout match too.
"""

from __future__ import annotations

import sys

import mlx.core as mx
import pytest
from mlx.utils import tree_map
from omegaconf import OmegaConf

from conftest import ROOT
from ppo.train.config import FinetuneConfig
from ppo.train.models import add_adapters
from ppo.train.rollout import sample

sys.path.insert(0, str(ROOT))
from benchmarks.common import mlx_lm_sample  # noqa: E402

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4, 8], [1, 30, 31], [1, 7, 7], [1, 2, 3, 4, 5]]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))[0]


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from mlx_lm import load

    policy = load(str(tiny_model_dir))[0]
    add_adapters(policy, OmegaConf.structured(FinetuneConfig(type="lora", rank=4, num_layers=2)))
    policy.update(tree_map(lambda p: p + 0.05, policy.trainable_parameters()))  # adapters away from zero
    return policy


def both(model, seed, prompts=PROMPTS, **kwargs):
    mx.random.seed(seed)
    ours = sample(model, prompts, **kwargs)
    ours_key = mx.random.state[0].tolist()
    mx.random.seed(seed)
    theirs_ids, theirs_finished = mlx_lm_sample(model, prompts, **kwargs)
    return ours, ours_key, (theirs_ids, theirs_finished), mx.random.state[0].tolist()


# 40 of the 512 ids stop a row: rows end at different steps, some at the cap.
STOPS = list(range(100, 140))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.0, 0.9)])
def test_tokens_finish_reasons_and_random_key_equal_mlx_lms(model, seed, temperature, top_p):
    ours, ours_key, (ids, finished), key = both(model, seed, eos_token_ids=STOPS, max_tokens=12,
                                                temperature=temperature, top_p=top_p)
    assert ours.token_ids == ids
    assert ours.finished == finished
    assert ours_key == key  # the next draw (the next step's rollout) is the same too
    if seed == 0:  # the case holds both endings, and rows left the batch at different steps
        assert any(finished) and not all(finished) and len({len(t) for t in ids}) > 2


def test_lora_policy_samples_what_mlx_lm_samples(lora_model):
    ours, ours_key, (ids, finished), key = both(lora_model, 5, eos_token_ids=STOPS, max_tokens=10, temperature=0.8)
    assert (ours.token_ids, ours.finished, ours_key) == (ids, finished, key)


def test_every_row_finished_early_and_every_row_capped(model):
    # every row ends at once: a stop set holding the whole vocabulary
    ours, ours_key, (ids, finished), key = both(model, 0, eos_token_ids=list(range(512)), max_tokens=8, temperature=1.0)
    assert ours.token_ids == ids and all(len(t) == 1 for t in ids) and all(ours.finished) and ours_key == key
    # no row can end: every row stops at the cap, not finished
    ours, ours_key, (ids, finished), key = both(model, 0, eos_token_ids=[512], max_tokens=8, temperature=1.0)
    assert ours.token_ids == ids and all(len(t) == 8 for t in ids) and not any(ours.finished) and ours_key == key


def test_eos_sampled_at_the_cap_counts_as_finished(model):
    mx.random.seed(4)
    probe = sample(model, PROMPTS, eos_token_ids=[512], max_tokens=3, temperature=1.0)
    last = probe.token_ids[0][-1]  # what row 0 samples third: make it a stop token
    mx.random.seed(4)
    out = sample(model, PROMPTS, eos_token_ids=[last], max_tokens=3, temperature=1.0)
    assert out.token_ids[0] == probe.token_ids[0] and out.finished[0]
    assert out.num_tokens == sum(len(t) for t in out.token_ids)


def test_prompts_beyond_batch_size_decode_in_groups(model):
    kwargs = dict(eos_token_ids=STOPS, max_tokens=6, temperature=1.0)
    mx.random.seed(9)
    grouped = sample(model, PROMPTS, batch_size=4, **kwargs)
    mx.random.seed(9)
    first, second = sample(model, PROMPTS[:4], **kwargs), sample(model, PROMPTS[4:], **kwargs)
    assert grouped.token_ids == first.token_ids + second.token_ids
    assert grouped.finished == first.finished + second.finished


def test_one_token_prompts(model):
    ours, ours_key, (ids, finished), key = both(model, 2, prompts=[[1], [1], [1]], eos_token_ids=STOPS,
                                                max_tokens=6, temperature=1.0)
    assert (ours.token_ids, ours.finished, ours_key) == (ids, finished, key)


def test_blas_threads_follow_the_lm_heads_size(model):
    from ppo.train.rollout import MULTI_THREAD_DECODE_MACS, decodes_with_one_blas_thread

    rows_at_threshold = MULTI_THREAD_DECODE_MACS // (64 * 512)  # the tiny model: hidden 64, vocab 512
    assert decodes_with_one_blas_thread(model, rows_at_threshold - 1)
    assert not decodes_with_one_blas_thread(model, rows_at_threshold)
