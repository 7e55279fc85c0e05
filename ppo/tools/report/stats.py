"""The statistics of a report: runs grouped into configurations (`Cell`, the seeds of one
configuration), each number's mean over seeds with its 95% t-interval (`Stat`) and the pooled
Wilson interval of every evaluation pair, cut to the metric's valid range; the verdict (BEST_RULE,
VERDICT_RULE: `rank`, `verdict`, `verdict_text`); and the swept settings that changed nothing
(`settings_without_effect`). The t and Wilson intervals themselves are `ppo.metrics`'."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ppo.metrics import comparable, t_half_width, wilson_interval

from ppo.tools.report.loading import K_KEY, UNREADABLE, default

if TYPE_CHECKING:
    from ppo.tools.report.loading import Run


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


# The settings `Cell.describe` always names; labels name them by these short names when they differ.
NAMED = {"loss.epsilon": "eps", "loss.beta": "beta", "loss.type": "loss", "loss.advantage": "adv"}
# Short label names of other settings, which labels name first after NAMED (k: completions per prompt).
SHORT = {**NAMED, K_KEY: "k"}


def shows_k(runs: list[Run]) -> bool:
    """k (generation.samples_per_prompt) is shown when the runs differ in it or any is away from
    the default (2): their judge pairs and loss pairs per prompt are not the classic pair's."""
    ks = {r.k for r in runs if r.k is not None}  # None: a run whose config cannot be read
    return len(ks) > 1 or any(k != default(K_KEY) for k in ks)


def configurations(runs: list[Run]) -> list[Cell]:
    """The runs grouped by configuration, each labelled by the settings that differ between them
    (and by k when `shows_k`)."""
    grouped: dict[tuple, list[Run]] = {}
    for r in runs:
        grouped.setdefault(r.configuration, []).append(r)
    cells = [Cell.of(key, members) for key, members in grouped.items()]
    # A run whose config cannot be read has no settings to differ in: it is labelled by its name.
    readable = [c for c in cells if dict(c.configuration).keys() != {UNREADABLE}]
    # epsilon, beta, loss type, advantage, k first (the harness's question), then the rest by name
    keys = sorted({k for c in readable for k, _ in c.configuration}, key=lambda k: (list(SHORT) + [k]).index(k))
    shown = [k for k in keys if len({dict(c.configuration).get(k) for c in readable}) > 1
             or (k == K_KEY and shows_k(runs))]
    for c in cells:
        if dict(c.configuration).keys() == {UNREADABLE}:
            c.label = c.first.name
            continue
        values = dict(c.configuration)
        parts = [f"{SHORT.get(k, k)}={_plain(values.get(k))}" for k in shown]
        c.label = " ".join(parts) or c.first.name
        c.extra = [f"{k}={_plain(values.get(k))}" for k in shown if k not in NAMED]
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
