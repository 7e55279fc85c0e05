"""The config schema: dataclasses registered in Hydra's ConfigStore.

`conf/train.yaml` starts its defaults list with ``ppo_schema``, so every group file and
command-line override is merged into these typed dataclasses: a misspelt key or a value
of the wrong type fails at start. Value ranges and unknown keys are checked by
`ppo.train.validation.validate`, which names the key and the fix; sweep job folder names
are `ppo.train.job_names`.

Seed setting -> key (docs/reference/configuration.md): beta -> loss.beta, epsilon -> loss.epsilon,
dpo_cpo_loss_type -> loss.dpo_cpo_loss_type, delta -> loss.delta, judge -> the judge
group (and judge.model), judge_system -> judge.system, max_completion_length ->
generation.max_completion_length, temperature -> generation.temperature,
reference_model_path -> model.reference_path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from ppo import resources
from ppo.train.data import DEFAULT_CHAT_TEMPLATE_KWARGS
from ppo.train.job_names import job_dir_name, log_format


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


def introduced_defaults() -> dict:
    """Flattened key -> default of every setting a newer version may have added: the schema's
    concrete defaults and the judge pipeline's keys. A run or checkpoint made before a key
    existed ran as if it had this value (a resume's config check, ppo-report's configurations)."""
    from ppo.judges.factory import WRAPPER_DEFAULTS

    judge = {f"judge.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in WRAPPER_DEFAULTS.items()}
    return {**judge, **schema_defaults()}


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


def compose_train(overrides: list[str]):
    """conf/train.yaml composed by Hydra exactly as ppo-train does (for tests, benchmarks
    and notebooks; a run itself goes through ppo-train so that Hydra sets up its folder)."""
    from hydra import compose, initialize_config_dir

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(resources.config_dir())):
        return compose("train", overrides=list(overrides))
