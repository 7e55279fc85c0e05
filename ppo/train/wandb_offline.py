"""The offline logs of a W&B run (RUN_DIR/wandb/offline-run-*/run-ID.wandb): which steps an
earlier attempt of a resumed run holds, read by wandb's own reader, and setting an attempt that a
resume replaces aside, kept whole, where `wandb sync` does not upload it (ppo.train.tracking)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def wandb_cli() -> list[str]:
    """The wandb command of this Python (its console script, else `python -m wandb`)."""
    import sys

    script = Path(sys.executable).parent / "wandb"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wandb"]


def logged_steps(log_file: Path) -> set[int]:
    """The `step` of every metrics row in an offline W&B log (run-ID.wandb), read by wandb's own
    reader (`wandb leet inspect --json`: one JSON record per line; this wandb has no Python reader
    of the format). A log a SIGKILL left torn or empty holds the rows before the tear, or none."""
    import subprocess

    try:
        out = subprocess.run([*wandb_cli(), "leet", "inspect", "--json", str(log_file)],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return set()
    steps = set()
    for line in out.stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("type") != "history":
            continue
        item = (record.get("history") or {}).get("item") or {}
        # A metrics row, not the `samples` table's own row at the same step.
        if isinstance(item.get("step"), (int, float)) and any(not k.startswith(("_", "samples", "step")) for k in item):
            steps.add(int(item["step"]))
    return steps


# Where a resumed run's earlier offline attempts are kept (RUN_DIR/wandb/superseded/offline-run-*):
# `wandb sync` uploads the runs in a wandb folder (wandb/*/*.wandb) or a run folder given
# (wandb/offline-run-*/*.wandb), never a level deeper, so these are kept but not uploaded.
SUPERSEDED_DIR = "superseded"


def supersede(folder: Path) -> Path:
    """Moves an earlier attempt's offline folder into wandb/superseded/ (kept whole); returns where."""
    target = folder.parent / SUPERSEDED_DIR / folder.name
    target.parent.mkdir(exist_ok=True)
    os.replace(folder, target)  # the same file system: a rename, never a half-moved folder
    return target
