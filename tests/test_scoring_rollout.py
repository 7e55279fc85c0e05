"""Scoring masks exactly the completion tokens; rollout keeps sampled ids and EOS; the
reference is the base with adapters off."""

import mlx.core as mx
import numpy as np
import pytest
from omegaconf import OmegaConf

from ppo.train.config import FinetuneConfig
from ppo.train.models import add_adapters, adapters_disabled
from ppo.train.rollout import sample, sample_pairs
from ppo.train.scoring import build_scoring_batch, reduce_logps, sequence_logps


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))


def _manual_logp(model, prompt, completion):
    ids = mx.array([prompt + completion])
    logits = model(ids[:, :-1]).astype(mx.float32)
    logps = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    total = 0.0
    for t in range(len(prompt), len(prompt) + len(completion)):
        total += logps[0, t - 1, ids[0, t]].item()
    return total


def test_sequence_logps_score_only_completion_tokens_and_ignore_padding(model_and_tokenizer):
    model, _ = model_and_tokenizer
    prompts = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4]]
    completions = [[10, 11, 2], [12], [13, 14, 15, 16, 2]]
    batch = build_scoring_batch(prompts, completions, pad_id=0)
    got = np.array(sequence_logps(model, batch))
    want = np.array([_manual_logp(model, p, c) for p, c in zip(prompts, completions)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.array(batch.completion_lengths).tolist() == [3, 1, 5]
    mean = np.array(sequence_logps(model, batch, reduction="mean"))
    np.testing.assert_allclose(mean, want / np.array([3, 1, 5]), rtol=1e-4, atol=1e-4)


def test_rollout_keeps_ids_stops_at_eos_and_respects_cap(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "tell me about the dog"}], add_generation_prompt=True)
    mx.random.seed(0)
    out = sample(model, [prompt] * 16, eos_token_ids=tokenizer.eos_token_ids, max_tokens=10, temperature=1.0)
    eos = set(tokenizer.eos_token_ids)
    assert len(out.token_ids) == 16 and out.num_tokens == sum(len(t) for t in out.token_ids)
    for ids, finished in zip(out.token_ids, out.finished):
        assert 1 <= len(ids) <= 10
        assert finished == (ids[-1] in eos)
        assert not eos & set(ids[:-1])


def test_sample_pairs_gives_two_completions_per_prompt_and_is_seeded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = [[1, 5, 6], [1, 7, 8, 9]]
    kwargs = dict(eos_token_ids=tokenizer.eos_token_ids, max_tokens=6, temperature=1.0)
    mx.random.seed(3)
    a1, b1 = sample_pairs(model, prompts, **kwargs)
    mx.random.seed(3)
    a2, b2 = sample_pairs(model, prompts, **kwargs)
    assert len(a1.token_ids) == len(b1.token_ids) == 2
    assert a1.token_ids == a2.token_ids and b1.token_ids == b2.token_ids
    assert a1.token_ids != b1.token_ids


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_reference_is_base_with_adapters_off(tiny_model_dir, kind):
    from mlx.utils import tree_map
    from mlx_lm import load

    base, _ = load(str(tiny_model_dir))
    policy, _ = load(str(tiny_model_dir))
    add_adapters(policy, OmegaConf.structured(FinetuneConfig(type=kind, rank=4, num_layers=2)))
    # move the adapters away from their zero-initialised start
    policy.update(tree_map(lambda p: p + 0.05, policy.trainable_parameters()))
    x = mx.array([[1, 5, 6, 7, 8]])
    assert not np.allclose(np.array(policy(x)), np.array(base(x)), atol=1e-4)
    with adapters_disabled(policy) as ref:
        np.testing.assert_array_equal(np.array(ref(x)), np.array(base(x)))
    assert not np.allclose(np.array(policy(x)), np.array(base(x)), atol=1e-4)  # adapters back on


# Rows whose prompts and completions differ in length, a long prompt with a short completion
# among them (its block reads past the batch's last position and is clipped there).
SPLIT_PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4, 4, 4, 4, 8], [1, 3]]
SPLIT_COMPLETIONS = [[10, 11, 2], [12], [13, 2], [14, 15, 16, 17, 18, 19, 2]]


def _row_independent_matmul() -> bool:
    """True where a row of a matmul is computed the same whatever the number of rows: MLX's
    CPU with its bundled reference BLAS (what pytest's own process uses on Linux, as nothing
    preloads OpenBLAS into it). OpenBLAS's tuned kernels (Zen, Haswell) and the GPU choose by
    shape, and the head on completion positions then differs from the full forward by an ulp."""
    from ppo.platform.blas import blas_in_use

    return mx.default_device().type == mx.DeviceType.cpu and "mlx_cpu.libs" in blas_in_use()



def lora_grads(policy, scorer, batch) -> dict:
    """The policy's trainable gradients of a fixed weighting of the rows' summed log-probs under `scorer`."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    weights = mx.array([0.5, -1.0, 2.0, 0.25])
    loss = lambda m: (weights * reduce_logps(scorer(m, batch), batch.completion_mask)).sum()  # noqa: E731
    return dict(tree_flatten(nn.value_and_grad(policy, loss)(policy)[1]))

def test_head_on_completion_positions_equals_the_models_own_forward(model_and_tokenizer, tiny_model_dir):
    """token_logps runs the LM head only where completion tokens are predicted; the values
    and the LoRA gradients equal scoring through the model's own forward (every position)."""
    from mlx_lm import load

    from ppo.train.scoring import _body_and_head, _token_logps_full, token_logps

    model, _ = model_and_tokenizer
    batch = build_scoring_batch(SPLIT_PROMPTS, SPLIT_COMPLETIONS, pad_id=0)
    assert _body_and_head(model) is not None  # qwen3: head(model.model(inputs))
    split, full = np.array(token_logps(model, batch)), np.array(_token_logps_full(model, batch))
    if _row_independent_matmul():
        assert np.array_equal(split, full)
    else:  # OpenBLAS (under LD_PRELOAD) or the GPU pick kernels by the number of rows: 1 ulp apart here
        np.testing.assert_allclose(split, full, rtol=1e-6, atol=1e-6)

    policy, _ = load(str(tiny_model_dir))
    add_adapters(policy, OmegaConf.structured(FinetuneConfig(type="lora", rank=4, num_layers=2)))
    from mlx.utils import tree_map

    policy.update(tree_map(lambda p: p + 0.05, policy.trainable_parameters()))
    split, full = lora_grads(policy, token_logps, batch), lora_grads(policy, _token_logps_full, batch)
    assert split.keys() == full.keys() and split
    for name in split:
        np.testing.assert_allclose(np.array(split[name]), np.array(full[name]), rtol=1e-5, atol=1e-7, err_msg=name)


def test_a_model_that_changes_its_logits_after_the_head_is_scored_whole(tiny_model_dir):
    from mlx_lm import load
    from mlx_lm.models.qwen3 import Model

    from ppo.train.scoring import _body_and_head, _token_logps_full, token_logps

    class Capped(Model):  # as Gemma 2 does: a soft cap on the logits, after the head
        def __call__(self, inputs, cache=None, input_embeddings=None):
            return 30.0 * mx.tanh(super().__call__(inputs, cache, input_embeddings) / 30.0)

    model, _ = load(str(tiny_model_dir))
    capped = Capped(model.args)
    capped.update(model.parameters())
    batch = build_scoring_batch(SPLIT_PROMPTS, SPLIT_COMPLETIONS, pad_id=0)
    assert _body_and_head(capped) is None
    assert np.array_equal(np.array(token_logps(capped, batch)), np.array(_token_logps_full(capped, batch)))


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_layers_below_the_adapters_are_run_once_and_change_nothing(tiny_model_dir, kind):
    """With adapters on the last layer only, the first layer computes alike for the reference
    (the base) and the policy: `share_frozen_layers` runs it once, and the reference's and the
    policy's log-probs and the policy's LoRA gradients equal those of the full forward bit for
    bit; a trimmed minibatch (`JudgedBatch.select`) takes its rows of the shared states."""
    from mlx.utils import tree_map
    from mlx_lm import load

    from ppo.train.models import StartingAdapters
    from ppo.train.scoring import frozen_leading_layers, share_frozen_layers, token_logps
    from ppo.train.step import JudgedBatch

    policy, _ = load(str(tiny_model_dir))
    add_adapters(policy, OmegaConf.structured(FinetuneConfig(type=kind, rank=4, num_layers=1)))
    policy.update(tree_map(lambda p: p + 0.05, policy.trainable_parameters()))
    batch = build_scoring_batch(SPLIT_PROMPTS, SPLIT_COMPLETIONS, pad_id=0)
    shared = share_frozen_layers(batch, policy, None)
    assert frozen_leading_layers(policy, None) == 1 and shared.shared_layers_of == (policy.model.layers[0],)
    assert frozen_leading_layers(policy, StartingAdapters(policy)) == 1

    with adapters_disabled(policy) as ref:
        assert np.array_equal(np.array(token_logps(ref, shared)), np.array(token_logps(ref, batch)))
    assert np.array_equal(np.array(token_logps(policy, shared)), np.array(token_logps(policy, batch)))
    with_sharing, without = lora_grads(policy, token_logps, shared), lora_grads(policy, token_logps, batch)
    assert with_sharing.keys() == without.keys() and with_sharing
    for name in with_sharing:
        assert np.array_equal(np.array(with_sharing[name]), np.array(without[name])), name

    zeros = mx.zeros((4, batch.input_ids.shape[1]))
    judged = JudgedBatch(shared, mx.array([0, 1]), mx.array([2, 3]), mx.ones(2), zeros, None)
    part = judged.select(np.array([1])).batch  # rows 1 and 3, trimmed to their longest
    plain = JudgedBatch(batch, mx.array([0, 1]), mx.array([2, 3]), mx.ones(2), zeros, None).select(np.array([1])).batch
    assert part.shared_hidden.shape[:2] == (2, part.input_ids.shape[1] - 1)
    np.testing.assert_allclose(np.array(token_logps(policy, part)), np.array(token_logps(policy, plain)),
                               rtol=1e-6, atol=1e-6)


def test_no_layers_are_shared_with_adapters_everywhere_or_another_reference(tiny_model_dir):
    from mlx_lm import load

    from ppo.train.scoring import frozen_leading_layers, share_frozen_layers, token_logps

    everywhere, _ = load(str(tiny_model_dir))
    add_adapters(everywhere, OmegaConf.structured(FinetuneConfig(type="lora", rank=4, num_layers=2)))
    full, _ = load(str(tiny_model_dir))
    add_adapters(full, OmegaConf.structured(FinetuneConfig(type="full")))
    last, _ = load(str(tiny_model_dir))
    add_adapters(last, OmegaConf.structured(FinetuneConfig(type="lora", rank=4, num_layers=1)))
    other, _ = load(str(tiny_model_dir))
    assert frozen_leading_layers(everywhere, None) == 0
    assert frozen_leading_layers(full, None) == 0
    assert frozen_leading_layers(last, other) == 0  # a separately loaded reference computes its own layers
    batch = build_scoring_batch(SPLIT_PROMPTS, SPLIT_COMPLETIONS, pad_id=0)
    assert share_frozen_layers(batch, everywhere, None) is batch
    # States shared by one model's layers are not used by another model's forward.
    shared = share_frozen_layers(batch, last, None)
    assert np.array_equal(np.array(token_logps(other, shared)), np.array(token_logps(other, batch)))


@pytest.mark.parametrize("form", ["seed", "token"])
def test_training_steps_with_shared_layers_log_what_every_layer_run_logs(tiny_model_dir, prompts_file, tmp_path, form):
    """Whole shipped steps (rollout, judge, scoring, update; ppo_form=token: token ratios, sampling-time
    log-probs and 4 minibatches, so trimmed minibatches too) with adapters on the last layer only: the
    metrics equal, bit for bit, those of the same steps with every forward running all layers."""
    from dataclasses import replace

    from benchmarks.common import step_rows
    from ppo.train.scoring import token_logps
    from conftest import compose

    def every_layer(model, batch):
        return token_logps(model, replace(batch, shared_hidden=None, shared_layers_of=()))

    cfg = compose([f"model.path={tiny_model_dir}", f"data.path={prompts_file}", "judge=length", "train.batch_size=4",
                   "generation.max_completion_length=8", "finetune.num_layers=1", f"ppo_form={form}", "logger=none"])
    shared = step_rows(cfg, tmp_path / "shared", iters=2)
    plain = step_rows(cfg, tmp_path / "plain", iters=2, token_logps_fn=every_layer)
    timed = lambda k: k.endswith("seconds") or k == "tokens_per_second"  # noqa: E731
    drop = lambda row: {k: v for k, v in row.items() if not timed(k)}  # noqa: E731
    assert [drop(r) for r in shared] == [drop(r) for r in plain]
    assert "loss" in shared[0]


def test_a_model_with_windowed_attention_runs_every_forward_whole():
    """A sliding-window layer masks differently from the causal mask the shared layers are run with;
    a short probe could not see it, so such models never share layers."""
    from types import SimpleNamespace

    from ppo.train.scoring import windowed_attention

    assert not windowed_attention(SimpleNamespace(args=SimpleNamespace(model_type="qwen3")))
    assert not windowed_attention(SimpleNamespace(args=SimpleNamespace(layer_types=["full_attention"] * 2,
                                                                       sliding_window=None)))
    assert windowed_attention(SimpleNamespace(args=SimpleNamespace(sliding_window=512)))
    assert windowed_attention(SimpleNamespace(args=SimpleNamespace(layer_types=["sliding_attention", "full_attention"])))
