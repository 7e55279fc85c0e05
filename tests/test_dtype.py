"""model.dtype: the policy, every loaded reference and an LLM judge compute in it; auto is float32
on the CPU; a quantized base on the CPU warns once; ppo-doctor measures what each dtype costs."""

import json
import logging
import shutil
import subprocess
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx.utils import tree_flatten

from conftest import ROOT, compose, run_cli, small_run_overrides
from ppo.errors import ConfigError
from ppo.train import models
from ppo.train.models import float_dtype, load_model, load_policy_and_reference

QUANTIZED_WARNING = "a quantized base runs about"


def _floats(model) -> set[str]:
    return {models.dtype_name(v.dtype) for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)}


def _write_checkpoint(src, dst, model=None, **config_changes):
    """A copy of the model folder `src` with `model`'s weights (default: src's own) and config changes."""
    shutil.copytree(src, dst)
    if model is not None:
        mx.save_safetensors(str(dst / "model.safetensors"), dict(tree_flatten(model.parameters())), metadata={"format": "mlx"})
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
    return dst


@pytest.fixture(scope="module")
def half_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in float16, as real checkpoints ship."""
    model, _ = load_model(str(tiny_model_dir))
    model.set_dtype(mx.float16)
    return _write_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("half") / "model", model, torch_dtype="float16")


@pytest.fixture(scope="module")
def quantized_model_dir(half_model_dir, tmp_path_factory):
    """The float16 tiny model saved 4-bit quantized (uint32 weights, float16 scales and biases)."""
    from mlx_lm.utils import quantize_model

    model, _ = load_model(str(half_model_dir))
    config = json.loads((half_model_dir / "config.json").read_text())
    model, config = quantize_model(model, config, group_size=32, bits=4)
    return _write_checkpoint(half_model_dir, tmp_path_factory.mktemp("q4") / "model", model,
                             quantization=config["quantization"])


AUTO = "float32" if models.on_cpu() else "float16"  # auto: float32 on the CPU, the checkpoint's own on a GPU


@pytest.mark.parametrize("dtype,expected", [("auto", AUTO), ("float32", "float32"), ("float16", "float16"),
                                            ("bfloat16", "bfloat16")])
def test_policy_and_its_frozen_copy_get_the_dtype(half_model_dir, dtype, expected):
    cfg = compose([f"model.path={half_model_dir}", f"model.dtype={dtype}", "finetune=full"])
    policy, reference, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    assert _floats(policy) == _floats(reference) == {expected}


def test_reference_path_gets_the_dtype_and_lora_layers_are_float32(tiny_model_dir, half_model_dir):
    cfg = compose([f"model.path={half_model_dir}", f"model.reference_path={half_model_dir}", "model.dtype=float32",
                   "finetune=lora", "finetune.num_layers=1"])
    policy, reference, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    assert _floats(policy) == _floats(reference) == {"float32"}
    trainable = tree_flatten(policy.trainable_parameters())
    assert trainable and {v.dtype for _, v in trainable} == {mx.float32}

    # A half-precision base keeps float32 adapters (mlx-lm makes them so): Adam's small steps survive.
    cfg = compose([f"model.path={tiny_model_dir}", "model.dtype=bfloat16", "finetune=dora", "finetune.num_layers=1"])
    policy, _, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    assert float_dtype(policy) == "bfloat16"
    assert {v.dtype for _, v in tree_flatten(policy.trainable_parameters())} == {mx.float32}


def test_a_quantized_checkpoint_keeps_its_weights_and_its_scales_follow(quantized_model_dir, caplog):
    cfg = compose([f"model.path={quantized_model_dir}", "model.dtype=float32", "finetune.num_layers=1"])
    with caplog.at_level(logging.WARNING, logger="ppo.train.models"):
        policy, _, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    layers = [m for _, m in policy.named_modules() if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))]
    assert layers and all(m.weight.dtype == mx.uint32 and m.scales.dtype == m.biases.dtype == mx.float32 for m in layers)
    warnings = [r.getMessage() for r in caplog.records if QUANTIZED_WARNING in r.getMessage()]
    assert len(warnings) == 1 and f"model.path={quantized_model_dir} loads with quantized layers" in warnings[0]


@pytest.mark.parametrize("finetune,warned", [("lora", 1), ("dora", 1), ("full", 0)])  # full dequantizes: float
def test_quantize_on_the_cpu_warns_once(tiny_model_dir, caplog, finetune, warned):
    cfg = compose([f"model.path={tiny_model_dir}", "model.quantize=4", "model.quantize_group_size=32",
                   f"finetune={finetune}", "finetune.num_layers=1"])
    with caplog.at_level(logging.WARNING, logger="ppo.train.models"):
        load_policy_and_reference(cfg.model, cfg.finetune)
    warnings = [r.getMessage() for r in caplog.records if QUANTIZED_WARNING in r.getMessage()]
    assert len(warnings) == (warned if models.on_cpu() else 0)
    if warnings:
        assert warnings[0].startswith("model.quantize=4: ") and "model.quantize=none" in warnings[0]
        assert "\n" not in warnings[0]


def test_on_a_gpu_auto_keeps_the_checkpoint_and_nothing_warns(half_model_dir, tiny_model_dir, caplog, monkeypatch):
    monkeypatch.setattr(models, "on_cpu", lambda: False)  # what a Metal or CUDA default device reads
    cfg = compose([f"model.path={half_model_dir}", "finetune=full"])
    policy, reference, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    assert _floats(policy) == _floats(reference) == {"float16"}
    cfg = compose([f"model.path={tiny_model_dir}", "model.quantize=4", "model.quantize_group_size=32", "finetune.num_layers=1"])
    with caplog.at_level(logging.WARNING, logger="ppo.train.models"):
        load_policy_and_reference(cfg.model, cfg.finetune)
    assert not [r for r in caplog.records if QUANTIZED_WARNING in r.getMessage()]


def test_an_llm_judge_of_another_model_gets_the_trainers_dtype(tiny_model_dir, half_model_dir, prompts_file, tmp_path):
    from ppo.judges import build_judge
    from ppo.train.distributed import World
    from ppo.train.loop import set_up

    judge_cfg = compose(["judge=llm", f"judge.model={half_model_dir}"]).judge
    for dtype, expected in (("float32", "float32"), ("float16", "float16"), ("auto", AUTO), (None, AUTO)):
        assert _floats(build_judge(judge_cfg, dtype=dtype).inner.model) == {expected}, dtype

    # The trainer passes model.dtype on: the policy and the judge both compute in it.
    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file) + [
        "judge=llm", f"judge.model={half_model_dir}", "model.dtype=bfloat16", "finetune.num_layers=1"])
    run = set_up(cfg, tmp_path, World.current(), {})
    assert run.model_dtype == "bfloat16" and _floats(run.judge.inner.model) == {"bfloat16"}
    run.judge.close()


def test_bad_values_give_one_line(tiny_model_dir, prompts_file):
    from ppo.judges.llm import LLMJudge
    from ppo.train.config import MODEL_DTYPES
    from ppo.train.validation import validate

    assert set(MODEL_DTYPES) == {"auto", *models.DTYPES}  # the schema's choices are the ones the loader casts to

    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file) + ["model.dtype=float8"])
    with pytest.raises(ConfigError, match=r"model\.dtype='float8': choose auto, float32, bfloat16 or float16") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"judge\.dtype='fp16': choose auto, float32, bfloat16 or float16") as err:
        LLMJudge(str(tiny_model_dir), dtype="fp16")
    assert "\n" not in str(err.value)


def test_doctor_reports_each_dtypes_matmul():
    proc = subprocess.run([sys.executable, "-m", "ppo.tools.doctor", "--size", "64", "--repeats", "1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = json.loads(proc.stdout)["dtype_matmul"]
    assert table["shape"] == "rows x 576 @ 576 x 1536" and table["model_dtype_auto"] == AUTO.replace("float16", "the checkpoint's own")
    for rows in ("rows_256", "rows_16"):
        assert set(table[rows]) == {"float32", "bfloat16", "float16", "4bit_g64", "4bit_g32"}
        assert all(cell["gflops"] > 0 and cell["ms"] > 0 for cell in table[rows].values())
        assert table[rows]["float32"]["x_slower_than_float32"] == 1.0
    assert table["seconds"] < 15  # budgeted at about a second; generous for a shared machine


@pytest.mark.slow
def test_train_in_float16_through_the_cli(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 1}) + [
        "model.dtype=float16", "model.quantize=4", "model.quantize_group_size=32", "finetune.num_layers=1",
        f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["model_dtype"] == "float16"
    assert (result.stdout + result.stderr).count(QUANTIZED_WARNING) == (1 if models.on_cpu() else 0)
    adapters = mx.load(str(run_dir / "adapters.safetensors"))
    assert adapters and {v.dtype for v in adapters.values()} == {mx.float32}
