"""Run-folder files: their names, atomic writes, and JSONL reading that survives a crash.

One module for what every writer and reader of a run folder shares. A file is written to
a temporary name in the same folder, fsynced and renamed into place, so a reader never
sees half a file whatever kills the writer. JSONL files are append-only, so a crash can
leave only a torn last line, which readers skip.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

# The files of a run folder (docs/how-to/outputs.md).
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
JUDGMENTS_FILE = "judgments.jsonl"
# A held-out evaluation judge's records (eval_judge=NAME): judgments_eval_NAME.jsonl.
EVAL_JUDGMENTS_FILES = "judgments_eval_*.jsonl"


def eval_judgments_file(name: str) -> str:
    return EVAL_JUDGMENTS_FILES.replace("*", name)

# What was sampled, what the judge read and decided (ppo/train/samples.py).
SAMPLES_FILE = "samples.jsonl"
CHECKPOINTS_DIR = "checkpoints"
# mlx-lm's adapter format: `mlx_lm.load(model, adapter_path=RUN_DIR)` reads these two.
ADAPTER_FILE = "adapters.safetensors"
ADAPTER_CONFIG_FILE = "adapter_config.json"
# Inside each checkpoint folder.
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
# sha256 of every other file of the checkpoint, written last before the folder is renamed
# into place: a checkpoint whose bytes changed afterwards is refused before it is loaded.
CHECKSUMS_FILE = "checksums.json"
# Held (flock) by the process training into the folder; holds that process's pid and host.
LOCK_FILE = ".lock"
HYDRA_DIR = ".hydra"
# train.resume=never moves an earlier run's outputs into RUN_DIR/previous-<UTC time>/.
PREVIOUS_PREFIX = "previous-"
# What a run leaves in its folder (globs), i.e. what belongs to one run and must never be
# mixed with another's. Hydra's train.log is left out: it is held open by this process.
RUN_OUTPUTS = (HYDRA_DIR, METRICS_FILE, SUMMARY_FILE, JUDGMENTS_FILE, EVAL_JUDGMENTS_FILES, SAMPLES_FILE, CHECKPOINTS_DIR, ADAPTER_FILE,
               ADAPTER_CONFIG_FILE, "wandb", "report.md", "*.png", "reproduce.json")


def write_error_reason(err: BaseException, folder: Path | None = None) -> str:
    """A short reason for a failed write: MLX reports a full disk as a RuntimeError
    ("[write] Unable to write ...") without an errno, so the free space is looked at."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return "no space left on device"
    if folder is not None:
        try:
            if shutil.disk_usage(folder).free < 1 << 20:
                return "no space left on device"
        except OSError:
            pass
    if isinstance(err, OSError):
        return err.strerror or str(err)
    return str(err).splitlines()[0] if str(err) else type(err).__name__


@contextlib.contextmanager
def naming_file(path: Path):
    """Writes to an open file, whose OSError carries no file name (a full disk: "[Errno 28] No
    space left on device"): it is given `path`, so that the run's one line names the file, not
    only its folder."""
    try:
        yield
    except OSError as err:
        if err.filename is None:
            err.filename = str(path)
        raise


def is_write_error(err: BaseException) -> bool:
    """OSError, or MLX's RuntimeError for a failed file write (it has no OSError type)."""
    return isinstance(err, OSError) or (isinstance(err, RuntimeError) and str(err).startswith("[write]"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_replace(tmp: Path, final: Path) -> None:
    """Flush `tmp` to disk and rename it over `final` (atomic on POSIX)."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=float))


def atomic_save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    import mlx.core as mx

    path = Path(path)
    # Dot-prefixed (mlx-lm's "model*.safetensors" glob never matches it) and ending in
    # .safetensors (mx.save_safetensors appends the suffix otherwise).
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.safetensors")
    try:
        mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
        fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None when it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON object of a JSONL file; a torn line (a killed writer) is skipped.
    A missing file reads as no rows."""
    rows = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
