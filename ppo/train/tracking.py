"""Where metrics go: `metrics.jsonl` in the run folder always, Weights & Biases when asked.

The plain file needs no wandb to read: one JSON object per report step, each line
written whole and flushed, so an interrupted run leaves only complete lines. A wandb
failure never stops training: it is reported once and the local files go on.

A W&B run is what its users expect: the summary is wandb's own (the last value of every
logged key, as TRL users rely on) with the curated keys of `lean_summary` written on top;
the terminal is captured into the Logs tab and system metrics are sampled unless
`logger.wandb.console=off` / `logger.wandb.system_metrics=false`; the `samples` table names its
columns for what they are (`table_row`); an offline run ends with its `wandb sync` line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

from ppo.io import METRICS_FILE, atomic_write_text, naming_file, read_jsonl
from ppo.metrics import EVAL_WIN_RATE_WILSON_HIGH, EVAL_WIN_RATE_WILSON_LOW, held_out_names, wilson_interval
from ppo.train.samples import SamplesFile
from ppo.train.wandb_offline import logged_steps, supersede

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
        with naming_file(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


# The share of the last report steps over which clip_fraction's health is judged (as ppo-report does).
HEALTH_TAIL = 0.2


def _hydra_job():
    """Hydra's runtime config of this job, or None outside a Hydra app (tests, scripts)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except Exception:
        return None


def sweep_group() -> str | None:
    """A multirun's own id: its folder, as `PARENT/NAME` (`eps_beta_grid/2026-11-30_10-00-00`).

    Every job of one sweep shares it and a relaunch into the same folder (a resumed sweep)
    keeps it; two sweeps of the same experiment get two groups. None for a single run."""
    from hydra.types import RunMode

    hydra_cfg = _hydra_job()
    if hydra_cfg is None or hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    folder = Path(hydra_cfg.sweep.dir)
    return f"{folder.parent.name}/{folder.name}" if folder.parent.name else folder.name


def _short_value(match: re.Match) -> str:
    return f"{float(match.group(0)):.3g}"


def run_name(experiment: str) -> str:
    """The experiment and the job's own overrides (Hydra's override_dirname), numbers cut to
    3 significant digits so an Optuna trial's `loss.beta=0.0123456789` stays readable."""
    hydra_cfg = _hydra_job()
    overrides = (hydra_cfg.job.override_dirname if hydra_cfg is not None else "") or ""
    overrides = re.sub(r"(?<![\w.])\d+\.\d{4,}(e-?\d+)?", _short_value, overrides)
    name = " ".join(part for part in (experiment if experiment != "default" or not overrides else "", overrides) if part)
    return name[:128]


# W&B refuses a job type longer than this (its limit is 64 characters).
JOB_TYPE_LIMIT = 64


def configuration_name(overrides: list[str], excluded: list[str] = ()) -> str:
    """A job's configuration: its overrides without the seed (and the keys Hydra's folder names
    leave out), sorted and joined as Hydra's override_dirname is: `beta=tiny,epsilon=tight` for
    every seed of that cell. Cut to W&B's 64-character limit with a hash of the whole, so two
    long configurations never share a name. "train" when nothing is overridden."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key != "seed" and key not in excluded:
            kept.append(override)
    name = ",".join(sorted(kept)) or "train"
    if len(name) > JOB_TYPE_LIMIT:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = f"{name[:JOB_TYPE_LIMIT - 9]}~{digest}"
    return name


def job_type(configured: str | None) -> str:
    """`logger.wandb.job_type` when set; in a multirun, the job's configuration without its seed
    (so the W&B UI's "group by job type" within the sweep's group puts a configuration's seeds
    together); else "train"."""
    if configured:
        return configured
    if sweep_group() is None:
        return "train"
    hydra_cfg = _hydra_job()
    return configuration_name(list(hydra_cfg.overrides.task), list(hydra_cfg.job.config.override_dirname.exclude_keys))


def wandb_mode(configured: str | None) -> str:
    """`logger.wandb.mode` when set; else WANDB_MODE; else what `wandb offline|online|disabled`
    wrote into wandb's settings files; else offline (no account needed)."""
    if configured:
        return configured
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        from wandb.sdk import wandb_setup

        mode = wandb_setup.singleton().settings.read_system_settings().all().get("mode")
    except Exception:  # an older wandb without the settings-file API: keep the default
        mode = None
    return mode or "offline"


def clip_health(rows: list[dict]) -> tuple[float | None, str]:
    """clip_fraction averaged over the last 20% of report steps, and the health rule's word."""
    from ppo.health import verdict

    clips = [c for r in rows if (c := r.get("clip_fraction")) is not None and math.isfinite(c)]
    if not clips:
        return None, verdict(None)
    tail = clips[-max(1, math.ceil(HEALTH_TAIL * len(clips))):]
    spreads = [abs(v - 1.0) for r in rows[-len(tail):] for k in ("ratio/max", "ratio/min")
               if (v := r.get(k)) is not None and math.isfinite(v)]
    mean = sum(tail) / len(tail)
    return mean, verdict(mean, max(spreads) if spreads else None)


def lean_summary(summary: dict, rows: list[dict]) -> dict:
    """The curated keys written over wandb's default summary (the last value of every logged
    key) when a run finishes: the final eval win rate with its Wilson interval (under its own
    names, eval/win_rate_wilson_low/high: eval/win_rate_low/high keep the logged normal
    approximation, `ppo.metrics.EVAL_WIN_RATE_LOW`), the
    length-controlled one and the length ratio, the final KL and policy entropy, clip_fraction over the last 20%
    of steps and its health word, the status, the step and the wall time."""
    ev, final = summary.get("eval") or {}, summary.get("final") or {}
    clip_fraction, health = clip_health(rows)
    interval = wilson_interval(ev.get("eval/win_rate"), ev.get("eval/pairs")) or (None, None)
    values = {"status": summary.get("status"), "step": summary.get("step"),
              "eval/win_rate": ev.get("eval/win_rate"), EVAL_WIN_RATE_WILSON_LOW: interval[0],
              EVAL_WIN_RATE_WILSON_HIGH: interval[1], "eval/pairs": ev.get("eval/pairs"),
              **{k: ev.get(k) for k in ("eval/win_rate_lc", "eval/win_rate_lc_low", "eval/win_rate_lc_high",
                                        "eval/length_ratio")},
              # a held-out judge's eval/NAME/* (eval_judge=NAME)
              **{k: v for name in held_out_names(ev) for k, v in ev.items() if k.startswith(f"eval/{name}/")},
              "kl": final.get("kl"), "entropy": final.get("entropy"),
              "clip_fraction": clip_fraction, "clip_fraction/health": health,
              "wall_seconds": summary.get("wall_seconds")}
    return {k: v for k, v in values.items() if v is not None}


# logger.wandb.console: wandb's console capture methods ("auto" is wandb's choice: "wrap" today,
# which wraps sys.stdout/sys.stderr writes and leaves the terminal itself alone).
CONSOLE_MODES = ("auto", "wrap", "redirect", "off")


def console_mode(configured) -> str:
    """`logger.wandb.console` as a wandb.Settings value; true / false (YAML's on / off) mean auto / off."""
    if isinstance(configured, bool) or str(configured).lower() in ("true", "false"):
        return "auto" if str(configured).lower() == "true" else "off"
    if configured not in CONSOLE_MODES:
        raise ValueError(f"invalid logger.wandb.console={configured!r}: choose one of {', '.join(CONSOLE_MODES)}")
    return configured


# The samples table's columns, named for what they are. An evaluation row pairs the policy
# (samples.jsonl's `a`) with the reference (`b`); a training row pairs two samples of the
# policy in the order the judge was shown them, first (`a`) and second (`b`): neither is
# "chosen" before the verdict, and a tie or an invalid verdict chooses nothing.
SIDES = {"eval": ("policy", "reference"), "train": ("first", "second")}


def table_row(row: dict) -> dict:
    """A samples.jsonl row with its sides named (`policy`, `policy_judged`, `policy_finished`, ...,
    `p_policy` = P(policy better), verdict `policy` | `reference` | `tie` | `invalid`)."""
    a, b = SIDES.get(row.get("phase"), ("a", "b"))
    names = {"a": a, "b": b, "a_judged": f"{a}_judged", "b_judged": f"{b}_judged", "a_finished": f"{a}_finished",
             "b_finished": f"{b}_finished", "p": f"p_{a}"}
    out = {names.get(k, k): v for k, v in row.items()}
    if "verdict" in out:
        out["verdict"] = {"a": a, "b": b}.get(out["verdict"], out["verdict"])
    return out


def offline_sync_hint(sync_dir) -> str:
    """The one line that says how to upload an offline run."""
    return f"W&B run saved offline; upload it with: wandb sync {sync_dir}"


class WandbRun:
    """A thin guard around a wandb run: any wandb error is logged once, then ignored."""

    def __init__(self, cfg, run_dir: Path, config: dict, run_id: str | None = None, experiment: str = "default"):
        self._run = None
        self._warned = False
        self._run_dir = Path(run_dir)
        self._log_adapters = cfg.log_adapters
        try:
            import wandb

            self._run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group or sweep_group(),
                name=cfg.name or run_name(experiment),
                tags=list(dict.fromkeys([*cfg.tags, experiment])),
                job_type=job_type(cfg.job_type),
                config=config,
                dir=str(run_dir),
                mode=wandb_mode(cfg.mode),
                id=run_id,
                resume="allow" if run_id else None,
                # The terminal into the Logs tab, CPU / memory / GPU charts: on unless turned off.
                settings=wandb.Settings(console=console_mode(cfg.console), silent=True,
                                        x_disable_stats=not cfg.system_metrics),
            )
            self._run.define_metric("step")
            # Every metric's curve against `step`; wandb's default summary keeps each key's last
            # value, and `finish` writes the curated keys (`lean_summary`) over it.
            self._run.define_metric("*", step_metric="step")
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

    def _earlier_attempts(self) -> list[Path]:
        """The offline folders of this run id's earlier attempts (RUN_DIR/wandb/offline-run-*-ID/)."""
        current = Path(self._run.settings.sync_dir).resolve()
        return [folder for folder in sorted(self._run_dir.glob(f"wandb/offline-run-*-{self._run.id}"))
                if folder.resolve() != current and (folder / f"run-{self._run.id}.wandb").exists()]

    def steps_held(self) -> tuple[set[int], list[Path]]:
        """(the steps whose metrics the W&B run holds already, the earlier offline attempts set aside).

        Online: 1 to the last `step` the server's summary holds (wandb's resume fetches it).
        Offline: the steps of the earlier attempts that `wandb sync` uploaded already (their
        run-ID.wandb.synced marker, wandb's own record of it). Every other earlier attempt's folder
        is moved into RUN_DIR/wandb/superseded/ (`supersede`): `wandb sync` never uploads it, and this
        attempt logs again, from metrics.jsonl, every step it held. Reading and keeping those logs
        instead would upload twice each step the killed attempt logged after its newest checkpoint:
        wandb has no way to drop rows from an offline log, nor to upload only part of one."""
        if self._run.settings.mode not in ("offline", "dryrun"):
            last = self._run.summary.get("step")
            return (set(range(1, int(last) + 1)) if isinstance(last, (int, float)) else set()), []
        held, moved = set(), []
        for folder in self._earlier_attempts():
            log_file = folder / f"run-{self._run.id}.wandb"
            if log_file.with_suffix(".wandb.synced").exists():
                held |= logged_steps(log_file)
                continue
            try:
                moved.append(supersede(folder))
            except OSError as err:  # cannot be moved: its steps stay uploaded from it, as before
                log.warning("could not move the earlier W&B attempt %s aside (%s); `wandb sync` uploads it too, "
                            "with its steps after the checkpoint logged twice", folder, err.strerror or err)
                held |= logged_steps(log_file)
        return held, moved

    def restore_history(self, rows: list[dict], resume_step: int,
                        samples: list[dict] = ()) -> tuple[list[int], list[Path]]:
        """Log again, from metrics.jsonl's `rows` (and the evaluation `samples` tables of
        samples.jsonl at those steps), every step up to the checkpoint being resumed that the W&B
        run does not hold already (`steps_held`), so that it holds each step once: wandb's resume
        (the same run id) continues a run but cannot bring back what a killed attempt never wrote,
        nor drop what it wrote after its newest checkpoint. Returns (the steps logged, the earlier
        attempts' folders set aside)."""
        if self._run is None:
            return [], []
        try:
            held, moved = self.steps_held()
            missing = [row for row in rows if row.get("step", 0) <= resume_step and row.get("step") not in held]
            evaluations: dict[int, list[dict]] = {}
            for sample in samples:
                if sample.get("phase") == "eval":
                    evaluations.setdefault(sample.get("step"), []).append(sample)
            for row in missing:  # in the order training logs them: a step's samples table, then its metrics
                if evaluations.get(row["step"]):
                    self.log_table(row["step"], "samples", evaluations[row["step"]])
                # metrics.jsonl stores NaN and inf as null: left out, as a non-finite log would be
                self._run.log({k: v for k, v in row.items() if v is not None})
            return [row["step"] for row in missing], moved
        except Exception as err:
            self._warn(err)
            return [], []

    def log_table(self, step: int, key: str, rows: list[dict]) -> None:
        """`rows` (dicts with the same keys) as one wandb.Table under `key` at `step`."""
        if self._run is None or not rows:
            return
        try:
            import wandb

            rows = [table_row(row) for row in rows]
            columns = list(dict.fromkeys(k for row in rows for k in row))
            table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in rows])
            self._run.log({"step": step, key: table})
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

    def log_adapters(self) -> None:
        """The run folder's adapters (mlx-lm's format) as a W&B model artifact, when asked."""
        from ppo.io import ADAPTER_CONFIG_FILE, ADAPTER_FILE

        files = [self._run_dir / name for name in (ADAPTER_FILE, ADAPTER_CONFIG_FILE)]
        if self._run is None or not self._log_adapters or not all(f.exists() for f in files):
            return
        try:
            import wandb

            artifact = wandb.Artifact(f"adapters-{self._run.id}", type="model",
                                      description="LoRA/DoRA adapters: mlx_lm.load(MODEL, adapter_path=FOLDER)")
            for f in files:
                artifact.add_file(str(f))
            self._run.log_artifact(artifact)
        except Exception as err:
            self._warn(err)

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; an offline one ends with the `wandb sync` line that uploads it."""
        if self._run is None:
            return
        try:
            offline = self._run.settings.mode in ("offline", "dryrun")
            sync_dir = self._run.settings.sync_dir
            self._run.finish(exit_code=exit_code)
        except Exception as err:
            self._warn(err)
            return
        if offline and sync_dir:
            log.info(offline_sync_hint(sync_dir))


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 5] -> "1-3, 5"."""
    parts, start = [], None
    for i, step in enumerate(steps):
        start = step if start is None else start
        if i + 1 == len(steps) or steps[i + 1] != step + 1:
            parts.append(f"{start}-{step}" if step != start else f"{step}")
            start = None
    return ", ".join(parts)


class Tracker:
    """Both sinks behind one call, so the trainer logs each metric once."""

    def __init__(self, cfg, run_dir: Path, config: dict, resume_step: int | None = None, wandb_id: str | None = None):
        self.file = MetricsFile(run_dir, resume_step)
        self.samples = SamplesFile(run_dir, resume_step)
        self.wandb = (WandbRun(cfg.wandb, run_dir, config, wandb_id, config.get("experiment_name", "default"))
                      if cfg.kind == "wandb" else None)
        if self.wandb and resume_step is not None:
            restored, moved = self.wandb.restore_history(read_jsonl(self.file.path), resume_step,
                                                         read_jsonl(self.samples.path))
            if restored:
                log.info("W&B: logged steps %s again from metrics.jsonl%s", _ranges(restored),
                         f" (the earlier attempts' offline logs, kept in {moved[0].parent}, are not uploaded by "
                         f"`wandb sync`: this attempt holds every step once)" if moved else
                         " (the W&B run lacked them: an earlier attempt was stopped before wandb wrote them)")

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb else None

    def log(self, step: int, metrics: dict) -> None:
        self.file.write(step, metrics)
        if self.wandb:
            self.wandb.log(step, metrics)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Judged pairs (ppo.train.samples: prompt, completions, judged texts, verdict) into
        samples.jsonl; an evaluation's rows also as a `samples` wandb.Table at `step` (the same
        rows, their sides named policy / reference: `table_row`)."""
        self.samples.write(step, rows)
        evaluation = [{**row, "step": step} for row in rows if row.get("phase") == "eval"]
        if self.wandb and evaluation:
            self.wandb.log_table(step, "samples", evaluation)

    def finish(self, summary: dict, exit_code: int = 0) -> None:
        self.file.close()
        self.samples.close()
        if self.wandb:
            self.wandb.summary(lean_summary(summary, read_jsonl(self.file.path)))
            if exit_code == 0:
                self.wandb.log_adapters()
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
