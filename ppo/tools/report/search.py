"""The Optuna search view (hydra-optuna-sweeper): the sweeper settings and trial numbers read from the
run folders and the study stored in the sweep folder, the trials with their seeds averaged, the
Pareto front, its plot and the report's "Search" section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ppo.tools.report.figures import _pyplot, _whiskers
from ppo.tools.report.loading import Run, kl_units
from ppo.tools.report.stats import Stat, _fmt, configurations, valid_range
from ppo.tools.sweep import OPTIMIZATION_RESULTS


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
