"""hydra/launcher=joblib2: jobs side by side in joblib's worker processes, stopped by Ctrl-C the
way a multirun in one process is (every running job saves and stops, no further job starts, one
line, exit 130; `ppo.errors.SweepStopped`).

Hydra's own joblib launcher leaves Ctrl-C to joblib, and joblib answers a KeyboardInterrupt in the
launching process (or an exception from any job, or a worker that died) by killing every worker at
once (SIGKILL): the running jobs lose their running step and never write their summary, and jobs
already handed to a worker start. `launch` below is that launcher's own `launch`
(hydra_plugins.hydra_joblib_launcher._core) with these differences:

- the launching process takes SIGINT and SIGTERM without raising: it notes the signal and writes the
  stop file, and a job that a worker takes after it returns at once, before Hydra makes its folder
  (a terminal's Ctrl-C reaches every process of its group: the workers get the signal themselves);
- a worker ignores both signals while it waits for a job (an idle worker killed by Ctrl-C breaks
  joblib's pool, which then kills the others); during a job they raise KeyboardInterrupt until the
  training loop takes them over (ppo.train.stopping: save and stop after the running step, stop at
  once on a second signal);
- a job that a signal stopped returns that (`JobStopped`) instead of raising through joblib;
- once every running job has returned, the launcher raises `SweepStopped`: one line naming them all.

A signal sent to the launching process alone (`kill -INT PID`, not to its process group) stops new
jobs from starting; the running ones finish.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ppo.errors import SweepStopped

log = logging.getLogger("hydra_plugins.hydra_joblib_launcher")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a job returns when the sweep was stopped before a worker took it.
NOT_STARTED = "not started: the multirun was stopped"


@dataclass(frozen=True)
class JobStopped:
    """What a job that Ctrl-C / SIGTERM stopped returns to the launching process."""

    exit_code: int
    jobs: list[str] = field(default_factory=list)  # "RUN_DIR why", as SweepStopped.jobs


def ignore_stop_signals() -> None:
    """A worker's initializer: while it waits for a job, Ctrl-C does not kill it."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signum)


def _job_dir() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.output_dir)
    except Exception:  # stopped before Hydra named the job's folder
        return "(not yet created)"


def run_job_unless_stopped(stop_file: str, idx: int, *job) -> object:
    """One job in a worker (Hydra's execute_job), unless the multirun was stopped before it started.
    A job that a signal stops returns `JobStopped`: raised, it would make joblib kill the other workers."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    if os.path.exists(stop_file):
        return NOT_STARTED
    previous = {signum: signal.signal(signum, _interrupt) for signum in STOP_SIGNALS}
    try:
        return execute_job(idx, *job)
    except SweepStopped as stopped:  # the training loop saved and stopped (ppo.tools.cli)
        return JobStopped(stopped.exit_code, stopped.jobs)
    except KeyboardInterrupt as interrupt:  # before or after the training loop: nothing half-written
        signum = interrupt.args[0] if interrupt.args else signal.SIGINT
        return JobStopped(128 + signum, [f"{_job_dir()} stopped by signal {signum} outside its training steps "
                                         "(its newest checkpoint, if any, is intact)"])
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def launch(launcher, job_overrides, initial_job_idx: int):
    """hydra_plugins.hydra_joblib_launcher._core.launch, stopped by Ctrl-C as the module says."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed

    from ppo.tools.sweep import SearchOutcome, stopped_line

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    joblib_cfg = dict(launcher.joblib)
    joblib_cfg["backend"] = "loky"  # as Hydra's launcher: the threading backend cannot run Hydra jobs
    process_joblib_cfg(joblib_cfg)
    log.info("Joblib.Parallel({}) is launching {} jobs".format(",".join(f"{k}={v}" for k, v in joblib_cfg.items()),
                                                                len(job_overrides)))
    log.info("Launching jobs, sweep output dir : {}".format(sweep_dir))
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))

    stop_dir = tempfile.mkdtemp(prefix="ppo-sweep-")
    stop_file = os.path.join(stop_dir, "stop")
    received: list[int] = []

    def note(signum, frame) -> None:
        received.append(signum)
        Path(stop_file).touch()

    singleton_state = Singleton.get_state()
    previous = {signum: signal.signal(signum, note) for signum in STOP_SIGNALS}
    try:
        runs = Parallel(**joblib_cfg, initializer=ignore_stop_signals)(
            delayed(run_job_unless_stopped)(stop_file, initial_job_idx + idx, overrides, launcher.hydra_context,
                                            launcher.config, launcher.task_function, singleton_state)
            for idx, overrides in enumerate(job_overrides))
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(stop_dir, ignore_errors=True)
    stopped = [run for run in runs if isinstance(run, JobStopped)]
    if stopped or received:
        jobs = [job for run in stopped for job in run.jobs]
        code = 128 + received[0] if received else stopped[0].exit_code
        raise SweepStopped(stopped_line(SearchOutcome.searching(launcher.config), sweep_dir, jobs,
                                        received[0] if received else None), code, jobs)
    assert all(isinstance(run, JobReturn) for run in runs)
    return runs
