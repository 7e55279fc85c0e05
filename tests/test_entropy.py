"""The `entropy` metric: the policy's entropy per sampled token, measured by the decode from the
logits it already holds, over exactly the tokens the loss's completion mask holds."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from ppo.train.rollout import Completions, mean_token_entropy, sample, token_entropy
from ppo.train.step import token_entropy_metric

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4, 8], [1, 30, 31], [1, 7, 7], [1, 2, 3, 4, 5]]
# 40 of the 512 ids stop a row: rows end at different steps (their EOS counted), some at the cap.
STOPS = list(range(100, 140))


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))[0]


@pytest.fixture(scope="module")
def uniform_model(tiny_model_dir):
    """The tiny model with its LM head zeroed (the tied embedding, when tied: then every hidden
    state is 0 as well): logits 0 everywhere, a policy uniform over its 512 ids."""
    from mlx_lm import load

    policy = load(str(tiny_model_dir))[0]
    if "lm_head" in policy:
        policy.lm_head.weight = mx.zeros_like(policy.lm_head.weight)
    else:
        policy.model.embed_tokens.weight = mx.zeros_like(policy.model.embed_tokens.weight)
    return policy


def test_entropy_of_known_distributions():
    p = np.array([0.5, 0.25, 0.125, 0.125])
    logits = mx.array(np.stack([np.zeros(4), np.log(p) + 3.0, [0.0, 0.0, -1e4, -1e4], [50.0, 0, 0, 0]]), dtype=mx.float32)
    got = np.array(token_entropy(logits))
    np.testing.assert_allclose(got, [math.log(4), -(p * np.log(p)).sum(), math.log(2), 0.0], atol=1e-6)
    # half-precision logits (a real model's) are measured in float32
    assert token_entropy(mx.zeros((1, 64), dtype=mx.bfloat16)).dtype == mx.float32
    assert token_entropy(mx.zeros((1, 64), dtype=mx.bfloat16)).item() == pytest.approx(math.log(64), abs=1e-6)


def test_a_uniform_policy_has_log_v_at_every_sampled_token_and_nothing_after_eos(uniform_model):
    mx.random.seed(0)
    out = sample(uniform_model, PROMPTS * 2, eos_token_ids=STOPS, max_tokens=12, temperature=1.0, entropy=True)
    lengths = [len(t) for t in out.token_ids]
    assert any(out.finished) and not all(out.finished) and len(set(lengths)) > 2  # ended early, at EOS and at the cap
    # each row's sum is log(512) per token it holds (its EOS included), not one token more
    np.testing.assert_allclose(out.entropy_sums, [n * math.log(512) for n in lengths], rtol=1e-5)
    assert mean_token_entropy([out]) == pytest.approx(math.log(512), rel=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.0, 0.9)])
def test_each_token_is_measured_under_the_distribution_it_was_drawn_from(model, temperature, top_p):
    """Every row's sum equals the entropies of a plain forward over prompt + completion, at the
    positions that predict its completion tokens (temperature 1: the distribution the loss scores)."""
    kwargs = dict(eos_token_ids=STOPS, max_tokens=10, temperature=temperature, top_p=top_p)
    mx.random.seed(4)
    out = sample(model, PROMPTS, entropy=True, **kwargs)
    assert any(out.finished) and not all(out.finished)
    for prompt, completion, measured in zip(PROMPTS, out.token_ids, out.entropy_sums):
        logits = model(mx.array([prompt + completion[:-1]]))[0, len(prompt) - 1:]
        assert logits.shape[0] == len(completion)
        assert measured == pytest.approx(float(token_entropy(logits).sum()), rel=1e-4)
    # measuring draws nothing: the same tokens, and the random key where it would be without it
    key = mx.random.state[0].tolist()
    mx.random.seed(4)
    plain = sample(model, PROMPTS, **kwargs)
    assert plain.token_ids == out.token_ids and plain.finished == out.finished and plain.entropy_sums is None
    assert mx.random.state[0].tolist() == key


def test_the_metric_is_a_mean_over_tokens_not_over_completions():
    short = Completions([[1]], [True], 0.0, 1, entropy_sums=[4.0])
    long = Completions([[1, 2, 3]], [False], 0.0, 3, entropy_sums=[3.0])
    assert token_entropy_metric((short, long)) == {"entropy": pytest.approx(7.0 / 4)}
    assert token_entropy_metric((Completions([[1]], [True], 0.0, 1),)) == {}  # a sampler that does not measure it
