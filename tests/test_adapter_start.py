"""Starting from a supervised fine-tune's adapter (`model.adapter_path`, issue 13): the policy
starts equal to base + adapter, the reference is that model, and mlx-lm loads the result."""

import json
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import compose, small_run_overrides
from ppo.errors import ConfigError
from ppo.train.models import load_policy_and_reference, reference_model

X = mx.array([[1, 5, 6, 7, 8, 9, 10]])


def write_adapter(model_dir, out, kind: str, seed: int = 1):
    """An adapter folder as `mlx_lm.lora` writes it, made with mlx-lm's tuner: its layers on
    the last block, moved away from their zero start so that it changes the model."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(model_dir))
    model.freeze()
    params = {"rank": 4, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 1, params, use_dora=kind == "dora")
    trainable = tree_flatten(model.trainable_parameters())
    keys = mx.random.split(mx.random.key(seed), len(trainable))
    moved = {k: v + 0.05 * mx.random.normal(v.shape, key=key) for (k, v), key in zip(trainable, keys)}
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), moved)
    (out / "adapter_config.json").write_text(json.dumps(
        {"fine_tune_type": kind, "num_layers": 1, "lora_parameters": params, "model": str(model_dir)}))
    return out


def logits(model):
    return np.array(model(X).astype(mx.float32))


@pytest.mark.parametrize("quantize", ["none", "4"])
@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_policy_starts_at_the_adapter_and_the_reference_is_it(tmp_path, tiny_model_dir, kind, quantize):
    from mlx_lm import load

    adapter = write_adapter(tiny_model_dir, tmp_path / "sft", kind)
    cfg = compose([f"model.path={tiny_model_dir}", f"model.adapter_path={adapter}", f"model.quantize={quantize}",
                   "model.quantize_group_size=32"])
    policy, reference, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    start = logits(policy)
    with reference_model(policy, reference) as ref:
        np.testing.assert_array_equal(logits(ref), start)  # every ratio exactly 1 at the first step
    if quantize == "none":  # the starting point is mlx-lm's base + adapter, not the base
        sft, _ = load(str(tiny_model_dir), adapter_path=str(adapter))
        np.testing.assert_allclose(start, logits(sft), rtol=1e-5, atol=1e-5)
        assert not np.allclose(start, logits(load(str(tiny_model_dir))[0]), atol=1e-3)
    # An update moves the policy; the reference stays the fine-tune.
    from mlx.utils import tree_map

    policy.update(tree_map(lambda p: p + 0.01, policy.trainable_parameters()))
    assert not np.array_equal(logits(policy), start)
    with reference_model(policy, reference) as ref:
        np.testing.assert_array_equal(logits(ref), start)
    assert not np.array_equal(logits(policy), start)  # the policy's values are back after the reference ran


def test_full_finetune_starts_from_the_fused_adapter(tmp_path, tiny_model_dir):
    from mlx_lm import load

    adapter = write_adapter(tiny_model_dir, tmp_path / "sft", "lora")
    cfg = compose([f"model.path={tiny_model_dir}", f"model.adapter_path={adapter}", "finetune=full"])
    policy, reference, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    np.testing.assert_array_equal(logits(policy), logits(reference))
    sft, _ = load(str(tiny_model_dir), adapter_path=str(adapter))
    np.testing.assert_allclose(logits(policy), logits(sft), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("config,needle", [
    (None, "not an mlx-lm adapter folder"),
    ("{", "not valid JSON"),
    (json.dumps({"fine_tune_type": "full", "num_layers": 2, "lora_parameters": {}}), "full fine-tune.*mlx_lm.fuse"),
    (json.dumps({"fine_tune_type": "lora"}), "needs fine_tune_type lora or dora, num_layers and lora_parameters"),
])
def test_bad_adapter_folder_gets_one_line(tmp_path, tiny_model_dir, config, needle):
    folder = tmp_path / "a"
    folder.mkdir()
    if config is not None:
        (folder / "adapters.safetensors").write_bytes(b"")
        (folder / "adapter_config.json").write_text(config)
    cfg = compose([f"model.path={tiny_model_dir}", f"model.adapter_path={folder}"])
    with pytest.raises(ConfigError, match=needle) as err:
        load_policy_and_reference(cfg.model, cfg.finetune)
    assert "\n" not in str(err.value)


def test_adapter_of_another_model_is_named(tmp_path, tiny_model_dir):
    from ppo.demo.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", hidden=32, layers=2, vocab=512, corpus_sentences=300)
    adapter = write_adapter(other, tmp_path / "sft", "lora")
    cfg = compose([f"model.path={tiny_model_dir}", f"model.adapter_path={adapter}"])
    with pytest.raises(ConfigError, match="does not fit model.path.*base model the adapter was trained on"):
        load_policy_and_reference(cfg.model, cfg.finetune)


@pytest.mark.slow
def test_a_run_from_an_mlx_lm_lora_adapter(tmp_path, tiny_model_dir, prompts_file):
    """The done-when of issue 13: a real `mlx_lm.lora` run on the tiny model, then PPO from its
    adapter: the first step has clip_fraction 0 and KL 0, and mlx-lm loads the run's adapters."""
    from mlx_lm import load

    from ppo.demo import corpus

    data = tmp_path / "sft_data"
    data.mkdir()
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": s}]}
            for p, s in zip(corpus.prompts(40, seed=1), corpus.sentences(40, seed=2))]
    for split in ("train", "valid"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = tmp_path / "sft"
    lora = subprocess.run([sys.executable, "-m", "mlx_lm", "lora", "--model", str(tiny_model_dir), "--train", "--data",
                           str(data), "--iters", "4", "--batch-size", "2", "--num-layers", "2", "--learning-rate", "1e-2",
                           "--steps-per-eval", "100", "--val-batches", "1", "--adapter-path", str(sft)],
                          capture_output=True, text=True, timeout=300)
    assert lora.returncode == 0, lora.stderr[-2000:]

    from ppo.train.loop import train  # in this process: the command line is tested elsewhere

    run_dir = tmp_path / "run"
    train(compose(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 100}) + [
        f"model.adapter_path={sft}", "train.learning_rate=1e-3"]), run_dir)
    first, second = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert first["clip_fraction"] == 0.0 and first["kl"] == 0.0 and first["ratio/mean"] == 1.0
    assert second["kl"] != 0.0

    base, _ = load(str(tiny_model_dir))
    start, _ = load(str(tiny_model_dir), adapter_path=str(sft))
    trained, _ = load(str(tiny_model_dir), adapter_path=str(run_dir))  # as docs/how-to/fine-tuning.md says
    assert not np.allclose(logits(start), logits(base), atol=1e-4)  # the fine-tune changed the model
    assert not np.allclose(logits(trained), logits(start), atol=1e-6)  # and PPO moved on from it
    # The run's adapters are the fine-tune's layers trained on: the same tensors, other values.
    saved, initial = mx.load(str(run_dir / "adapters.safetensors")), mx.load(str(sft / "adapters.safetensors"))
    assert set(saved) == set(initial) and all(saved[k].shape == initial[k].shape for k in saved)
