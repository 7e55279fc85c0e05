"""`ppo-report SWEEP_DIR`: one table, heatmaps and training curves for a sweep (no network).

Every folder under SWEEP_DIR that holds `.hydra/config.yaml` is a run (a Hydra run or one
multirun job). From each run it reads the config, `metrics.jsonl` (the plain metrics file; no
wandb needed) and `summary.json` (status, final eval, wall time). Runs whose configs differ only
in the seed (and in logging, progress and checkpoint settings: NOT_CONFIGURATION) are seeds of
one configuration, and every number of a configuration reads `mean ± half-width (n seeds)`:

- the final eval win rate: the mean over seeds, ± the 95% t-interval over seeds (two seeds or
  more; one seed: the Wilson half-width of its pairs), and the pooled Wilson interval of every
  evaluation pair of every seed (never zero width);
- the final KL and clip_fraction (last 20% of steps): the mean, ± the t-interval over seeds;
- the final length-controlled win rate (`eval/win_rate_lc`, the win rate at equal lengths) and
  the policy/reference length ratio, the mean ± the t-interval over seeds.

An interval past its metric's range (VALID_RANGE: a rate in [0, 1], a KL never below 0) is cut
to it and written `mean [low, high]`; bands and error bars are cut alike. Two seeds (a t
multiplier of 12.7) are marked `too few` and said so on top, and so is a swept setting whose
values gave identical runs to the last digit (`settings_without_effect`). KL labels name the
runs' unit: per token (loss.logprob_reduction=mean) or per sequence (sum).

Judge reliability (the summary's `judge` part, `ppo.judges.pipeline.reliability`): per run, how
often the judge's two orders agree, how often the answer shown first wins (95% Wilson interval;
0.5 is no bias) and the tie rate; a judge whose orders agree on fewer than GUESSING_AGREEMENT of
the pairs is reported as guessing, on top of the report, since its win rates measure nothing.

It writes into SWEEP_DIR (or --out):

- `report.md`: the verdict, one row per configuration, one row per run, the runs that did not finish;
- `heatmap_win_rate.png`, `heatmap_win_rate_lc.png`, `heatmap_clip_fraction.png`, `heatmap_kl.png`: epsilon x beta, each
  cell `mean ± half-width (n seeds)` (drawn when the runs span more than one epsilon x beta cell);
- `compare_runs.png`: one bar per run for the same three numbers (loss types, advantages);
- `curves_win_rate.png`, `curves_kl.png`, `curves_clip_fraction.png`: one line per run, or per
  configuration with a seed band (the t-interval over seeds) when a configuration has several
  seeds; a single seed's win rates carry 95% Wilson bands; rates on [0, 1];
- for an Optuna search (hparams_search=...): a trial table (a trial's seeds averaged, with 95%
  intervals; trial numbers from the study stored in SWEEP_DIR/optuna.db) and, for two
  objectives, the Pareto front with error bars (`pareto_front.png`);
- `wandb/`: links to every run's offline W&B log, for `wandb leet SWEEP_DIR/wandb`.

The verdict: one rule (BEST_RULE, `rank`) names the best configuration, and it is said to beat
the runner-up only when their 95% intervals do not overlap (VERDICT_RULE: the interval is the
union of the across-seed t-interval and the pooled Wilson interval); otherwise the report says
"no clear winner" and lists the top group, every configuration it cannot tell apart from the
best. report.md, stdout and the heatmap's boxes (one per top-group cell) all use `verdict`.

The health verdict is the seed's rule on clip_fraction, taken over the last 20% of steps:
about 0 = the policy is not moving, above 0.3 = it moves too far per step, else healthy.
A run with no summary.json is `running-or-killed`; one with no metrics yet is
`not-started`. Nothing in a run folder is ever written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ppo.errors import ReportError
from ppo.health import CLIP_FRACTION_HIGH, CLIP_FRACTION_IDLE
from ppo.health import verdict as health_verdict
from ppo.io import CHECKPOINTS_DIR, METRICS_FILE, PREVIOUS_PREFIX, SUMMARY_FILE, atomic_write_text, read_json, read_jsonl
from ppo.judges.pipeline import GUESSING_AGREEMENT
from ppo.metrics import comparable, held_out_names, kl_unit, t_half_width, t_quantile_975, wilson_interval
from ppo.tools.sweep import OPTIMIZATION_RESULTS, objective_value

LAST_FRACTION = 0.2  # clip_fraction is averaged over this last share of the steps
SKIP_DIRS = {".hydra", "wandb", CHECKPOINTS_DIR, "__pycache__"}

REPORT_FILE = "report.md"
HEATMAPS = {  # file stem -> (run attribute, title, number format, colour map)
    "heatmap_win_rate": ("final_win_rate", "Final eval win rate against the reference", "{:.2f}", "viridis"),
    "heatmap_win_rate_lc": ("final_win_rate_lc", "Final length-controlled win rate (the win rate at equal lengths)",
                            "{:.2f}", "viridis"),
    "heatmap_clip_fraction": ("clip_fraction", "Mean clip_fraction, last 20% of steps", "{:.2f}", "magma"),
    "heatmap_kl": ("final_kl", "Final KL to the reference ({kl_unit})", "{:.3f}", "cividis"),
}
CURVES = {  # file stem -> (metrics key, title, y label); {kl_unit}: `kl_units`, from the runs' configs
    "curves_win_rate": ("eval/win_rate", "Eval win rate against the reference", "win rate"),
    "curves_kl": ("kl", "KL to the reference", "kl ({kl_unit})"),
    "curves_clip_fraction": ("clip_fraction", "clip_fraction (share of ratios outside 1 ± epsilon)", "clip_fraction"),
}


@dataclass
class Run:
    path: Path
    name: str  # folder relative to the sweep folder
    epsilon: float | None = None
    beta: float | None = None
    loss_type: str | None = None
    advantage: str | None = None
    seed: int | None = None
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
        run.iters = (cfg.get("train") or {}).get("iters")
        run.configuration = configuration_of(cfg)
    except Exception as err:  # a half-written config: the row says so
        run.error = f"unreadable config ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    if not run.configuration:  # unreadable: a configuration of its own, never pooled with another
        run.configuration = (("run folder", name),)

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
    return [load_run(d, sweep_dir) for d in run_dirs]


# ----------------------------------------------------------------------------- configurations


# Each metric's valid range: a 95% interval, band or error bar past it is cut to it, since the
# quantity cannot be there (a rate lies in [0, 1]; a KL divergence is never negative, although
# its k1 estimate on one batch can be, so a KL's mean is shown as measured and only its interval
# is cut).
RATE = (0.0, 1.0)
NON_NEGATIVE = (0.0, math.inf)
VALID_RANGE = {"eval/win_rate": RATE, "eval/win_rate_lc": RATE, "clip_fraction": RATE, "kl": NON_NEGATIVE,
               "eval/length_ratio": NON_NEGATIVE}
UNBOUNDED = (-math.inf, math.inf)


def valid_range(key: str) -> tuple[float, float]:
    """The range of a metrics key (a held-out judge's eval/NAME/win_rate is a rate too)."""
    if key.startswith("eval/") and key.endswith(("win_rate", "win_rate_lc")):
        return RATE
    return VALID_RANGE.get(key, UNBOUNDED)


# Fewer seeds than this make the t-interval over seeds say little: its multiplier is 12.7 for
# 2 seeds (4.3 for 3, 2.8 for 5), so a cell of two seeds reads 0.52 ± 0.60. The report says so.
MIN_SEEDS = 3


@dataclass
class Stat:
    """The mean over a configuration's seeds and the half-width of its 95% t-interval (None for one
    seed), with the metric's valid range (`bounds`) the interval is cut to."""

    mean: float | None
    half: float | None
    n: int
    bounds: tuple[float, float] = UNBOUNDED

    @classmethod
    def of(cls, values: list[float | None], bounds: tuple[float, float] = UNBOUNDED) -> Stat:
        values = [v for v in values if v is not None]
        if not values:
            return cls(None, None, 0, bounds)
        return cls(sum(values) / len(values), t_half_width(values), len(values), bounds)

    @property
    def interval(self) -> tuple[float, float] | None:
        """mean ± half, cut to the metric's valid range; None without a spread."""
        if self.mean is None or self.half is None:
            return None
        low, high = self.bounds
        return (max(low, self.mean - self.half), min(high, self.mean + self.half))

    @property
    def clipped(self) -> bool:
        return self.interval is not None and self.interval != (self.mean - self.half, self.mean + self.half)

    @property
    def too_few(self) -> bool:
        """Two seeds (one has no t-interval at all): a t multiplier of 12.7."""
        return 1 < self.n < MIN_SEEDS

    def value_text(self, spec: str = "{:.3f}") -> str:
        """`0.830 ± 0.047`; an interval past the metric's range as the range it can be in: `0.523 [0.000, 1.000]`."""
        if self.mean is None:
            return "-"
        if self.clipped:
            low, high = self.interval
            return f"{spec.format(self.mean)} [{spec.format(low)}, {spec.format(high)}]"
        return spec.format(self.mean) + (f" ± {spec.format(self.half)}" if self.half is not None else "")

    def seeds_text(self) -> str:
        """`(3 seeds)`, `(2 seeds: too few)`."""
        return f"({self.n} seed{'s' if self.n != 1 else ''}{': too few' if self.too_few else ''})"

    def text(self, spec: str = "{:.3f}") -> str:
        """`0.830 ± 0.047 (3 seeds)`; one seed has no spread: `0.830 (1 seed)`; two: `(2 seeds: too few)`."""
        if self.mean is None:
            return "-"
        return f"{self.value_text(spec)} {self.seeds_text()}"


@dataclass
class Cell:
    """One configuration (every config key but the seed) and the statistics over its seeds.

    Statistics use the configuration's finished runs that have a final eval win rate, or, when
    none has finished, every run that has one (marked unfinished): a killed run's last
    evaluation is from an earlier step and is not pooled with finished ones."""

    configuration: tuple
    runs: list[Run]
    label: str = ""  # the settings that differ between the configurations of the report
    extra: list = field(default_factory=list)  # those beyond epsilon, beta, loss type, advantage: `key=value`
    used: list[Run] = field(default_factory=list)
    finished: bool = False
    win: Stat = field(default_factory=lambda: Stat(None, None, 0))
    win_lc: Stat = field(default_factory=lambda: Stat(None, None, 0))  # length-controlled
    length_ratio: Stat = field(default_factory=lambda: Stat(None, None, 0))
    best_win: Stat = field(default_factory=lambda: Stat(None, None, 0))
    kl: Stat = field(default_factory=lambda: Stat(None, None, 0))
    clip: Stat = field(default_factory=lambda: Stat(None, None, 0))
    pooled_rate: float | None = None  # every evaluation pair of every used seed, pooled
    pairs: float | None = None
    pooled: tuple[float, float] | None = None  # its 95% Wilson interval

    @classmethod
    def of(cls, configuration: tuple, runs: list[Run]) -> Cell:
        cell = cls(configuration, runs)
        scored = [r for r in runs if r.final_win_rate is not None]
        finished = [r for r in scored if r.status == "finished"]
        cell.used, cell.finished = (finished, True) if finished else (scored, False)
        cell.win = Stat.of([r.final_win_rate for r in cell.used], RATE)
        cell.best_win = Stat.of([r.best_win_rate for r in cell.used], RATE)
        cell.win_lc = Stat.of([r.final_win_rate_lc for r in cell.used], RATE)
        cell.length_ratio = Stat.of([r.length_ratio for r in cell.used], NON_NEGATIVE)
        kl_runs = cell.used or [r for r in runs if r.status == "finished"] or runs
        cell.kl = Stat.of([r.final_kl for r in kl_runs], NON_NEGATIVE)
        cell.clip = Stat.of([r.clip_fraction for r in kl_runs], RATE)
        if cell.used and all(r.pairs for r in cell.used):
            cell.pairs = sum(r.pairs for r in cell.used)
            cell.pooled_rate = sum(r.final_win_rate * r.pairs for r in cell.used) / cell.pairs
            cell.pooled = wilson_interval(cell.pooled_rate, cell.pairs)
        return cell

    @property
    def first(self) -> Run:
        return min(self.runs, key=lambda r: (r.seed is None, str(r.seed), r.name))  # the lowest seed names the cell

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% interval the verdict compares: the union of the across-seed t-interval (two
        seeds or more) and the pooled Wilson interval of every evaluation pair. Either source
        of noise can hide a difference, so a configuration is only as certain as the wider
        says: seeds that happen to agree do not make it certain beyond its pairs, and many
        pairs do not remove the seed-to-seed spread. None when neither can be computed (one
        seed without a pair count)."""
        bounds = []
        if self.win.half is not None:
            bounds.append((self.win.mean - self.win.half, self.win.mean + self.win.half))
        if self.pooled is not None:
            bounds.append(self.pooled)
        if not bounds:
            return None
        return (max(0.0, min(b[0] for b in bounds)), min(1.0, max(b[1] for b in bounds)))

    def win_text(self) -> str:
        """`0.830 ± 0.047 (3 seeds)`: the mean over seeds and its t half-width; for one seed the
        Wilson half-width of its pairs stands in (marked `pairs`), so no cell reads without ±."""
        if self.win.mean is None:
            return "-"
        if self.win.half is None and self.pooled is not None:
            low, high = self.pooled
            half = (high - low) / 2
            if self.win.mean - half < 0.0 or self.win.mean + half > 1.0:  # Wilson is lopsided near 0 and 1
                return f"{self.win.mean:.3f} [{low:.3f}, {high:.3f}] (1 seed; pairs)"
            return f"{self.win.mean:.3f} ± {half:.3f} (1 seed; pairs)"
        return self.win.text()

    def pooled_text(self) -> str:
        if self.pooled is None:
            return "-"
        return f"{self.pooled[0]:.2f}-{self.pooled[1]:.2f} ({self.pairs:.0f} pairs)"

    def describe(self) -> str:
        r = self.first
        text = f"epsilon={_fmt(r.epsilon)} beta={_fmt(r.beta)} loss_type={r.loss_type} advantage={r.advantage}"
        return " ".join([text, *self.extra])


def configurations(runs: list[Run]) -> list[Cell]:
    """The runs grouped by configuration, each labelled by the settings that differ between them."""
    grouped: dict[tuple, list[Run]] = {}
    for r in runs:
        grouped.setdefault(r.configuration, []).append(r)
    cells = [Cell.of(key, members) for key, members in grouped.items()]
    short = {"loss.epsilon": "eps", "loss.beta": "beta", "loss.type": "loss", "loss.advantage": "adv"}
    # epsilon, beta, loss type, advantage first (the harness's question), then the rest by name
    keys = sorted({k for c in cells for k, _ in c.configuration}, key=lambda k: (list(short) + [k]).index(k))
    varying = [k for k in keys if len({dict(c.configuration).get(k) for c in cells}) > 1]
    for c in cells:
        values = dict(c.configuration)
        parts = [f"{short.get(k, k)}={_plain(values.get(k))}" for k in varying]
        c.label = " ".join(parts) or c.first.name
        c.extra = [f"{k}={_plain(values.get(k))}" for k in varying if k not in short]
    return cells


def _plain(value: str | None) -> str:
    """A flattened config value (its repr) as a person writes it: 0.1, judge, [a, b]; an Optuna
    proposal's float to 4 significant digits (0.24208472637456369 -> 0.2421)."""
    if value is None:
        return "-"
    value = value.strip("'")
    try:
        number = float(value)
    except ValueError:
        return value
    if "." in value or "e" in value.lower():
        short = f"{number:.4g}"
        return short if len(short) < len(value) else value
    return value


# The one rule that names the best configuration, used by report.md, stdout and the heatmap's
# boxes alike. A configuration of one seed is a run, so with one seed per configuration this
# is the rule the report always had.
BEST_RULE = ("highest mean final eval win rate over seeds; ties go to the higher mean best win rate, then the lower "
             "|mean final KL|; configurations with finished runs first")
# The test behind the verdict: a configuration is told apart from the best only when their 95%
# intervals do not overlap. Non-overlap of two 95% intervals is conservative (about p < 0.01
# for intervals of equal width), and a reader can check it from the table by eye.
VERDICT_RULE = ("the best beats another configuration beyond noise when their 95% intervals do not overlap; an "
                "interval is the union of the t-interval of the per-seed final win rates (2 seeds or more) and "
                "the Wilson interval of all evaluation pairs pooled over the seeds")


def rank(cells: list[Cell]) -> list[Cell]:
    """Configurations with a win rate, best first, by BEST_RULE."""
    scored = [c for c in cells if c.win.mean is not None]
    pool = [c for c in scored if c.finished] or scored
    return sorted(pool, key=lambda c: (-c.win.mean, -(c.best_win.mean if c.best_win.mean is not None else -1.0),
                                       abs(c.kl.mean) if c.kl.mean is not None else math.inf))


@dataclass
class Verdict:
    """The best configuration, the runner-up, and the configurations it cannot be told apart from."""

    best: Cell | None
    runner_up: Cell | None
    top_group: list[Cell]  # the best and every configuration whose interval overlaps the best's

    @property
    def clear(self) -> bool:
        """The best beats every other configuration beyond noise (VERDICT_RULE)."""
        return self.best is not None and self.runner_up is not None and len(self.top_group) == 1


def _overlap(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Unknown intervals overlap: without a measure of noise nothing is beyond it."""
    return a is None or b is None or (a[0] <= b[1] and b[0] <= a[1])


def verdict(cells: list[Cell]) -> Verdict:
    ranked = rank(cells)
    if not ranked:
        return Verdict(None, None, [])
    best = ranked[0]
    group = [best] + [c for c in ranked[1:] if _overlap(best.interval, c.interval)]
    return Verdict(best, ranked[1] if len(ranked) > 1 else None, group)


def verdict_text(v: Verdict, markdown: bool = False) -> str:
    """The verdict in one sentence, the same in report.md and on stdout."""
    if v.best is None:
        return "none yet (no run has an eval win rate)"
    b = (lambda x: f"**{x}**") if markdown else (lambda x: x)
    head = f"{v.best.describe()}: final eval win rate {v.best.win_text()}"
    if v.best.pooled is not None:
        head += f", pooled pairs {v.best.pooled_text()}"
    if v.runner_up is None:
        return head + " (the only configuration with an eval win rate)"
    if v.clear:
        return (head + f". It {b('beats the runner-up beyond noise')}: {v.runner_up.describe()} "
                f"({v.runner_up.win_text()}); their 95% intervals do not overlap")
    others = "; ".join(f"{c.label} ({c.win_text()})" for c in v.top_group[1:])
    return (head + f". {b('No clear winner')}: top group of {len(v.top_group)}, whose 95% intervals overlap the "
            f"best's; it cannot be told apart from {others}")


def _fmt(value, spec: str = "{:.4g}") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return spec.format(value)
    return str(value)


def _labels(runs: list[Run]) -> dict[str, str]:
    """Short legend labels: the settings that differ between runs (else the folder name)."""
    keys = [("epsilon", "eps"), ("beta", "beta"), ("loss_type", "loss"), ("advantage", "adv"), ("seed", "seed")]
    varying = [(k, short) for k, short in keys if len({getattr(r, k) for r in runs}) > 1]
    labels = {}
    for r in runs:
        label = " ".join(f"{short}={_fmt(getattr(r, k))}" for k, short in varying)
        labels[r.name] = label or r.name
    if len(set(labels.values())) < len(labels):  # duplicates (e.g. a re-run): fall back to folder names
        labels = {r.name: r.name for r in runs}
    return labels


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(runs: list[Run], attr: str, title: str, spec: str, cmap: str, out: Path, sweep_name: str,
            top: list[Cell] | None = None) -> Path | None:
    """epsilon (rows) x beta (columns); each cell reads `mean ± half-width (n seeds)` over the
    runs there (Cell's statistics; the win rate's ± as in report.md's table, its pooled Wilson
    interval of every pair below). The win-rate map boxes every cell of the verdict's top group
    (`top`): one box when the best beats the rest beyond noise, several when it cannot be told
    apart from them, so the boxes, report.md and stdout say the same."""
    import numpy as np

    positions: dict[tuple[float, float], list[Run]] = {}
    for r in runs:
        if r.epsilon is not None and r.beta is not None:
            positions.setdefault((r.epsilon, r.beta), []).append(r)
    if not positions:
        return None
    stats = {pos: Cell.of((), members) for pos, members in positions.items()}
    epsilons = sorted({e for e, _ in positions})
    betas = sorted({b for _, b in positions})
    stat_of = {"final_win_rate": lambda c: c.win, "final_win_rate_lc": lambda c: c.win_lc, "clip_fraction": lambda c: c.clip,
               "final_kl": lambda c: c.kl}[attr]
    grid = np.full((len(epsilons), len(betas)), np.nan)
    for (e, b), cell in stats.items():
        if stat_of(cell).mean is not None:
            grid[epsilons.index(e), betas.index(b)] = stat_of(cell).mean
    if attr == "final_win_rate_lc" and not np.isfinite(grid).any():
        return None  # runs from before the length-controlled win rate was logged

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.3 * len(betas) + 3.2, 1.5 * len(epsilons) + 2.2), dpi=120)
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if attr in ("clip_fraction", "final_win_rate", "final_win_rate_lc"):  # rates: the same colours in every report
        vmin, vmax = 0.0, 1.0
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=colormap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=9)

    boxed = set()
    if attr == "final_win_rate" and top:
        top_runs = {id(r) for c in top for r in c.runs}
        boxed = {pos for pos, members in positions.items() if any(id(r) in top_runs for r in members)}
    for i, e in enumerate(epsilons):
        for j, b in enumerate(betas):
            if (e, b) not in positions:
                text, colour = "no run", "#555555"
            elif math.isnan(grid[i, j]):
                text, colour = "n/a", "#555555"
            else:
                cell, stat = stats[(e, b)], stat_of(stats[(e, b)])
                if attr == "final_win_rate":
                    value, seeds = cell.win_text().split(" (", 1)
                    text = f"{value}\n({seeds}" + (f"\npairs {cell.pooled[0]:.2f}-{cell.pooled[1]:.2f}" if cell.pooled else "")
                else:
                    text = f"{stat.value_text(spec)}\n{stat.seeds_text()}"
                kinds = len({r.configuration for r in positions[(e, b)]})
                if kinds > 1:  # other settings vary too: the runs here are not seeds of one configuration
                    text = (text.replace("seeds: too few)", "seeds)").replace("seeds)", f"runs of {kinds} configurations)")
                            .replace("seed)", "run)"))
                shade = (grid[i, j] - vmin) / (vmax - vmin)
                colour = "black" if shade > 0.55 else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10, fontweight="bold")
    for e, b in sorted(boxed):
        i, j = epsilons.index(e), betas.index(b)
        # inset, so that neighbouring boxes of a top group stay two boxes
        ax.add_patch(plt.Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="#e41a1c", linewidth=3))
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=10)
    ax.set_yticks(range(len(epsilons)), [f"{e:g}" for e in epsilons], fontsize=10)
    ax.set_xlabel("KL weight beta (loss.beta)", fontsize=11)
    ax.set_ylabel("clip range epsilon (loss.epsilon)", fontsize=11)
    note = "; ± 95% t-interval over seeds (1 seed: Wilson, pairs; [low, high]: cut to the valid range)"
    if boxed:
        note += ("\nred box: the best, ahead of the rest beyond noise" if len(boxed) == 1 else
                 f"\nred boxes: the top group, {len(boxed)} cells the report cannot tell apart (95% intervals overlap)")
    ax.set_title(f"{title}\n{sweep_name}: {len(runs)} runs{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def curves(runs: list[Run], key: str, title: str, ylabel: str, out: Path, sweep_name: str) -> Path | None:
    """One line per run; when a configuration has several seeds, one line per configuration
    instead: the mean over its seeds at each step, with the 95% t-interval over seeds as its band
    (the seed band). A single-seed win-rate line keeps its Wilson band over the pairs."""
    from matplotlib.ticker import MaxNLocator

    series = []
    bands = {}  # label -> (steps, low, high)
    cells = configurations(runs)
    seeded = any(len(c.runs) > 1 for c in cells)
    if not seeded:
        labels = _labels(runs)
        for r in runs:
            points = [(row.get("step"), _finite(row.get(key))) for row in r.rows]
            points = [(s, v) for s, v in points if s is not None and v is not None]
            if points:
                series.append((labels[r.name], r.status, points))
            if key == "eval/win_rate":
                intervals = [(row["step"], i) for row in r.rows if row.get("step") is not None
                             and (i := wilson_interval(_finite(row.get(key)), _finite(row.get("eval/pairs"))))]
                if intervals:
                    bands[labels[r.name]] = ([s for s, _ in intervals], [i[0] for _, i in intervals], [i[1] for _, i in intervals])
    else:
        for cell in cells:
            members = cell.used or cell.runs
            by_step: dict[int, list[float]] = {}
            for r in members:
                for row in r.rows:
                    if row.get("step") is not None and (v := _finite(row.get(key))) is not None:
                        by_step.setdefault(int(row["step"]), []).append(v)
            if not by_step:
                continue
            label = f"{cell.label} ({len(members)} seed{'s' if len(members) != 1 else ''})"
            status = "finished" if all(r.status == "finished" for r in members) else "not all finished"
            series.append((label, status, [(st, sum(v) / len(v)) for st, v in sorted(by_step.items())]))
            spread = [(st, sum(v) / len(v), h) for st, v in sorted(by_step.items()) if (h := t_half_width(v)) is not None]
            if spread:  # cut to the metric's range: a win-rate band stays in [0, 1], a KL band above 0
                low, high = valid_range(key)
                bands[label] = ([st for st, _, _ in spread], [max(low, m - h) for _, m, h in spread],
                                [min(high, m + h) for _, m, h in spread])
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=120)
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    sparse = key.startswith("eval/")
    smoothed = False
    for n, (label, status, points) in enumerate(sorted(series)):
        steps, values = zip(*points)
        style = "-" if status == "finished" else "--"
        colour = colours[n % len(colours)]
        band = bands.get(label)
        label = label + ("" if status == "finished" else f" ({status})")
        window = 1 if sparse else max(1, len(values) // 20)
        if window > 1:  # noisy per-step values: faint raw line, bold moving average
            smoothed = True
            ax.plot(steps, values, "-", color=colour, linewidth=0.7, alpha=0.25)
            values = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
        ax.plot(steps, values, style, color=colour, linewidth=1.8,
                marker="o" if sparse or len(points) < 15 else None, markersize=4, label=label)
        if band is not None:
            band_steps, low, high = band
            ax.fill_between(band_steps, low, high, color=colour, alpha=0.15, linewidth=0)
            if sparse:
                ax.vlines(band_steps, low, high, color=colour, alpha=0.5, linewidth=1.0)  # visible for a lone point too
    note = f"; bold: moving average over {max(len(p) for _, _, p in series) // 20} steps" if smoothed else ""
    if seeded and key == "kl" and bands:
        note += "; bands: 95% t-intervals over seeds, cut at 0"
    if key == "clip_fraction":
        ax.axhline(CLIP_FRACTION_HIGH, color="#e41a1c", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[0], CLIP_FRACTION_HIGH, " above 0.3: moving too far per step", color="#e41a1c", va="bottom", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
    if key == "eval/win_rate":
        ax.set_ylim(0.0, 1.0)  # a rate: the whole range, so 0.42 -> 0.45 does not look like a rise
        note += "; bands: 95% t-intervals over seeds" if seeded else "; bands: 95% Wilson intervals"
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[0], 0.5, " 0.5: no better than the reference", color="grey", va="bottom", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # steps are whole numbers
    ax.set_xlabel("step", fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    who = (f"run {sweep_name}" if len(runs) == 1 else
           f"{sweep_name}: {len(series)} configurations, {len(runs)} runs" if seeded else f"{sweep_name}: {len(series)} runs")
    ax.set_title(f"{title}\n{who}{note}", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _whiskers(mean: float | None, interval: tuple[float, float] | None) -> tuple[float, float]:
    """(below, above) the mean for an error bar of `interval` (already cut to the metric's range);
    never negative (a k1 KL's mean can lie below its interval's cut at 0)."""
    if mean is None or interval is None:
        return (0.0, 0.0)
    return (max(0.0, mean - interval[0]), max(0.0, interval[1] - mean))


def compare_runs(runs: list[Run], out: Path, sweep_name: str) -> Path | None:
    """One horizontal bar per run: final win rate, clip_fraction (last 20%), final kl. When a
    configuration has several seeds, one bar per configuration instead: the mean over its seeds,
    with the verdict's 95% interval on the win rate and the t-interval over seeds on the others."""
    plt = _pyplot()
    cells = configurations(runs)
    if any(len(c.runs) > 1 for c in cells):
        ordered_cells = sorted(cells, key=lambda c: c.label)
        names = [f"{c.label} ({c.win.n or len(c.runs)} seeds)" + ("" if c.finished else " (not finished)")
                 for c in ordered_cells]
        rows = []
        for c in ordered_cells:
            interval = c.interval if c.win.mean is not None else None
            win_err = _whiskers(c.win.mean, interval)
            rows.append({"final_win_rate": (c.win.mean, win_err), "clip_fraction": (c.clip.mean, _whiskers(c.clip.mean, c.clip.interval)),
                         "final_kl": (c.kl.mean, _whiskers(c.kl.mean, c.kl.interval)), "finished": c.finished})
        what = f"{len(cells)} configurations, {len(runs)} runs; bars: mean over seeds, whiskers: 95% intervals"
    else:
        labels = _labels(runs)
        ordered = sorted(runs, key=lambda r: labels[r.name])
        names = [labels[r.name] + ("" if r.status == "finished" else f" ({r.status})") for r in ordered]
        rows = [{"final_win_rate": (r.final_win_rate, None), "clip_fraction": (r.clip_fraction, None),
                 "final_kl": (r.final_kl, None), "finished": r.status == "finished"} for r in ordered]
        what = f"{len(runs)} runs"
    panels = [("final_win_rate", "final eval win rate", "{:.2f}"), ("clip_fraction", "clip_fraction (last 20%)", "{:.2f}"),
              ("final_kl", f"final kl ({kl_units(runs)})", "{:.3g}")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(rows) + 1.8), dpi=120, sharey=True)
    for ax, (attr, title, spec) in zip(axes, panels):
        values = [row[attr][0] for row in rows]
        heights = [v if v is not None else 0.0 for v in values]
        colours = ["#4c72b0" if row["finished"] else "#bbbbbb" for row in rows]
        errors = [row[attr][1] for row in rows]
        xerr = None
        if all(e is not None for e in errors):
            xerr = [[e[0] for e in errors], [e[1] for e in errors]]
        ax.barh(range(len(rows)), heights, color=colours, xerr=xerr, ecolor="#333333", capsize=3)
        for i, v in enumerate(values):
            right = heights[i] + (xerr[1][i] if xerr else 0.0)
            ax.text(right, i, " " + (spec.format(v) if v is not None else "n/a"), va="center", fontsize=9)
        if attr == "final_win_rate":
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1.2)
        if attr == "clip_fraction":
            ax.axvline(CLIP_FRACTION_HIGH, color="#e41a1c", linestyle=":", linewidth=1.2)
            ax.set_xlim(0, 1.15)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.25)
    axes[0].set_yticks(range(len(rows)), names, fontsize=9)
    axes[0].invert_yaxis()
    fig.suptitle(f"Runs compared: {sweep_name} ({what}; grey = not finished)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- searches


@dataclass
class Search:
    """An Optuna search (hydra-optuna-sweeper): what it optimised, read from a trial's .hydra/hydra.yaml."""

    objectives: list[str]
    directions: list[str]  # "maximize" | "minimize", one per objective
    sampler: str
    n_trials: int | None
    results: dict | None  # Optuna's answer (optimization_results.yaml), once the search ended
    params: list[str] = field(default_factory=list)  # the searched keys (hydra.sweeper.params)
    study_name: str | None = None
    seeds_per_trial: int = 1
    # The study stored in the sweep folder (STUDY_FILE): trial states and their counts; None without one
    study_states: dict | None = None
    command: str | None = None  # the command that runs more trials into the stored study

    def better(self, a: list[float], b: list[float]) -> bool:
        """a dominates b: no worse on every objective and better on one."""
        sign = [1.0 if d == "maximize" else -1.0 for d in self.directions]
        no_worse = all(s * x >= s * y for s, x, y in zip(sign, a, b))
        return no_worse and any(s * x > s * y for s, x, y in zip(sign, a, b))


@dataclass
class Trial:
    """One trial of a search: its runs (one per seed, `seeds_per_trial`), the mean of each objective
    over them and its 95% interval (the t-interval over seeds; with one seed, the Wilson interval of
    its pairs for a win rate and none otherwise), cut to the objective's range."""

    runs: list[Run]
    number: int | None
    values: list[float | None]
    intervals: list[tuple[float, float] | None]

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def epsilon(self) -> float | None:
        return self.first.epsilon

    @property
    def beta(self) -> float | None:
        return self.first.beta

    @property
    def status(self) -> str:
        return next((r.status for r in self.runs if r.status != "finished"), "finished")

    @property
    def error(self) -> str | None:
        return next((r.error for r in self.runs if r.error), None)

    @property
    def scored(self) -> bool:
        return self.status == "finished" and all(v is not None for v in self.values)

    def text(self, i: int) -> str:
        """`0.625 (0.31-0.86)`: objective i and its 95% interval."""
        value, interval = self.values[i], self.intervals[i]
        if value is None:
            return "-"
        return f"{value:.4g}" + (f" ({interval[0]:.3g}-{interval[1]:.3g})" if interval else "")


def _study_file(sweep_dir: Path) -> Path:
    from ppo.tools.sweep import STUDY_FILE

    return Path(sweep_dir) / STUDY_FILE


def _same_value(written: str, value) -> bool:
    """An override's text and an Optuna parameter's value are the same setting."""
    if isinstance(value, float):
        try:
            return float(written) == value
        except ValueError:
            return False
    return written == str(value)


def _stored_trials(sweep_dir: Path, study_name: str | None) -> list | None:
    """The trials of the Optuna study stored in the sweep folder (STUDY_FILE), or None (no file, no
    optuna, or a file it cannot read: the report then numbers trials by Hydra's job numbers)."""
    path = _study_file(sweep_dir)
    if not path.is_file():
        return None
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{path}"
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        name = study_name if study_name in names else (names[0] if len(names) == 1 else None)
        return None if name is None else optuna.load_study(study_name=name, storage=storage).trials
    except Exception:  # an old or foreign file: the report goes on without it
        return None


def load_search(sweep_dir: Path, runs: list[Run]) -> Search | None:
    """The sweeper settings from any trial's `.hydra/hydra.yaml` (the Optuna sweeper writes no
    multirun.yaml), the objectives from its config. With the study stored in the sweep folder,
    every run gets its Optuna trial number (Hydra's job numbers restart at 0 when a search is
    resumed) and the search the command that extends it."""
    import shlex

    from omegaconf import OmegaConf

    cfg = None
    for r in runs:
        try:
            cfg = OmegaConf.to_container(OmegaConf.load(r.path / ".hydra" / "hydra.yaml"), resolve=False)
            config = OmegaConf.to_container(OmegaConf.load(r.path / ".hydra" / "config.yaml"))
            cfg["objectives"], cfg["seeds_per_trial"] = config.get("objectives"), config.get("seeds_per_trial")
            break
        except Exception:  # a trial with unreadable Hydra files: try the next one
            continue
    if cfg is None:
        return None
    hydra = cfg.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")).lower():
        return None
    direction = sweeper.get("direction", "minimize")
    directions = [str(d) for d in direction] if isinstance(direction, list) else [str(direction)]
    objectives = list(cfg.get("objectives") or ["eval/win_rate"])
    results = None
    if (sweep_dir / OPTIMIZATION_RESULTS).exists():
        results = OmegaConf.to_container(OmegaConf.load(sweep_dir / OPTIMIZATION_RESULTS))
    sampler = str((sweeper.get("sampler") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    params = [str(k) for k in (sweeper.get("params") or {})]
    search = Search(objectives, directions, sampler, sweeper.get("n_trials"), results, params,
                    sweeper.get("study_name"), int(cfg.get("seeds_per_trial") or 1))
    stored = _stored_trials(sweep_dir, search.study_name)
    if stored is not None:
        search.study_states, numbered = {}, set()
        for t in sorted(stored, key=lambda t: t.number):
            state = t.state.name.lower()
            search.study_states[state] = search.study_states.get(state, 0) + 1
            for r in runs:
                written = dict(o.lstrip("+~").split("=", 1) for o in r.overrides if "=" in o)
                if t.params and all(k in written and _same_value(written[k], v) for k, v in t.params.items()):
                    r.trial = t.number if id(r) not in numbered else r.trial  # one setting twice: its first trial
                    numbered.add(id(r))
        # The command again, into this folder: the stored study gets N more trials.
        overrides = hydra.get("overrides") or {}
        keep = [o for o in overrides.get("task") or [] if o.split("=", 1)[0].lstrip("+~") not in params]
        keep += [o for o in overrides.get("hydra") or []
                 if o.split("=", 1)[0] not in ("hydra.sweep.dir", "hydra.sweeper.n_trials")]
        multirun = "" if any(o.startswith("hparams_search=") for o in keep) else "-m "
        search.command = ("ppo-train " + multirun + " ".join(shlex.quote(o) for o in keep)
                          + f" hydra.sweep.dir={shlex.quote(str(sweep_dir))} hydra.sweeper.n_trials=N")
    return search


def trials(runs: list[Run], search: Search) -> list[Trial]:
    """The search's trials in trial order: the runs of one trial are seeds of one configuration."""
    out = []
    for cell in configurations(runs):
        members = sorted(cell.runs, key=lambda r: (r.seed is None, r.seed if isinstance(r.seed, int) else 0, r.name))
        finished = [r for r in members if r.status == "finished"]
        values, intervals = [], []
        for key in search.objectives:
            found = [r.objectives.get(key) for r in finished]
            if not found or len(finished) < len(members) or any(v is None for v in found):
                values.append(None)
                intervals.append(None)
                continue
            stat = Stat.of(found, valid_range(key))
            interval = stat.interval
            if interval is None and key == "eval/win_rate":  # one seed: the Wilson interval of its pairs
                interval = finished[0].interval
            values.append(stat.mean)
            intervals.append(interval)
        numbers = [r.trial for r in members if r.trial is not None]
        out.append(Trial(members, min(numbers) if numbers else None, values, intervals))
    return sorted(out, key=lambda t: (t.number is None, t.number or 0, t.first.name))


def scored(runs: list[Run], search: Search) -> list[Trial]:
    """Trials with every objective value (every seed finished), in trial order."""
    return [t for t in trials(runs, search) if t.scored]


def pareto_front(runs: list[Run], search: Search) -> list[Trial]:
    """The trials no other trial dominates (for one objective: the best ones), on their means."""
    points = scored(runs, search)
    return [t for t in points if not any(search.better(u.values, t.values) for u in points)]


def _objective_label(key: str, runs: list[Run] | None = None) -> str:
    if key == "kl":
        return f"final KL to the reference ({kl_units(runs or [])})"
    return {"eval/win_rate": "final eval win rate"}.get(key, key)


def _bars(points: list[Trial], i: int) -> list[list[float]]:
    """Matplotlib's [below, above] error bars of objective i (0 where a trial has no interval)."""
    whiskers = [_whiskers(t.values[i], t.intervals[i]) for t in points]
    return [[w[0] for w in whiskers], [w[1] for w in whiskers]]


def pareto_plot(runs: list[Run], search: Search, out: Path, sweep_name: str) -> Path | None:
    """Every finished trial in the plane of the two objectives, with its 95% intervals as error
    bars; the Pareto front in red."""
    points, front = scored(runs, search), pareto_front(runs, search)
    if len(search.objectives) != 2 or not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.6), dpi=120)
    (y_key, x_key) = search.objectives  # first objective up the y axis, the second along x
    ax.errorbar([t.values[1] for t in points], [t.values[0] for t in points], xerr=_bars(points, 1),
                yerr=_bars(points, 0), fmt="o", color="#999999", ecolor="#cccccc", elinewidth=1.0, capsize=2,
                markersize=5, label="trial (bars: 95% intervals)")
    ordered = sorted(front, key=lambda t: t.values[1])
    ax.plot([t.values[1] for t in ordered], [t.values[0] for t in ordered], "-", color="#e41a1c", linewidth=1.5)
    ax.errorbar([t.values[1] for t in ordered], [t.values[0] for t in ordered], xerr=_bars(ordered, 1),
                yerr=_bars(ordered, 0), fmt="o", color="#e41a1c", ecolor="#e41a1c", elinewidth=1.2, capsize=3,
                markersize=7, label=f"Pareto front ({len(front)} trials)")
    for t in ordered:
        ax.annotate(f" eps={_fmt(t.epsilon, '{:.3g}')} beta={_fmt(t.beta, '{:.3g}')}", (t.values[1], t.values[0]),
                    fontsize=8, color="#e41a1c")
    if "rate" in y_key:  # a rate: the whole honest range, so a small gap does not look like a big one
        ax.set_ylim(0.0, 1.0)
    arrows = {"maximize": "higher is better", "minimize": "lower is better"}
    ax.set_ylabel(f"{_objective_label(y_key, runs)} ({arrows.get(search.directions[0], '')})", fontsize=11)
    ax.set_xlabel(f"{_objective_label(x_key, runs)} ({arrows.get(search.directions[1], '')})", fontsize=11)
    seeds = search.seeds_per_trial
    bars = (f"95% t-intervals over {seeds} seeds per trial" if seeds > 1 else
            "1 seed per trial: a win rate's 95% Wilson interval of its pairs, no bar for the rest")
    ax.set_title(f"Optuna search, {len(points)} finished trials; bars: {bars}\n{sweep_name}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _search_markdown(runs: list[Run], search: Search) -> list[str]:
    every = trials(runs, search)
    front = pareto_front(runs, search)
    on_front = {id(t.first) for t in front}
    goals = ", ".join(f"{k} ({d})" for k, d in zip(search.objectives, search.directions))
    seeds = (f"; {search.seeds_per_trial} seeds per trial, objectives averaged over them" if search.seeds_per_trial > 1
             else "; 1 seed per trial (`seeds_per_trial=3` averages 3)")
    lines = ["## Search (Optuna)", "",
             f"Objectives: {goals}; sampler {search.sampler or '-'}; {len(every)} trials run"
             + (f" of {search.n_trials} asked" if search.n_trials and search.study_states is None else "") + f"{seeds}.", ""]
    if search.study_states is not None:
        from ppo.tools.sweep import STUDY_FILE

        states = ", ".join(f"{n} {state}" for state, n in sorted(search.study_states.items()))
        lines += [f"Study: `{STUDY_FILE}` in this folder ({states}). More trials into it (it resumes where it "
                  f"stopped, and the sampler learns from every trial so far): `{search.command}`", ""]
    if len(search.objectives) > 1:
        lines += [f"**Pareto front:** {len(front)} trials (no other trial is at least as good on every objective and "
                  "better on one, on the means)." if front else
                  "**Pareto front:** empty (no trial finished with every objective).", ""]
    elif front:
        best = front[0]
        lines += [f"**Best trial:** {best.number}: {search.objectives[0]} {best.text(0)} "
                  f"(epsilon={_fmt(best.epsilon)}, beta={_fmt(best.beta)})", ""]
    header = ("| trial | epsilon | beta | " + " | ".join(f"{k} (95%)" for k in search.objectives) + " | seeds | "
              + ("Pareto front" if len(search.objectives) > 1 else "best") + " | status |")
    lines += [header, "|" + "---|" * (len(search.objectives) + 6)]
    for t in every:
        values = " | ".join(t.text(i) for i in range(len(search.objectives)))
        status = t.status + (f": {t.error}" if t.error else "")
        lines.append(f"| {_fmt(t.number)} | {_fmt(t.epsilon)} | {_fmt(t.beta)} | {values} | {len(t.runs)} | "
                     f"{'yes' if id(t.first) in on_front else ''} | {status} |")
    return lines + [""]


# ----------------------------------------------------------------------------- report


def _win_rate_text(run: Run) -> str:
    """`0.625 (0.22-0.91)`: the final eval win rate and its 95% Wilson interval."""
    if run.final_win_rate is None:
        return "-"
    interval = run.interval
    return f"{run.final_win_rate:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


def _held_out_text(run: Run) -> str:
    """`length 0.512 (0.38-0.64)` per held-out judge, `judge gaming?` when beaten beyond both intervals."""
    if not run.held_out:
        return "-"
    gamed = set(run.gamed_judges)
    parts = []
    for name, (rate, low, high) in sorted(run.held_out.items()):
        text = f"{name} {_fmt(rate, '{:.3f}')}" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")
        parts.append(text + (" **judge gaming?**" if name in gamed else ""))
    return "; ".join(parts)


# Display names of the keys a sweep varies, for the sentences on top of the report.
_KEY_NAMES = {"loss.epsilon": "epsilon", "loss.beta": "beta", "loss.type": "loss_type", "loss.advantage": "advantage"}


def _metrics_fingerprint(run: Run) -> tuple:
    """Every metric of every step of a run, without the readings of the machine (timings, speed,
    memory): equal for two runs that computed the same thing to the last digit."""
    import json

    return tuple(json.dumps(comparable(row), sort_keys=True) for row in run.rows)


def settings_without_effect(cells: list[Cell]) -> list[str]:
    """Swept settings that changed nothing at all: configurations that differ in one key only and
    whose runs of the same seed wrote identical metrics, every value of every step to the last
    digit. One sentence per key: `epsilon 0.1 and 0.3 gave identical runs (...)`, with the other
    settings named when it held only for some of them."""
    runs_of = {id(c): {r.seed: r for r in c.runs if r.status == "finished" and r.rows} for c in cells}
    prints = {id(r): _metrics_fingerprint(r) for seeds in runs_of.values() for r in seeds.values()}
    keys = sorted({k for c in cells for k, _ in c.configuration})
    varying = [k for k in keys if len({dict(c.configuration).get(k) for c in cells}) > 1]
    out = []
    for key in varying:
        groups: dict[tuple, list[Cell]] = {}
        for c in cells:
            rest = tuple((k, v) for k, v in c.configuration if k != key)
            groups.setdefault(rest, []).append(c)
        found, compared = [], 0  # (identical values, the other settings) per group
        for rest, members in groups.items():
            if len(members) < 2:
                continue
            compared += 1
            classes: list[list[Cell]] = []
            for c in members:
                for cls in classes:
                    a, b = runs_of[id(cls[0])], runs_of[id(c)]
                    seeds = set(a) & set(b)
                    if seeds and all(prints[id(a[s])] == prints[id(b[s])] for s in seeds):
                        cls.append(c)
                        break
                else:
                    classes.append([c])
            for cls in classes:
                if len(cls) > 1:
                    values = sorted({_plain(dict(c.configuration).get(key)) for c in cls}, key=_value_order)
                    found.append((values, rest))
        if not found:
            continue
        name = _KEY_NAMES.get(key, key)
        same = {tuple(v) for v, _ in found}
        other_keys = [k for k in varying if k != key]
        if len(found) == compared and len(same) == 1:  # everywhere the key was varied alone
            where = f", at every setting of {', '.join(_KEY_NAMES.get(k, k) for k in other_keys)}" if other_keys else ""
            out.append(f"{name} {_and(found[0][0])} gave identical runs (every metric of every step, to the last digit{where})"
                       f", so {name} changed nothing here{_why(key, cells)}")
        else:
            for values, rest in found:
                at = " ".join(f"{_KEY_NAMES.get(k, k)}={_plain(v)}" for k, v in rest if k in other_keys)
                out.append(f"{name} {_and(values)} gave identical runs" + (f" at {at}" if at else "")
                           + f" (every metric of every step, to the last digit){_why(key, cells)}")
    return out


def _value_order(value: str):
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _and(values: list[str]) -> str:
    return " and ".join(values) if len(values) < 3 else ", ".join(values[:-1]) + f" and {values[-1]}"


def _why(key: str, cells: list[Cell]) -> str:
    """A likely reason, where the runs show one."""
    clips = [r.clip_fraction for c in cells for r in c.runs if r.clip_fraction is not None]
    if key == "loss.epsilon" and clips and max(clips) == 0.0:
        return " (clip_fraction is 0 throughout: no ratio ever reached the clip range, so its width did not matter)"
    return ""


def _seeds_markdown(cells: list[Cell]) -> list[str]:
    """The plain line on top when configurations have two seeds, too few for a t-interval to say much."""
    few = [c for c in cells if c.win.too_few or c.kl.too_few]
    if not few:
        return []
    n = min(max(c.win.n, c.kl.n) for c in few)
    which = "every configuration has" if len(few) == len(cells) else f"{len(few)} of {len(cells)} configurations have"
    return [f"**Too few seeds:** {which} {n} seeds. A 95% t-interval over {n} seeds multiplies their spread by "
            f"{t_quantile_975(n - 1):.1f} (4.3 with 3 seeds, 2.8 with 5), so its ± is wide and cut to each metric's "
            f"range; these cells cannot tell configurations apart. Run {MIN_SEEDS} or more seeds (seed=0,1,2).", ""]


def _gaming_markdown(runs: list[Run]) -> list[str]:
    """The plain line on top when a run won against its training judge beyond what a held-out judge gives it."""
    held = [r for r in runs if r.held_out]
    if not held:
        return []
    gamed = [r for r in held if r.gamed_judges]
    if not gamed:
        return [f"**Held-out judge:** no sign of judge gaming in {'the run' if len(held) == 1 else f'{len(held)} runs'} "
                "(the training judge's win rate does not beat the held-out judge's beyond both 95% intervals).", ""]
    which = "the run" if len(held) == 1 else f"{len(gamed)} of {len(held)} runs (" + ", ".join(f"`{r.name}`" for r in gamed) + ")"
    return [f"**Judge gaming?** in {which}: the win rate under the training judge beats the held-out judge's "
            "beyond both 95% intervals, so the policy pleases the judge it trained against more than one it never "
            "saw; read its samples before trusting the training judge's win rate.", ""]


def _win_rate_lc_text(run: Run) -> str:
    """`0.512 (0.38-0.64)`: the final length-controlled win rate and its 95% interval."""
    if run.final_win_rate_lc is None:
        return "-"
    interval = run.win_rate_lc_interval
    return f"{run.final_win_rate_lc:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


def _judge_markdown(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(the plain line on top, the "Judge reliability" section) from the runs' summaries."""
    judged = sorted((r for r in runs if r.judge), key=lambda r: r.name)
    if not judged:
        return [], []
    guessing = [r for r in judged if r.judge.get("judge/guessing") is True]
    measured = [r for r in judged if r.judge.get("judge/guessing") is not None]
    if guessing:
        which = "the run" if len(judged) == 1 else f"{len(guessing)} of {len(judged)} runs"
        top = [f"**Judge:** guessing in {which}: its two orders agree on fewer than {GUESSING_AGREEMENT:.0%} of the "
               "pairs, so its verdicts follow where an answer is shown, not what it says; the win rates of "
               + ("this run" if len(judged) == 1 else "those runs") + " measure nothing.", ""]
    elif measured:
        top = [f"**Judge:** consistent in {'the run' if len(judged) == 1 else f'all {len(measured)} measured runs'} "
               f"(its two orders agree on at least {GUESSING_AGREEMENT:.0%} of the pairs).", ""]
    else:
        top = []

    def rate(r: Run, key: str) -> str:
        return _fmt(_finite(r.judge.get(key)), "{:.2f}")

    def first(r: Run) -> str:
        low, high = _finite(r.judge.get("judge/first_position_win_rate_low")), _finite(r.judge.get("judge/first_position_win_rate_high"))
        return rate(r, "judge/first_position_win_rate") + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")

    lines = ["", "## Judge reliability", "",
             "Per run, over the pairs its judge answered (train and evaluation). Order agreement: pairs shown in both orders "
             "whose two answers pick the same completion (two coins agree on half); disagreement: pairs whose orders pick "
             "different completions (a tie under `judge.on_order_disagreement=tie`); first-position win rate: answers that "
             "favour the completion shown first (0.5: no position bias; 95% Wilson interval). "
             f"Guessing: order agreement below {GUESSING_AGREEMENT:.0%}.", "",
             "| run | judge | order (on disagreement) | pairs | order agreement | order disagreement | first-position win rate (95%) "
             "| tie rate | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in judged:
        j = r.judge
        order = f"{j.get('judge/order', '-')}" + (f" ({j['judge/on_order_disagreement']})" if j.get("judge/order") == "both" else "")
        verdict = str(j.get("judge/verdict") or "-")
        verdict = f"**{verdict.split(':')[0]}**:{verdict.split(':', 1)[1]}" if ":" in verdict else verdict
        lines.append(f"| `{r.name}` | {j.get('judge/kind', '-')} | {order} | {_fmt(j.get('judge/pairs'))} "
                     f"| {rate(r, 'judge/order_agreement')} | {rate(r, 'judge/order_disagreement_rate')} | {first(r)} "
                     f"| {rate(r, 'judge/tie_rate')} | {verdict} |")
    return top, lines


def _adaptive_kl_markdown(runs: list[Run]) -> list[str]:
    """The "Adaptive KL" section: per run with loss.kl_control=adaptive (its rows log kl/beta), beta
    at the start and at the last logged step, and the KL aimed at and reached; [] without such a run."""
    adaptive = sorted((r for r in runs if _last(r.rows, "kl/beta") is not None), key=lambda r: r.name)
    if not adaptive:
        return []
    lines = ["", "## Adaptive KL", "",
             "Runs with `loss.kl_control=adaptive`: the KL weight beta, moved by the proportional controller from "
             "`loss.beta` towards `loss.target_kl` (README, \"The loss\").", "",
             "| run | beta at start | final beta | target kl | final kl |", "|---|---|---|---|---|"]
    for r in adaptive:
        target = _finite(dict(r.configuration).get("loss.target_kl"))
        lines.append(f"| `{r.name}` | {_fmt(r.beta)} | {_fmt(_last(r.rows, 'kl/beta'))} | {_fmt(target)} "
                     f"| {_fmt(r.final_kl, '{:.4g}')} |")
    return lines


def _markdown(runs: list[Run], sweep_dir: Path, images: list[Path], out_dir: Path, search: Search | None = None,
              wandb_folder: Path | None = None) -> str:
    cells = configurations(runs)
    v = verdict(cells)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    kind = "Run report" if len(runs) == 1 else "Search report" if search else "Sweep report"
    lines = [f"# {kind}: {sweep_dir.name}", "",
             f"Folder: `{sweep_dir}`  ",
             f"Runs: {len(runs)} (" + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + f"); "
             f"configurations: {len(cells)}", ""]
    judge_top, judge_section = _judge_markdown(runs)
    lines += judge_top
    lines += _gaming_markdown(runs)
    lines += [f"**No effect:** {sentence}." for sentence in settings_without_effect(cells)]
    lines += [""] if lines[-1] != "" else []
    lines += _seeds_markdown(cells)
    lines += [f"**Best configuration:** {verdict_text(v, markdown=True)}", ""]
    if v.best is not None:
        b = v.best
        lines += [f"Its clip_fraction {b.clip.text()}, final kl {b.kl.text()}, best win rate "
                  f"{b.best_win.text()}; runs " + ", ".join(f"`{r.name}`" for r in sorted(b.used or b.runs, key=lambda r: r.name)), ""]
    if wandb_folder is not None:
        lines += [f"W&B, offline and side by side: `wandb leet {wandb_folder}` (links to every run's log); "
                  f"online: `wandb sync {sweep_dir}/*/wandb/offline-run-*` (one group per sweep, one job type per "
                  "configuration: group by job type to see its seeds together).", ""]
    if search is not None:
        lines += _search_markdown(runs, search)
    top = {id(c) for c in v.top_group}
    lines += [
        f"Best: {BEST_RULE}. Verdict: {VERDICT_RULE}. `±`: half-width of the 95% t-interval over seeds "
        "(t with n-1 degrees of freedom times the seeds' standard deviation over sqrt(n)); with one seed, the half-width "
        "of the Wilson interval of its pairs, marked `pairs`. Pooled: the Wilson interval of every evaluation pair of "
        "every seed (never zero width). `[low, high]`: an interval that would reach past the metric's range (a rate "
        "past 0 or 1, a KL below 0), cut to it. `too few`: 2 seeds, whose t multiplier is 12.7. A configuration is "
        "every config key but the seed (and logging, progress and checkpoint settings).", "",
        "Health: the seed's rule on clip_fraction averaged over the last 20% of steps "
        f"(< {CLIP_FRACTION_IDLE:g}: not moving; > {CLIP_FRACTION_HIGH:g}: moving too far; else healthy; "
        "n/a for losses without a clip).", "",
        "Length-controlled: the win rate the judge would give at equal lengths (a logistic fit of its verdicts on the "
        "length difference, read at zero: AlpacaEval 2's model; README, \"Reading a win rate\"); length ratio: the "
        "policy's mean completion length over the reference's. A win rate far above its length-controlled twin was won "
        "by length.", "",
        "## Configurations", "",
        "| configuration | final win rate (mean ± 95%, n seeds) | pooled pairs (95% Wilson) | top group | length-controlled "
        f"| length ratio | best win rate | clip_fraction (last 20%) | final kl ({kl_units(runs)}) | health | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ranked = rank(cells)
    for c in ranked + sorted((c for c in cells if c not in ranked), key=lambda c: c.label):
        health = ", ".join(sorted({r.health for r in (c.used or c.runs)}))
        unfinished = "" if c.finished or c.win.mean is None else " (unfinished)"
        lines.append(f"| {c.label} | {c.win_text()}{unfinished} | {c.pooled_text()} | {'yes' if id(c) in top else ''} "
                     f"| {c.win_lc.text()} | {c.length_ratio.text('{:.2f}')} | {c.best_win.text()} | {c.clip.text()} | {c.kl.text()} | {health} | {len(c.runs)} |")
    lines += [
        "", "## Runs", "",
        "| run | epsilon | beta | loss_type | advantage | seed | final win rate (95% interval) | length-controlled (95%) "
        "| length ratio | held-out judge win rate (95%) | best win rate | clip_fraction (last 20%) "
        f"| final kl ({kl_units(runs)}) | health "
        "| EOS rate (reference) | steps | wall time (s) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(runs, key=lambda r: r.name):
        steps = f"{r.steps}/{r.iters}" if r.iters else str(r.steps)
        status = r.status + (f": {r.error}" if r.error else "")
        lines.append(
            f"| `{r.name}` | {_fmt(r.epsilon)} | {_fmt(r.beta)} | {r.loss_type or '-'} | {r.advantage or '-'} | {_fmt(r.seed)} "
            f"| {_win_rate_text(r)} | {_win_rate_lc_text(r)} | {_fmt(r.length_ratio, '{:.2f}')} | {_held_out_text(r)} "
            f"| {_fmt(r.best_win_rate, '{:.3f}')} | {_fmt(r.clip_fraction, '{:.3f}')} "
            f"| {_fmt(r.final_kl, '{:.4g}')} | {r.health} | {_fmt(r.eos_rate, '{:.2f}')} ({_fmt(r.ref_eos_rate, '{:.2f}')}) | {steps} | {_fmt(r.wall_seconds, '{:.1f}')} | {status} |")
    lines += judge_section
    lines += _adaptive_kl_markdown(runs)
    unfinished = [r for r in runs if r.status != "finished"]
    if unfinished:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- `{r.name}`: {r.status}" + (f" ({r.error})" if r.error else "") + f", {r.steps} steps logged"
                  for r in unfinished]
        lines += ["", "Run the same sweep again with `hydra.sweep.dir=` this folder to finish them "
                  "(finished runs are skipped, killed ones resume from their last checkpoint)."]
    if images:
        lines += ["", "## Figures", ""]
        for image in images:
            rel = os.path.relpath(image, out_dir)
            lines += [f"![{image.stem}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"


def link_wandb_runs(runs: list[Run], out_dir: Path) -> Path | None:
    """OUT_DIR/wandb/: a link to every run's offline W&B log, so `wandb leet OUT_DIR/wandb` browses
    the whole sweep side by side offline (each job keeps its own RUN_DIR/wandb). Only links are
    written (and stale ones replaced); the run folders are left alone."""
    logs = [log for r in runs if r.path != out_dir for log in sorted((r.path / "wandb").glob("offline-run-*"))]
    if not logs:
        return None
    folder = out_dir / "wandb"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    for log in logs:
        (folder / log.name).symlink_to(os.path.relpath(log, folder), target_is_directory=True)
    return folder


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[Path, list[Run], Verdict]:
    """Read the runs under `sweep_dir`; write report.md and the PNGs into `out_dir` (default sweep_dir)."""
    sweep_dir = Path(sweep_dir).resolve()
    runs = load_runs(sweep_dir)
    out_dir = Path(out_dir).resolve() if out_dir else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # multirun/EXPERIMENT/DATE_TIME -> "EXPERIMENT/DATE_TIME"; anything else: the folder name
    name = f"{sweep_dir.parent.name}/{sweep_dir.name}" if sweep_dir.parent.parent.name == "multirun" else sweep_dir.name
    images = []
    # Heatmaps need an epsilon x beta grid; runs of other loss types or advantages are not
    # averaged into it: the grid is drawn for the loss type and advantage of the best configuration.
    v = verdict(configurations(runs))
    groups = {(r.loss_type, r.advantage) for r in runs}
    grid_runs, grid_name = runs, name
    if len(groups) > 1:
        key = (v.best.first.loss_type, v.best.first.advantage) if v.best else sorted(groups, key=str)[0]
        grid_runs = [r for r in runs if (r.loss_type, r.advantage) == key]
        grid_name = f"{name}, loss_type={key[0]}, advantage={key[1]}"
    for path in [out_dir / f"{stem}.png" for stem in HEATMAPS]:
        if path.exists():
            path.unlink()  # a heatmap from an earlier report of this folder would mislead
    # A search samples continuous values (a cell per trial), so it gets pareto_front.png, not heatmaps.
    search = load_search(sweep_dir, runs)
    if len({(r.epsilon, r.beta) for r in grid_runs}) > 1 and search is None:
        for stem, (attr, title, spec, cmap) in HEATMAPS.items():
            made = heatmap(grid_runs, attr, title.format(kl_unit=kl_units(grid_runs)), spec, cmap, out_dir / f"{stem}.png",
                           grid_name, v.top_group)
            images += [made] if made else []
    made = pareto_plot(runs, search, out_dir / "pareto_front.png", name) if search else None
    images += [made] if made else []
    made = compare_runs(runs, out_dir / "compare_runs.png", name) if len(runs) > 1 else None
    images += [made] if made else []
    for stem, (key, title, ylabel) in CURVES.items():
        made = curves(runs, key, title, ylabel.format(kl_unit=kl_units(runs)), out_dir / f"{stem}.png", name)
        images += [made] if made else []
    wandb_folder = link_wandb_runs(runs, out_dir)
    report = out_dir / REPORT_FILE
    atomic_write_text(report, _markdown(runs, sweep_dir, images, out_dir, search, wandb_folder))
    return report, runs, v


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppo-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun sweep folder (or any folder holding run folders)")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        report, runs, v = write_report(args.sweep_dir, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full folder: nothing of the runs themselves is touched
        where = err.filename or (args.out or args.sweep_dir)
        print(f"error: cannot write the report: {where} ({err.strerror or err}); give a writable folder with "
              f"--out DIR (ppo-report {args.sweep_dir} --out DIR)", file=sys.stderr)
        return 2
    finished = sum(r.status == "finished" for r in runs)
    print(f"{len(runs)} runs ({finished} finished) in {len(configurations(runs))} configurations; report: {report}")
    print(f"best configuration: {verdict_text(v)}")
    if v.best is not None:
        used = sorted(v.best.used or v.best.runs, key=lambda r: r.name)
        print(f"  {'run' if len(used) == 1 else 'runs'}: " + ", ".join(str(r.path) for r in used))
    print(f"  test: {VERDICT_RULE}")
    cells = configurations(runs)
    for sentence in settings_without_effect(cells):
        print(f"no effect: {sentence}")
    for line in _seeds_markdown(cells)[:1]:
        print(line.replace("**Too few seeds:**", "too few seeds:"))
    search = load_search(Path(args.sweep_dir).resolve(), runs)
    if search is not None and len(search.objectives) > 1:
        front = pareto_front(runs, search)
        print(f"search: {len(trials(runs, search))} trials, Pareto front of {len(front)} on "
              + " x ".join(f"{k} ({d})" for k, d in zip(search.objectives, search.directions))
              + (f"; plot: {Path(report).parent / 'pareto_front.png'}" if front else ""))
        for t in sorted(front, key=lambda t: t.values[1]):
            print("  " + ", ".join(f"{k}={t.text(i)}" for i, k in enumerate(search.objectives))
                  + f": epsilon={_fmt(t.epsilon)} beta={_fmt(t.beta)} (trial {_fmt(t.number)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
