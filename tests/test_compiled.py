"""Compiled scoring, loss-and-gradient and decode (ppo.train.compiled) compute what the eager
paths compute: log-probs and gradients to 1e-5 relative, decoded tokens exactly."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map
from omegaconf import OmegaConf

from conftest import compose
from ppo.train.compiled import CompiledLossAndGrad, CompiledScorer
from ppo.train.config import FinetuneConfig
from ppo.train.models import add_adapters, adapters_disabled
from ppo.train.scoring import build_scoring_batch, token_logps
from ppo.train.step import JudgedBatch, make_loss_fn

PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4, 8], [1, 30, 31]]
COMPLETIONS = [[10, 11, 2], [12], [13, 14, 15, 16, 2], [40, 41, 42, 43, 44, 45, 46, 47, 48]]


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from mlx_lm import load

    model = load(str(tiny_model_dir))[0]
    add_adapters(model, OmegaConf.structured(FinetuneConfig(type="lora", rank=4, num_layers=2)))
    model.update(tree_map(lambda p: p + 0.05, model.trainable_parameters()))  # adapters away from zero
    model.eval()
    return model


def _close(got, want, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=rtol, atol=atol)


def test_compiled_scoring_equals_eager_for_policy_and_reference_and_counts_compiles(policy):
    batch = build_scoring_batch(PROMPTS, COMPLETIONS, pad_id=0)
    scorer = CompiledScorer(bucket=16)
    _close(scorer(policy, batch), token_logps(policy, batch))
    with adapters_disabled(policy):  # another structure: its own graph, not the policy's replayed
        _close(scorer(policy, batch), token_logps(policy, batch))
    assert scorer.compiles == 2
    shorter = build_scoring_batch(PROMPTS[:2] * 2, COMPLETIONS[:2] * 2, pad_id=0)  # other lengths, same buckets
    _close(scorer(policy, shorter), token_logps(policy, shorter))
    assert scorer.compiles == 2
    # updated weights are read: the graph is replayed on the new values
    saved = policy.trainable_parameters()
    policy.update(tree_map(lambda p: p * 1.5, saved))
    try:
        _close(scorer(policy, batch), token_logps(policy, batch))
    finally:
        policy.update(saved)
    assert scorer.compiles == 2


def _judged(policy, beta=None, old_token_logps=False):
    batch = build_scoring_batch(PROMPTS, COMPLETIONS, pad_id=0)
    with adapters_disabled(policy):
        ref = token_logps(policy, batch)
    old = token_logps(policy, batch) * 1.01 if old_token_logps else None
    return JudgedBatch(batch=batch, chosen=mx.array([0, 1]), rejected=mx.array([2, 3]),
                       advantages=mx.array([0.9, 0.6]), ref_token_logps=ref, old_logps=None, old_token_logps=old,
                       beta=beta)


@pytest.mark.parametrize("form,beta,token_level", [("seed", None, False), ("textbook", 0.37, False),
                                                   ("textbook", None, True)])
def test_compiled_loss_and_gradient_equal_eager(policy, tiny_model_dir, form, beta, token_level):
    overrides = [f"model.path={tiny_model_dir}", f"ppo_form={form}"]
    if token_level:
        overrides += ["loss.ratio_level=token", "loss.minibatches=2"]
    loss_cfg = compose(overrides).loss
    loss_fn = make_loss_fn(loss_cfg)
    import mlx.nn as nn

    policy.train()
    try:
        judged = _judged(policy, beta=beta, old_token_logps=token_level)
        (loss, (metrics, logps)), grads = nn.value_and_grad(policy, loss_fn)(policy, judged)
        compiled = CompiledLossAndGrad(policy, loss_fn, bucket=16)
        (c_loss, (c_metrics, c_logps)), c_grads = compiled(policy, judged)
        _close(c_loss, loss)
        _close(c_logps, logps)
        assert sorted(c_metrics) == sorted(metrics)
        for k in metrics:
            _close(c_metrics[k], metrics[k])
        want = dict(tree_flatten(grads))
        got = dict(tree_flatten(c_grads))
        assert sorted(got) == sorted(want)
        for k in want:
            _close(got[k], want[k], atol=1e-6 * float(mx.abs(want[k]).max()) + 1e-9)
        # the model holds real arrays again (not the trace's), and a second call replays the graph
        (again, _), _ = compiled(policy, judged)
        _close(again, loss)
        assert compiled.compiles == 1
    finally:
        policy.eval()


DECODE_PROMPTS = [[1, 5, 6, 7], [1, 9], [1, 4, 4, 4, 4, 4, 8], [1, 30, 31], [1, 7, 7], [1, 2, 3, 4, 5]]
STOPS = list(range(100, 140))  # 40 of the 512 ids stop a row: rows leave the batch at different steps


@pytest.mark.parametrize("seed,temperature,top_p", [(0, 1.0, 1.0), (1, 0.7, 1.0), (2, 1.0, 0.9), (3, 1.0, 1.0)])
def test_compiled_decode_samples_the_eager_tokens(policy, seed, temperature, top_p):
    from ppo.train.compiled import CompiledDecodeStep
    from ppo.train.rollout import sample

    kwargs = dict(eos_token_ids=STOPS, max_tokens=12, temperature=temperature, top_p=top_p)
    mx.random.seed(seed)
    eager = sample(policy, DECODE_PROMPTS, **kwargs)
    eager_key = mx.random.state[0].tolist()
    step = CompiledDecodeStep(bucket=16)
    mx.random.seed(seed)
    compiled = sample(policy, DECODE_PROMPTS, decode_step=step, **kwargs)
    assert compiled.token_ids == eager.token_ids
    assert compiled.finished == eager.finished
    assert mx.random.state[0].tolist() == eager_key
    # one graph per row count the batch passed through (rows leave as they finish)
    assert 1 <= step.compiles <= len({len(t) for t in eager.token_ids}) + 1
    if seed == 0:
        assert any(eager.finished) and not all(eager.finished)
        with adapters_disabled(policy):  # the reference's structure gets its own graph
            mx.random.seed(seed)
            eager_ref = sample(policy, DECODE_PROMPTS, **kwargs)
            mx.random.seed(seed)
            assert sample(policy, DECODE_PROMPTS, decode_step=step, **kwargs).token_ids == eager_ref.token_ids


@pytest.mark.slow
def test_a_run_with_every_phase_compiled_trains_as_the_eager_run(tmp_path, tiny_model_dir, prompts_file):
    """Both runs through the trainer in this process (the same BLAS for both; the command line
    around it is tested elsewhere)."""
    import json

    from conftest import compose, small_run_overrides
    from ppo.train.loop import train

    rows = {}
    for name, flag in (("eager", "false"), ("compiled", "true")):
        run_dir = tmp_path / name
        train(compose(small_run_overrides(tiny_model_dir, prompts_file, **{
            "train.iters": 2, "train.steps_per_eval": 100, "train.save_every": 100,
            "train.learning_rate": 1e-3, "ppo_form": "textbook", "train.compile_scoring": flag,
            "train.compile_update": flag, "train.compile_decode": flag})), run_dir)
        rows[name] = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for eager, compiled in zip(rows["eager"], rows["compiled"], strict=True):
        # the same tokens and verdicts (the second step samples from the updated policy)
        for key in ("completions/mean_length", "completions/eos_rate", "judge/pairs"):
            if key in eager:
                assert compiled[key] == eager[key], key
        for key in ("loss", "kl", "policy_loss", "ratio/mean", "rewards/margins"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_bench_compile_smallest_prints_its_json():
    import json
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_compile.py"), "--sizes", "toy", "--reps", "1",
                           "--batch", "1", "--tokens", "4"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    toy = json.loads(proc.stdout)["sizes"]["toy"]
    assert toy["rows"] == 2 and toy["decode"]["same_tokens"]
    for phase in ("decode", "scoring", "update"):
        assert toy[phase]["compiles"] == 1 and toy[phase]["speedup"] > 0
    assert toy["scoring"]["max_relative_difference"] < 1e-5
