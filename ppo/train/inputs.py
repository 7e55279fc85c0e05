"""The content of a run's inputs, recorded in every checkpoint and compared on resume.

The config fingerprint (`ppo.train.checkpoint.config_fingerprint`) holds the inputs' *names*
(`data.path`, `model.path`, ...); a file replaced under the same name between a kill and the
resume would go unnoticed: the resumed steps would train on other prompts under the same
prompt ids, or score against another reference. So every checkpoint also holds a digest of
each input's content (`TrainerState.inputs`), and a resume whose inputs differ stops with one
line naming the input and `train.resume_with_changed_inputs=true`, which accepts the change.

The inputs: `data.path` (a prompt file, a folder of them, or a hub dataset), `model.path`,
`model.reference_path`, `model.adapter_path` (the starting adapter) and an LLM judge's own
`judge.model` / `eval_judge.model`. A hub id is fingerprinted by the files of its snapshot in
the local Hugging Face cache (the snapshot mlx-lm or datasets loaded), each by the name of the
blob it links to, which names its content (no byte is read: a 10 GB data set costs nothing);
one not in the cache yet is not compared (the trainer checks again once it is loaded).

How a file is digested, and why:
- prompt files, data folders and adapter files: the sha256 of every byte. They are small to
  medium, the run reads every byte of them anyway, and an edit in place (a prompt reworded
  with the size unchanged) must be seen;
- a model's files: every byte up to FULL_HASH_BYTES (config, tokenizer, small weights); a
  bigger weight file by its size and the sha256 of SAMPLES blocks spread over it (first and
  last MiB included; about 6 MiB read per file). Weights are replaced whole (another
  checkpoint, revision or quantization), which changes the safetensors header in the first
  MiB and the tensors everywhere, while hashing a 16 GB model in full would add tens of
  seconds to every start and resume.
- the modification time is not used: a copy (`cp`, `rsync` without -t) or a re-download of
  the same revision changes it without changing a byte, and a refusal of unchanged inputs
  would teach users to always accept changes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
from pathlib import Path

from ppo.io import ADAPTER_CONFIG_FILE, ADAPTER_FILE

log = logging.getLogger(__name__)

# The setting that accepts changed inputs deliberately (ppo.train.config.TrainConfig).
ACCEPT_SETTING = "train.resume_with_changed_inputs"
FULL_HASH_BYTES = 64 << 20
SAMPLE_BYTES = 64 << 10
SAMPLES = 32
EDGE_BYTES = 1 << 20
# The files of a model folder that mlx-lm reads (a marker or README beside them is not an input).
MODEL_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json", "tokenizer*",
               "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "chat_template*", "*.model",
               "*.tiktoken", "*.py")


def _full_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _sampled_digest(path: Path, size: int) -> str:
    """sha256 over the size, the first and last MiB and SAMPLES blocks spread evenly between."""
    digest = hashlib.sha256(str(size).encode())
    spots = [(0, EDGE_BYTES)] + [(size * i // (SAMPLES + 1), SAMPLE_BYTES) for i in range(1, SAMPLES + 1)]
    spots.append((max(size - EDGE_BYTES, 0), EDGE_BYTES))
    with open(path, "rb") as f:
        for offset, length in spots:
            f.seek(offset)
            digest.update(f.read(length))
    return f"size={size},sampled-sha256:{digest.hexdigest()}"


def file_digest(path: Path, sampled: bool = False) -> str:
    """The digest of one file (see the module docstring); `sampled`: a model file."""
    size = os.path.getsize(path)
    return _sampled_digest(path, size) if sampled and size > FULL_HASH_BYTES else _full_digest(path)


def _files(folder: Path, patterns: tuple[str, ...] | None) -> list[Path]:
    """Files of `folder` (recursively, hidden entries left out; with `patterns` only its top-level
    files matching them), following symlinks as a hub snapshot's files are."""
    if patterns is not None:
        return sorted(p for p in folder.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, x) for x in patterns))
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root) / f for f in files if not f.startswith(".")]
    return sorted(found)


def _hub_snapshot(repo_id: str, repo_type: str) -> Path | None:
    """The local Hugging Face cache's snapshot of `repo_id`, or None when it holds none."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, repo_type=repo_type, local_files_only=True))
    except Exception:  # not cached (LocalEntryNotFoundError), an invalid id, no huggingface_hub
        return None


def _looks_local(path: str) -> bool:
    return path.startswith((".", "/", "~")) or Path(path).expanduser().exists() or path.count("/") != 1


def digest_input(kind: str, path: str) -> dict | None:
    """{file relative to the input: digest} of one input (`kind`: data, model or adapter),
    or None when it cannot be read here (a hub id not in the cache, a missing path)."""
    local = Path(path).expanduser()
    hub = not _looks_local(path)
    if hub:
        local = _hub_snapshot(path, "dataset" if kind == "data" else "model")
        if local is None:
            return None
    try:
        if local.is_file():
            return {local.name: file_digest(local)}
        if not local.is_dir():
            return None
        patterns = {"model": MODEL_FILES, "adapter": (ADAPTER_FILE, ADAPTER_CONFIG_FILE)}.get(kind)
        digest = _blob_name if hub else (lambda p: file_digest(p, sampled=kind == "model"))
        return {str(p.relative_to(local)): digest(p) for p in _files(local, patterns)}
    except OSError:
        return None  # unreadable: the loader reports it with its own line


def _blob_name(path: Path) -> str:
    """A hub snapshot's file is a link to blobs/ETAG, the ETAG naming its content (the sha256 of
    an LFS file, the git blob id of a small one): its content's name, read without reading it."""
    if path.is_symlink() and Path(os.readlink(path)).parent.name == "blobs":
        return f"blob:{Path(os.readlink(path)).name}"
    return file_digest(path, sampled=True)


def _judge_model(node) -> str | None:
    """An LLM judge's own model (a hub id or folder), else None."""
    if node is None:
        return None
    target = str(node.get("_target_", ""))
    model = node.get("model")
    return model if target.endswith("LLMJudge") and isinstance(model, str) and model else None


def named_inputs(cfg) -> dict[str, tuple[str, str]]:
    """Setting -> (kind, path) of every input the config names."""
    named = {"data.path": ("data", cfg.data.path), "model.path": ("model", cfg.model.path)}
    if cfg.model.reference_path:
        named["model.reference_path"] = ("model", cfg.model.reference_path)
    if getattr(cfg.model, "adapter_path", ""):
        named["model.adapter_path"] = ("adapter", cfg.model.adapter_path)
    for key in ("judge", "eval_judge"):
        model = _judge_model(cfg.get(key))
        if model is not None:
            named[f"{key}.model"] = ("model", model)
    return named


def input_fingerprint(cfg) -> dict:
    """Setting -> {file: digest} (None where it cannot be read here) of every input of `cfg`."""
    return {key: digest_input(kind, path) for key, (kind, path) in named_inputs(cfg).items()}


def first_change(saved: dict, current: dict) -> tuple[str, str] | None:
    """(setting, what changed) of the first input whose content differs, else None. An input
    either side could not read, or that only one side has (the config fingerprint reports a
    setting that changed), is not compared."""
    for key in sorted(set(saved) & set(current)):
        before, now = saved[key], current[key]
        if before is None or now is None or before == now:
            continue
        for name in sorted(set(before) | set(now)):
            if name not in now:
                return key, f"{name} is gone"
            if name not in before:
                return key, f"{name} was added"
            if before[name] != now[name]:
                return key, f"{name} has other content"
    return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """The run folder's check and the trainer's (after loading) compare the same inputs: one warning."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def check_unchanged(saved: dict | None, current: dict, checkpoint_path: Path, accept: bool) -> None:
    """Refuse (CheckpointError, one line) a resume from `checkpoint_path` whose inputs' content
    differs from what the checkpoint recorded, unless `accept` (train.resume_with_changed_inputs)."""
    from ppo.errors import CheckpointError

    checkpoint_path = Path(checkpoint_path)
    if not saved:
        _warn_once(f"checkpoint {checkpoint_path} records no digest of its inputs (saved by an older version); "
                   "the prompts and weights are not compared with it")
        return
    change = first_change(saved, current)
    if change is None:
        return
    key, what = change
    if accept:
        _warn_once(f"{key} changed since checkpoint {checkpoint_path} was saved ({what}); continuing on the new "
                   f"content ({ACCEPT_SETTING}=true)")
        return
    raise CheckpointError(
        f"{key} changed since checkpoint {checkpoint_path} was saved ({what}): the resumed steps would train on other "
        f"inputs than the steps before; put the original back, start fresh with a new hydra.run.dir or "
        f"train.resume=never, or set {ACCEPT_SETTING}=true to continue on the new content deliberately")
