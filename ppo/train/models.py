"""Loading the policy (base + adapters through mlx-lm) and its frozen reference.

The reference costs no second copy: with `model.reference_path` empty it is the
policy's own base weights with the adapters switched off (`adapters_disabled`), or, when
the policy starts from a supervised fine-tune's adapter (`model.adapter_path`), the
policy's adapter layers holding that adapter's values (`StartingAdapters`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ppo.errors import ConfigError
from ppo.io import ADAPTER_CONFIG_FILE, ADAPTER_FILE
from ppo.train.config import MODEL_DTYPES
from ppo.train.model_folder import check_model_folder, missing_model_fix, tokenizer_difference

log = logging.getLogger(__name__)

# model.dtype's fixed choices (the schema's MODEL_DTYPES less `auto`, which resolve_dtype resolves per backend).
DTYPES = {name: getattr(mx, name) for name in MODEL_DTYPES if name != "auto"}

# What a quantized base costs on the CPU, said once per run (the measurements: ppo/train/config.py, model.dtype).
QUANTIZED_CPU_COST = ("runs about 10-100x slower than float32 on the CPU (4-bit, a 576x1536 matmul at 16 and 256 rows "
                      "on a 2-core x86 CPU; `ppo-doctor` measures this machine)")


def on_cpu() -> bool:
    """Whether MLX computes on its CPU backend: no Metal or CUDA GPU, or the default device set to the CPU."""
    return mx.default_device().type == mx.DeviceType.cpu


def resolve_dtype(name: str = "auto"):
    """The MLX dtype `model.dtype=name` casts to; None keeps the checkpoint's own (auto on a GPU)."""
    if name == "auto":
        return mx.float32 if on_cpu() else None
    return DTYPES[name]


def dtype_name(dtype) -> str:
    """'float32' for mx.float32."""
    return str(dtype).rsplit(".", 1)[-1]


def cast_model(model: nn.Module, name: str = "auto") -> None:
    """Cast the floating-point parameters to `model.dtype=name` (mlx's default predicate: quantized
    uint32 weights stay, their scales and biases follow), materialized so the old copies are freed."""
    dtype = resolve_dtype(name)
    floats = [v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)]
    if dtype is not None and any(d != dtype for d in floats):  # a model already in it is left as it is
        model.set_dtype(dtype)
        mx.eval(model.parameters())


def float_dtype(model: nn.Module) -> str | None:
    """The floating-point dtype holding most of the base's parameter values ('float32'; adapter layers'
    own weights, float32 as mlx-lm makes them, left out), None if none."""
    own = {f"{name}.{key}" for name, _ in _adapter_modules(model) for key in ("lora_a", "lora_b", "m")}
    counts: dict = {}
    for name, value in tree_flatten(model.parameters()):
        if mx.issubdtype(value.dtype, mx.floating) and name not in own:
            counts[value.dtype] = counts.get(value.dtype, 0) + value.size
    return dtype_name(max(counts, key=counts.get)) if counts else None


def is_quantized(model) -> bool:
    return isinstance(model, nn.Module) and any(
        isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())


def quantized_cpu_warning(models: list, setting: str, avoid: str) -> None:
    """One warning when any of `models` computes with quantized layers on the CPU; none on a GPU."""
    if on_cpu() and any(is_quantized(m) for m in models):
        log.warning("%s: a quantized base %s; %s avoids it", setting, QUANTIZED_CPU_COST, avoid)


def load_model(path: str, trust_remote_code: bool = False, dtype: str | None = None):
    """mlx_lm.load on a local folder or a hub id, with a one-line error when it fails; `dtype`:
    a model.dtype choice to cast to (`cast_model`), None keeps the checkpoint's dtype."""
    from mlx_lm import load

    local = Path(path).expanduser()
    looks_local = path.startswith((".", "/", "~")) or local.exists() or path.count("/") != 1
    if looks_local and not local.is_dir():
        raise ConfigError(f"model path {path} does not exist: {missing_model_fix(local)}")
    if looks_local:
        check_model_folder(local, path)
    try:
        model, tokenizer = load(str(local) if looks_local else path, trust_remote_code=trust_remote_code)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if looks_local and isinstance(err, (KeyError, TypeError, AttributeError)):  # a field config.json lacks
            first_line = f"{local / 'config.json'} does not describe the model ({first_line}); fix or re-download it"
        raise ConfigError(f"could not load model {path}: {first_line}") from err
    if dtype is not None:
        cast_model(model, dtype)
    return model, tokenizer


def lora_parameters(ft) -> dict:
    params = {"rank": ft.rank, "scale": ft.scale, "dropout": ft.dropout}
    if ft["keys"]:  # item access: a DictConfig's .keys is the dict method
        params["keys"] = list(ft["keys"])
    return params


def add_adapters(model: nn.Module, ft) -> None:
    """Freeze the base and add LoRA (or DoRA) layers with mlx-lm's tuner."""
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if ft.type == "full":
        model.unfreeze()
        return
    num_layers = min(ft.num_layers, len(model.layers)) if ft.num_layers >= 0 else len(model.layers)
    linear_to_lora_layers(model, num_layers, lora_parameters(ft), use_dora=ft.type == "dora")


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    kinds = (LoRALinear, LoRASwitchLinear, LoRAEmbedding, DoRALinear, DoRAEmbedding)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]


@contextlib.contextmanager
def adapters_disabled(model: nn.Module):
    """Run the base model through the policy's own weights: no second copy.

    LoRA layers are swapped for the base layers they wrap. A DoRA layer instead keeps its
    code path with the low-rank update zeroed and the magnitude reset to the base norm
    (what `DoRALinear.set_linear` computes): on a quantized base DoRA multiplies by the
    dequantized weight, not the quantized kernel, so only its own path reproduces the
    initial policy to the last bit.
    """
    from mlx_lm.tuner.dora import DoRALinear

    adapters = _adapter_modules(model)
    swapped = [(name, m) for name, m in adapters if not isinstance(m, DoRALinear)]
    doras = [m for _, m in adapters if isinstance(m, DoRALinear)]
    saved = [(m.lora_b, m.m) for m in doras]
    base_name = lambda m: "linear" if hasattr(m, "linear") else "embedding"  # noqa: E731
    if swapped:
        model.update_modules(tree_unflatten([(name, getattr(m, base_name(m))) for name, m in swapped]))
    for m in doras:
        m.lora_b = mx.zeros_like(m.lora_b)
        m.m = mx.linalg.norm(m._dequantized_weight().astype(mx.float32), axis=1)
    try:
        yield model
    finally:
        if swapped:
            model.update_modules(tree_unflatten(swapped))
        for m, (lora_b, magnitude) in zip(doras, saved):
            m.lora_b, m.m = lora_b, magnitude


def quantize_base(model: nn.Module, model_cfg, trainable: bool = False) -> None:
    """Quantize the base weights in place through mlx-lm (QLoRA-style: adapters stay float).

    Quantized weights cannot take gradients, so for full fine-tuning (`trainable`) the
    quantized weights are dequantized again: training starts from exactly the values
    the quantized model computes with, in float.
    """
    if model_cfg.quantize == "none":
        return
    from mlx_lm.utils import dequantize_model, quantize_model

    quantize_model(model, {}, group_size=model_cfg.quantize_group_size, bits=int(model_cfg.quantize))
    # mlx-lm skips every layer whose width the group size does not divide, silently.
    if not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        raise ConfigError(f"model.quantize={model_cfg.quantize} with model.quantize_group_size={model_cfg.quantize_group_size} "
                          "quantized no layer of the model (no weight width divides by the group size); "
                          "choose a smaller model.quantize_group_size (32) or model.quantize=none")
    if trainable:
        dequantize_model(model)


@functools.lru_cache(maxsize=4)
def starting_adapter_config(path: str) -> dict:
    """adapter_config.json of `model.adapter_path` (an `mlx_lm.lora` output folder), checked.
    Read once per process: every checkpoint writes it again, even if the folder is gone."""
    import json

    folder = Path(path).expanduser()
    config_file, weights_file = folder / ADAPTER_CONFIG_FILE, folder / ADAPTER_FILE
    if not config_file.is_file() or not weights_file.is_file():
        raise ConfigError(f"model.adapter_path={path} is not an mlx-lm adapter folder: it needs {ADAPTER_CONFIG_FILE} "
                          f"and {ADAPTER_FILE} (the --adapter-path of `mlx_lm.lora`)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ConfigError(f"model.adapter_path={path}: {ADAPTER_CONFIG_FILE} is not valid JSON ({err})") from None
    kind = config.get("fine_tune_type", "lora")
    if kind == "full":
        raise ConfigError(f"model.adapter_path={path} holds a full fine-tune, not adapters: fuse it "
                          f"(`mlx_lm.fuse --model BASE --adapter-path {path} --save-path DIR`) and set model.path=DIR")
    if kind not in ("lora", "dora") or not isinstance(config.get("lora_parameters"), dict) or "num_layers" not in config:
        raise ConfigError(f"model.adapter_path={path}: {ADAPTER_CONFIG_FILE} needs fine_tune_type lora or dora, "
                          "num_layers and lora_parameters, as `mlx_lm.lora` writes it")
    return config


def same_model_name(named: str, path: str) -> bool:
    """Whether an adapter_config.json's "model" (as `mlx_lm.lora --model` was given it: a folder or
    a hub id) names the model at `path`: the same folder, or the same last name (a hub id
    `org/SmolLM2-135M-Instruct` and a local converted copy `.../SmolLM2-135M-Instruct`)."""
    a, b = Path(named).expanduser(), Path(path).expanduser()
    if a.exists() and b.exists() and a.resolve() == b.resolve():
        return True
    return a.name.lower() == b.name.lower()


def check_adapter_base(path: str, base_path: str) -> None:
    """Refuse a starting adapter whose adapter_config.json names another base model than model.path,
    even when its tensors have the shapes of model.path's layers: adapters of another model (a sibling
    of the same architecture and size) would load and train on silently."""
    named = starting_adapter_config(path).get("model")
    if isinstance(named, str) and named and not same_model_name(named, base_path):
        config_file = Path(path).expanduser() / ADAPTER_CONFIG_FILE
        raise ConfigError(f"model.adapter_path={path} was trained on another base model ({config_file} names "
                          f"{named!r}, model.path is {base_path!r}); give the base model it was trained on, or, if it "
                          f'does fit this one (the same weights under another name), set "model" in {config_file} '
                          f"to {str(base_path)!r}")


def add_starting_adapter(model: nn.Module, path: str, dropout: float, base_path: str | None = None) -> None:
    """Freeze the base and add the adapter layers of `path` with its weights (as mlx-lm's
    `load_adapters` does), trainable: the policy starts as the supervised fine-tune.

    The layers are the adapter's own (type, rank, scale, layers, keys), so that
    `mlx_lm.load(model.path, adapter_path=RUN_DIR)` rebuilds them; only the dropout is the
    run's (`finetune.dropout`), which the trainer's ratio bookkeeping relies on.
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    config = starting_adapter_config(path)
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], {**config["lora_parameters"], "dropout": dropout},
                          use_dora=config.get("fine_tune_type") == "dora")
    weights_file = Path(path).expanduser() / ADAPTER_FILE
    try:
        weights = mx.load(str(weights_file))
    except (RuntimeError, ValueError, OSError) as err:  # MLX: "[load_safetensors] Invalid json header length ..."
        what = "is empty" if weights_file.stat().st_size == 0 else f"is not a safetensors file ({str(err).splitlines()[0]})"
        raise ConfigError(f"model.adapter_path={path}: {ADAPTER_FILE} {what}; give the folder `mlx_lm.lora` wrote "
                          "(or copy its adapters.safetensors again)") from None
    trainable = dict(tree_flatten(model.trainable_parameters()))
    wrong = sorted(k for k, w in weights.items() if k not in trainable or trainable[k].shape != w.shape)
    if wrong or set(weights) != set(trainable):
        missing = sorted(set(trainable) - set(weights))
        raise ConfigError(f"model.adapter_path={path} does not fit model.path: "
                          + (f"{len(wrong)} tensors without a matching layer (e.g. {wrong[0]})" if wrong
                             else f"{len(missing)} adapter tensors missing (e.g. {missing[0]})")
                          + "; give the base model the adapter was trained on")
    if base_path is not None:  # the tensors fit: is it this model's adapter, or a same-shaped sibling's?
        check_adapter_base(path, base_path)
    # A NaN or inf in the starting adapter makes step 1's loss non-finite, which would read as
    # a diverged run (and a too-high learning rate): say where it comes from instead.
    broken = next((k for k in sorted(weights) if not bool(mx.isfinite(weights[k]).all().item())), None)
    if broken is not None:
        raise ConfigError(f"model.adapter_path={path}: the starting adapter holds NaN or inf values "
                          f"({Path(path).expanduser() / ADAPTER_FILE}, tensor {broken}); give an adapter saved before "
                          "its training diverged, or retrain it")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())


def fuse_adapters(model: nn.Module) -> None:
    """Fold LoRA / DoRA layers into their base layers (what `mlx_lm.fuse` does), dequantized."""
    fused = [(name, m.fuse(dequantize=True)) for name, m in _adapter_modules(model)]
    if fused:
        model.update_modules(tree_unflatten(fused))


class StartingAdapters:
    """The reference when the policy starts from `model.adapter_path` under LoRA / DoRA: the
    adapter's own values, kept aside (a few MB at most) and swapped into the policy's
    adapter layers while the reference runs. The very layers and kernels compute both, so
    the first step's ratios are exactly 1 and its KL 0 on any base precision."""

    def __init__(self, model: nn.Module):
        self.values = tree_flatten(model.trainable_parameters())

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        current = tree_flatten(model.trainable_parameters())
        model.update(tree_unflatten(self.values))
        try:
            yield model
        finally:
            model.update(tree_unflatten(current))


def load_frozen(path: str, model_cfg, like_trainable: bool = False):
    """(model, its tokenizer), quantized like the policy, frozen, in eval mode."""
    model, tokenizer = load_model(path, model_cfg.trust_remote_code, getattr(model_cfg, "dtype", "auto"))
    quantize_base(model, model_cfg, trainable=like_trainable)
    model.freeze()
    model.eval()
    return model, tokenizer


def load_policy_and_reference(model_cfg, ft):
    """(policy, reference, tokenizer). `reference` is None when it is the policy's base.

    LoRA and DoRA: the reference is the policy with its adapters switched off, so it
    costs no memory and, on a quantized base, uses the very same quantized weights
    (every ratio is exactly 1 before the first update). Full fine-tuning changes the base
    itself, so it keeps one frozen copy. A set `model.reference_path` loads that model,
    quantized like the policy.

    `model.adapter_path` (an `mlx_lm.lora` folder): the policy starts as base + that
    adapter, and the reference is that same model, frozen. LoRA / DoRA train the adapter's
    own layers on from its values (the reference: `StartingAdapters`); full fine-tuning
    trains the base with the adapter fused into it (the reference: a fused frozen copy).

    Every loaded model is cast to `model.dtype` first (`cast_model`), so that quantization
    and the adapters (float32, as mlx-lm makes them) come after it.
    """
    policy, tokenizer = load_model(model_cfg.path, model_cfg.trust_remote_code, getattr(model_cfg, "dtype", "auto"))
    quantize_base(policy, model_cfg, trainable=ft.type == "full")
    start = getattr(model_cfg, "adapter_path", "") or ""
    if start and ft.type != "full":
        add_starting_adapter(policy, start, ft.dropout, base_path=model_cfg.path)
    else:
        if start:  # full fine-tuning from the supervised fine-tune: its adapter folded into the base
            add_starting_adapter(policy, start, 0.0, base_path=model_cfg.path)
            fuse_adapters(policy)
        add_adapters(policy, ft)
    reference = None
    if model_cfg.reference_path:
        reference, reference_tokenizer = load_frozen(model_cfg.reference_path, model_cfg)
        check_reference_fits(policy, reference, model_cfg, tokenizer, reference_tokenizer)
    elif ft.type == "full":
        reference, _ = load_frozen(model_cfg.path, model_cfg, like_trainable=True)
        if start:
            add_starting_adapter(reference, start, 0.0)
            fuse_adapters(reference)
            reference.freeze()
    elif start:
        reference = StartingAdapters(policy)
    warn_quantized_base(policy, reference, model_cfg)
    return policy, reference, tokenizer


def warn_quantized_base(policy: nn.Module, reference, model_cfg) -> None:
    """The run's one warning when the policy or a loaded reference computes quantized on the CPU
    (a full fine-tune's policy is dequantized: it computes in float)."""
    if model_cfg.quantize != "none":
        quantized_cpu_warning([policy, reference], f"model.quantize={model_cfg.quantize}",
                              "model.quantize=none with a float checkpoint")
        return
    key = "path" if is_quantized(policy) else "reference_path"
    quantized_cpu_warning([policy, reference], f"model.{key}={getattr(model_cfg, key)} loads with quantized layers",
                          "a float (unquantized) checkpoint of the model")


def check_reference_fits(policy: nn.Module, reference: nn.Module | None, model_cfg, tokenizer=None,
                         reference_tokenizer=None) -> None:
    """Refuse a reference whose log-probs do not mean the same tokens as the policy's: the
    KL and every ratio would compare different vocabularies (or gather past its logits).
    Only a reference loaded from `model.reference_path` can differ: the others are the
    policy's own base, a frozen copy of it, or the starting adapter swapped in. The sizes
    alone do not tell two tokenizers apart (two BPEs of 49,152 tokens trained on other text):
    given both tokenizers, their token strings are compared id by id."""
    if reference is None or not model_cfg.reference_path:
        return

    def describe(model):
        args = getattr(model, "args", None)
        return getattr(model, "model_type", None) or getattr(args, "model_type", None), getattr(args, "vocab_size", None)

    (policy_type, policy_vocab), (ref_type, ref_vocab) = describe(policy), describe(reference)
    fix = ("use a reference of the same architecture and tokenizer, or leave model.reference_path empty (the "
           "policy's own base)")
    if policy_vocab != ref_vocab or policy_type != ref_type:
        raise ConfigError(
            f"model.reference_path={model_cfg.reference_path} does not fit the policy {model_cfg.path} "
            f"({ref_type} with {ref_vocab} tokens there, {policy_type} with {policy_vocab} tokens here); {fix}")
    if tokenizer is not None and reference_tokenizer is not None:
        differing = tokenizer_difference(tokenizer, reference_tokenizer)
        if differing is not None:
            token_id, here, there = differing
            raise ConfigError(
                f"model.reference_path={model_cfg.reference_path} has another tokenizer than the policy "
                f"{model_cfg.path} (the same {policy_vocab} ids, but token {token_id} is {there!r} there and {here!r} "
                f"here), so its log-probs are of other tokens; {fix}")


def frozen_base(policy: nn.Module, reference: nn.Module | None, model_cfg, ft) -> nn.Module | None:
    """A loaded model that computes `model.path` unchanged for the whole run (run it under
    `adapters_disabled`), for a judge of the same model to share; None when there is none.

    LoRA and DoRA leave the policy's base untouched. Full fine-tuning changes it, so only
    the frozen reference copy qualifies, and only when it was loaded from `model.path`.
    """
    if ft.type != "full":
        return policy
    if getattr(model_cfg, "adapter_path", ""):  # the frozen copy holds the fused fine-tune, not model.path
        return None
    return reference if not model_cfg.reference_path else None


@contextlib.contextmanager
def reference_model(policy: nn.Module, reference: nn.Module | None):
    """The frozen reference: a separate model when one was loaded, else the policy's base."""
    if isinstance(reference, StartingAdapters):
        with reference.applied(policy):
            yield policy
    elif reference is not None:
        yield reference
    else:
        with adapters_disabled(policy):
            yield policy


def adapter_weights(model: nn.Module) -> dict:
    """What `mlx_lm` reads from adapters.safetensors: the trainable parameters."""
    return dict(tree_flatten(model.trainable_parameters()))


def adapter_config(model_cfg, ft) -> dict:
    """adapter_config.json as mlx-lm's `load_adapters` and `mlx_lm.fuse` read it. Training
    on from `model.adapter_path` under LoRA / DoRA, the layers are that adapter's own."""
    start = getattr(model_cfg, "adapter_path", "") or ""
    if start and ft.type != "full":
        config = starting_adapter_config(start)
        return {
            "model": model_cfg.path,
            "fine_tune_type": config.get("fine_tune_type", "lora"),
            "num_layers": config["num_layers"],
            "lora_parameters": {**config["lora_parameters"], "dropout": ft.dropout},
            "starting_adapter_path": str(start),
        }
    return {
        "model": model_cfg.path,
        "fine_tune_type": ft.type,
        "num_layers": ft.num_layers,
        "lora_parameters": lora_parameters(ft),
    }

