"""Reading run folders: every folder holding `.hydra/config.yaml` is a run (`find_run_dirs`);
`load_run` reads its config, metrics.jsonl and summary.json into a `Run`, writing nothing."""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ppo.errors import ReportError
from ppo.health import verdict as health_verdict
from ppo.io import CHECKPOINTS_DIR, METRICS_FILE, PREVIOUS_PREFIX, SUMMARY_FILE, read_json, read_jsonl
from ppo.metrics import held_out_names, kl_unit, wilson_interval
from ppo.tools.sweep import objective_value


LAST_FRACTION = 0.2  # clip_fraction is averaged over this last share of the steps
SKIP_DIRS = {".hydra", "wandb", CHECKPOINTS_DIR, "__pycache__"}


@dataclass
class Run:
    path: Path
    name: str  # folder relative to the sweep folder
    epsilon: float | None = None
    beta: float | None = None
    loss_type: str | None = None
    advantage: str | None = None
    seed: int | None = None
    # generation.samples_per_prompt: completions per prompt, judged in k(k-1)/2 pairs (the default
    # where the config lacks it: a run from before the setting existed)
    k: int | None = None
    status: str = "not-started"
    rows: list = field(default_factory=list)
    final_win_rate: float | None = None
    # the last evaluation's length-controlled win rate, its 95% interval, and policy/reference length
    final_win_rate_lc: float | None = None
    win_rate_lc_interval: tuple[float, float] | None = None
    length_ratio: float | None = None
    # held-out evaluation judges (eval_judge=NAME): NAME -> (win rate, 95% low, 95% high)
    held_out: dict = field(default_factory=dict)
    best_win_rate: float | None = None
    clip_fraction: float | None = None
    ratio_spread: float | None = None  # max |ratio - 1| over the last 20% of steps
    eos_rate: float | None = None  # last eval: completions ending by themselves
    ref_eos_rate: float | None = None
    final_kl: float | None = None
    wall_seconds: float | None = None
    steps: int = 0
    iters: int | None = None
    error: str | None = None
    pairs: float | None = None  # judged pairs of the last evaluation
    trial: int | None = None  # Hydra's job number in a multirun; in a search, the Optuna trial's number
    overrides: list = field(default_factory=list)  # the job's command-line overrides (.hydra/overrides.yaml)
    kl_unit: str = ""  # "per token" | "per sequence" (ppo.metrics.kl_unit of loss.logprob_reduction)
    objectives: dict = field(default_factory=dict)  # a search's objective values (key -> value or None)
    judge: dict = field(default_factory=dict)  # the summary's judge reliability (judge/... keys), {} if none
    # Every config key except the seed and bookkeeping (NOT_CONFIGURATION), flattened: runs with
    # the same key are seeds of one configuration.
    configuration: tuple = ()

    @property
    def interval(self) -> tuple[float, float] | None:
        """95% Wilson interval of the final eval win rate."""
        return wilson_interval(self.final_win_rate, self.pairs)

    @property
    def gamed_judges(self) -> list[str]:
        """Held-out judges this run's training-judge win rate beats beyond both 95% intervals (its
        Wilson low above the held-out judge's high): the policy pleases the judge it trained
        against more than one it never saw, the mark of judge gaming."""
        interval = self.interval
        return [name for name, (_, _, high) in sorted(self.held_out.items())
                if interval is not None and high is not None and interval[0] > high]

    @property
    def health(self) -> str:
        if self.loss_type not in (None, "ppo_clip"):
            return "n/a (no clip)"  # the DPO-family losses have no clip range to judge by
        return health_verdict(self.clip_fraction, self.ratio_spread)


def _finite(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _last(rows: list[dict], key: str) -> float | None:
    for row in reversed(rows):
        value = _finite(row.get(key))
        if value is not None:
            return value
    return None


def kl_units(runs: list[Run]) -> str:
    """What the runs' KL is measured in, read from their configs: `nats per token` (textbook form),
    `nats per sequence` (the seed's form), both when the runs mix the two."""
    units = sorted({r.kl_unit for r in runs if r.kl_unit})
    if len(units) == 1:
        return f"nats {units[0]}"
    if units:
        return "nats per token (logprob_reduction=mean) or per sequence (sum), by run"
    return "nats"


def find_run_dirs(sweep_dir: Path) -> list[Path]:
    found = []
    for root, dirs, _files in os.walk(sweep_dir):
        # previous-*: an earlier run moved aside by train.resume=never, not one of the sweep's
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(("offline-run-", PREVIOUS_PREFIX)))
        if (Path(root) / ".hydra" / "config.yaml").is_file():
            found.append(Path(root))
    return found


# Config keys that do not change what a run computes (where it logs, how it shows progress,
# when it checkpoints, how long ranks wait, what a search reads of it and over how many seeds),
# besides the seed: runs differing only in these are seeds of one configuration. Prefixes match
# whole dotted keys.
NOT_CONFIGURATION = ("seed", "logger", "train.progress", "train.resume", "train.rank_timeout", "train.save_every",
                     "train.keep_checkpoints", "objectives", "seeds_per_trial")


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: repr(node)}  # lists and scalars as text: hashable and comparable


# The key of k, which the report shows beside epsilon, beta, loss type and advantage.
K_KEY = "generation.samples_per_prompt"
# The configuration of a run whose config cannot be read: its own, never pooled with another.
UNREADABLE = "run folder"


def configuration_of(cfg: dict) -> tuple:
    """A run's configuration: its flattened config without the seed and NOT_CONFIGURATION."""
    flat = _flatten(cfg)
    return tuple(sorted((k, v) for k, v in flat.items()
                        if not any(k == x or k.startswith(x + ".") for x in NOT_CONFIGURATION)))


def load_run(run_dir: Path, sweep_dir: Path) -> Run:
    from omegaconf import OmegaConf

    name = str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else run_dir.name
    run = Run(path=run_dir, name=name)
    cfg: dict = {}
    try:
        cfg = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
        loss = cfg.get("loss") or {}
        run.epsilon, run.beta = _finite(loss.get("epsilon")), _finite(loss.get("beta"))
        run.loss_type, run.advantage = loss.get("type"), loss.get("advantage")
        run.kl_unit = kl_unit(loss.get("logprob_reduction"))
        run.seed = cfg.get("seed")
        run.k = (cfg.get("generation") or {}).get("samples_per_prompt", default(K_KEY))
        run.iters = (cfg.get("train") or {}).get("iters")
        run.configuration = configuration_of(cfg)
    except Exception as err:  # a half-written config: the row says so
        run.error = f"unreadable config ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if not run.configuration:  # unreadable: a configuration of its own, never pooled with another
        run.configuration = ((UNREADABLE, name),)

    run.rows = read_jsonl(run_dir / METRICS_FILE)
    run.steps = int(run.rows[-1].get("step", len(run.rows))) if run.rows else 0
    summary = None
    if (run_dir / SUMMARY_FILE).exists():
        summary = read_json(run_dir / SUMMARY_FILE)
        if summary is None:
            run.error = run.error or f"unreadable {SUMMARY_FILE}"
    if summary is not None:
        run.status = str(summary.get("status", "unknown"))
        run.wall_seconds = _finite(summary.get("wall_seconds"))
        if summary.get("error") and not run.error:
            run.error = str(summary["error"]).splitlines()[0]
    elif run.rows:
        run.status = "running-or-killed"

    judge = (summary or {}).get("judge")
    run.judge = judge if isinstance(judge, dict) else {}
    eval_ = (summary or {}).get("eval") or {}
    run.final_win_rate = _finite(eval_.get("eval/win_rate"))
    run.pairs = _finite(eval_.get("eval/pairs"))
    if run.final_win_rate is None:
        run.final_win_rate = _last(run.rows, "eval/win_rate")
        run.pairs = _last(run.rows, "eval/pairs")
    lc_source = eval_ if _finite(eval_.get("eval/win_rate_lc")) is not None else next(
        (r for r in reversed(run.rows) if _finite(r.get("eval/win_rate_lc")) is not None), {})
    run.final_win_rate_lc = _finite(lc_source.get("eval/win_rate_lc"))
    low, high = _finite(lc_source.get("eval/win_rate_lc_low")), _finite(lc_source.get("eval/win_rate_lc_high"))
    run.win_rate_lc_interval = (low, high) if low is not None and high is not None else None
    run.length_ratio = _finite(lc_source.get("eval/length_ratio"))
    held_source = eval_ if held_out_names(eval_) else next((r for r in reversed(run.rows) if held_out_names(r)), {})
    run.held_out = {name: tuple(_finite(held_source.get(f"eval/{name}/win_rate{s}")) for s in ("", "_low", "_high"))
                    for name in held_out_names(held_source)}
    wins = [w for w in (_finite(r.get("eval/win_rate")) for r in run.rows) if w is not None]
    best = _finite((summary or {}).get("best_eval_win_rate"))
    run.best_win_rate = best if best is not None else (max(wins) if wins else None)

    clips = [c for c in (_finite(r.get("clip_fraction")) for r in run.rows) if c is not None]
    if clips:
        tail = clips[-max(1, math.ceil(LAST_FRACTION * len(clips))):]
        run.clip_fraction = sum(tail) / len(tail)
    tail_rows = run.rows[-max(1, math.ceil(LAST_FRACTION * len(run.rows))):]
    spreads = [abs(v - 1.0) for r in tail_rows for k in ("ratio/max", "ratio/min") if (v := _finite(r.get(k))) is not None]
    run.ratio_spread = max(spreads) if spreads else None
    run.final_kl = _last(run.rows, "kl")
    run.eos_rate = _last(run.rows, "eval/eos_rate")
    run.ref_eos_rate = _last(run.rows, "eval/ref_eos_rate")
    try:
        run.trial = int(OmegaConf.load(run_dir / ".hydra" / "hydra.yaml").hydra.job.num)
    except Exception:  # a single run (no job number) or no hydra.yaml
        run.trial = None
    try:
        run.overrides = [str(o) for o in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")]
    except Exception:  # written by hand, or an older run
        run.overrides = []
    if summary is not None:
        keys = cfg.get("objectives") or []
        run.objectives = {k: objective_value(summary, k) for k in keys}
    return run


def result_line(run: Run) -> str:
    """One run's result in a line: `eval win rate 0.625 (95% Wilson 0.31-0.86, 8 pairs), kl 0.0123
    nats per token, finished` (what a sweep prints per job)."""
    parts = []
    if run.final_win_rate is not None:
        interval = run.interval
        parts.append(f"eval win rate {run.final_win_rate:.3f}"
                     + (f" (95% Wilson {interval[0]:.2f}-{interval[1]:.2f}, {run.pairs:.0f} pairs)" if interval else ""))
    if run.final_kl is not None:
        parts.append(f"kl {run.final_kl:.4g} {kl_units([run])}")
    parts.append(run.status + (f": {run.error}" if run.error else ""))
    return ", ".join(parts)


def load_runs(sweep_dir: Path) -> list[Run]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a folder")
    run_dirs = find_run_dirs(sweep_dir)
    if not run_dirs:
        raise ReportError(f"no run folders under {sweep_dir} (a run folder holds .hydra/config.yaml and metrics.jsonl)")
    runs = [load_run(d, sweep_dir) for d in run_dirs]
    fill_introduced_defaults(runs)
    return runs


@functools.cache
def _introduced_defaults() -> dict:
    """ppo.train.config.introduced_defaults, built once (the schema as an OmegaConf structure)."""
    from ppo.train.config import introduced_defaults

    return introduced_defaults()


def default(key: str):
    """The schema's default of a config key (a dotted path), None for a key it does not know."""
    return _introduced_defaults().get(key)


def fill_introduced_defaults(runs: list[Run]) -> None:
    """Runs made by different versions of the code: a config key that some runs hold and another
    lacks (a setting added since that run was made) is, in the run that lacks it, the setting's
    default (`ppo.train.config.introduced_defaults`), the value that run ran as if it had, as a
    resume reads an older checkpoint. So a key at its default in one run and absent in another
    does not split their configuration, and a key set away from its default still does. Keys the
    schema does not know (an older judge's options) stay absent."""
    defaults = {key: repr(value) for key, value in _introduced_defaults().items()}
    readable = [r for r in runs if dict(r.configuration).keys() != {UNREADABLE}]
    keys = {k for r in readable for k, _ in r.configuration}
    for r in readable:
        values = dict(r.configuration)
        values.update({k: defaults[k] for k in keys - values.keys() if k in defaults})
        r.configuration = tuple(sorted(values.items()))
