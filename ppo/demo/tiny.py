"""Build a tiny random-weight chat model directory that ``mlx_lm.load`` accepts.

Why: tests and the demo need a real mlx-lm model (config, safetensors,
tokenizer with a chat template) without downloading anything. The model is a
``qwen3`` architecture with a few thousand parameters per layer and a byte-level
BPE tokenizer trained here on :mod:`ppo.demo.corpus`, so any text encodes and the
grammar's words are mostly single tokens.

Building is deterministic: the same arguments give byte-identical
``model.safetensors`` and ``tokenizer.json``.

CLI::

    python -m ppo.demo.tiny OUT_DIR [--hidden 64 --layers 2 --vocab 512 --heads 4 --seed 0] [--thinking]

``--thinking`` builds a Qwen3-style thinking model instead: ``<think>`` / ``</think>`` in
the vocabulary (ordinary added tokens, not special, as in Qwen3, so decoding keeps them)
and :data:`THINKING_CHAT_TEMPLATE`, which honours ``enable_thinking``. mlx-lm then treats
it as Qwen3: ``TokenizerWrapper.has_thinking`` is true and ``apply_chat_template`` passes
``enable_thinking=True`` unless told otherwise. The default build is unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from . import corpus

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)

# Qwen-style ChatML: "<|im_start|>role\ncontent<|im_end|>\n" per message.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3's reasoning markers (single tokens there and here).
THINK_START = "<think>"
THINK_END = "</think>"

# Qwen3's template, reduced to what matters here: ChatML turns (system included); earlier
# assistant turns lose their reasoning block; the generation prompt opens the assistant turn
# and, with enable_thinking=false, closes an empty reasoning block so the model answers at once.
THINKING_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

INIT_STD = 0.02


def _training_texts(corpus_sentences: int, seed: int) -> list[str]:
    """Text the tokenizer learns from: corpus sentences, prompts and ChatML framing."""
    texts = corpus.sentences(corpus_sentences, seed=seed)
    texts += corpus.prompts(max(corpus_sentences // 4, 1), seed=seed + 1)
    texts += ["user", "assistant", "system"] * 50
    return texts


def build_tokenizer(vocab: int, *, corpus_sentences: int = 4000, seed: int = 0, thinking: bool = False):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` with exactly ``vocab`` tokens.

    The 256 byte symbols guarantee any text encodes; the three special tokens
    come first (ids 0, 1, 2). If the corpus runs out of merges before reaching
    ``vocab``, the rest is filled with ``<|reserved_i|>`` special tokens so
    the tokenizer and the embedding matrix always agree on size. ``thinking`` keeps two
    places for ``<think>`` / ``</think>``, added after training as non-special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tokenizers import AddedToken

    think = (THINK_START, THINK_END) if thinking else ()
    minimum = len(SPECIAL_TOKENS) + 256 + len(think)
    if vocab < minimum:
        raise ValueError(f"vocab must be at least {minimum} (256 bytes + special tokens)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab - len(think),
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(corpus_sentences, seed), trainer=trainer)
    if think:  # Qwen3's are not special: decoding keeps them, as the judge's input must be checked for
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in think])
    missing = vocab - tok.get_vocab_size(with_added_tokens=True)
    if missing > 0:
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(missing)])
    assert tok.get_vocab_size(with_added_tokens=True) == vocab
    return tok


def model_config(
    *, hidden: int, layers: int, vocab: int, heads: int, intermediate: int | None, eos_token_id: int
) -> dict:
    """The ``config.json`` for mlx-lm's ``qwen3`` model type."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate or 3 * hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 2 if heads % 2 == 0 else heads,
        "head_dim": hidden // heads,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": None,
        "pad_token_id": 0,
        "eos_token_id": eos_token_id,
    }


def init_weights(config: dict, seed: int) -> dict:
    """Random weights for ``config``: N(0, 0.02) matrices, unit norms.

    Every matrix gets its own key split from ``mx.random.key(seed)`` in sorted
    name order, so the result does not depend on global RNG state. Residual
    output projections are scaled by 1/sqrt(2 * layers) (GPT-2 style) so the
    residual stream stays well-scaled.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.qwen3 import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    names = sorted(name for name, _ in tree_flatten(model.parameters()))
    shapes = dict(tree_flatten(model.parameters()))
    keys = mx.random.split(mx.random.key(seed), len(names))
    residual_scale = (2 * config["num_hidden_layers"]) ** -0.5
    weights = {}
    for i, name in enumerate(names):
        shape = shapes[name].shape
        if len(shape) == 1:  # RMSNorm scales
            weights[name] = mx.ones(shape, dtype=mx.float32)
            continue
        std = INIT_STD * (residual_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0)
        weights[name] = (mx.random.normal(shape, dtype=mx.float32, key=keys[i]) * std)
    mx.eval(weights)
    return weights


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tiny_model(
    out_dir,
    *,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 512,
    heads: int = 4,
    intermediate: int | None = None,
    seed: int = 0,
    corpus_sentences: int = 4000,
    thinking: bool = False,
) -> Path:
    """Write a loadable tiny model to ``out_dir`` and return its path.

    Files: ``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json``. ``thinking``: think markers
    and the Qwen3-style template (module docstring).
    """
    import mlx.core as mx

    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer(vocab, corpus_sentences=corpus_sentences, seed=seed, thinking=thinking)
    tok.save(str(out / "tokenizer.json"))
    eos_id = tok.token_to_id(EOS_TOKEN)
    pad_id = tok.token_to_id(PAD_TOKEN)

    config = model_config(
        hidden=hidden, layers=layers, vocab=vocab, heads=heads,
        intermediate=intermediate, eos_token_id=eos_id,
    )
    config["pad_token_id"] = pad_id
    _write_json(out / "config.json", config)

    weights = init_weights(config, seed)
    mx.save_safetensors(
        str(out / "model.safetensors"),
        {k: weights[k] for k in sorted(weights)},
        metadata={"format": "mlx"},
    )

    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False,
            "rstrip": False, "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    if thinking:
        added.update({
            str(tok.token_to_id(t)): {
                "content": t, "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False, "special": False,
            }
            for t in (THINK_START, THINK_END)
        })
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, EOS_TOKEN],
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": None,
        "chat_template": THINKING_CHAT_TEMPLATE if thinking else CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "split_special_tokens": False,
    })
    _write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": [IM_START, EOS_TOKEN],
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
    })
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ppo.demo.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--corpus-sentences", type=int, default=4000)
    parser.add_argument("--thinking", action="store_true", help="<think> markers and a Qwen3-style enable_thinking template")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = build_tiny_model(
        args.out_dir, hidden=args.hidden, layers=args.layers, vocab=args.vocab,
        heads=args.heads, intermediate=args.intermediate, seed=args.seed,
        corpus_sentences=args.corpus_sentences, thinking=args.thinking,
    )
    print(f"wrote tiny model to {path} in {time.perf_counter() - start:.2f}s")


if __name__ == "__main__":
    main()
