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
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ppo.errors import SweepJobFailed
from ppo.io import SUMMARY_FILE, atomic_write_json, read_json

__all__ = ["record_failure", "objective_values", "SearchOutcome", "SweepJobFailed", "SweepOutcome", "unfinished_jobs"]

log = logging.getLogger(__name__)

# Optuna's answer, written by hydra-optuna-sweeper into the sweep folder.
OPTIMIZATION_RESULTS = "optimization_results.yaml"


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
    def _searching(config) -> bool:
        from omegaconf import OmegaConf

        return "optuna" in str(OmegaConf.select(config, "hydra.sweeper._target_"))

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

        if os.getpid() != self._pid or not self._searching(config):
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
        if not self._searching(config) or not results.exists():
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
        if SearchOutcome._searching(config):
            return  # a search goes on past failed trials; SearchOutcome judges it
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = unfinished_jobs(sweep_dir, self.started)
        if failed:
            names = ", ".join(f"{job.name} ({summary.get('status')})" for job, summary in failed)
            print(f"error: {len(failed)} sweep job(s) did not finish: {names}; each one's summary.json says why, "
                  f"`ppo-report {sweep_dir}` lists them; fix and launch the same sweep again to run only those",
                  file=sys.stderr)
            sys.exit(1)


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

