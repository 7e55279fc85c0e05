"""Saving what a run produces, atomically: a temporary file, then a rename.

A file is either the previous complete version or the new complete version, never a
half-written one, whatever kills the process.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlx.core as mx

from ppo.models import ADAPTER_CONFIG, ADAPTER_FILE, adapter_config, adapter_weights


def _replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    _replace(tmp, path)


def atomic_save_safetensors(path: Path, arrays: dict, metadata: dict | None = None) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.safetensors")  # mx appends .safetensors otherwise
    mx.save_safetensors(str(tmp), arrays, metadata=metadata or {})
    _replace(tmp, path)


def save_adapters(out_dir: Path, model, cfg) -> None:
    """adapters.safetensors + adapter_config.json, as `mlx_lm.load(..., adapter_path=)` reads them."""
    import json

    out_dir = Path(out_dir)
    atomic_save_safetensors(out_dir / ADAPTER_FILE, adapter_weights(model))
    atomic_write_text(out_dir / ADAPTER_CONFIG, json.dumps(adapter_config(cfg.model, cfg.finetune), indent=2))
