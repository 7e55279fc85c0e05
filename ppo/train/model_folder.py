"""What a model folder must hold before mlx-lm loads it, and whether two tokenizers are the
same: each failure a one-line ConfigError naming the file and the fix."""

from __future__ import annotations

from pathlib import Path

from ppo.errors import ConfigError


def missing_model_fix(folder: Path) -> str:
    """What builds or fetches a missing model folder: the cache's own models name their command."""
    from ppo import resources
    from ppo.models.fetch import PRESETS

    models = resources.cache_dir() / "models"
    commands = {"demo": "python -m ppo.demo_model"} | {p.folder: f"ppo-fetch {name}" for name, p in PRESETS.items()}
    for name, command in commands.items():
        if folder.expanduser().resolve() == (models / name).resolve():
            return f"run `{command}` first (it writes that folder)"
    return "give a local mlx-lm model folder or a hub id (org/name); `ppo-fetch --gguf FILE` imports a GGUF file"


# Files of which a model folder needs one for mlx-lm to build its tokenizer (Hugging Face's
# fast tokenizer, a SentencePiece model, or a byte-level BPE's vocabulary).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "*.tiktoken")


def check_model_folder(folder: Path, path: str) -> None:
    """One line naming the file and what is missing, where mlx-lm would fail with a fragment
    (`'model_type'`) or, without any tokenizer file, load some other tokenizer silently."""
    import json

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model path {path} has no config.json, so it is not an mlx-lm model folder: "
                          f"{missing_model_fix(folder)}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{config_file} is not UTF-8 text: fix or re-download it") from None
    except ValueError as err:
        raise ConfigError(f"{config_file} is not valid JSON ({getattr(err, 'msg', err)} at line "
                          f"{getattr(err, 'lineno', '?')} column {getattr(err, 'colno', '?')}): fix or re-download it") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} holds a JSON {type(config).__name__}, not an object: fix or re-download it")
    if not config.get("model_type"):
        raise ConfigError(f'{config_file} has no "model_type" (the architecture, e.g. "llama" or "qwen3"), so mlx-lm '
                          "cannot build the model: fix or re-download it")
    if not any(p.is_file() for name in TOKENIZER_FILES for p in folder.glob(name)):
        raise ConfigError(f"model path {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}): copy the "
                          "tokenizer files of the model it was made from into it")


def tokenizer_difference(a, b) -> tuple[int, str | None, str | None] | None:
    """The first token id whose string differs between two tokenizers (id, a's, b's), or None
    when their vocabularies (added and special tokens included) map every id alike."""
    by_id_a = {i: t for t, i in a.get_vocab().items()}
    by_id_b = {i: t for t, i in b.get_vocab().items()}
    if by_id_a == by_id_b:
        return None
    token_id = min(i for i in set(by_id_a) | set(by_id_b) if by_id_a.get(i) != by_id_b.get(i))
    return token_id, by_id_a.get(token_id), by_id_b.get(token_id)
