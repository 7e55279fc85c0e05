"""What the schema's types cannot say: value ranges, bounds (`at_most` fields), values that
must agree, and keys the schema lacks (with "did you mean"). `validate` raises a ConfigError
that names the key and the fix, before any model loads."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import OmegaConf

from ppo.errors import ConfigError
from ppo.train.config import MODEL_DTYPES, PPOConfig
from ppo.train.pairs import PAIR_RULES

def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: {fix}")


# Mappings whose keys are open-ended: the unknown-key check and "did you mean" never look inside them.
# judge, eval_judge: each judge class checks its own settings. data.chat_template_kwargs: whatever the
# tokenizer's chat template reads (enable_thinking, reasoning_effort, ...), passed on as given.
OPEN_MAPPINGS = ("judge", "eval_judge", "data.chat_template_kwargs")


def _unknown_keys(node, schema, prefix: str = "") -> list[str]:
    """Keys of `node` the schema does not have (Hydra's `+key=value` adds them to a struct config)."""
    out, known = [], set(schema.keys())  # (`in` is False for a key whose value is ???)
    for key in node.keys():
        path = f"{prefix}{key}"
        if key not in known:
            out.append(path)
        elif (path not in OPEN_MAPPINGS and OmegaConf.is_dict(node._get_node(key))
              and OmegaConf.is_dict(schema._get_node(key))):
            out.extend(_unknown_keys(node[key], schema[key], f"{path}."))
    return out


# Names other trainers use (TRL, mlx-lm, CleanRL, Hugging Face) -> this schema's key, for "did you mean".
KEY_ALIASES = {
    "eval_every": "steps_per_eval", "eval_steps": "steps_per_eval", "eval_interval": "steps_per_eval",
    "eval_freq": "steps_per_eval", "report_every": "steps_per_report", "log_every": "steps_per_report",
    "logging_steps": "steps_per_report", "log_interval": "steps_per_report", "save_steps": "save_every",
    "save_interval": "save_every", "save_freq": "save_every", "max_steps": "iters", "steps": "iters",
    "num_steps": "iters", "total_steps": "iters", "lr": "learning_rate", "max_new_tokens": "max_completion_length",
    "max_tokens": "max_completion_length", "response_length": "max_completion_length", "kl_coef": "beta",
    "init_kl_coef": "beta", "cliprange": "epsilon", "clip_range": "epsilon", "clip_coef": "epsilon",
    "gradient_accumulation_steps": "grad_accumulation_steps", "per_device_train_batch_size": "batch_size",
    "warmup": "warmup_steps", "lora_rank": "rank", "lora_alpha": "scale",
}


def suggest_key(path: str) -> str | None:
    """The schema key a misspelt or foreign `path` most likely means (`train.eval_every` ->
    `train.steps_per_eval`, `loss.epsilom` -> `loss.epsilon`, `train.beta` -> `loss.beta`), or None."""
    import difflib

    known = list(schema_paths())
    parent, _, leaf = path.rpartition(".")
    siblings = [p.rpartition(".")[2] for p in known if p.rpartition(".")[0] == parent]
    alias = KEY_ALIASES.get(leaf.lower())
    if alias in siblings:
        return f"{parent + '.' if parent else ''}{alias}"
    elsewhere = [p for p in known if alias and p.rpartition(".")[2] == alias]  # eval_every -> train.steps_per_eval
    if len(elsewhere) == 1:
        return elsewhere[0]
    close = difflib.get_close_matches(leaf, siblings, n=1)
    if close:
        return f"{parent + '.' if parent else ''}{close[0]}"
    same = [p for p in known if p.rpartition(".")[2] == leaf]  # the same name in another section: train.beta -> loss.beta
    if len(same) == 1:
        return same[0]
    close = difflib.get_close_matches(path, known, n=1, cutoff=0.75)
    return close[0] if close else None


def schema_paths() -> list[str]:
    """Every key of the schema, dotted (`train.steps_per_eval`), sections included."""
    paths = []

    def walk(prefix, node):
        for key in node:
            paths.append(f"{prefix}{key}")
            if OmegaConf.is_dict(node._get_node(key)) and f"{prefix}{key}" not in OPEN_MAPPINGS:
                walk(f"{prefix}{key}.", node[key])

    walk("", OmegaConf.structured(PPOConfig))
    return paths


def unknown_key_message(key: str) -> str:
    """The one-line refusal of a key the schema lacks, with its likely meaning."""
    close = suggest_key(key)
    hint = f"did you mean {close}? " if close else ""
    return (f"unknown key {key}: the config schema has no such key; {hint}remove or correct the override "
            "(`ppo-train --cfg job` lists every key)")


def check_known_keys(cfg) -> None:
    """Refuse a key the schema lacks (a typo such as `+loss.epsilom=0.2` would be stored and ignored).
    The judge node is free-form: each judge class checks its own keys."""
    schema = OmegaConf.structured(PPOConfig)
    unknown = _unknown_keys(cfg, schema)
    if unknown:
        raise ConfigError(unknown_key_message(unknown[0]) + " (a + in front of a key adds a key the trainer never reads)")


def limits(schema=PPOConfig, prefix: str = ""):
    """(dotted key, Limit) of every schema field declared with `at_most`."""
    import dataclasses

    for f in dataclasses.fields(schema):
        if "limit" in f.metadata:
            yield f"{prefix}{f.name}", f.metadata["limit"]
        elif isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            yield from limits(f.default_factory, f"{prefix}{f.name}.")


def check_limits(cfg) -> None:
    """Refuse a value above its field's Limit, naming the key, the bound and why."""
    for key, limit in limits():
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit.most:
            most = int(limit.most) if float(limit.most).is_integer() else limit.most
            raise ConfigError(f"invalid {key}={value!r}: must be at most {most} ({limit.why})")


def validate(cfg) -> None:
    """Check value ranges; raise ConfigError naming the key and the fix."""
    check_known_keys(cfg)
    for key, value in (("loss.epsilon", cfg.loss.epsilon), ("loss.beta", cfg.loss.beta), ("loss.delta", cfg.loss.delta),
                       ("loss.max_log_ratio", cfg.loss.max_log_ratio), ("loss.target_kl", cfg.loss.target_kl),
                       ("loss.kl_horizon", cfg.loss.kl_horizon), ("loss.missing_eos_penalty", cfg.loss.missing_eos_penalty),
                       ("train.learning_rate", cfg.train.learning_rate),
                       ("train.weight_decay", cfg.train.weight_decay), ("train.min_learning_rate", cfg.train.min_learning_rate),
                       ("finetune.scale", cfg.finetune.scale), ("finetune.dropout", cfg.finetune.dropout),
                       ("generation.temperature", cfg.generation.temperature), ("generation.top_p", cfg.generation.top_p)):
        if not OmegaConf.is_missing(cfg, key):
            _check(math.isfinite(value), key, value, "must be a finite number")
    for node, group in ((cfg.loss, "loss_type, ppo_form, epsilon and beta"), (cfg.finetune, "finetune"), (cfg.logger, "logger")):
        for key in node:
            _check(not OmegaConf.is_missing(node, key), key, "???", f"it has no value: keep the {group} group in the defaults list or set it")
    loss, gen, train, ft, data = cfg.loss, cfg.generation, cfg.train, cfg.finetune, cfg.data
    _check(bool(cfg.model.path), "model.path", cfg.model.path, "name the policy: model=demo or model.path=HUB_ID_OR_FOLDER")
    _check(bool(data.path), "data.path", data.path, "name the prompts: data=demo or data.path=FILE_OR_HUB_ID")
    _check(0.0 < loss.epsilon < 1.0, "loss.epsilon", loss.epsilon, "the clip range must lie in (0, 1), e.g. loss.epsilon=0.2")
    _check(loss.beta >= 0.0, "loss.beta", loss.beta, "the KL weight must be >= 0, e.g. loss.beta=0.1")
    _check(loss.type in ("ppo_clip", "sigmoid", "hinge", "ipo", "dpop"), "loss.type", loss.type,
           "choose ppo_clip, sigmoid, hinge, ipo or dpop (loss_type=NAME)")
    _check(loss.advantage in ("judge", "logprob_gap"), "loss.advantage", loss.advantage, "choose judge or logprob_gap")
    _check(loss.ratio in ("reference", "rollout"), "loss.ratio", loss.ratio, "choose reference or rollout")
    _check(loss.ppo_epochs >= 1, "loss.ppo_epochs", loss.ppo_epochs, "must be >= 1")
    _check(loss.logprob_reduction in ("sum", "mean"), "loss.logprob_reduction", loss.logprob_reduction, "choose sum or mean")
    _check(loss.kl_estimator in ("k1", "k3"), "loss.kl_estimator", loss.kl_estimator, "choose k1 or k3")
    _check(loss.max_log_ratio > 0, "loss.max_log_ratio", loss.max_log_ratio, "must be > 0, e.g. 20")
    _check(loss.type != "ipo" or loss.beta > 0, "loss.beta", loss.beta, "ipo divides by beta: use loss.beta > 0")
    _check(loss.ratio_level in ("sequence", "token"), "loss.ratio_level", loss.ratio_level, "choose sequence or token")
    _check(loss.minibatches >= 1, "loss.minibatches", loss.minibatches, "must be >= 1 (1: one step on the whole batch)")
    _check(loss.minibatches <= train.batch_size, "loss.minibatches", loss.minibatches,
           f"more minibatches than the {train.batch_size} pairs of a batch (train.batch_size): "
           f"use loss.minibatches <= {train.batch_size} or raise train.batch_size")
    _check(loss.kl_control in ("fixed", "adaptive"), "loss.kl_control", loss.kl_control, "choose fixed or adaptive")
    _check(loss.kl_control == "fixed" or loss.type == "ppo_clip", "loss.kl_control", loss.kl_control,
           f"adaptive moves the KL weight of ppo_clip; {loss.type}'s beta is not one: use loss.kl_control=fixed")
    _check(loss.kl_control == "fixed" or loss.beta > 0, "loss.beta", loss.beta,
           "the adaptive KL controller multiplies beta, so it must start > 0, e.g. loss.beta=0.1")
    _check(loss.target_kl > 0, "loss.target_kl", loss.target_kl, "must be > 0, e.g. 0.1")
    _check(loss.kl_horizon > 0, "loss.kl_horizon", loss.kl_horizon, "must be > 0, e.g. 10000")
    _check(loss.missing_eos_penalty >= 0, "loss.missing_eos_penalty", loss.missing_eos_penalty,
           "must be >= 0 (0: off), e.g. 1.0")
    _check(loss.missing_eos_penalty == 0 or loss.type == "ppo_clip", "loss.missing_eos_penalty", loss.missing_eos_penalty,
           f"the penalty lowers ppo_clip's advantage; {loss.type} has none: use loss.missing_eos_penalty=0")
    _check(gen.temperature > 0.0, "generation.temperature", gen.temperature, "must be > 0, e.g. generation.temperature=0.8")
    _check(gen.max_completion_length >= 1, "generation.max_completion_length", gen.max_completion_length, "must be >= 1")
    _check(0.0 < gen.top_p <= 1.0, "generation.top_p", gen.top_p, "must lie in (0, 1]")
    _check(gen.samples_per_prompt >= 2, "generation.samples_per_prompt", gen.samples_per_prompt,
           "a pairwise judge needs at least 2 completions per prompt, e.g. generation.samples_per_prompt=4")
    _check(gen.pair_rule in PAIR_RULES, "generation.pair_rule", gen.pair_rule, f"choose {' or '.join(PAIR_RULES)}")
    _check(train.iters >= 1, "train.iters", train.iters, "must be >= 1")
    _check(train.batch_size >= 1, "train.batch_size", train.batch_size, "must be >= 1")
    _check(train.grad_accumulation_steps >= 1, "train.grad_accumulation_steps", train.grad_accumulation_steps, "must be >= 1")
    _check(train.learning_rate > 0, "train.learning_rate", train.learning_rate, "must be > 0, e.g. 1e-5")
    _check(train.optimizer in ("adam", "adamw", "sgd"), "train.optimizer", train.optimizer, "choose adam, adamw or sgd")
    _check(train.lr_schedule in ("constant", "cosine", "linear"), "train.lr_schedule", train.lr_schedule,
           "choose constant, cosine or linear")
    _check(0 <= train.warmup_steps < train.iters, "train.warmup_steps", train.warmup_steps, "must lie in [0, train.iters)")
    _check(train.keep_checkpoints >= 1, "train.keep_checkpoints", train.keep_checkpoints, "must be >= 1")
    _check(train.max_seq_length > gen.max_completion_length, "generation.max_completion_length", gen.max_completion_length,
           f"must be below train.max_seq_length={train.max_seq_length} so a prompt fits: lower it or raise train.max_seq_length")
    _check(cfg.model.quantize in ("none", "4", "8"), "model.quantize", cfg.model.quantize, "choose none, 4 or 8")
    _check(cfg.model.dtype in MODEL_DTYPES, "model.dtype", cfg.model.dtype,
           "choose auto, float32, bfloat16 or float16 (auto: float32 on the CPU, the checkpoint's own on a GPU)")
    _check(cfg.model.quantize == "none" or cfg.model.quantize_group_size in (32, 64, 128), "model.quantize_group_size",
           cfg.model.quantize_group_size, "MLX quantizes in groups of 32, 64 or 128")
    _check(train.weight_decay >= 0, "train.weight_decay", train.weight_decay, "must be >= 0, e.g. 0.01")
    _check(train.min_learning_rate >= 0, "train.min_learning_rate", train.min_learning_rate, "must be >= 0")
    _check(loss.delta >= 0, "loss.delta", loss.delta, "dpop's penalty weight must be >= 0, e.g. 50")
    _check(train.rank_timeout > 0, "train.rank_timeout", train.rank_timeout, "must be > 0 seconds, e.g. 300")
    _check(cfg.seed >= 0, "seed", cfg.seed, "must be >= 0 (NumPy and MLX seeds are unsigned)")
    check_limits(cfg)
    for key in ("steps_per_report", "steps_per_eval", "save_every", "eval_samples_per_prompt"):
        _check(getattr(train, key) >= 1, f"train.{key}", getattr(train, key), "must be >= 1")
    _check(ft.type in ("lora", "dora", "full"), "finetune.type", ft.type, "choose lora, dora or full (finetune=NAME)")
    _check(ft.rank >= 1, "finetune.rank", ft.rank, "must be >= 1")
    _check(0.0 <= ft.dropout < 1.0, "finetune.dropout", ft.dropout, "must lie in [0, 1)")
    _check(train.samples_per_report >= 0, "train.samples_per_report", train.samples_per_report, "must be >= 0")
    _check(data.on_bad_row in ("error", "skip"), "data.on_bad_row", data.on_bad_row, "choose error or skip")
    _check(0.0 <= data.eval_fraction < 1.0, "data.eval_fraction", data.eval_fraction, "must lie in [0, 1)")
    _check(cfg.logger.kind in ("wandb", "none"), "logger.kind", cfg.logger.kind, "choose logger=wandb or logger=none")
    _check(cfg.logger.wandb.mode in (None, "offline", "online", "disabled"), "logger.wandb.mode", cfg.logger.wandb.mode,
           "choose offline, online or disabled")
    judge = cfg.judge
    _check(isinstance(judge, dict) or OmegaConf.is_dict(judge), "judge", judge, "pick a judge group, e.g. judge=rule")
    _check("_target_" in judge, "judge._target_", None, "a judge config names its class with _target_, e.g. judge=rule")
    held_out = cfg.get("eval_judge")
    if held_out is not None:
        _check(OmegaConf.is_dict(held_out) or isinstance(held_out, dict), "eval_judge", held_out,
               "pick an evaluation judge group, e.g. eval_judge=length, or eval_judge=null for none")
        _check("_target_" in held_out, "eval_judge._target_", None,
               "an evaluation judge config names its class with _target_, e.g. eval_judge=sentiment")
        name = held_out.get("name")
        _check(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name or "") is not None, "eval_judge.name",
               name, "name the evaluation judge with letters, digits, - or _ (its metrics are eval/NAME/win_rate)")
        _check(held_out["_target_"] != "ppo.judges.human.HumanJudge", "eval_judge", "human",
               "a person cannot be the held-out judge of every evaluation; use judge=human train.human_eval=true")
