"""Tests for ppo.demo.tiny: a random-weight qwen3 model directory that mlx_lm loads."""

import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

mlx_lm = pytest.importorskip("mlx_lm")

from ppo.demo.tiny import EOS_TOKEN, IM_START, PAD_TOKEN, build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_loads_and_runs(tiny_dir):
    model, tok = mlx_lm.load(str(tiny_dir))
    logits = model(mx.array([[1, 2, 3]]))
    assert logits.shape == (1, 3, 512)
    probs = mx.softmax(logits[0, -1])
    assert probs.max().item() < 0.5  # small init: not a degenerate distribution
    assert len(tok.get_vocab()) == 512


def test_special_tokens_and_chat_template(tiny_dir):
    _, tok = mlx_lm.load(str(tiny_dir))
    vocab = tok.get_vocab()
    assert tok.eos_token_id == vocab[EOS_TOKEN]
    assert vocab[EOS_TOKEN] in tok.eos_token_ids
    assert tok.pad_token_id == vocab[PAD_TOKEN]
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    text = tok.decode(ids)
    assert text == f"{IM_START}user\nhi{EOS_TOKEN}\n{IM_START}assistant\n"
    assert ids[0] == vocab[IM_START]
    # Byte-level BPE: any text round-trips, and plain encode adds no specials.
    sample = "the happy dog sees a red ball . ünïcode 🙂"
    assert tok.decode(tok.encode(sample)) == sample
    assert vocab[EOS_TOKEN] not in tok.encode("the dog")


def test_batch_generate(tiny_dir):
    from mlx_lm.generate import batch_generate

    model, tok = mlx_lm.load(str(tiny_dir))
    ids = tok.apply_chat_template([{"role": "user", "content": "tell me about the dog"}],
                                  add_generation_prompt=True)
    out = batch_generate(model, tok, [ids], max_tokens=8, return_token_ids=True, verbose=False)
    assert len(out.token_ids) == 1 and 1 <= len(out.token_ids[0]) <= 8
    assert all(0 <= t < 512 for t in out.token_ids[0])


def test_deterministic(tmp_path):
    a = build_tiny_model(tmp_path / "a", hidden=32, layers=1, vocab=300, seed=5)
    b = build_tiny_model(tmp_path / "b", hidden=32, layers=1, vocab=300, seed=5)
    c = build_tiny_model(tmp_path / "c", hidden=32, layers=1, vocab=300, seed=6)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    wa, wc = mx.load(str(a / "model.safetensors")), mx.load(str(c / "model.safetensors"))
    name = "model.embed_tokens.weight"
    assert not mx.array_equal(wa[name], wc[name]).item()


def test_large_vocab_is_padded(tmp_path):
    path = build_tiny_model(tmp_path / "m", hidden=16, layers=1, vocab=2048, heads=2,
                            corpus_sentences=200)
    model, tok = mlx_lm.load(str(path))
    assert len(tok.get_vocab()) == 2048
    assert model(mx.array([[0, 2047]])).shape == (1, 2, 2048)


def test_rejects_bad_args(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "x", vocab=100)
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path / "y", hidden=30, heads=4)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "ppo.demo.tiny", str(out), "--hidden", "32", "--layers", "1", "--vocab", "300"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    model, tok = mlx_lm.load(str(out))
    assert model(mx.array([[1, 2, 3]])).shape == (1, 3, 300)
    assert model.args.hidden_size == 32 and len(model.layers) == 1


def test_thinking_build_is_a_qwen3_style_thinking_model(tmp_path):
    from ppo.demo.tiny import THINK_END, THINK_START

    path = build_tiny_model(tmp_path / "think", hidden=32, layers=1, vocab=300, corpus_sentences=300, thinking=True)
    model, tok = mlx_lm.load(str(path))
    assert len(tok.get_vocab()) == 300 and model(mx.array([[0, 299]])).shape == (1, 2, 300)
    # mlx-lm recognises the markers, so it switches thinking on by default, as for Qwen3.
    assert tok.has_thinking and (tok.think_start, tok.think_end) == (THINK_START, THINK_END)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    on = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    off = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    head = f"{IM_START}system\nbe brief{EOS_TOKEN}\n{IM_START}user\nhi{EOS_TOKEN}\n{IM_START}assistant\n"
    assert on == head and off == head + "<think>\n\n</think>\n\n"
    # The markers are single, non-special tokens: decoding keeps them.
    ids = tok.encode("<think>\nx\n</think>\n\nok", add_special_tokens=False)
    assert ids[0] == tok.think_start_id and tok.think_end_id in ids
    assert tok.decode(ids, skip_special_tokens=True).startswith("<think>")
    # An earlier assistant turn loses its reasoning, as Qwen3's template does.
    history = messages + [{"role": "assistant", "content": "<think>\nhm\n</think>\n\nok"}]
    assert tok.apply_chat_template(history, tokenize=False).endswith(f"{IM_START}assistant\nok{EOS_TOKEN}\n")
    # Deterministic, and the default build is not a thinking model.
    again = build_tiny_model(tmp_path / "again", hidden=32, layers=1, vocab=300, corpus_sentences=300, thinking=True)
    assert (again / "tokenizer.json").read_bytes() == (path / "tokenizer.json").read_bytes()
    plain = build_tiny_model(tmp_path / "plain", hidden=32, layers=1, vocab=300, corpus_sentences=300)
    assert not mlx_lm.load(str(plain))[1].has_thinking
