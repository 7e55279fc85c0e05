"""Import a Llama-family GGUF file (llama.cpp's format) into a folder `mlx_lm.load` accepts.

    import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "out/SmolLM2")                 # float32 weights
    import_gguf("model.Q4_0.gguf", "out/q4", dequantize=False)                     # a 4-bit base for QLoRA

What is where, and why:

- Weights come through MLX's own GGUF reader (`mx.load`). It reads F32 and F16 as they are, BF16
  as float16, and Q4_0, Q4_1 and Q8_0 blocks as MLX affine quantized weights of group size 32
  (`weight` uint32, `scales` and `biases` float16: Q4_1 is `d * q + m`, Q4_0 `d * (q - 8)`, the
  very values llama.cpp computes). Those six block types are all this importer takes; any other
  one is a one-line `ConfigError` naming it. Measured with gguf-py's reference dequantizer on
  MLX 0.32.4: Q5_0, Q5_1, Q3_K, Q5_K and the IQ types make `mx.load` refuse the whole file, and
  its Q4_K decoding disagrees with gguf-py's (on random blocks, errors of the size of the
  values themselves), so K-quant files are refused too.
- The block types are read from the file's header here (`read_tensor_types`), not from `mx.load`:
  it fails on the first type it cannot read with a message that names neither tensor nor type,
  and gguf-py's `GGUFReader` spends 6 s parsing SmolLM2's 49152 vocabulary strings to tell us.
- llama.cpp's converter (convert_hf_to_gguf.py, `LlamaModel.permute`) reorders the rows of every
  Q and K projection from the Hugging Face rotary layout (rotate halves) to the interleaved one
  llama.cpp computes with: rows reshaped to (n_head, 2, head_dim / 2) and the two inner axes
  swapped, with n_head = head_count_kv for K. `unpermute_rows` applies the inverse, so the folder
  uses the Hugging Face layout (`rope_traditional: false`) like every mlx-lm llama. It permutes
  output rows only, so it applies alike to float weights and to packed quantized weights, their
  scales and their biases.
- Quantized blocks are dequantized to `dtype` (default) or kept as MLX quantized weights
  (`dequantize=False`, with `"quantization": {"group_size": 32, "bits": 4}` in config.json as
  mlx-lm expects; a tensor of other bits, e.g. SmolLM2's Q8_0 embedding, gets a per-layer entry).
  Scales and biases are widened to float32 before dequantizing: float16 arithmetic would round
  `d * q + m`. Kept quantized, they are cast to `dtype` (float16 to float32 is exact).
- The tokenizer is rebuilt with the `tokenizers` library from the metadata, not with transformers'
  `convert_gguf_tokenizer`: `ppo.models.gguf_tokenizer` says how and why.
- The folder is written to a hidden temporary folder beside `out_dir` and renamed into place
  last, so a killed import never leaves a half folder. `gguf_import.json` in it records the
  source file's sha256 and the options (how `ppo-fetch` knows a cached import is complete).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
from collections import Counter
from pathlib import Path
from typing import Callable

from ppo.errors import ConfigError
from ppo.io import file_sha256
from ppo.models.gguf_tokenizer import _meta, tokenizer_files

IMPORT_RECORD = "gguf_import.json"
IMPORTER_VERSION = 1
ARCHITECTURES = ("llama",)
DTYPES = ("float32", "float16", "bfloat16")
GROUP_SIZE = 32  # every GGUF block type mx.load reads as quantized has 32 weights per block

# ggml's type ids (ggml.h); the names are only for messages.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8",
    25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
    39: "MXFP4",
}
FLOAT_TYPES = (0, 1, 30)  # F32, F16, BF16 (mx.load gives BF16 as float16)
QUANTIZED_BITS = {2: 4, 3: 4, 8: 8}  # Q4_0, Q4_1, Q8_0: MLX affine, group size 32

# GGUF tensor names (llama.cpp's gguf-py constants) -> mlx-lm / Hugging Face llama names.
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


# --- reading the file ------------------------------------------------------------------------

_SCALAR_WIDTH = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value types
_STRING, _ARRAY = 8, 9


def read_tensor_types(path) -> dict[str, tuple[int, tuple[int, ...]]]:
    """`{gguf_name: (ggml type id, shape)}` from the GGUF header (shape row-major, as mx.load gives
    it), stepping over the metadata values without decoding them."""
    path = Path(path)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _tensor_infos(buf, path)
    except (struct.error, ValueError, UnicodeDecodeError) as err:  # ValueError: an empty file cannot be mapped
        raise ConfigError(f"{path} is not a complete GGUF file ({err}): download it again") from None


def _tensor_infos(buf, path: Path) -> dict[str, tuple[int, tuple[int, ...]]]:
    if buf[:4] != b"GGUF":
        raise ConfigError(f"{path} is not a GGUF file (it does not start with 'GGUF'): give a llama.cpp .gguf file")
    (version,) = struct.unpack_from("<I", buf, 4)
    if version not in (2, 3):
        raise ConfigError(f"{path} is GGUF version {version}; only versions 2 and 3 are read: convert it again "
                          "with a current llama.cpp")
    n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)

    def skip_string(pos: int) -> int:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]

    def skip_value(kind: int, pos: int) -> int:
        if kind in _SCALAR_WIDTH:
            return pos + _SCALAR_WIDTH[kind]
        if kind == _STRING:
            return skip_string(pos)
        if kind == _ARRAY:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _SCALAR_WIDTH:
                return pos + count * _SCALAR_WIDTH[item]
            for _ in range(count):
                pos = skip_value(item, pos)
            return pos
        raise ValueError(f"unknown metadata value type {kind}")

    pos = 24
    for _ in range(n_kv):
        pos = skip_string(pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos = skip_value(kind, pos + 4)
    tensors = {}
    for _ in range(n_tensors):
        (length,) = struct.unpack_from("<Q", buf, pos)
        name = bytes(buf[pos + 8:pos + 8 + length]).decode("utf-8")
        pos += 8 + length
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 12  # the type and the data offset
        tensors[name] = (kind, tuple(reversed(dims)))  # GGUF lists the fastest-varying dimension first
    return tensors


def _check_block_types(path: Path, tensors: dict) -> None:
    unsupported = Counter(kind for kind, _ in tensors.values() if kind not in FLOAT_TYPES and kind not in QUANTIZED_BITS)
    if unsupported:
        names = ", ".join(f"{GGML_TYPE_NAMES.get(kind, f'type {kind}')} ({count} tensors)"
                          for kind, count in unsupported.most_common())
        raise ConfigError(f"{path.name} holds block types this importer cannot read: {names}; it reads F32, F16, BF16, "
                          "Q8_0, Q4_0 and Q4_1 (what mx.load decodes exactly): use such a GGUF of the model, or "
                          "requantize with llama.cpp (llama-quantize --allow-requantize IN.gguf OUT.gguf Q8_0)")


# --- config ----------------------------------------------------------------------------------

def model_config(metadata: dict, tensors: dict, dtype: str) -> dict:
    """config.json for mlx-lm's `llama` model type, from the `llama.*` metadata keys."""
    arch = _meta(metadata, "general.architecture")

    def get(key: str, default=ConfigError):
        value = _meta(metadata, f"{arch}.{key}", default)
        if value is ConfigError:
            raise ConfigError(f"the GGUF metadata lacks {arch}.{key}: the file is incomplete; convert it again with llama.cpp")
        if isinstance(value, list):
            raise ConfigError(f"the GGUF metadata gives {arch}.{key} per layer, which a llama model cannot take")
        return value

    hidden, heads = get("embedding_length"), get("attention.head_count")
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = get("attention.key_length", hidden // heads)
    rope_dims = get("rope.dimension_count", head_dim)
    if rope_dims != head_dim:
        raise ConfigError(f"the GGUF rotates {rope_dims} of {head_dim} dimensions per head (partial rotary), "
                          "which mlx-lm's llama cannot compute: this model is not a plain Llama")
    vocab = tensors["token_embd.weight"][1][0] if "token_embd.weight" in tensors else get("vocab_size")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": get("block_count"),
        "intermediate_size": get("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon"),
        "vocab_size": vocab,
        "max_position_embeddings": get("context_length"),
        "rope_theta": get("rope.freq_base", 10000.0),
        "rope_traditional": False,  # the Q/K rows are put back in the Hugging Face order
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": False,
        "hidden_act": "silu",
        "torch_dtype": dtype,
    }
    scaling = get("rope.scaling.type", None)
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": get("rope.scaling.factor")}
    elif scaling not in (None, "none"):
        raise ConfigError(f"the GGUF uses rope scaling {scaling!r}; only linear scaling is imported")
    return config


# --- weights ---------------------------------------------------------------------------------

def mlx_name(gguf_name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for a tensor with
    no Llama counterpart (mixture-of-experts tensors, llama 3.1's `rope_freqs`, ...)."""
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        parts = base.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in LAYER_NAMES:
            return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{suffix}"
        return None
    return f"{TOP_NAMES[base]}.{suffix}" if base in TOP_NAMES else None


def unpermute_rows(w, n_head: int):
    """The inverse of llama.cpp's `permute(w, n_head, n_head_kv)` over the output rows of `w`:
    rows (n_head, head_dim / 2, 2) -> (n_head, 2, head_dim / 2), so the rotary pairs (i, i + d/2)
    of the Hugging Face layout are back in place. Any trailing shape (packed words, groups) rides along."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ConfigError(f"a Q/K projection has {rows} rows, not a multiple of 2 x {n_head} heads: the GGUF's head "
                          "counts do not fit its tensors")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_weights(arrays: dict, tensors: dict, config: dict, dequantize: bool, dtype: str):
    """(mlx-lm weights, {module path: bits} of the tensors kept quantized)."""
    import mlx.core as mx

    unknown = [name for name in tensors if mlx_name(name) is None]
    if unknown:
        raise ConfigError(f"the GGUF holds {len(unknown)} tensors with no Llama counterpart (e.g. {unknown[0]}): "
                          "mixture-of-experts and llama-3.1-style rope_freqs models are not imported")
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    weights, kept_bits = {}, {}
    for name, (kind, shape) in sorted(tensors.items()):
        stem = name.rsplit(".", 1)[0]
        parts = {"weight": arrays[name]}
        if kind in QUANTIZED_BITS:
            parts["scales"], parts["biases"] = arrays[f"{stem}.scales"], arrays[f"{stem}.biases"]
        n_head = heads.get(stem.rsplit(".", 1)[-1])
        if n_head:
            parts = {key: unpermute_rows(value, n_head) for key, value in parts.items()}
        converted = _convert(parts, kind, shape, name, dequantize, getattr(mx, dtype))
        target = mlx_name(name)
        if len(converted) > 1:  # kept quantized
            kept_bits[target.rsplit(".", 1)[0]] = QUANTIZED_BITS[kind]
        for key, value in converted.items():
            weights[target if key == "weight" else f"{target.rsplit('.', 1)[0]}.{key}"] = value
    bad = [name for name, value in weights.items()
           if mx.issubdtype(value.dtype, mx.floating) and not mx.all(mx.isfinite(value)).item()]
    if bad:
        raise ConfigError(f"{len(bad)} weights hold NaN or infinite values (e.g. {bad[0]}; a BF16 value beyond "
                          "float16's range reads as inf): use an F16, F32 or Q8_0 GGUF of the model")
    return weights, kept_bits


def _convert(parts: dict, kind: int, shape: tuple, name: str, dequantize: bool, dtype) -> dict:
    """One tensor as `dtype` ({"weight"}), or kept quantized ({"weight", "scales", "biases"})."""
    import mlx.core as mx

    if kind not in QUANTIZED_BITS:
        out = {"weight": parts["weight"].astype(dtype)}
        got = out["weight"].shape
    elif dequantize:
        out = {"weight": mx.dequantize(parts["weight"], parts["scales"].astype(mx.float32), parts["biases"].astype(mx.float32),
                                       group_size=GROUP_SIZE, bits=QUANTIZED_BITS[kind]).astype(dtype)}
        got = out["weight"].shape
    else:
        out = {"weight": parts["weight"], "scales": parts["scales"].astype(dtype), "biases": parts["biases"].astype(dtype)}
        got = (*out["weight"].shape[:-1], out["weight"].shape[-1] * 32 // QUANTIZED_BITS[kind])
    if tuple(got) != tuple(shape):
        raise ConfigError(f"mx.load gave {name} the shape {tuple(got)} where the GGUF header says {tuple(shape)}: this "
                          "MLX reads GGUF differently than this importer expects; report it with the MLX version")
    mx.eval(out)
    return out


def quantization_config(kept_bits: dict) -> dict | None:
    """mlx-lm's `quantization` entry: the common bits, and per-layer entries for the others."""
    if not kept_bits:
        return None
    common = Counter(kept_bits.values()).most_common(1)[0][0]
    config = {"group_size": GROUP_SIZE, "bits": common}
    config.update({module: {"group_size": GROUP_SIZE, "bits": bits}
                   for module, bits in sorted(kept_bits.items()) if bits != common})
    return config


# --- writing ---------------------------------------------------------------------------------

def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary folders of imports that were killed (their process is gone)."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def occupied(out: Path) -> bool:
    """Something is at `out` that an import must not replace (an empty folder it may)."""
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def write_folder_atomically(out: Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a hidden folder beside `out`, which is renamed to `out` when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        os.rename(tmp, out)  # atomic; replaces an empty folder, fails on a full one (another import's)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if occupied(out):
            raise ConfigError(f"{out} already exists: remove it or choose another output folder") from None
        raise ConfigError(f"could not write {out} ({err.strerror or err}): free space or choose another folder") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def import_gguf(gguf_path, out_dir, dequantize: bool = True, dtype: str = "float32",
                log: Callable[[str], None] | None = None) -> Path:
    """Write an mlx-lm model folder for a Llama-family GGUF file; return its path.

    `dequantize`: quantized blocks become `dtype` weights (default), else they stay MLX
    quantized weights (group size 32) with float `dtype` scales and biases. Files: config.json,
    model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json, and
    gguf_import.json (source sha256 and options). Raises ConfigError (one line) for a file
    this cannot import, or an `out_dir` that already exists.
    """
    import mlx.core as mx

    log = log or (lambda line: None)
    src, out = Path(gguf_path).expanduser(), Path(out_dir).expanduser()
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if not src.is_file():
        raise ConfigError(f"GGUF file {src} does not exist: give the path of a .gguf file")
    if occupied(out):
        raise ConfigError(f"{out} already exists: remove it or choose another output folder")
    tensors = read_tensor_types(src)
    _check_block_types(src, tensors)
    try:
        arrays, metadata = mx.load(str(src), return_metadata=True)
    except Exception as err:
        raise ConfigError(f"mx.load could not read {src}: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}") from None
    arch = _meta(metadata, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{src.name} is a {arch!r} model (general.architecture); this importer reads "
                          f"{', '.join(ARCHITECTURES)} (Llama-family) GGUF files only")
    config = model_config(metadata, tensors, dtype)
    tokenizer, tokenizer_config, special_map = tokenizer_files(metadata, config)
    weights, kept_bits = convert_weights(arrays, tensors, config, dequantize, dtype)
    del arrays
    if quantization := quantization_config(kept_bits):
        config["quantization"] = config["quantization_config"] = quantization
    counts = Counter(GGML_TYPE_NAMES[kind] for kind, _ in tensors.values())
    record = {
        "gguf": src.name,
        "gguf_sha256": file_sha256(src),
        "dequantized": dequantize,
        "dtype": dtype,
        "importer_version": IMPORTER_VERSION,
        "architecture": arch,
        "block_types": dict(sorted(counts.items())),
        "parameters": sum(math.prod(shape) for _, shape in tensors.values()),
    }

    def write(folder: Path) -> None:
        _write_json(folder / "config.json", config)
        mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
        tokenizer.save(str(folder / "tokenizer.json"))
        _write_json(folder / "tokenizer_config.json", tokenizer_config)
        _write_json(folder / "special_tokens_map.json", special_map)
        _write_json(folder / IMPORT_RECORD, record)  # last: its presence means the rest is there

    log(f"writing {out} ({record['parameters'] / 1e6:.1f}M parameters, "
        f"{'dequantized to ' + dtype if dequantize or not kept_bits else 'kept quantized'})")
    return write_folder_atomically(out, write)


def import_record(folder) -> dict | None:
    """The gguf_import.json of a complete import, or None."""
    try:
        return json.loads((Path(folder) / IMPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
