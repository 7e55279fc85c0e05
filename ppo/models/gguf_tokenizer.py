"""The tokenizer of an imported GGUF (`ppo.models.gguf`), rebuilt from its `tokenizer.ggml.*` metadata.

The tokenizer is rebuilt with the `tokenizers` library from the metadata (byte-level BPE
from `tokenizer.ggml.tokens` and `merges`; control tokens (token_type 3) as special added tokens,
user-defined ones (4) as plain added tokens; ByteLevel decoder; for llama.cpp's `smollm`
pre-tokenizer SmolLM2's own: `Digits(individual_digits=True)` then `ByteLevel`). Not with
transformers' `convert_gguf_tokenizer`, although it runs without PyTorch when handed the metadata
and gives SmolLM2's GGUF the same ids on every text tried (digits, spaces, unicode, ChatML):
it is a private module that moved between releases (`integrations/ggml.py` in 4.x,
`integrations/gguf/` in 5.x), its own GGUF reader imports PyTorch, and it has no entry for
`smollm`, so its tokenizer.json splits as GPT-2 does, without SmolLM2's digit step (the same ids
only because SmolLM2's vocabulary has no token joining a digit to anything). The pre-tokenizers
known here are in `PRE_TOKENIZERS`; another one, or a sentencepiece vocabulary
(`tokenizer.ggml.model` = llama), is a one-line `ConfigError`.
"""

from __future__ import annotations

from typing import Callable

from ppo.errors import ConfigError

# llama.cpp's Llama 3 split (llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_LLAMA3), as in Llama 3's tokenizer.json.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _smollm_pre_tokenizer():
    """SmolLM / SmolLM2's tokenizer.json: every digit its own piece, then GPT-2's byte-level split
    (llama.cpp's `smollm`: the regexes `\\p{N}` and GPT-2's)."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def _gpt2_pre_tokenizer():
    from tokenizers import pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _llama3_pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


# `tokenizer.ggml.pre` -> the pre-tokenizer of the model's own tokenizer.json.
PRE_TOKENIZERS: dict[str, Callable] = {
    "smollm": _smollm_pre_tokenizer,
    "gpt2": _gpt2_pre_tokenizer,
    "llama-bpe": _llama3_pre_tokenizer,
    "llama3": _llama3_pre_tokenizer,
    "llama-v3": _llama3_pre_tokenizer,
}


def _meta(metadata: dict, key: str, default=None):
    """A metadata value as plain Python (mx.load gives numbers as 0-d arrays, string lists as lists)."""
    value = metadata.get(key, default)
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def build_tokenizer(metadata: dict):
    """(tokenizers.Tokenizer, special token names) from the `tokenizer.ggml.*` metadata."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind, pre = _meta(metadata, "tokenizer.ggml.model"), _meta(metadata, "tokenizer.ggml.pre", "gpt2")
    if kind != "gpt2":
        raise ConfigError(f"the GGUF's tokenizer is {kind!r} (tokenizer.ggml.model); only byte-level BPE ('gpt2', "
                          "as SmolLM2 and Llama 3 have) is imported")
    if pre not in PRE_TOKENIZERS:
        raise ConfigError(f"the GGUF's pre-tokenizer {pre!r} (tokenizer.ggml.pre) is unknown here; known: "
                          f"{', '.join(sorted(PRE_TOKENIZERS))} (add its split to ppo.models.gguf_tokenizer.PRE_TOKENIZERS)")
    tokens = list(_meta(metadata, "tokenizer.ggml.tokens"))
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConfigError(f"the GGUF's vocabulary lists {len(tokens) - len(vocab)} tokens twice: it cannot be a BPE vocabulary")
    merges = [tuple(merge.split(" ", 1)) for merge in _meta(metadata, "tokenizer.ggml.merges", [])]
    try:
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    except Exception as err:
        raise ConfigError(f"the GGUF's merges do not fit its vocabulary ({err})") from None
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    types = _meta(metadata, "tokenizer.ggml.token_type") or [1] * len(tokens)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types) if kind == 3])  # CONTROL
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False)
                          for t, kind in zip(tokens, types) if kind == 4])  # USER_DEFINED
    special = {name: tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None
               for name, index in (("bos_token", _meta(metadata, "tokenizer.ggml.bos_token_id")),
                                   ("eos_token", _meta(metadata, "tokenizer.ggml.eos_token_id")),
                                   ("pad_token", _meta(metadata, "tokenizer.ggml.padding_token_id")),
                                   ("unk_token", _meta(metadata, "tokenizer.ggml.unknown_token_id")))}
    add_bos = bool(_meta(metadata, "tokenizer.ggml.add_bos_token", False)) and special["bos_token"] is not None
    add_eos = bool(_meta(metadata, "tokenizer.ggml.add_eos_token", False)) and special["eos_token"] is not None
    if add_bos or add_eos:  # what llama.cpp adds around every text, as Llama 3's tokenizer.json does
        bos, eos = special["bos_token"], special["eos_token"]
        single = " ".join(([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else []))
        pair = " ".join(([bos] if add_bos else []) + ["$A"] + ([eos] if add_eos else [])
                        + ([f"{bos}:1"] if add_bos else []) + ["$B:1"] + ([f"{eos}:1"] if add_eos else []))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in {bos, eos} if t is not None])
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, kind in zip(tokens, types) if kind == 3]
    return tokenizer, {**special, "add_bos_token": add_bos, "add_eos_token": add_eos, "control": control,
                       "user_defined": [t for t, kind in zip(tokens, types) if kind == 4]}


def tokenizer_files(metadata: dict, config: dict) -> tuple[object, dict, dict]:
    """(tokenizer, tokenizer_config.json, special_tokens_map.json); sets the ids in `config`."""
    tokenizer, special = build_tokenizer(metadata)
    named = {key: special[key] for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    for key in ("bos_token", "eos_token", "pad_token"):
        config[f"{key}_id"] = tokenizer.token_to_id(named[key]) if named[key] is not None else None
    extra = [t for t in special["control"] if t not in named.values()]
    added = {str(tokenizer.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                             "single_word": False, "special": kind == "control"}
             for kind in ("control", "user_defined") for t in special[kind]}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # takes tokenizer.json as it is
        "added_tokens_decoder": added,
        "additional_special_tokens": extra,
        **named,
        "add_bos_token": special["add_bos_token"],
        "add_eos_token": special["add_eos_token"],
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    template = _meta(metadata, "tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    special_map = {key: token for key, token in named.items() if token is not None}
    if extra:
        special_map["additional_special_tokens"] = extra
    return tokenizer, tokenizer_config, special_map
