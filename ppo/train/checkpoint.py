"""Crash-safe checkpoints and the adapter files a run leaves for mlx-lm.

Every file is written to a temporary name and renamed into place, and a checkpoint is a
folder assembled under a temporary name and renamed whole: whatever kills the process
(SIGKILL, a full disk), the newest complete checkpoint is intact and a half-written one
is never read. A checkpoint holds what an exact resume needs: trainable weights,
optimizer state, the step, the data position, the trainer's running state and the wandb
run id. Random state needs no saving: the trainer re-seeds MLX from (seed, step) at
every step.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from ppo.errors import CheckpointError
from ppo.io import (ADAPTER_CONFIG_FILE, ADAPTER_FILE, CHECKPOINTS_DIR, CHECKSUMS_FILE, METRICS_FILE, OPTIMIZER_FILE,
                    STATE_FILE, SUMMARY_FILE, atomic_save_safetensors, atomic_write_text, file_sha256, is_write_error,
                    read_json, read_jsonl, write_error_reason)
from ppo.train.models import adapter_config, adapter_weights

log = logging.getLogger(__name__)

def save_adapters(out_dir: Path, model, cfg) -> None:
    """adapters.safetensors + adapter_config.json, as `mlx_lm.load(..., adapter_path=)` reads them."""
    out_dir = Path(out_dir)
    atomic_save_safetensors(out_dir / ADAPTER_FILE, adapter_weights(model))
    atomic_write_text(out_dir / ADAPTER_CONFIG_FILE, json.dumps(adapter_config(cfg.model, cfg.finetune), indent=2))


@dataclass
class TrainerState:
    """Everything besides weights and optimizer that an exact resume needs."""

    step: int
    data_position: int
    wandb_id: str | None
    config_fingerprint: dict
    extra: dict  # the trainer's running values (report window, best eval, health)
    # The content of every input (ppo.train.inputs: prompts, weights, starting adapter), compared on resume.
    inputs: dict = field(default_factory=dict)


def _step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step-{step:07d}"


def save(run_dir: Path, model, optimizer, state: TrainerState, cfg, keep: int = 3) -> Path:
    """Write checkpoint `step-NNNNNNN/` atomically and the run's adapter files; keep the last `keep`."""
    final = _step_dir(run_dir, state.step)
    tmp = final.with_name(f".tmp-{final.name}")
    placed = False
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        mx.save_safetensors(str(tmp / ADAPTER_FILE), adapter_weights(model))
        mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(optimizer.state)))
        (tmp / ADAPTER_CONFIG_FILE).write_text(json.dumps(adapter_config(cfg.model, cfg.finetune), indent=2))
        (tmp / STATE_FILE).write_text(json.dumps(state.__dict__, indent=2))
        checksums = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS_FILE).write_text(json.dumps(checksums, indent=2))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        placed = True
        save_adapters(run_dir, model, cfg)
    except Exception as err:
        if not is_write_error(err):  # MLX reports a failed write as RuntimeError("[write] ...")
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_error_reason(err, final.parent)
        from ppo.train.run_folder import continue_command

        if placed:  # the checkpoint is complete; only the run folder's copy of the adapters is old
            raise CheckpointError(
                f"checkpoint step {state.step} saved, but {Path(run_dir) / ADAPTER_FILE} could not be updated ({reason}); "
                f"free space, then continue: {continue_command(run_dir)}") from None
        previous = latest(run_dir)
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not save checkpoint step {state.step} to {final.parent} ({reason}); {kept}; "
            f"free space, then continue: {continue_command(run_dir)}"
        ) from None
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).exists())


def latest(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def read_state(path: Path) -> TrainerState:
    try:
        return TrainerState(**json.loads((Path(path) / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({err}); delete it to resume from an earlier one") from None


def verify(path: Path) -> None:
    """Compare each file of checkpoint `path` with the checksum written when it was saved.

    A checkpoint saved before checksums existed has no CHECKSUMS_FILE and is read as is."""
    path = Path(path)
    expected = read_json(path / CHECKSUMS_FILE)
    if expected is None:
        if (path / CHECKSUMS_FILE).exists():
            raise CheckpointError(f"checkpoint {path} is corrupt ({CHECKSUMS_FILE} is unreadable); "
                                  "delete it to resume from an earlier one")
        log.warning("checkpoint %s has no %s (saved by an older version); loaded unverified", path, CHECKSUMS_FILE)
        return
    for name, digest in expected.items():
        try:
            actual = file_sha256(path / name)
        except OSError as err:
            raise CheckpointError(f"checkpoint {path} is incomplete ({name}: {err.strerror or err}); "
                                  "delete it to resume from an earlier one") from None
        if actual != digest:
            raise CheckpointError(f"checkpoint {path} is corrupt ({name} changed since it was saved: checksum mismatch); "
                                  "delete it to resume from an earlier one")


def load(path: Path, model, optimizer, fingerprint: dict | None = None) -> TrainerState:
    """Restore weights and optimizer state from checkpoint folder `path`; return its trainer state.

    With `fingerprint` (the current config's), a checkpoint made with another config is
    refused before anything is loaded.
    """
    path = Path(path)
    verify(path)
    state = read_state(path)
    if fingerprint is not None:
        check_fingerprint(state.config_fingerprint, fingerprint, path)
    try:
        weights = mx.load(str(path / ADAPTER_FILE))
        optimizer_state = mx.load(str(path / OPTIMIZER_FILE))
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is corrupt ({str(err).splitlines()[0]}); delete it to resume from an earlier one") from None
    expected = adapter_weights(model)
    mismatched = [k for k, v in weights.items() if k not in expected or expected[k].shape != v.shape]
    if mismatched or len(weights) != len(expected):
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({len(mismatched)} mismatched tensors, e.g. {mismatched[:1]}): "
            "it comes from another model or fine-tune config; use a new hydra.run.dir or train.resume=never"
        )
    model.load_weights(list(weights.items()), strict=False)
    optimizer.state = tree_unflatten(list(optimizer_state.items()))
    mx.eval(model.parameters(), optimizer.state)
    return state


def flat_config(cfg) -> dict:
    """The whole resolved config as flattened key -> value (`train.iters` -> 6; lists are values)."""
    from omegaconf import OmegaConf

    flat = {}

    def walk(prefix, node):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = node

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return flat


def config_fingerprint(cfg) -> dict:
    """The parts of a config that must not change across a resume (flattened key -> value)."""
    changeable = {"train.iters", "train.progress", "train.resume", "train.save_every", "train.keep_checkpoints",
                  "train.human_eval", "train.rank_timeout", "train.resume_with_changed_inputs", "experiment_name",
                  "objectives"}
    # How long and how often a judge is waited for changes no verdict it gives, so a resume
    # after a judge outage may raise them.
    changeable |= {"judge.timeout", "judge.backoff", "judge.retries", "judge.concurrency"}
    return {k: v for k, v in flat_config(cfg).items() if k not in changeable and not k.startswith("logger.")}


def fingerprint_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ. A key the saved fingerprint lacks (a setting added since the
    checkpoint was made) differs only when it is now set away from its default, so upgrading
    the package does not strand a run folder."""
    from ppo.train.config import introduced_defaults

    defaults = introduced_defaults()
    return sorted(k for k in set(saved) | set(current)
                  if saved.get(k, defaults.get(k)) != current.get(k) and not (k not in current and k not in saved))


def check_fingerprint(saved: dict, current: dict, path: Path) -> None:
    differing = fingerprint_differences(saved, current)
    if differing:
        key = differing[0]
        raise CheckpointError(
            f"checkpoint {path} was made with a different config ({key}: {saved.get(key)!r} there, {current.get(key)!r} now"
            f"{f', and {len(differing) - 1} more' if len(differing) > 1 else ''}); "
            "resume with the same config, or start fresh with a new hydra.run.dir or train.resume=never"
        )


def finished_summary(cfg, run_dir: Path) -> dict | None:
    """The summary of a finished run of this same config in `run_dir`, else None.

    A relaunched sweep skips such a job before anything is loaded: `summary.json` says
    finished, and the newest checkpoint is at `train.iters` with the same config
    fingerprint. Call at the top of `train()` (after `validate`).
    """
    run_dir = Path(run_dir)
    summary = read_json(run_dir / SUMMARY_FILE)
    if not summary or summary.get("status") != "finished":
        return None
    if cfg.train.resume not in ("auto",):  # resume=never asks for a fresh run; a path, for that checkpoint
        return None
    newest = latest(run_dir)
    if newest is None:
        return None
    state = read_json(newest / STATE_FILE)
    if not state or state.get("step") != cfg.train.iters or summary.get("step") != cfg.train.iters:
        return None  # more (or fewer) iterations asked for: let the trainer resume
    if fingerprint_differences(state.get("config_fingerprint") or {}, config_fingerprint(cfg)):
        return None  # another config: the trainer's own check reports it
    rows = read_jsonl(run_dir / METRICS_FILE)
    if not rows or rows[-1].get("step") != cfg.train.iters:
        return None  # the metrics are not this run's, complete: let the trainer resume and rewrite them
    log.info("%s already finished with this config (step %d); skipped", run_dir, cfg.train.iters)
    return summary
