"""Where metrics go: `metrics.jsonl` in the run folder always, Weights & Biases when asked.

The plain file needs no wandb to read: one JSON object per report step, each line
written whole and flushed, so an interrupted run leaves only complete lines. A wandb
failure never stops training: it is reported once and the local files go on.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from ppo.io import METRICS_FILE, atomic_write_text, read_jsonl
from ppo.train.samples import SamplesFile

log = logging.getLogger(__name__)


def _clean(value):
    """JSON-safe scalars: NaN and inf are written as null, never as invalid JSON."""
    value = float(value)
    return value if math.isfinite(value) else None


class MetricsFile:
    """Append-only metrics.jsonl. On resume, lines past the checkpoint's step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            self.truncate_after(resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")

    def truncate_after(self, step: int) -> None:
        kept = [row for row in read_jsonl(self.path) if row.get("step", 0) <= step]  # a torn line is dropped
        atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, step: int, metrics: dict) -> None:
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _run_name_from_overrides() -> str | None:
    """A sweep job's overrides (Hydra's override_dirname, e.g. `beta=tiny,epsilon=tight`)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.override_dirname or None
    except Exception:  # not inside a Hydra app (tests, scripts): wandb picks a name
        return None


class WandbRun:
    """A thin guard around a wandb run: any wandb error is logged once, then ignored."""

    def __init__(self, cfg, run_dir: Path, config: dict, run_id: str | None = None):
        self._run = None
        self._warned = False
        try:
            import wandb

            mode = os.environ.get("WANDB_MODE") or cfg.mode
            self._run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=cfg.name or _run_name_from_overrides(),
                tags=list(cfg.tags),
                job_type=cfg.job_type,
                config=config,
                dir=str(run_dir),
                mode=mode,
                id=run_id,
                resume="allow" if run_id else None,
                settings=wandb.Settings(console="off", silent=True, x_disable_stats=True),
            )
            self._run.define_metric("step")
            self._run.define_metric("*", step_metric="step")
            self._run.define_metric("eval/win_rate", step_metric="step", summary="max,last")
            self._run.define_metric("kl", step_metric="step", summary="last")
            self._run.define_metric("clip_fraction", step_metric="step", summary="mean,last")
        except Exception as err:  # tracking must never stop training
            self._warn(err)

    @property
    def id(self) -> str | None:
        return self._run.id if self._run is not None else None

    def _warn(self, err: Exception) -> None:
        if not self._warned:
            log.warning("wandb disabled for this run (%s); metrics.jsonl keeps every metric", str(err).splitlines()[0] if str(err) else type(err).__name__)
            self._warned = True
        self._run = None

    def log(self, step: int, metrics: dict) -> None:
        if self._run is None:
            return
        try:
            self._run.log({"step": step, **{k: _clean(v) for k, v in metrics.items()}})
        except Exception as err:
            self._warn(err)

    def summary(self, values: dict) -> None:
        if self._run is None:
            return
        try:
            for k, v in values.items():
                self._run.summary[k] = v
        except Exception as err:
            self._warn(err)

    def finish(self, exit_code: int = 0) -> None:
        if self._run is None:
            return
        try:
            self._run.finish(exit_code=exit_code)
        except Exception as err:
            self._warn(err)


class Tracker:
    """Both sinks behind one call, so the trainer logs each metric once."""

    def __init__(self, cfg, run_dir: Path, config: dict, resume_step: int | None = None, wandb_id: str | None = None):
        self.file = MetricsFile(run_dir, resume_step)
        self.samples = SamplesFile(run_dir, resume_step)
        self.wandb = WandbRun(cfg.wandb, run_dir, config, wandb_id) if cfg.kind == "wandb" else None

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb else None

    def log(self, step: int, metrics: dict) -> None:
        self.file.write(step, metrics)
        if self.wandb:
            self.wandb.log(step, metrics)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Judged pairs (ppo.train.samples: prompt, completions, judged texts, verdict) into samples.jsonl."""
        self.samples.write(step, rows)

    def finish(self, summary: dict, exit_code: int = 0) -> None:
        self.file.close()
        self.samples.close()
        if self.wandb:
            self.wandb.summary(summary)
            self.wandb.finish(exit_code)


class SilentTracker:
    """The tracker of a rank that does not write the run folder (every rank but 0)."""

    wandb_id = None

    def log(self, step: int, metrics: dict) -> None:
        pass

    def log_samples(self, step: int, rows: list[dict]) -> None:
        pass

    def finish(self, summary: dict, exit_code: int = 0) -> None:
        pass
