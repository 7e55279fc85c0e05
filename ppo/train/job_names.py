"""Names Hydra gives a run's pieces (conf/hydra/default.yaml, through the resolvers that
`ppo.train.config.register` installs): a sweep job's folder name and the job log's line format."""

from __future__ import annotations

import hashlib
import re

_NAME_SAFE = re.compile(r"^[A-Za-z0-9._+@-]{1,40}$")
# A float written with more digits than a folder name needs (an Optuna proposal: 0.24208472637456369).
_LONG_FLOAT = re.compile(r"^-?\d*\.\d+(e[-+]?\d+)?$|^-?\d+e[-+]?\d+$")
FOLDER_DIGITS = 6  # significant digits of a float in a job folder name
# The keys a multirun sweeps (comma-separated), set by ppo.tools.sweep.SweepSummary when the
# multirun starts; a job's folder is named by these only. Unset (a launcher whose jobs do not
# inherit the environment): every override names the folder, as Hydra's override_dirname does.
SWEPT_KEYS_ENV = "PPO_SWEPT_KEYS"


def _folder_value(value: str) -> str:
    """`value` as it goes into a folder name: a long float cut to FOLDER_DIGITS significant digits
    (0.24208472637456369 -> 0.242085), a path or odd string as its last part plus 8 hex digits of
    its sha256, anything else as written."""
    if _LONG_FLOAT.match(value):
        short = f"{float(value):.{FOLDER_DIGITS}g}"
        return short if len(short) < len(value) else value
    if not _NAME_SAFE.match(value):
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", value.rstrip("/").rsplit("/", 1)[-1])[:24].strip("._") or "value"
        return f"{stem}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return value


def job_dir_name(overrides: list[str], exclude_keys: list[str], swept: list[str] | None = None) -> str:
    """A sweep job's folder name: its overrides of the keys the sweep varies (`swept`; default the
    SWEPT_KEYS_ENV list; all of them when none is known), sorted `key=value`, comma-joined, without
    `exclude_keys`: `loss.beta=0.1,seed=1`, whatever else the command line fixes. Values as
    `_folder_value` writes them: two values of a swept key never share a folder (a float keeps
    6 significant digits), and none nests folders. The full overrides stay in the job's
    .hydra/overrides.yaml."""
    import os

    if swept is None:
        swept = [k for k in os.environ.get(SWEPT_KEYS_ENV, "").split(",") if k]
    items = []
    for override in overrides:
        key, sep, value = str(override).partition("=")
        if key.lstrip("+~") in exclude_keys or (swept and key.lstrip("+~") not in swept):
            continue
        items.append(f"{key}{sep}{_folder_value(value) if sep else value}")
    return ",".join(sorted(items)) or "default"


def log_format(job_num, job_logging) -> str:
    """The job log's line format (conf/hydra/default.yaml): Hydra's, with `[#N]`, the job's number
    in the multirun (Hydra's launch line `#N : overrides` names it), after the time, so the lines
    of jobs that run side by side (hydra/launcher=joblib2) say whose they are. The message alone
    under hydra/job_logging=stdout (the other ranks of a distributed run)."""
    if str(job_logging) == "stdout":
        return "%(message)s"
    tag = "" if job_num is None else f"[#{job_num}]"
    return f"[%(asctime)s]{tag}[%(name)s][%(levelname)s] - %(message)s"
