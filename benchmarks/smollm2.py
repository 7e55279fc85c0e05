"""SmolLM2-135M-Instruct for the ladder's `smollm2` rung: where the real folder is, and a
random-weight Llama of exactly its shape for when it is not there yet.

The real rung reads the mlx-lm folder `ppo-fetch smollm2` writes to
`ppo.resources.cache_dir() / "models" / "SmolLM2-135M-Instruct"` (float32 safetensors,
config.json with model_type llama, tokenizer.json + tokenizer_config.json with the ChatML
template). `bench_ladder.py --rungs smollm2 --random-weights` builds the stand-in instead:

- config.json: SmolLM2-135M's (llama, hidden 576, 30 layers, 9 heads / 3 KV heads of 64,
  MLP 1536, vocabulary 49,152, tied embeddings, rope theta 100,000, eps 1e-5, BOS 1, EOS 2,
  pad 2), float32: 134,515,008 parameters, as the real model;
- weights: random, N(0, 0.02) matrices (output projections scaled by 1/sqrt(2 layers)),
  unit norms, float32, built with mlx-lm's own llama `Model`;
- tokenizer: NOT SmolLM2's. `ppo.demo.tiny.build_tokenizer`'s byte-level BPE trained on the
  demo corpus (a few thousand real merges), padded with `<|reserved_i|>` special tokens to
  49,152 ids, as the random Qwen3 rungs are. Its first three ids are SmolLM2's specials
  (0 `<|endoftext|>`, 1 `<|im_start|>`, 2 `<|im_end|>`), and its chat template is
  SmolLM2-Instruct's (ChatML with the default system turn "You are a helpful AI assistant
  named SmolLM, trained by Hugging Face"), so the prompts have the real structure, but
  their token counts differ from the real tokenizer's, and a random model almost never
  samples EOS (about 1 in 49,152 per token), so its completions run to the cap.

`build_random_llama` builds the same kind of folder at any (small) shape: the tests use it
for a llama-shaped model that loads in a second.
"""

from __future__ import annotations

import json
from pathlib import Path

FOLDER_NAME = "SmolLM2-135M-Instruct"
FETCH_COMMAND = "ppo-fetch smollm2"

# SmolLM2-135M-Instruct's config.json (HuggingFaceTB), torch_dtype float32 as the rung runs it.
SMOLLM2_CONFIG = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 576,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "hidden_act": "silu",
    "torch_dtype": "float32",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 2,
}
SMOLLM2_PARAMETERS = 134_515_008  # 49152 x 576 + 30 x (884,736 + 2,654,208 + 1,152) + 576

# SmolLM2-Instruct's chat template (tokenizer_config.json), verbatim.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

RANDOM_WEIGHTS_NOTE = (
    "random weights of SmolLM2-135M-Instruct's exact shape (llama config.json, float32, 134,515,008 parameters); "
    "tokenizer NOT SmolLM2's: ppo.demo.tiny's demo-corpus BPE padded with reserved special tokens to 49,152 ids, "
    "with SmolLM2's special ids 0-2 and its chat template (prompt structure real, token counts not); "
    "a random model almost never samples EOS, so completions run to the cap"
)


def smollm2_dir() -> Path:
    """Where `ppo-fetch smollm2` writes the converted model."""
    from ppo.resources import cache_dir

    return cache_dir() / "models" / FOLDER_NAME


def missing(folder: Path) -> str | None:
    """Why `folder` is not a usable mlx-lm model folder (None when it is)."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} not found"
    absent = [name for name in ("config.json", "tokenizer.json", "tokenizer_config.json") if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        absent.append("*.safetensors")
    return f"{folder} has no {', '.join(absent)}" if absent else None


def llama_config(**changes) -> dict:
    """SmolLM2-135M's config.json with `changes` (e.g. a smaller shape for tests)."""
    return {**SMOLLM2_CONFIG, **changes}


def init_weights(config: dict, seed: int) -> dict:
    """Random float32 weights for a llama `config` (as `ppo.demo.tiny.init_weights` does for
    qwen3): each matrix from its own key, N(0, 0.02), residual output projections scaled by
    1/sqrt(2 layers); norm scales 1, biases 0."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    shapes = {name: v.shape for name, v in tree_flatten(Model(ModelArgs.from_dict(config)).parameters())}
    names = sorted(shapes)
    keys = mx.random.split(mx.random.key(seed), len(names))
    residual_scale = (2 * config["num_hidden_layers"]) ** -0.5
    weights = {}
    for key, name in zip(keys, names):
        shape = shapes[name]
        if len(shape) == 1:
            weights[name] = (mx.zeros if name.endswith(".bias") else mx.ones)(shape, dtype=mx.float32)
            continue
        std = 0.02 * (residual_scale if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0)
        weights[name] = mx.random.normal(shape, dtype=mx.float32, key=key) * std
    mx.eval(weights)
    return weights


def build_random_llama(out_dir, *, seed: int = 0, **changes) -> Path:
    """A loadable mlx-lm llama folder: `llama_config(**changes)`, random float32 weights, and
    `ppo.demo.tiny`'s tokenizer at the config's vocabulary with SmolLM2's specials and chat
    template (module docstring). Without `changes`: the `smollm2 --random-weights` rung."""
    import mlx.core as mx

    from ppo.demo.tiny import EOS_TOKEN, IM_START, PAD_TOKEN, SPECIAL_TOKENS, build_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = llama_config(**changes)
    tok = build_tokenizer(config["vocab_size"], seed=seed)
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    # SmolLM2's: 0 <|endoftext|>, 1 <|im_start|> (BOS), 2 <|im_end|> (EOS and pad)
    assert (ids[PAD_TOKEN], ids[IM_START], ids[EOS_TOKEN]) == (0, 1, 2), ids
    tok.save(str(out / "tokenizer.json"))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    weights = init_weights(config, seed)
    mx.save_safetensors(str(out / "model.safetensors"), {k: weights[k] for k in sorted(weights)},
                        metadata={"format": "mlx"})
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "additional_special_tokens": [IM_START, EOS_TOKEN],
        "bos_token": IM_START,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "unk_token": PAD_TOKEN,
        "chat_template": SMOLLM2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({
        "additional_special_tokens": [IM_START, EOS_TOKEN], "bos_token": IM_START, "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN, "unk_token": PAD_TOKEN}, indent=2, sort_keys=True) + "\n")
    return out
