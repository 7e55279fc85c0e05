"""Real chat models end to end (issue 13), offline on a tiny thinking model (`ppo.demo.tiny --thinking`):
the policy's prompt formatting, what the judge reads of a completion, and samples.jsonl."""

import json

import numpy as np
import pytest

from conftest import compose, small_run_overrides
from ppo.errors import ConfigError
from ppo.train.completions import CompletionReader, Markers, answer_ids
from ppo.train.data import PromptFormat, format_prompt, read_prompts
from ppo.train.rollout import Completions

EMPTY_BLOCK = "<think>\n\n</think>\n\n"


@pytest.fixture(scope="module")
def think_dir(tmp_path_factory):
    from ppo.demo.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("think") / "model", thinking=True, corpus_sentences=1000)


def _tokenizer(path):
    from mlx_lm import load

    return load(str(path))[1]


@pytest.fixture(scope="module")
def think_tok(think_dir):
    return _tokenizer(think_dir)


def _decode(tok, ids):
    return tok.decode(list(ids), skip_special_tokens=False)


# --- the policy's prompts ---------------------------------------------------------------


def test_thinking_is_off_by_default_and_can_be_switched_on(think_tok):
    default = PromptFormat.from_config(compose([]).data)
    assert default.chat_template_kwargs == {"enable_thinking": False}
    _, off = format_prompt(think_tok, "tell me about the dog", default)
    assert _decode(think_tok, off).endswith("<|im_start|>assistant\n" + EMPTY_BLOCK)
    on_cfg = PromptFormat.from_config(compose(["data.chat_template_kwargs.enable_thinking=true"]).data)
    _, on = format_prompt(think_tok, "tell me about the dog", on_cfg)
    assert _decode(think_tok, on).endswith("<|im_start|>assistant\n")
    # Without any kwargs mlx-lm switches thinking on for a tokenizer with think tokens: the
    # reason the default is explicit.
    _, bare = format_prompt(think_tok, "tell me about the dog", PromptFormat(chat_template_kwargs={}))
    assert bare == on
    assert format_prompt(think_tok, "tell me about the dog")[1] == off  # the function's default is the config's


def test_system_prompt_is_added_only_where_there_is_none(think_tok, tiny_model_dir):
    fmt = PromptFormat("be brief", {"enable_thinking": False})
    text, ids = format_prompt(think_tok, "tell me about the dog", fmt)
    assert text == "tell me about the dog"  # the judge reads the user's words only
    assert _decode(think_tok, ids).startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\ntell me")
    own = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "write about a cat"}]
    decoded = _decode(think_tok, format_prompt(think_tok, own, fmt)[1])
    assert "be kind" in decoded and "be brief" not in decoded
    # A template without a system role (it raises, like Gemma's): the system prompt opens the user turn.
    tok = _tokenizer(tiny_model_dir)
    tok._tokenizer.chat_template = (
        "{%- for m in messages %}{%- if m['role'] == 'system' %}{{ raise_exception('no system role') }}{%- endif %}"
        "{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    merged = _decode(tok, format_prompt(tok, "tell me about the dog", fmt)[1])
    assert merged == "<|im_start|>user\nbe brief\n\ntell me about the dog<|im_end|>\n<|im_start|>assistant\n"
    # No chat template at all: the system prompt comes before the text.
    tok._tokenizer.chat_template = None
    assert tok.decode(format_prompt(tok, "tell me", fmt)[1]) == "be brief\n\ntell me"


def test_a_failing_template_gets_one_line(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    tok._tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(ConfigError, match="chat template failed .*roles must alternate.*data.chat_template_kwargs"):
        format_prompt(tok, "tell me about the dog")


def test_a_prompt_ending_with_an_assistant_turn_is_named(tmp_path, think_tok):
    rows = [
        {"prompt": [{"role": "user", "content": "hi"}]},
        {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello, I"}]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"line 2: field 'prompt' ends with an assistant turn.*data.on_bad_row=skip") as err:
        read_prompts(str(path), "train", "prompt", think_tok, "error")
    assert "\n" not in str(err.value)
    prompts, skipped = read_prompts(str(path), "train", "prompt", think_tok, "skip")
    assert skipped == 1 and [p.id for p in prompts] == ["train:0"]


# --- what the judge reads ---------------------------------------------------------------

M = Markers(start=(7,), end=(8, 9))  # a two-token end marker, as some tokenizers have


@pytest.mark.parametrize("prompt,completion,answer,has_answer", [
    ([1, 2], [7, 3, 4, 8, 9, 5, 6], [5, 6], True),          # reasoning, then the answer
    ([1, 2], [7, 3, 8, 9, 4, 8, 9, 5], [5], True),          # the answer follows the last end marker
    ([1, 2], [7, 3, 4, 4], [], False),                      # cut inside its reasoning: no answer
    ([1, 7, 2], [3, 4], [], False),                         # the prompt opened the block, never closed
    ([1, 7, 3, 8, 9], [5, 6], [5, 6], True),                # thinking off: the prompt closed an empty block
    ([1, 2], [5, 6], [5, 6], True),                         # no reasoning at all
    ([1, 2], [5, 8], [5, 8], True),                         # half an end marker is text
])
def test_answer_ids(prompt, completion, answer, has_answer):
    assert answer_ids(prompt, completion, M) == (answer, has_answer)


def test_reader_without_markers_decodes_as_before(tiny_model_dir):
    tok = _tokenizer(tiny_model_dir)
    reader = CompletionReader(tok)
    assert reader.markers is None
    ids = [tok.encode("the dog runs .") + [tok.eos_token_id]]
    assert reader.texts([[1]], ids) == tok.batch_decode(ids, skip_special_tokens=True) == ["the dog runs ."]


def test_reader_markers_from_the_tokenizer_or_the_config(think_tok):
    assert CompletionReader(think_tok).markers == Markers((think_tok.think_start_id,), (think_tok.think_end_id,))
    assert CompletionReader(think_tok, include_reasoning=True).markers is None
    custom = CompletionReader(think_tok, markers=["[r]", "[/r]"]).markers
    assert custom.end == tuple(think_tok.encode("[/r]", add_special_tokens=False))
    with pytest.raises(ConfigError, match="judge.reasoning_markers"):
        CompletionReader(think_tok, markers=["<think>"])
    with pytest.raises(ConfigError, match="judge.include_reasoning"):
        CompletionReader(think_tok, include_reasoning="yes")


def test_judge_keys_reach_the_reader_through_the_pipeline(think_tok):
    from ppo.judges import build_judge

    default = build_judge(compose(["judge=rule"]).judge)
    assert default.include_reasoning is False and default.reasoning_markers is None
    assert CompletionReader.for_judge(default, think_tok).markers == Markers((think_tok.think_start_id,), (think_tok.think_end_id,))
    shown = build_judge(compose(["judge=rule", "judge.include_reasoning=true"]).judge)
    assert CompletionReader.for_judge(shown, think_tok).markers is None
    custom = build_judge(compose(["judge=length", "judge.reasoning_markers=['<r>','</r>']"]).judge)
    assert CompletionReader.for_judge(custom, think_tok).markers.start == tuple(think_tok.encode("<r>", add_special_tokens=False))


def _with_reasoning(tok, completions: Completions) -> Completions:
    """Rewrite sampled completions the way a thinking model writes them: row 0 of every three
    reasons then answers, row 1 is cut inside its reasoning, row 2 answers at once."""
    start, end = tok.think_start_id, tok.think_end_id
    gap = tok.encode("\n\n", add_special_tokens=False)
    answer = tok.encode("the happy dog .", add_special_tokens=False)
    ids, finished = [], []
    for i, (t, f) in enumerate(zip(completions.token_ids, completions.finished)):
        words = [x for x in t if x not in tok.eos_token_ids][:3]
        if i % 3 == 0:
            t, f = [start] + words + [end] + gap + answer + [tok.eos_token_id], True
        elif i % 3 == 1:
            t, f = [start] + words, False
        ids.append(t)
        finished.append(f)
    return Completions(ids, finished, completions.seconds, sum(len(t) for t in ids))


class Recorder:
    """A judge that prefers the first completion and remembers what it was shown."""

    def __init__(self):
        self.pairs = []

    def __call__(self, pairs, step=None, phase="train"):
        from ppo.judges import Verdicts

        self.pairs += pairs
        return Verdicts(p=np.full(len(pairs), 0.9))


@pytest.mark.parametrize("include_reasoning", [False, True])
def test_collect_shows_the_judge_answers_and_scores_every_sampled_token(think_dir, include_reasoning):
    from mlx_lm import load

    from ppo.train.data import Prompt
    from ppo.train.models import add_adapters
    from ppo.train.rollout import sample_pairs
    from ppo.train.step import Sampling, collect

    model, tok = load(str(think_dir))
    cfg = compose([f"model.path={think_dir}"])
    add_adapters(model, cfg.finetune)
    prompts = [Prompt(f"train:{i}", f"tell me about the dog {i}", tuple(format_prompt(tok, f"tell me about the dog {i}")[1]))
               for i in range(3)]
    sampled = []

    def sample_fn(m, ids, **kw):
        first, second = sample_pairs(m, ids, **kw)
        sampled.extend([_with_reasoning(tok, first), _with_reasoning(tok, second)])
        return sampled[-2], sampled[-1]

    judge = Recorder()
    out = collect(model, None, tok, judge, prompts, step=1, sampling=Sampling.from_config(cfg.generation, tok),
                  loss_cfg=cfg.loss, sample_fn=sample_fn, reader=CompletionReader(tok, include_reasoning),
                  keep_samples=2)
    first, _ = sampled
    shown = [p.a for p in judge.pairs]
    if include_reasoning:
        assert shown[0].startswith("<think>") and "</think>" in shown[0] and shown[1].startswith("<think>")
    else:
        assert shown[0] == "the happy dog ."
        assert shown[1] == "" and judge.pairs[1].a_finished is False  # cut inside its reasoning: no answer, cut
        assert not any("<think>" in p.a or "</think>" in p.b for p in judge.pairs)
    # The loss scores every sampled token, reasoning included.
    mask = np.array(out.judged.batch.completion_mask)
    assert mask[:3].sum(axis=1).tolist() == [len(t) for t in first.token_ids]
    rows = out.samples
    assert [r["prompt_id"] for r in rows] == ["train:0", "train:1"] and rows[0]["phase"] == "train"
    assert rows[0]["a"].startswith("<think>") and rows[0]["a"].endswith("<|im_end|>")
    assert rows[0]["a_judged"] == shown[0] and rows[1]["a_finished"] is False
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n" + EMPTY_BLOCK)
    assert rows[0]["p"] == pytest.approx(0.9) and rows[0]["verdict"] == "a"


# --- samples.jsonl from a run -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("thinking", [False, True])
def test_samples_file_of_a_run_on_a_thinking_model(tmp_path, monkeypatch, think_dir, think_tok, prompts_file, thinking):
    """The done-when of issue 13: thinking off -> prompts end with an empty reasoning block,
    on -> they do not; in both the judged texts hold no reasoning markers, while the
    completions as sampled (made to reason, see _with_reasoning) do."""
    import ppo.train.evaluation as evaluation
    import ppo.train.rollout as rollout
    from ppo.train.loop import train

    real = rollout.sample
    patched = lambda *a, **kw: _with_reasoning(think_tok, real(*a, **kw))  # noqa: E731
    monkeypatch.setattr(rollout, "sample", patched)
    monkeypatch.setattr(evaluation, "sample", patched)
    run_dir = tmp_path / "run"
    cfg = compose(small_run_overrides(think_dir, prompts_file, **{"train.iters": 3, "train.batch_size": 3})
                  + [f"data.chat_template_kwargs.enable_thinking={str(thinking).lower()}", "data.system_prompt=be brief"])
    train(cfg, run_dir)
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["phase"] == "train"]
    eval_rows = [r for r in rows if r["phase"] == "eval"]
    assert [r["step"] for r in train_rows] == [1, 1, 2, 2, 3, 3]  # train.samples_per_report=2 a step
    assert [r["step"] for r in eval_rows] == [2] * 4 + [3] * 4  # every held-out pair, each evaluation
    for r in rows:
        assert r["prompt"].startswith("<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n")
        assert r["prompt"].endswith(EMPTY_BLOCK) != thinking
        assert r["prompt"].endswith("<|im_start|>assistant\n") == thinking
        for side in ("a", "b"):
            assert "<think>" not in r[f"{side}_judged"] and "</think>" not in r[f"{side}_judged"]
        assert set(r) >= {"prompt_id", "a", "b", "a_finished", "b_finished", "p", "verdict"}
    assert any("<think>" in r["a"] for r in rows) and any(r["a_judged"] == "the happy dog ." for r in rows)
    cut = [r for r in rows if r["a"].startswith("<think>") and "</think>" not in r["a"]]
    assert cut and all(r["a_judged"] == "" and r["a_finished"] is False for r in cut)


def test_samples_file_drops_rows_past_the_checkpoint_on_resume(tmp_path):
    from ppo.train.samples import SamplesFile

    first = SamplesFile(tmp_path)
    for step in (1, 2, 3):
        first.write(step, [{"phase": "train", "prompt_id": f"train:{step}"}, {"phase": "eval"}])
    first.close()
    with open(tmp_path / "samples.jsonl", "a") as f:
        f.write('{"step": 4, "phase": "tr')  # a writer killed mid-line
    resumed = SamplesFile(tmp_path, resume_step=2)
    resumed.write(3, [{"phase": "train", "prompt_id": "again"}])
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("prompt_id")) for r in rows] == [(1, "train:1"), (1, None), (2, "train:2"), (2, None), (3, "again")]
    SamplesFile(tmp_path).close()  # a fresh run starts a fresh file
    assert not (tmp_path / "samples.jsonl").exists()


# --- data formats -----------------------------------------------------------------------


def test_a_saved_dataset_folder_and_the_seed_layout_in_parquet(tmp_path, think_tok):
    import datasets

    rows = {"prompt": ["tell me about the dog", "write about a cat", "describe the red ball"],
            "chosen": ["a good answer"] * 3, "rejected": ["a bad answer"] * 3}  # mlx-community/Human-Like-DPO's columns
    ds = datasets.Dataset.from_dict(rows)
    ds.to_parquet(str(tmp_path / "human_like.parquet"))
    prompts, _ = read_prompts(str(tmp_path / "human_like.parquet"), "train", "prompt", think_tok, "error")
    assert [p.text for p in prompts] == rows["prompt"]

    ds.save_to_disk(str(tmp_path / "saved"))
    prompts, _ = read_prompts(str(tmp_path / "saved"), "train", "prompt", think_tok, "error")
    assert [p.id for p in prompts] == ["train:0", "train:1", "train:2"] and prompts[2].text == "describe the red ball"
    with pytest.raises(ConfigError, match="holding only split 'train', not 'test'.*data.eval_split empty"):
        read_prompts(str(tmp_path / "saved"), "test", "prompt", think_tok, "error")
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved_dict"))
    prompts, _ = read_prompts(str(tmp_path / "saved_dict"), "test", "prompt", think_tok, "error")
    assert [p.text for p in prompts] == ["tell me about the dog"]


def test_the_llm_judge_reads_with_thinking_off_on_a_thinking_model(think_dir):
    from mlx_lm import load

    from ppo.judges import Pair
    from ppo.judges.llm import LLMJudge

    model, tok = load(str(think_dir))
    judge = LLMJudge(preloaded=(model, tok))
    prompt = tok.decode(judge.encode(Pair("tell me about the dog", "the dog runs .", "a dog .")), skip_special_tokens=False)
    assert prompt.endswith("<|im_start|>assistant\n" + EMPTY_BLOCK)  # its label comes right after: no reasoning
    p = judge([Pair("tell me about the dog", "the dog runs .", "a dog .")]).p
    assert 0.0 < p[0] < 1.0
