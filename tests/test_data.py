"""Prompts from local files through `datasets`, with bad rows named or skipped."""

import json

import pandas as pd
import pytest

from ppo.errors import ConfigError
from ppo.train.data import PromptSampler, load_prompts, read_prompts


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))[1]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_string_and_chat_prompts_are_templated(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "tell me about the dog"},
        {"prompt": [{"role": "system", "content": "be kind"}, {"role": "user", "content": "write about a cat"}]},
    ])
    prompts, skipped = read_prompts(str(path), "train", "prompt", tokenizer, "error")
    assert skipped == 0 and len(prompts) == 2
    assert prompts[0].text == "tell me about the dog"
    decoded = tokenizer.decode(list(prompts[0].tokens))
    assert decoded.startswith("<|im_start|>user\ntell me about the dog") and decoded.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nbe kind" in tokenizer.decode(list(prompts[1].tokens))
    assert prompts[1].text == "write about a cat"


@pytest.mark.parametrize("bad,reason", [({"prompt": ""}, "empty"), ({"other": "x"}, "missing"), ({"prompt": "   "}, "empty")])
def test_bad_row_is_named_or_skipped(tmp_path, tokenizer, bad, reason):
    rows = [{"prompt": "tell me about the dog", "other": "x"}, {"prompt": "write about a cat", "other": "y"}, {"other": "z", **bad}]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ConfigError, match=rf"line 3: field 'prompt'.*{reason}.*data.on_bad_row=skip"):
        read_prompts(str(path), "train", "prompt", tokenizer, "error")
    prompts, skipped = read_prompts(str(path), "train", "prompt", tokenizer, "skip")
    assert len(prompts) == 2 and skipped == 1


def test_non_text_prompt_is_named(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "user", "content": "hi"}]},
        {"prompt": [{"role": "user"}]},
    ])
    with pytest.raises(ConfigError, match=r"line 2: field 'prompt' must be a string or a list of \{role, content\} messages"):
        read_prompts(str(path), "train", "prompt", tokenizer, "error")


def test_parquet_and_folder(tmp_path, tokenizer):
    pd.DataFrame({"question": ["tell me about the dog", "write about a cat", "what does the fox do"]}).to_parquet(tmp_path / "q.parquet")
    prompts, _ = read_prompts(str(tmp_path / "q.parquet"), "train", "question", tokenizer, "error")
    assert [p.text for p in prompts][:2] == ["tell me about the dog", "write about a cat"]
    folder = tmp_path / "folder"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", [{"prompt": "tell me about the dog"}])
    prompts, _ = read_prompts(str(folder), "train", "prompt", tokenizer, "error")
    assert len(prompts) == 1


def test_unknown_field_names_columns(tmp_path, tokenizer):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"question": "hi"}])
    with pytest.raises(ConfigError, match=r"data.prompt_field='prompt'.*columns: question"):
        read_prompts(str(path), "train", "prompt", tokenizer, "error")


def test_eval_split_is_held_out_and_sampler_is_seeded(tmp_path, tokenizer, prompts_file):
    from omegaconf import OmegaConf

    from ppo.train.config import DataConfig

    cfg = OmegaConf.structured(DataConfig(path=str(prompts_file), eval_fraction=0.25))
    splits = load_prompts(cfg, tokenizer, seed=0)
    assert len(splits.eval) == 10 and len(splits.train) == 30
    assert not {p.id for p in splits.eval} & {p.id for p in splits.train}
    a, b = PromptSampler(splits.train, 4, seed=1), PromptSampler(splits.train, 4, seed=1)
    assert [[p.id for p in a.next_batch()] for _ in range(10)] == [[p.id for p in b.next_batch()] for _ in range(10)]
