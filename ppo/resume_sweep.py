"""Resumable multirun and failure records, for sweeps that are launched again.

Launching the same sweep again into the same folder (`ppo-train -m +experiment=NAME
hydra.sweep.dir=SWEEP_DIR`) must finish only what is missing:

- a run whose `summary.json` says `finished`, whose newest checkpoint is at `train.iters`
  and was made with the same config (the checkpoint's config fingerprint) is skipped
  before anything is loaded: `finished_summary` returns its summary;
- a run that was killed resumes from its newest checkpoint (`train.resume=auto`, the
  trainer's own resume);
- a run that failed starts again (its checkpoint, if any, is resumed).

`record_failure` writes `summary.json` with `status: failed` and the error for a job that
failed before the trainer could write its own summary (bad config value, model or data
missing), so `ppo-report` lists it as failed rather than not started. Both functions
only read or write files in the run folder.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def finished_summary(cfg, run_dir: Path) -> dict | None:
    """The summary of a finished run of this same config in `run_dir`, else None.

    Call at the top of `train()` (after `validate`): a non-None result is returned as is.
    """
    from ppo import checkpoint

    run_dir = Path(run_dir)
    summary = _read_json(run_dir / SUMMARY_FILE)
    if not summary or summary.get("status") != "finished":
        return None
    if cfg.train.resume not in ("auto",):  # resume=never asks for a fresh run; a path, for that checkpoint
        return None
    latest = checkpoint.latest(run_dir)
    if latest is None:
        return None
    state = _read_json(latest / checkpoint.STATE_FILE)
    if not state or state.get("step") != cfg.train.iters or summary.get("step") != cfg.train.iters:
        return None  # more (or fewer) iterations asked for: let the trainer resume
    if state.get("config_fingerprint") != checkpoint.config_fingerprint(cfg):
        return None  # another config: the trainer's own check reports it
    log.info("%s already finished with this config (step %d); skipped", run_dir, cfg.train.iters)
    return summary


def record_failure(run_dir: Path, error: BaseException | str) -> None:
    """Write summary.json with status failed, unless the trainer already wrote a summary."""
    from ppo.checkpoint import atomic_write_text

    run_dir = Path(run_dir)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    existing = _read_json(run_dir / SUMMARY_FILE)
    if existing and existing.get("status") == "finished":
        return
    if existing:  # the trainer's own summary (failed / interrupted): add the error to it
        existing.setdefault("error", message)
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(existing, indent=2, default=float))
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
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))


class SweepJobFailed(RuntimeError):
    """One job of a multirun failed; raised (not sys.exit) so Hydra runs the other jobs."""
