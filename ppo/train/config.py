"""The config schema: dataclasses registered in Hydra's ConfigStore.

`conf/train.yaml` starts its defaults list with ``ppo_schema``, so every group file and
command-line override is merged into these typed dataclasses: a misspelt key or a value
of the wrong type fails at start. Value ranges are checked by `validate`, which names
the key and the fix.

Seed setting -> key (docs/reference/configuration.md): beta -> loss.beta, epsilon -> loss.epsilon,
dpo_cpo_loss_type -> loss.dpo_cpo_loss_type, delta -> loss.delta, judge -> the judge
group (and judge.model), judge_system -> judge.system, max_completion_length ->
generation.max_completion_length, temperature -> generation.temperature,
reference_model_path -> model.reference_path.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ppo import resources
from ppo.errors import ConfigError
from ppo.train.data import DEFAULT_CHAT_TEMPLATE_KWARGS
from ppo.train.pairs import PAIR_RULES


# The choices of model.dtype (ppo.train.models.resolve_dtype maps them to MLX dtypes).
MODEL_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class Limit:
    """The largest value of a numeric setting beyond which a run hangs, overflows or exhausts
    memory instead of training; `validate` refuses it with `why`."""

    most: float
    why: str


def at_most(default, most: float, why: str):
    """A schema field whose default and upper bound are written side by side."""
    return field(default=default, metadata={"limit": Limit(most, why)})


@dataclass
class ModelConfig:
    # The policy: an mlx-lm hub id or local folder. Set by the model group (model=demo) or directly.
    path: str = ""
    # The frozen reference; empty: the policy's own base weights with adapters off (no second copy).
    reference_path: str = ""
    # Start from a supervised fine-tune: an `mlx_lm.lora` output folder (LoRA or DoRA adapters of model.path).
    # The policy starts as base + adapter and the reference is that same model, frozen. LoRA / DoRA train the
    # adapter's own layers on (finetune.rank/scale/num_layers/keys unused); finetune=full trains it fused in.
    adapter_path: str = ""
    # none | 4 | 8: quantize the base through mlx-lm (QLoRA-style); the reference shares it.
    quantize: str = "none"
    # Group size of that quantization (mlx-lm's default).
    quantize_group_size: int = 64
    # Passed to mlx-lm's loader for models whose tokenizer runs custom code.
    trust_remote_code: bool = False
    # auto | float32 | bfloat16 | float16: the float dtype of the policy, every loaded reference and an LLM judge that
    # loads its own model (cast after loading, before quantization and adapters; quantized weights stay quantized,
    # their scales and biases follow; LoRA / DoRA layers are float32 as mlx-lm makes them). auto: float32 on the CPU
    # backend, the checkpoint's own dtype on a GPU (Metal, CUDA). Why: MLX's CPU matmul is fast only in float32
    # (BLAS). A 576x1536 matmul on a 2-core x86 CPU: 256 rows 14 ms in float32, 323 ms bfloat16 (23x), 603 ms float16
    # (43x), 963 ms 4-bit (69x); 16 rows 10 ms float32, 44 ms float16, 132 ms 4-bit; so a float16 checkpoint took
    # minutes per step. A half-precision checkpoint takes twice its memory in float32. `ppo-doctor` measures these.
    dtype: str = "auto"


@dataclass
class DataConfig:
    # Prompts: a hub id, a json/jsonl/parquet file or a folder. Set by the data group (data=demo) or directly.
    path: str = ""
    # The field holding each prompt (text, or a list of chat messages).
    prompt_field: str = "prompt"
    # The split to train on (hub data sets and folders).
    split: str = "train"
    # The split to evaluate on; empty: hold out eval_fraction of `split`.
    eval_split: str = ""
    # Share of `split` held out for evaluation when eval_split is empty.
    eval_fraction: float = 0.1
    # At most this many held-out prompts are evaluated.
    max_eval_prompts: int = 64
    # error: a row without a usable prompt stops the run, naming the row; skip: counted in summary.json.
    on_bad_row: str = "error"
    # Shuffle the training prompts every epoch (seeded).
    shuffle: bool = True
    # A system message put first in every prompt that has none (empty: none added). Judges read only the user's words.
    system_prompt: str = ""
    # Passed to the tokenizer's apply_chat_template for the policy's prompts (TRL's chat_template_kwargs). The
    # default switches thinking off: the judge compares answers, and a reasoning block would spend
    # generation.max_completion_length before any answer (mlx-lm would otherwise switch it on for any tokenizer
    # with think tokens). Templates without the switch ignore it. data.chat_template_kwargs.enable_thinking=true
    # lets the policy reason; the judge is shown only the answer after it (judge.include_reasoning).
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_CHAT_TEMPLATE_KWARGS))


@dataclass
class GenerationConfig:
    # Sampling temperature of the policy's completions (the seed's `temperature`).
    temperature: float = 0.8
    # Most tokens sampled per completion (the seed's `max_completion_length`).
    max_completion_length: int = 512
    # Nucleus sampling; 1.0 samples from the whole distribution.
    top_p: float = 1.0
    # Completions per prompt, k >= 2, sampled in one batched decode; the judge compares all k(k-1)/2 pairs of
    # each prompt's completions (a round robin). 2 (default): one pair per prompt, the seed's rollout.
    samples_per_prompt: int = at_most(2, 64, "the judge compares k(k-1)/2 pairs per prompt, 2016 at 64")
    # Which judged pairs enter the loss (ppo.train.pairs): best_vs_worst (default) the best against the worst
    # completion by Borda score over the round robin, one pair per prompt, with the judge's verdict on that pair |
    # all_pairs every judged pair. The same for k = 2.
    pair_rule: str = "best_vs_worst"


@dataclass
class LossConfig:
    # ppo_clip | sigmoid | hinge | ipo | dpop. Set by the loss_type group (default ppo_clip).
    type: str = MISSING
    # Clip range (the seed's `epsilon`). Set by the epsilon group: tight 0.1, classic 0.2 (default), loose 0.3.
    epsilon: float = MISSING
    # KL weight (the seed's `beta`). Set by the beta group: tiny 0.01, small 0.05, default 0.1, strong 0.2, stronger 0.5.
    beta: float = MISSING
    # judge: the judge's confidence in [0, 1]; logprob_gap: the seed-literal, label-blind form.
    advantage: str = "judge"
    # dpop's drift penalty (the seed's `delta`).
    delta: float = 50.0
    # The seed's key, kept with its default; ppo_clip passes it through unused.
    dpo_cpo_loss_type: str = "sigmoid"
    # |logp - ref| is clamped here before exp(), so no ratio overflows at any length.
    max_log_ratio: float = at_most(20.0, 80.0, "exp() of a larger log-ratio overflows float32, which ends at exp(88.7)")
    # The ppo_form group sets the next four together (seed: reference, 1, sum, k1; textbook: rollout, 2, mean, k3;
    # token: textbook's with loss.ratio_level=token and loss.minibatches=4).
    # reference (the seed's) | rollout (the policy at sampling time: textbook PPO).
    ratio: str = MISSING
    # Optimizer updates per rollout batch.
    ppo_epochs: int = at_most(MISSING, 100, "each epoch takes loss.minibatches optimizer steps on the same rollout")
    # sum | mean of the completion tokens' log-probs per sequence.
    logprob_reduction: str = MISSING
    # k1 (the seed's logp - ref) | k3 (per token, exp(ref-logp) - (ref-logp) - 1).
    kl_estimator: str = MISSING
    # sequence: one ratio per completion, from its summed or averaged log-probs (the seed's and textbook's forms) |
    # token: one ratio per completion token against the same baseline (loss.ratio), clipped per token, the surrogate
    # a token mean on each side of the pairs (ppo.train.loss.ppo_token_loss says why). ppo_form=token sets it.
    # ppo_clip only (the DPO losses ignore it, as they ignore loss.ratio).
    ratio_level: str = "sequence"
    # Optimizer steps per epoch: each of the loss.ppo_epochs epochs shuffles the rollout's pairs (seeded by seed and
    # step; chosen and rejected stay together) and takes one step on each of this many minibatches, so ratios leave 1
    # within a rollout. 1: one step on the whole batch per epoch. At most the pairs of one micro-batch of one process
    # (train.batch_size / processes). Above 1 the sampling-time log-probs are scored once more before the update.
    minibatches: int = 1
    # fixed: loss.beta throughout | adaptive: Ziegler et al. (2019)'s proportional controller moves beta, starting at
    # loss.beta, so the step's kl approaches loss.target_kl; logged as kl/beta, kept in checkpoints. ppo_clip only.
    kl_control: str = "fixed"
    # kl_control=adaptive: the KL aimed at, in the units of the logged kl that beta multiplies (per token with
    # logprob_reduction=mean, per sequence with sum). verl's default.
    target_kl: float = 0.1
    # kl_control=adaptive: after each step beta *= 1 + clip(kl / target_kl - 1, -0.2, 0.2) * n / kl_horizon, with n
    # the step's completions (2 x train.batch_size x train.grad_accumulation_steps). TRL's and verl's default.
    kl_horizon: float = 10000.0
    # Advantage taken from each completion cut at generation.max_completion_length without its EOS (TRL's
    # missing_eos_penalty): a truncated chosen gets a - penalty, a truncated rejected -a - penalty. 0: off. ppo_clip only.
    missing_eos_penalty: float = 0.0


@dataclass
class FinetuneConfig:
    # lora | dora | full. Set by the finetune group (default lora).
    type: str = MISSING
    # LoRA/DoRA rank (mlx-lm's default).
    rank: int = at_most(8, 1024, "an adapter wider than the layers it adapts only takes memory; finetune=full "
                                 "trains the layers themselves")
    # LoRA/DoRA scale (mlx-lm's default).
    scale: float = 20.0
    # Dropout on the adapter input.
    dropout: float = 0.0
    # Adapt the last this many transformer blocks (mlx-lm's default 16).
    num_layers: int = 16
    # Module names to adapt; None: mlx-lm's default for the architecture.
    keys: Optional[list[str]] = None


@dataclass
class TrainConfig:
    # Training steps (each: rollout, judge, score, update).
    iters: int = 200
    # Prompts per step; two completions each.
    batch_size: int = at_most(8, 4096, "one process samples a batch's completions at once: more exhausts memory "
                                       "before a step ends; train.grad_accumulation_steps makes larger updates")
    # Micro-batches of batch_size whose gradients are averaged into one update.
    grad_accumulation_steps: int = at_most(1, 1024, "one update would take that many rollouts")
    # adam | adamw | sgd (mlx.optimizers).
    optimizer: str = "adamw"
    # Peak learning rate (mlx-lm's LoRA default).
    learning_rate: float = 1e-5
    # constant | cosine | linear (decay to min_learning_rate).
    lr_schedule: str = "constant"
    # Linear warm-up from 0 over this many steps, before the schedule.
    warmup_steps: int = 0
    # Where cosine and linear schedules end.
    min_learning_rate: float = 0.0
    # Weight decay of adamw and sgd.
    weight_decay: float = 0.0
    # Recompute activations in the backward pass (mlx-lm's grad_checkpoint): less memory, more time.
    grad_checkpoint: bool = False
    # Prompt + completion tokens; longer prompts are left-truncated (counted in summary.json).
    max_seq_length: int = at_most(2048, 1 << 20, "longer than any model's context; completions that long "
                                                 "exhaust memory")
    # Write metrics every this many steps (averaged over them).
    steps_per_report: int = 1
    # samples.jsonl rows (prompt, both completions, what the judge read, verdict) kept from each report step's
    # first pairs; 0: none. Bounded so the file stays small; every evaluation writes all its pairs.
    samples_per_report: int = 2
    # Evaluate against the reference every this many steps (and at the end).
    steps_per_eval: int = 50
    # Also evaluate before the first update (logged as step 0).
    eval_at_start: bool = False
    # Completions drawn per held-out prompt at each evaluation (a policy/reference pair per draw, each judged);
    # eval/pairs and the win rate's interval count every draw. 1 keeps evaluation as cheap as it was (and every
    # recorded run identical); experiments/demo.yaml sets 4, about +-0.05 at 95% on 64 prompts, at 4x the cost.
    eval_samples_per_prompt: int = at_most(1, 64, "every draw is sampled and judged at every evaluation")
    # judge=human only: also put the evaluation pairs (policy against reference, labelled) to
    # the person; off: the run does not evaluate and says so once.
    human_eval: bool = False
    # Save a checkpoint every this many steps (and at the end, and on SIGINT / SIGTERM).
    save_every: int = 100
    # Newest checkpoints kept in RUN_DIR/checkpoints.
    keep_checkpoints: int = 3
    # auto: continue from the run folder's newest checkpoint | never | PATH to a checkpoint.
    resume: str = "auto"
    # A resume compares the content of the inputs (prompt files, model, reference and judge weights, the starting
    # adapter: ppo.train.inputs) with what the checkpoint recorded and stops when one changed; true continues on the
    # new content deliberately (the checkpoints saved from then on record it).
    resume_with_changed_inputs: bool = False
    # Per report step: a rich bar on a terminal, one plain log line when stdout is not one
    # (SLURM, nohup, CI); false: neither. RUN_DIR/train.log gets the plain lines either way.
    progress: bool = True
    # With several processes (mlx.launch): seconds a rank waits at a collective for the others
    # before it stops the run with one line (a rank died or hangs). Long enough for the slowest rank's rollout.
    rank_timeout: float = at_most(300.0, 86400.0, "a longer wait overflows the rank's timer thread and guards "
                                                  "against no hang; a day is longer than any step")
    # mx.compile the reference / sampling-time scoring (ppo.train.compiled). Lengths are padded to multiples of 32
    # (one compile per shape), which moves log-probs by float rounding (~1e-7 relative): a run is no longer
    # bit-identical to an eager one. Defaults of the three: what benchmarks/bench_compile.py measured on a 2-core
    # CPU (benchmarks/README.md, "Compiled scoring, update and decode").
    compile_scoring: bool = False
    # mx.compile the update's loss-and-gradient (nn.value_and_grad, the model's state as the graph's input and
    # output), lengths padded as for compile_scoring.
    compile_update: bool = False
    # mx.compile the decode step, with a KV cache of fixed width passed in and returned (mlx-lm's caches grow in
    # place); the same tokens as the eager decode for the same seed. One compile per row count and width.
    compile_decode: bool = False


@dataclass
class WandbConfig:
    # W&B project.
    project: str = "ppo-mlx"
    # W&B entity (team or user); None: your default.
    entity: Optional[str] = None
    # W&B group; None: the sweep's own folder in a multirun (one group per sweep), no group for a single run.
    group: Optional[str] = None
    # Run name; None: the experiment name and the job's overrides.
    name: Optional[str] = None
    # W&B tags; the experiment name is always added.
    tags: list[str] = field(default_factory=list)
    # W&B job type; None: in a multirun, the job's configuration (its overrides without the seed), so that
    # "group by job type" in the W&B UI puts a configuration's seeds together within the sweep's group; else train.
    job_type: Optional[str] = None
    # offline | online | disabled; None: WANDB_MODE, else what `wandb offline|online|disabled` saved, else offline.
    mode: Optional[str] = None
    # Log the final adapters as a W&B model artifact (they are always in the run folder).
    log_adapters: bool = False
    # What wandb captures of the terminal into the run's Logs tab (files/output.log): auto (wandb's choice:
    # wrap, which wraps sys.stdout/sys.stderr writes and leaves the terminal alone) | wrap | redirect | off.
    console: str = "auto"
    # Sample CPU, memory, disk and GPU use into the run's System charts; false: none.
    system_metrics: bool = True


@dataclass
class LoggerConfig:
    # wandb | none. Set by the logger group (default wandb); metrics.jsonl is written either way.
    kind: str = MISSING
    # Settings of the W&B run.
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class PPOConfig:
    # The policy and its reference (the model group).
    model: ModelConfig = field(default_factory=ModelConfig)
    # The prompts (the data group).
    data: DataConfig = field(default_factory=DataConfig)
    # Sampling the completions of each prompt (two by default) and pairing them.
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    # The loss (groups loss_type, ppo_form, epsilon, beta).
    loss: LossConfig = field(default_factory=LossConfig)
    # What trains (the finetune group).
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    # Steps, batch, optimizer, reports, checkpoints.
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where metrics go besides metrics.jsonl (the logger group).
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # The judge group's node: `_target_` names any class taking list[Pair] (validated by the judge itself).
    judge: Any = field(default_factory=dict)
    # A held-out evaluation judge (the eval_judge group; null: the training judge only). It judges
    # the same evaluation pairs, never the training ones, so a policy cannot have learnt to please
    # it: its win rate (eval/NAME/win_rate, NAME = its `name` key) beside eval/win_rate tells
    # learning from judge gaming. Its records go to judgments_eval_NAME.jsonl.
    eval_judge: Any = None
    # Seeds MLX at every step from (seed, step), the data order and the judge's order draws.
    seed: int = at_most(0, 2**32 - 1, "NumPy's RandomState, which seeds Optuna's sampler, takes 32 bits")
    # Names the study: the multirun folder and a W&B tag (experiment files set it).
    experiment_name: str = "default"
    # What the run returns to a Hydra sweeper (Optuna), read from its summary (the last
    # evaluation, then the last metrics row): one key -> a float, several -> a tuple.
    objectives: list[str] = field(default_factory=lambda: ["eval/win_rate"])
    # An Optuna search (hparams_search=...): seeds each trial trains (seed, seed+1, ...; one
    # run folder each, TRIAL/seed=K) and whose objectives it returns averaged. 1: one run per trial.
    seeds_per_trial: int = at_most(1, 100, "each seed is a whole run of the trial")


def schema_defaults() -> dict:
    """Flattened key -> default of every schema field with a concrete default (the fields a
    group chooses are MISSING here and left out)."""
    flat = {}

    def walk(prefix, node):
        for key in node:
            if OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            if OmegaConf.is_dict(value):
                walk(f"{prefix}{key}.", value)
            else:
                flat[f"{prefix}{key}"] = OmegaConf.to_container(value) if OmegaConf.is_list(value) else value

    walk("", OmegaConf.structured(PPOConfig))
    return flat


def register() -> None:
    """Register the schema and the resolvers used by conf/ (idempotent)."""
    ConfigStore.instance().store(name="ppo_schema", node=PPOConfig)
    # ${ppo_asset:NAME}: a file shipped in the package; ${ppo_cache:}: the per-user cache.
    if not OmegaConf.has_resolver("ppo_asset"):
        OmegaConf.register_new_resolver("ppo_asset", lambda name: str(resources.asset(name)))
    # ${ppo_words:positive|negative}: the demo's word lists (conf/judge/rule.yaml); a list override replaces them.
    if not OmegaConf.has_resolver("ppo_words"):
        OmegaConf.register_new_resolver("ppo_words", lambda kind: OmegaConf.create(resources.word_list(kind)))
    if not OmegaConf.has_resolver("ppo_cache"):
        OmegaConf.register_new_resolver("ppo_cache", lambda: str(resources.cache_dir()))
    # ${ppo_job_dir:OVERRIDES,EXCLUDE_KEYS}: a sweep job's folder name (conf/hydra/default.yaml).
    if not OmegaConf.has_resolver("ppo_job_dir"):
        OmegaConf.register_new_resolver("ppo_job_dir", lambda overrides, exclude: job_dir_name(list(overrides), list(exclude)))
    # ${ppo_log_format:JOB_NUM,JOB_LOGGING}: the job log's format, tagged [#N] in a multirun.
    if not OmegaConf.has_resolver("ppo_log_format"):
        OmegaConf.register_new_resolver("ppo_log_format", log_format)


_NAME_SAFE = re.compile(r"^[A-Za-z0-9._+@-]{1,40}$")
# A float written with more digits than a folder name needs (an Optuna proposal: 0.24208472637456369).
_LONG_FLOAT = re.compile(r"^-?\d*\.\d+(e[-+]?\d+)?$|^-?\d+e[-+]?\d+$")
FOLDER_DIGITS = 6  # significant digits of a float in a job folder name
# The keys a multirun sweeps (comma-separated), set by ppo.tools.sweep.SweepSummary when the
# multirun starts; a job's folder is named by these only. Unset (a launcher whose jobs do not
# inherit the environment): every override names the folder, as Hydra's override_dirname does.
SWEPT_KEYS_ENV = "PPO_SWEPT_KEYS"


def _folder_value(value: str) -> str:
    """`value` as it goes into a folder name: a long float cut to FOLDER_DIGITS significant digits
    (0.24208472637456369 -> 0.242085), a path or odd string as its last part plus 8 hex digits of
    its sha256, anything else as written."""
    if _LONG_FLOAT.match(value):
        short = f"{float(value):.{FOLDER_DIGITS}g}"
        return short if len(short) < len(value) else value
    if not _NAME_SAFE.match(value):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", value.rstrip("/").rsplit("/", 1)[-1])[:24].strip("._") or "value"
        return f"{stem}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return value


def job_dir_name(overrides: list[str], exclude_keys: list[str], swept: list[str] | None = None) -> str:
    """A sweep job's folder name: its overrides of the keys the sweep varies (`swept`; default the
    SWEPT_KEYS_ENV list; all of them when none is known), sorted `key=value`, comma-joined, without
    `exclude_keys`: `loss.beta=0.1,seed=1`, whatever else the command line fixes. Values as
    `_folder_value` writes them: two values of a swept key never share a folder (a float keeps
    6 significant digits), and none nests folders. The full overrides stay in the job's
    .hydra/overrides.yaml."""
    import os

    if swept is None:
        swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k]
    items = []
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if key.lstrip("+~") in exclude_keys or (swept and key.lstrip("+~") not in swept):
            continue
        items.append(f"{key}{sep}{_folder_value(value) if sep else value}")
    return ",".join(sorted(items)) or "default"


def log_format(job_num, job_logging) -> str:
    """The job log's line format (conf/hydra/default.yaml): Hydra's, with `[#N]`, the job's number
    in the multirun (Hydra's launch line `#N : overrides` names it), after the time, so the lines
    of jobs that run side by side (hydra/launcher=joblib2) say whose they are. The message alone
    under hydra/job_logging=stdout (the other ranks of a distributed run)."""
    if str(job_logging) == "stdout":
        return "%(message)s"
    tag = "" if job_num is None else f"[#{job_num}]"
    return f"[%(asctime)s]{tag}[%(name)s][%(levelname)s] - %(message)s"


def compose_train(overrides: list[str]):
    """conf/train.yaml composed by Hydra exactly as ppo-train does (for tests, benchmarks
    and notebooks; a run itself goes through ppo-train so that Hydra sets up its folder)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(resources.config_dir())):
        return compose("train", overrides=list(overrides))


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
