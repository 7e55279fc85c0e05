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
"""

from __future__ import annotations

import time
from pathlib import Path

from ppo.errors import SweepJobFailed
from ppo.io import SUMMARY_FILE, atomic_write_json, read_json

__all__ = ["record_failure", "SweepJobFailed"]


def record_failure(run_dir: Path, error: BaseException | str) -> None:
    """Write summary.json with status failed, unless the trainer already wrote a summary."""
    run_dir = Path(run_dir)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    existing = read_json(run_dir / SUMMARY_FILE)
    if existing and existing.get("status") == "finished":
        return
    if existing:  # the trainer's own summary (failed / interrupted): add the error to it
        existing.setdefault("error", message)
        atomic_write_json(run_dir / SUMMARY_FILE, existing)
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
    atomic_write_json(run_dir / SUMMARY_FILE, summary)

