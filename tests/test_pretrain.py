"""Tests for ppo.demo.pretrain (brief supervised pre-training) and ppo.demo.model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

mlx_lm = pytest.importorskip("mlx_lm")

from ppo.demo import model as demo_model  # noqa: E402
from ppo import io as ppo_io  # noqa: E402
from ppo.demo import pretrain as pretrain_module  # noqa: E402
from ppo.demo.pretrain import pretrain  # noqa: E402
from ppo.demo.tiny import EOS_TOKEN, build_tiny_model  # noqa: E402

STEPS = 30
SMALL = dict(hidden=32, layers=1, vocab=512, heads=4)


@pytest.fixture(scope="module")
def fresh_model(tmp_path_factory) -> Path:
    """A random-weight 1-layer model; tests copy it before training."""
    return build_tiny_model(tmp_path_factory.mktemp("pretrain") / "base", **SMALL)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _train(model_dir: Path, **kwargs) -> dict:
    return pretrain(model_dir, steps=STEPS, batch_size=16, log_every=10, log=None, **kwargs)


def test_batches_mask_only_response_and_eos(fresh_model):
    tok = mlx_lm.load(str(fresh_model))[1]
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    examples = pretrain_module._encode_examples(tok, [("tell me about the dog", "the dog runs .")], eos)
    ids, prompt_len = examples[0]
    assert ids[:prompt_len] == tok.apply_chat_template(
        [{"role": "user", "content": "tell me about the dog"}], add_generation_prompt=True
    )
    assert ids[-1] == eos and tok.decode(ids[prompt_len:-1]) == "the dog runs ."
    inputs, targets, mask = pretrain_module._make_batch(examples, pad_id=0)
    assert inputs.shape[1] % pretrain_module.PAD_MULTIPLE == 0
    trained = targets[0][mask[0] == 1].tolist()
    assert trained == ids[prompt_len:]  # response tokens + EOS, nothing else


def test_loss_decreases_and_weights_saved_atomically(fresh_model, tmp_path, monkeypatch):
    import mlx.core as mx

    model_dir = _copy(fresh_model, tmp_path / "m")
    weights_file = model_dir / "model.safetensors"
    before = weights_file.read_bytes()
    replaced = []
    real_replace = ppo_io.os.replace  # pretrain saves through ppo.io's atomic write

    def spy_replace(src, dst):
        replaced.append((Path(src), Path(dst), Path(src).exists()))
        return real_replace(src, dst)

    monkeypatch.setattr(ppo_io.os, "replace", spy_replace)
    stats = _train(model_dir)

    assert stats["steps"] == STEPS and stats["seconds"] > 0
    assert stats["final_loss"] < stats["initial_loss"] - 1.0, stats
    losses = [loss for _, loss in stats["history"]]
    assert losses == sorted(losses, reverse=True), stats["history"]
    # One os.replace of a complete temp file from the same folder onto the weights file.
    assert len(replaced) == 1
    src, dst, existed = replaced[0]
    assert existed and src.parent == model_dir and dst == weights_file
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in fresh_model.iterdir())
    assert weights_file.read_bytes() != before
    # Still a loadable model, and the loaded weights are the trained ones.
    model, tok = mlx_lm.load(str(model_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "tell me about the dog"}], add_generation_prompt=True)
    logits = model(mx.array([ids]))
    assert logits.shape == (1, len(ids), SMALL["vocab"])
    assert bool(mx.isfinite(logits).all())


def test_failed_save_keeps_old_weights(fresh_model, tmp_path, monkeypatch):
    model_dir = _copy(fresh_model, tmp_path / "m")
    before = (model_dir / "model.safetensors").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(ppo_io.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        pretrain(model_dir, steps=2, batch_size=4, log=None)
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in fresh_model.iterdir())


def test_deterministic_for_a_seed(fresh_model, tmp_path):
    def run(name, seed):
        return pretrain(_copy(fresh_model, tmp_path / name), steps=10, batch_size=8, log_every=5, log=None, seed=seed)

    a, b = run("a", 3), run("b", 3)
    assert a["final_loss"] == b["final_loss"]
    assert a["history"] == b["history"]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    assert run("c", 4)["history"] != a["history"]


def test_max_seconds_stops_early(fresh_model, tmp_path):
    stats = pretrain(_copy(fresh_model, tmp_path / "m"), steps=200, batch_size=4, max_seconds=0.0, log=None)
    assert stats["steps"] == 1 and stats["stopped_early"]


def test_demo_model_build_and_if_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_model, "DEMO_SETTINGS", {**demo_model.DEMO_SETTINGS, **SMALL, "batch_size": 4})
    out = tmp_path / "models" / "demo"
    lines: list[str] = []
    demo_model.build_demo_model(out, steps=3, log=lines.append)
    marker = json.loads((out / demo_model.MARKER).read_text())
    assert marker["settings"]["steps"] == 3 and marker["stats"]["steps"] == 3
    assert any("loss" in line for line in lines)
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no temp folders left
    mlx_lm.load(str(out))

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    demo_model.build_demo_model(out, steps=3, if_missing=True, log=lines.append)
    assert "skipping" in lines[-1]
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    # A different recipe rebuilds in place.
    demo_model.build_demo_model(out, steps=4, if_missing=True, log=lines.append)
    assert json.loads((out / demo_model.MARKER).read_text())["stats"]["steps"] == 4
    assert [p.name for p in out.parent.iterdir()] == ["demo"]


def test_default_out_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PPO_CACHE", str(tmp_path))
    assert demo_model.default_out_dir() == tmp_path / "models" / "demo"
    monkeypatch.delenv("PPO_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_model.default_out_dir() == tmp_path / "xdg" / "ppo-mlx" / "models" / "demo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo_model.default_out_dir() == Path.home() / ".cache" / "ppo-mlx" / "models" / "demo"  # never the checkout
