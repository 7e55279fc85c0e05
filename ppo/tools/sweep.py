"""Resumable multirun and failure records, for sweeps that are launched again.

Launching the same sweep again into the same folder (`ppo-train -m +experiment=NAME
hydra.sweep.dir=SWEEP_DIR`) must finish only what is missing:

- a run whose `summary.json` says `finished`, whose newest checkpoint is at `train.iters`
  and was made with the same config (the checkpoint's config fingerprint) is skipped
  before anything is loaded (`ppo.train.checkpoint.finished_summary`, which the loop calls);
- a run that was killed resumes from its newest checkpoint (`train.resume=auto`, the
  trainer's own resume);
- a run that failed starts again (its checkpoint, if any, is resumed).

`record_failure` writes `summary.json` with `status: failed` and the error for a job that
failed before the trainer could write its own summary (bad config value, model or data
missing), so `ppo-report` lists it as failed rather than not started.

A failed job prints one line and returns, so Hydra runs the others without a traceback;
`SweepOutcome` (a Hydra callback, conf/hydra/default.yaml) names the jobs that did not
finish at the end of the sweep and exits 1.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from ppo.io import SUMMARY_FILE, atomic_write_json, read_json

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - the report tools need no Hydra
    Callback = object

__all__ = ["record_failure", "SweepOutcome", "unfinished_jobs"]

log = logging.getLogger(__name__)


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

