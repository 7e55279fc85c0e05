"""Resumable multirun and failure records, for sweeps that are launched again.

Launching the same sweep again into the same folder (`ppo-train -m +experiment=NAME
hydra.sweep.dir=SWEEP_DIR`) must finish only what is missing:

- a run whose `summary.json` says `finished`, whose newest checkpoint is at `train.iters`
  and was made with the same config (the checkpoint's config fingerprint) is skipped
  before anything is loaded (`ppo.train.checkpoint.finished_summary`, which the loop calls);
- a run that was killed resumes from its newest checkpoint (`train.resume=auto`, the
  trainer's own resume);
- a run that failed starts again (its checkpoint, if any, is resumed).

`objective_values` is what a job returns to the sweeper (Optuna): the config's `objectives`
read from the run's summary. `SearchOutcome` (a Hydra callback, conf/hydra/default.yaml)
makes a search in which no trial succeeded exit non-zero.

`record_failure` writes `summary.json` with `status: failed` and the error for a job that
failed before the trainer could write its own summary (bad config value, model or data
missing), so `ppo-report` lists it as failed rather than not started.

A failed job prints one line and returns, so Hydra runs the others without a traceback;
`SweepOutcome` (a Hydra callback, conf/hydra/default.yaml) names the jobs that did not
finish at the end of the sweep and exits 1.

`SweepSummary` (a Hydra callback) makes a multirun say what it found: each job logs its result
line as it ends, and the multirun ends with its folder, one line per job (eval win rate with its
95% Wilson interval, KL with its unit, status) and the `ppo-report SWEEP_DIR` command. When the
multirun starts it names the swept keys (SWEPT_KEYS_ENV: job folders are named by them only,
`ppo.train.job_names.job_dir_name`), creates the sweep folder of a search (its Optuna study is
stored there, STUDY_FILE) and keeps Optuna's colour codes out of logs that are not a terminal.

`over_seeds`: a search trial trains `seeds_per_trial` seeds (TRIAL/seed=K) and returns their
averaged objectives.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

from hydra.experimental.callback import Callback

from ppo.errors import SweepJobFailed
from ppo.io import SUMMARY_FILE, atomic_write_json, read_json

__all__ = ["record_failure", "stopped_line",
           "objective_values", "over_seeds", "SearchOutcome", "SweepJobFailed", "SweepOutcome",
           "SweepSummary", "swept_keys", "summary_lines", "unfinished_jobs"]

log = logging.getLogger(__name__)

# Optuna's answer, written by hydra-optuna-sweeper into the sweep folder.
OPTIMIZATION_RESULTS = "optimization_results.yaml"
# The Optuna study (SQLite), in the sweep folder: conf/hparams_search/*.yaml set
# hydra.sweeper.storage to sqlite:///${hydra.sweep.dir}/optuna.db, so launching the search again
# with hydra.sweep.dir=SWEEP_DIR resumes it and adds hydra.sweeper.n_trials more trials.
STUDY_FILE = "optuna.db"
# A trial's seed folders under its job folder (seeds_per_trial > 1).
SEED_DIR = "seed={}"


def is_search(sweeper_target: object) -> bool:
    """Whether a sweep whose sweeper is `sweeper_target` (hydra.sweeper._target_) is a search
    (Hydra's Optuna sweeper, each job a trial that returns its objective) rather than a grid."""
    return "optuna" in str(sweeper_target).lower()


def objective_value(summary: dict, key: str) -> float | None:
    """`key` from the run's last evaluation, else from its last metrics row; None if absent or not finite."""
    for part in ("eval", "final"):
        value = (summary.get(part) or {}).get(key)
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None


def objective_values(summary: dict, keys: list[str]) -> float | tuple[float, ...] | None:
    """What the job returns: one objective as a float, several as a tuple (Optuna's multi-objective
    form). Raises SweepJobFailed naming the key when one is missing, so the trial is failed,
    not scored."""
    values = []
    for key in keys:
        value = objective_value(summary, key)
        if value is None:
            raise SweepJobFailed(f"objective {key!r} is missing or not finite in the run's summary "
                                 "(an eval key needs an evaluation: check data.max_eval_prompts and train.steps_per_eval)")
        values.append(value)
    return values[0] if len(values) == 1 else tuple(values)


class SearchOutcome(Callback):
    """An Optuna search in which no trial succeeded exits 1 with one line.

    hydra-optuna-sweeper (with max_failure_rate 1.0, so that one bad trial does not end a
    search) records each failure and goes on; at the end a single-objective search dies on
    Optuna's "No trials are completed yet" with a traceback, and a multi-objective one exits 0
    with "Pareto solutions: 0". When the jobs run in this process (the basic launcher) the
    last trial's end is the place to stop; for launchers that run jobs elsewhere, an empty
    Pareto front in optimization_results.yaml is caught after the multirun."""

    def __init__(self):
        self._pid, self._ended, self._succeeded = None, 0, 0

    @staticmethod
    def searching(config) -> bool:
        """Whether `config` (a job's whole config, Hydra's node included) is a search's."""
        from omegaconf import OmegaConf

        return is_search(OmegaConf.select(config, "hydra.sweeper._target_"))

    @staticmethod
    def _fail(sweep_dir, last_error: str = "") -> None:
        why = f"; the last one: {last_error}" if last_error else " (the 'Failed experiment' lines above say why)"
        print(f"error: every trial of the search in {sweep_dir} failed{why}", file=sys.stderr)
        sys.exit(1)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._pid, self._ended, self._succeeded = os.getpid(), 0, 0

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.core.utils import JobStatus
        from omegaconf import OmegaConf

        if os.getpid() != self._pid or not self.searching(config):
            return  # a job in another process (joblib, SLURM): on_multirun_end decides
        self._ended += 1
        self._succeeded += job_return.status == JobStatus.COMPLETED
        if self._ended >= (OmegaConf.select(config, "hydra.sweeper.n_trials") or math.inf) and not self._succeeded:
            try:
                job_return.return_value  # a failed job's property re-raises its error
                last_error = ""
            except Exception as err:
                last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._fail(config.hydra.sweep.dir, last_error)

    def on_multirun_end(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        results = Path(config.hydra.sweep.dir) / OPTIMIZATION_RESULTS
        if not self.searching(config) or not results.exists():
            return
        answer = OmegaConf.to_container(OmegaConf.load(results))
        if "solutions" in answer and not answer["solutions"]:
            self._fail(config.hydra.sweep.dir)


def unfinished_jobs(sweep_dir: Path, since: float = 0.0) -> list[tuple[Path, dict]]:
    """(job folder, summary) of every job under `sweep_dir` whose summary.json, written at or
    after `since` (a time.time()), does not say finished."""
    out = []
    for path in sorted(Path(sweep_dir).glob(f"*/{SUMMARY_FILE}")):
        try:
            if path.stat().st_mtime < since:
                continue
        except OSError:
            continue
        summary = read_json(path) or {"status": "unreadable"}
        if summary.get("status") != "finished":
            out.append((path.parent, summary))
    return out


class SweepOutcome(Callback):
    """At the end of a multirun: one line naming the jobs that did not finish, exit 1."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time() - 1  # mtime resolution

    def on_multirun_end(self, config, **kwargs) -> None:
        if SearchOutcome.searching(config):
            return  # a search goes on past failed trials; SearchOutcome judges it
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = unfinished_jobs(sweep_dir, self.started)
        if failed:
            names = ", ".join(f"{job.name} ({summary.get('status')})" for job, summary in failed)
            print(f"error: {len(failed)} sweep job(s) did not finish: {names}; each one's summary.json says why, "
                  f"`ppo-report {sweep_dir}` lists them; fix and launch the same sweep again to run only those",
                  file=sys.stderr)
            sys.exit(1)


def stopped_line(searching: bool, sweep_dir, jobs: list[str], signum: int | None = None) -> str:
    """The one line of a multirun that Ctrl-C / SIGTERM stopped (`ppo.errors.SweepStopped`): `jobs`
    holds "RUN_DIR why" of each job it stopped; none when it came between jobs (`signum`)."""
    what = "search" if searching else "sweep"
    if not jobs:
        stopped = f"the {what} stopped by signal {signum} before its next job started"
    else:
        stopped = f"the {what} stopped: job{'s' if len(jobs) > 1 else ''} " + "; ".join(jobs)
    if searching:
        again = (f"launch the same search with hydra.sweep.dir={sweep_dir} to resume its stored study "
                 f"(an interrupted trial is not scored)")
    else:
        again = (f"launch the same sweep with hydra.sweep.dir={sweep_dir} to continue (finished jobs are skipped, "
                 f"{'this one resumes' if len(jobs) == 1 else 'interrupted ones resume'})")
    return f"{stopped}; {again}"


def record_failure(run_dir: Path, error: BaseException | str) -> None:
    """Write summary.json with status failed, unless the trainer already wrote a summary."""
    run_dir = Path(run_dir)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    existing = read_json(run_dir / SUMMARY_FILE)
    if existing and existing.get("status") == "finished":
        return
    if existing:  # the trainer's own summary (failed / interrupted): add the error to it
        existing.setdefault("error", message)
        try:
            atomic_write_json(run_dir / SUMMARY_FILE, existing)
        except OSError as err:
            log.warning("could not record the failure in %s: %s", run_dir / SUMMARY_FILE, err)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "status": "failed",
        "error": message,
        "error_type": type(error).__name__ if isinstance(error, BaseException) else "error",
        "step": 0,
        "eval": {},
        "best_eval_win_rate": None,
        "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    try:
        atomic_write_json(run_dir / SUMMARY_FILE, summary)
    except OSError as err:  # a full disk: the job's own error line already says so
        log.warning("could not record the failure in %s: %s", run_dir / SUMMARY_FILE, err)



def swept_keys(config) -> list[str]:
    """The keys a multirun varies, from its config as it starts: command-line sweeps (`a,b`,
    range, choice, interval, glob) and the keys of hydra.sweeper.params (an experiment file's grid,
    a search's space). [] when they cannot all be known (an Optuna custom_search_space proposes
    keys of its own) or cannot be parsed: then every override names a job's folder."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if OmegaConf.select(config, "hydra.sweeper.custom_search_space", default=None):
        return []
    try:
        overrides = OverridesParser.create().parse_overrides([str(o) for o in config.hydra.overrides.task])
    except Exception:
        return []
    keys = set()
    for override in overrides:
        if override.is_sweep_override():
            keys |= {override.key_or_group, override.get_key_element().lstrip("+~")}
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    keys |= {str(k).lstrip("+~") for k in params}
    return sorted(keys)


def _plain_optuna_logs() -> None:
    """Optuna 2.x logs through colorlog whatever its stream, so its lines carry colour codes in a
    file or pipe (nohup, SLURM, CI). There, and under NO_COLOR, its handler gets a plain format."""
    for handler in logging.getLogger("optuna").handlers:
        stream = getattr(handler, "stream", None)
        terminal = bool(getattr(stream, "isatty", lambda: False)())
        if type(handler.formatter).__module__.startswith("colorlog") and (not terminal or os.environ.get("NO_COLOR")):
            handler.setFormatter(logging.Formatter("[%(levelname)1.1s %(asctime)s] %(message)s"))


def prepare_study(storage) -> None:
    """Create a search's new SQLite study file (hydra.sweeper.storage = sqlite:///PATH) before Optuna
    opens it. Optuna 2.x (what hydra-optuna-sweeper 1.x pins) stamps a new file's schema version
    through a connection that SQLAlchemy 2 no longer commits, then fails on its own assert; here
    the stamp is committed, and Optuna opens the file as any existing study."""
    url = str(storage or "")
    if not url.startswith("sqlite:///") or Path(url[len("sqlite:///"):]).exists():
        return
    import alembic.migration
    from optuna.storages import RDBStorage
    from optuna.storages._rdb.storage import _VersionManager

    def stamp(manager, revision: str) -> None:
        with manager.engine.begin() as connection:  # commits on leaving
            alembic.migration.MigrationContext.configure(connection).stamp(manager._create_alembic_script(), revision)

    original = _VersionManager._set_alembic_revision
    _VersionManager._set_alembic_revision = stamp
    try:
        RDBStorage(url).remove_session()
    finally:
        _VersionManager._set_alembic_revision = original


def _move_sampler_seed(config, storage) -> None:
    """A search launched again into its folder resumes its stored study; a seeded sampler would
    replay its random stream and propose the first trials' settings again. Its seed moves on by
    the number of trials the study holds (deterministic: the same study, the same proposals)."""
    from omegaconf import OmegaConf, open_dict, read_write

    seed = OmegaConf.select(config, "hydra.sweeper.sampler.seed", default=None)
    name = OmegaConf.select(config, "hydra.sweeper.study_name", default=None)
    if storage is None or not isinstance(seed, int):
        return
    try:
        import optuna

        held = len(optuna.load_study(study_name=name, storage=str(storage)).trials)
    except Exception:  # a new study (KeyError: no such study), or one Optuna cannot read: it says so itself
        return
    if held:
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweeper.sampler.seed = seed + held
        print(f"search: resuming the study {name!r} in {storage.split('sqlite:///')[-1]} ({held} trials so far; "
              f"the sampler's seed moves from {seed} to {seed + held}, so it proposes new settings)", flush=True)


def summary_lines(sweep_dir: Path) -> list[str]:
    """What a multirun found: its folder, one line per job (`#N NAME: result`), the stored study's
    command for more trials (a search) and the ppo-report command."""
    from ppo.errors import ReportError
    from ppo.tools.report import load_runs, load_search, result_line

    sweep_dir = Path(sweep_dir).resolve()
    try:
        runs = load_runs(sweep_dir)
    except ReportError as err:
        return [f"sweep folder: {sweep_dir} ({err})"]
    search = load_search(sweep_dir, runs)  # an Optuna search: the stored study's trial numbers
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    lines = [f"sweep folder: {sweep_dir} ({len(runs)} run{'s' if len(runs) != 1 else ''}: "
             + ", ".join(f"{n} {status}" for status, n in sorted(statuses.items())) + ")"]
    for r in sorted(runs, key=lambda r: (r.trial is None, r.trial or 0, r.name)):
        lines.append(f"  {'' if r.trial is None else f'#{r.trial} '}{r.name}: {result_line(r)}")
    if search is not None and search.study_states is not None:
        lines.append(f"study: {sweep_dir / STUDY_FILE} (resumable); more trials: {search.command}")
    lines.append(f"next: ppo-report {sweep_dir}  (the verdict, intervals over seeds, plots)")
    return lines


class SweepSummary(Callback):
    """A multirun that says what it found (the module's docstring)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        from omegaconf import OmegaConf

        from ppo.train.job_names import SWEPT_KEYS_ENV

        keys = swept_keys(config)
        if keys:
            os.environ[SWEPT_KEYS_ENV] = ",".join(keys)  # read where each job's folder is named
        else:
            os.environ.pop(SWEPT_KEYS_ENV, None)
        if SearchOutcome.searching(config):
            # Optuna opens the study (sqlite:///SWEEP_DIR/optuna.db) before any job makes the folder.
            try:
                Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                print(f"error: cannot create the sweep folder {config.hydra.sweep.dir} ({err.strerror or err}); "
                      "choose a writable hydra.sweep.dir", file=sys.stderr)
                sys.exit(2)
            try:
                import optuna  # noqa: F401  (sets up its log handler, which _plain_optuna_logs tames)
            except ImportError:
                return
            _plain_optuna_logs()
            storage = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
            prepare_study(storage)
            _move_sampler_seed(config, storage)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from ppo.tools.report import load_runs, result_line

        job_dir = Path(config.hydra.runtime.output_dir)
        try:
            runs = load_runs(job_dir)
        except Exception:  # the job failed before its folder held a run: its error line said why
            return
        for run in runs:
            where = "" if run.path == job_dir else f" ({run.path.name})"
            log.info("result%s: %s", where, result_line(run))

    def on_multirun_end(self, config, **kwargs) -> None:
        print("\n".join(summary_lines(Path(config.hydra.sweep.dir))), flush=True)


def over_seeds(cfg, run_dir: str, run_one: Callable, searching: bool):
    """What one sweep job trains: `run_one(cfg, run_dir)`; in an Optuna search with
    `seeds_per_trial` N > 1, N runs of the trial's setting, seeds seed..seed+N-1, each in its own
    run folder TRIAL/seed=K, and the trial returns their objectives averaged (a failed seed fails
    the trial). Outside a search N > 1 is a one-line error: seeds are a sweep axis there."""
    n = int(cfg.get("seeds_per_trial") or 1)
    if n < 1 or (n > 1 and not searching):
        why = ("must be 1 or more" if n < 1 else
               "averages the seeds of an Optuna trial (hparams_search=NAME); a run or a sweep takes seeds as a sweep axis: "
               "ppo-train -m seed=0,1,2")
        print(f"error: seeds_per_trial={n} {why}", file=sys.stderr)
        sys.exit(2)
    if n == 1:
        return run_one(cfg, run_dir)
    values = []
    for seed in range(cfg.seed, cfg.seed + n):
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg.seed = seed
        value = run_one(seed_cfg, str(Path(run_dir) / SEED_DIR.format(seed)))
        if value is None:
            return None
        values.append(value)
    if isinstance(values[0], tuple):
        return tuple(sum(v[i] for v in values) / n for i in range(len(values[0])))
    return sum(values) / n
