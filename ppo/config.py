"""The config schema: dataclasses registered in Hydra's ConfigStore.

`conf/train.yaml` starts its defaults list with ``ppo_schema``, so every group file and
command-line override is merged into these typed dataclasses: a misspelt key or a value
of the wrong type fails at start. Value ranges are checked by `validate`, which names
the key and the fix.

Seed setting -> key (MISSION.md, "Settings"): beta -> loss.beta, epsilon -> loss.epsilon,
dpo_cpo_loss_type -> loss.dpo_cpo_loss_type, delta -> loss.delta, judge -> the judge
group (and judge.model), judge_system -> judge.system, max_completion_length ->
generation.max_completion_length, temperature -> generation.temperature,
reference_model_path -> model.reference_path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A config value a user must change; the message names the key and the fix."""


@dataclass
class ModelConfig:
    path: str = "${ppo_cache:}/models/demo"  # mlx-lm hub id or local folder
    reference_path: str = ""  # empty: the policy's own base weights, adapters off
    quantize: str = "none"  # none | 4 | 8: quantize the base through mlx-lm (QLoRA-style)
    quantize_group_size: int = 64
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    path: str = "${ppo_root:}/ppo/assets/demo_prompts.jsonl"  # hub id, file or folder
    prompt_field: str = "prompt"
    split: str = "train"
    eval_split: str = ""  # empty: hold out eval_fraction of `split`
    eval_fraction: float = 0.1
    max_eval_prompts: int = 64
    on_bad_row: str = "error"  # error | skip
    shuffle: bool = True


@dataclass
class GenerationConfig:
    temperature: float = 0.8
    max_completion_length: int = 512
    top_p: float = 1.0


@dataclass
class LossConfig:
    type: str = "ppo_clip"  # ppo_clip | sigmoid | hinge | ipo | dpop
    epsilon: float = 0.2
    beta: float = 0.1
    advantage: str = "judge"  # judge | logprob_gap
    delta: float = 50.0  # dpop drift penalty
    dpo_cpo_loss_type: str = "sigmoid"  # the seed's key, passed through by ppo_clip
    max_log_ratio: float = 20.0
    # The seed's form is ratio=reference, logprob_reduction=sum, kl_estimator=k1, ppo_epochs=1.
    ratio: str = "reference"  # reference | rollout (the policy at sampling time: textbook PPO)
    ppo_epochs: int = 1  # updates per rollout batch
    logprob_reduction: str = "sum"  # sum | mean over completion tokens
    kl_estimator: str = "k1"  # k1 (the seed's logp - ref) | k3 (per token, exp(ref-logp) - (ref-logp) - 1)


@dataclass
class FinetuneConfig:
    type: str = "lora"  # lora | dora | full
    rank: int = 8
    scale: float = 20.0
    dropout: float = 0.0
    num_layers: int = 16
    keys: Optional[list[str]] = None  # module names to adapt; None: mlx-lm's default


@dataclass
class TrainConfig:
    iters: int = 200
    batch_size: int = 8  # prompts per step; two completions each
    grad_accumulation_steps: int = 1
    optimizer: str = "adamw"  # adam | adamw | sgd
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # constant | cosine | linear (decay to min_learning_rate)
    warmup_steps: int = 0  # linear warm-up from 0 before the schedule
    min_learning_rate: float = 0.0
    weight_decay: float = 0.0
    grad_checkpoint: bool = False
    max_seq_length: int = 2048  # prompt + completion; longer prompts are left-truncated
    steps_per_report: int = 1
    steps_per_eval: int = 50
    eval_at_start: bool = False  # also evaluate before the first update (logged as step 0)
    save_every: int = 100
    keep_checkpoints: int = 3
    resume: str = "auto"  # auto (newest checkpoint in the run folder) | never | PATH to a checkpoint
    progress: bool = True


@dataclass
class WandbConfig:
    project: str = "ppo-mlx"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    job_type: str = "train"
    mode: str = "offline"  # offline | online | disabled


@dataclass
class LoggerConfig:
    kind: str = "wandb"  # wandb | none
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PPOConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    judge: Any = field(default_factory=dict)  # instantiated by _target_; validated by the judge
    seed: int = 0
    experiment_name: str = "default"


def _cache_dir() -> str:
    import os

    return os.environ.get("PPO_CACHE", str(PROJECT_ROOT / ".cache"))


def register() -> None:
    """Register the schema and the resolvers used by conf/ (idempotent)."""
    ConfigStore.instance().store(name="ppo_schema", node=PPOConfig)
    if not OmegaConf.has_resolver("ppo_root"):
        OmegaConf.register_new_resolver("ppo_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("ppo_cache"):
        OmegaConf.register_new_resolver("ppo_cache", _cache_dir)


def compose_train(overrides: list[str]):
    """conf/train.yaml composed by Hydra exactly as ppo-train does (for tests, benchmarks
    and notebooks; a run itself goes through ppo-train so that Hydra sets up its folder)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(PROJECT_ROOT / "conf")):
        return compose("train", overrides=list(overrides))


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"invalid {key}={value!r}: {fix}")


def validate(cfg) -> None:
    """Check value ranges; raise ConfigError naming the key and the fix."""
    loss, gen, train, ft, data = cfg.loss, cfg.generation, cfg.train, cfg.finetune, cfg.data
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
    _check(gen.temperature > 0.0, "generation.temperature", gen.temperature, "must be > 0, e.g. generation.temperature=0.8")
    _check(gen.max_completion_length >= 1, "generation.max_completion_length", gen.max_completion_length, "must be >= 1")
    _check(0.0 < gen.top_p <= 1.0, "generation.top_p", gen.top_p, "must lie in (0, 1]")
    _check(train.iters >= 1, "train.iters", train.iters, "must be >= 1")
    _check(train.batch_size >= 1, "train.batch_size", train.batch_size, "must be >= 1")
    _check(train.grad_accumulation_steps >= 1, "train.grad_accumulation_steps", train.grad_accumulation_steps, "must be >= 1")
    _check(train.learning_rate > 0, "train.learning_rate", train.learning_rate, "must be > 0, e.g. 1e-5")
    _check(train.optimizer in ("adam", "adamw", "sgd"), "train.optimizer", train.optimizer, "choose adam, adamw or sgd")
    _check(train.lr_schedule in ("constant", "cosine", "linear"), "train.lr_schedule", train.lr_schedule,
           "choose constant, cosine or linear")
    _check(0 <= train.warmup_steps < train.iters, "train.warmup_steps", train.warmup_steps, "must lie in [0, train.iters)")
    _check(train.keep_checkpoints >= 1, "train.keep_checkpoints", train.keep_checkpoints, "must be >= 1")
    _check(train.max_seq_length > gen.max_completion_length, "train.max_seq_length", train.max_seq_length,
           "must exceed generation.max_completion_length so a prompt fits")
    _check(cfg.model.quantize in ("none", "4", "8"), "model.quantize", cfg.model.quantize, "choose none, 4 or 8")
    for key in ("steps_per_report", "steps_per_eval", "save_every"):
        _check(getattr(train, key) >= 1, f"train.{key}", getattr(train, key), "must be >= 1")
    _check(ft.type in ("lora", "dora", "full"), "finetune.type", ft.type, "choose lora, dora or full (finetune=NAME)")
    _check(ft.rank >= 1, "finetune.rank", ft.rank, "must be >= 1")
    _check(0.0 <= ft.dropout < 1.0, "finetune.dropout", ft.dropout, "must lie in [0, 1)")
    _check(data.on_bad_row in ("error", "skip"), "data.on_bad_row", data.on_bad_row, "choose error or skip")
    _check(0.0 <= data.eval_fraction < 1.0, "data.eval_fraction", data.eval_fraction, "must lie in [0, 1)")
    _check(cfg.logger.kind in ("wandb", "none"), "logger.kind", cfg.logger.kind, "choose logger=wandb or logger=none")
    _check(cfg.logger.wandb.mode in ("offline", "online", "disabled"), "logger.wandb.mode", cfg.logger.wandb.mode,
           "choose offline, online or disabled")
    judge = cfg.judge
    _check(isinstance(judge, dict) or OmegaConf.is_dict(judge), "judge", judge, "pick a judge group, e.g. judge=rule")
    _check("_target_" in judge, "judge._target_", None, "a judge config names its class with _target_, e.g. judge=rule")
