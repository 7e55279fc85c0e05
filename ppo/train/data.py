"""Prompts: read with `datasets`, checked row by row, chat-templated, split train/eval.

Only a prompt field is needed. A prompt is a string or a list of chat messages
({"role": ..., "content": ...}) ending with a user turn; the tokenizer's chat template is
applied when it has one, with `data.system_prompt` and `data.chat_template_kwargs`
(`PromptFormat`).
"""

from __future__ import annotations

import logging
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ppo.errors import ConfigError

log = logging.getLogger(__name__)

_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Prompt:
    id: str  # "<split>:<row>" in the source data
    text: str  # what a judge reads: the user's words, no template tokens
    tokens: tuple[int, ...]  # what the policy reads: the templated prompt


@dataclass
class PromptSplits:
    train: list[Prompt]
    eval: list[Prompt]
    skipped_rows: int
    truncated_prompts: int = 0


def truncate_left(prompts: list[Prompt], max_tokens: int) -> tuple[list[Prompt], int]:
    """Keep the last `max_tokens` tokens of each prompt (the end is what the answer follows)."""
    out, truncated = [], 0
    for p in prompts:
        if len(p.tokens) > max_tokens:
            p = Prompt(p.id, p.text, p.tokens[-max_tokens:])
            truncated += 1
        out.append(p)
    return out, truncated


def _saved_dataset(folder: Path, split: str, path: str):
    """A `Dataset.save_to_disk` folder (`state.json` beside its arrow files), which `load_dataset`
    refuses; None for any other folder. Such a folder holds one split: the one it was saved as
    (`Dataset.split`), or "train" when it has none, so data.split must name it and an
    eval_split cannot silently reuse the training rows."""
    if not (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file():
        return None
    import datasets

    rows = datasets.load_from_disk(str(folder))
    own = str(rows.split) if rows.split is not None else "train"
    if split != own:
        raise ConfigError(f"data.path={path} is a saved Dataset holding only split {own!r}, not {split!r}: "
                          f"set data.split={own} and leave data.eval_split empty (data.eval_fraction holds out prompts)")
    return rows


def _load_rows(path: str, split: str, on_bad_row: str = "error"):
    """A `datasets.Dataset` from a hub id, a local file or a local folder (JSON lines: `prompt_files.Rows`)."""
    import datasets

    from ppo.train import prompt_files

    datasets.disable_progress_bars()
    local = Path(path).expanduser()
    try:
        if local.is_file():
            fmt = _FORMATS.get(local.suffix.lower())
            if fmt is None:
                raise ConfigError(f"data.path={path}: unsupported file type {local.suffix!r}; use .json, .jsonl, .parquet or .csv")
            if local.suffix.lower() == ".jsonl":
                return prompt_files.read_jsonl(local, on_bad_row)
            prompt_files.check_file(local, text=fmt != "parquet")
            return datasets.load_dataset(fmt, data_files={split: str(local)}, split=split)
        if local.is_dir():
            saved = _saved_dataset(local, split, path)
            return saved if saved is not None else datasets.load_dataset(str(local), split=split)
        if path.startswith((".", "/", "~")) or path.endswith(tuple(_FORMATS)):
            raise ConfigError(f"data.path={path} does not exist: give an existing json/jsonl/parquet file or folder, or a hub dataset id")
        return datasets.load_dataset(path, split=split)
    except ConfigError:
        raise
    except Exception as err:  # datasets raises many types; the user needs one line
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"could not read data.path={path} (split {split!r}): {first_line}") from err


def _prompt_text(value, row: str, field: str) -> str | list[dict]:
    """The prompt of one row, or a ValueError naming the row (`row`: "line 3" or "row 2") and the field."""
    if value is None:
        raise ValueError(f"row {row}: field {field!r} is missing")
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"row {row}: field {field!r} is empty")
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in value
    ):
        if not any(m["content"].strip() for m in value):
            raise ValueError(f"row {row}: field {field!r} has only empty messages")
        return value
    raise ValueError(
        f"row {row}: field {field!r} must be a string or a list of {{role, content}} messages, got {type(value).__name__}"
    )


# The default of `data.chat_template_kwargs` (the schema's comment says why thinking is off).
DEFAULT_CHAT_TEMPLATE_KWARGS = {"enable_thinking": False}


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are templated for the policy (`data.system_prompt`, `data.chat_template_kwargs`);
    the defaults are the config's."""

    system_prompt: str = ""
    chat_template_kwargs: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_CHAT_TEMPLATE_KWARGS))

    @classmethod
    def from_config(cls, data_cfg) -> "PromptFormat":
        from omegaconf import OmegaConf

        kwargs = getattr(data_cfg, "chat_template_kwargs", None)
        kwargs = DEFAULT_CHAT_TEMPLATE_KWARGS if kwargs is None else kwargs  # a config of before the key
        kwargs = OmegaConf.to_container(kwargs, resolve=True) if OmegaConf.is_config(kwargs) else dict(kwargs)
        return cls(getattr(data_cfg, "system_prompt", "") or "", kwargs)


def check_text(prompt: str | list[dict], row: str, field: str) -> None:
    """Refuse a prompt that is not text: a lone surrogate (JSON's "\\ud800" escape, half of a
    pair) decodes to a Python string that no tokenizer can encode, and would otherwise fail
    later inside the chat template, with no word of the row."""
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt] + [m["role"] for m in prompt]
    for text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(f"{row}: field {field!r} holds a lone surrogate ({text[err.start]!r} at character "
                             f"{err.start + 1}), half of a UTF-16 pair, which is not text: fix its \\u escape") from None


def check_last_turn(prompt: str | list[dict], row: str, field: str) -> None:
    """A message list must leave the next turn to the assistant: templating one that ends with
    an assistant turn would open a second assistant turn after it, silently."""
    if isinstance(prompt, list) and prompt[-1]["role"] == "assistant":
        raise ValueError(
            f"row {row}: field {field!r} ends with an assistant turn; end it with a user turn "
            "(the policy writes the next assistant turn) or drop the assistant message"
        )


def _apply_template(tokenizer, messages: list[dict], kwargs: dict) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers >= 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def format_prompt(tokenizer, prompt: str | list[dict], prompt_format: PromptFormat | None = None) -> tuple[str, list[int]]:
    """(judge-readable text, policy token ids) for one prompt.

    `prompt_format.system_prompt` becomes the first message of a prompt without a system
    message; a template without a system role (it raises, as Gemma's does) gets it at the
    start of the first user turn instead, as the LLM judge does with its rubric. Without a
    chat template it is put before the prompt text, a blank line between.
    """
    fmt = prompt_format or PromptFormat()
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = "\n".join(m["content"] for m in messages if m["role"] != "system") if not isinstance(prompt, str) else prompt
    has_system = any(m["role"] == "system" for m in messages)
    if fmt.system_prompt and not has_system:
        messages = [{"role": "system", "content": fmt.system_prompt}, *messages]
    if not getattr(tokenizer, "chat_template", None):
        return text, list(tokenizer.encode(f"{fmt.system_prompt}\n\n{text}" if fmt.system_prompt else text))
    try:
        try:
            return text, _apply_template(tokenizer, messages, fmt.chat_template_kwargs)
        except Exception:
            if messages[0]["role"] != "system" or len(messages) < 2 or messages[1]["role"] != "user":
                raise
            merged = {"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}
            return text, _apply_template(tokenizer, [merged, *messages[2:]], fmt.chat_template_kwargs)
    except Exception as err:  # jinja2 and the tokenizers raise many types; the user needs one line
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"the chat template failed on the prompt {text[:40]!r}: {first_line} "
                          "(check data.chat_template_kwargs and data.system_prompt)") from None


def read_prompts(path: str, split: str, field: str, tokenizer, on_bad_row: str,
                 prompt_format: PromptFormat | None = None) -> tuple[list[Prompt], int]:
    rows = _load_rows(path, split, on_bad_row)
    if field not in rows.column_names:
        raise ConfigError(
            f"data.prompt_field={field!r} is not a column of {path} (columns: {', '.join(rows.column_names)}); set data.prompt_field"
        )
    prompts, skipped = [], 0
    for row, value in enumerate(rows[field]):
        where = rows.where(row) if hasattr(rows, "where") else f"row {row}"  # a JSON-lines file's line
        try:
            prompt = _prompt_text(value, where, field)
            check_text(prompt, where, field)
            check_last_turn(prompt, where, field)
        except ValueError as err:
            if on_bad_row == "skip":
                skipped += 1
                continue
            raise ConfigError(f"bad row in {path}: {err} (fix the row or set data.on_bad_row=skip)") from None
        try:
            text, ids = format_prompt(tokenizer, prompt, prompt_format)
        except ConfigError as err:
            raise ConfigError(f"{path}, {where}: {err}") from None
        prompts.append(Prompt(id=f"{split}:{row}", text=text, tokens=tuple(ids)))
    if skipped:
        log.warning("skipped %d bad rows of %s (data.on_bad_row=skip)", skipped, path)
    if not prompts:
        raise ConfigError(f"no usable prompts in {path} (split {split!r}, field {field!r})")
    return prompts, skipped


def load_prompts(cfg, tokenizer, seed: int, max_prompt_tokens: int | None = None) -> PromptSplits:
    """Train and held-out eval prompts as the data config says, left-truncated to `max_prompt_tokens`."""
    prompt_format = PromptFormat.from_config(cfg)
    train, skipped = read_prompts(cfg.path, cfg.split, cfg.prompt_field, tokenizer, cfg.on_bad_row, prompt_format)
    if cfg.eval_split:
        evals, more = read_prompts(cfg.path, cfg.eval_split, cfg.prompt_field, tokenizer, cfg.on_bad_row, prompt_format)
        skipped += more
    else:
        order = np.random.default_rng(seed).permutation(len(train))
        n_eval = int(round(len(train) * cfg.eval_fraction))
        if n_eval and len(train) - n_eval < 1:
            raise ConfigError(f"data.eval_fraction={cfg.eval_fraction} leaves no training prompts; lower it")
        evals = [train[i] for i in sorted(order[:n_eval])]
        train = [train[i] for i in sorted(order[n_eval:])]
    evals = evals[: cfg.max_eval_prompts]
    truncated = 0
    if max_prompt_tokens is not None:
        train, truncated = truncate_left(train, max_prompt_tokens)
        evals, more = truncate_left(evals, max_prompt_tokens)
        truncated += more
        if truncated:
            log.warning("left-truncated %d prompts to %d tokens (train.max_seq_length - generation.max_completion_length)",
                        truncated, max_prompt_tokens)
    return PromptSplits(train=train, eval=evals, skipped_rows=skipped, truncated_prompts=truncated)


class PromptSampler:
    """Endless batches of prompts: a seeded shuffle per epoch; position saved in checkpoints."""

    def __init__(self, prompts: list[Prompt], batch_size: int, seed: int, shuffle: bool = True):
        self.prompts = prompts
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.position = 0  # prompts consumed so far

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.prompts))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))

    def next_batch(self) -> list[Prompt]:
        batch = []
        n = len(self.prompts)
        while len(batch) < self.batch_size:
            epoch, index = divmod(self.position, n)
            batch.append(self.prompts[self._order(epoch)[index]])
            self.position += 1
        return batch
