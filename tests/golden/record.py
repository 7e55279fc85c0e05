"""Record the golden runs that tests/test_golden_run.py compares against.

    .venv/bin/python tests/golden/record.py      (re-record only when behaviour is meant to change)

Each golden run is a short training of a tiny model built by ``ppo.demo.tiny`` (byte-identical
for a seed) on prompts from ``ppo``'s grammar corpus, with the rule judge and a fixed seed.
What is kept: every ``metrics.jsonl`` row without the machine readings, and the adapters
(file and sha256). Recorded on 2026-11-30 before the package-and-layout move (issue 11),
so the test proves the move changed no behaviour.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Readings of the machine, not of the run: they vary between identical runs.
MEASUREMENTS = ("timing/", "tokens_per_second", "memory/", "judge/seconds")

COMMON = [
    "judge=rule", "train.iters=4", "train.batch_size=2", "generation.max_completion_length=12",
    "train.steps_per_eval=2", "train.save_every=2", "train.progress=false", "data.max_eval_prompts=4",
    "logger=none", "seed=3",
]
GOLDEN_RUNS = {
    "seed_form": COMMON,
    "textbook_form": COMMON + ["ppo_form=textbook", "train.learning_rate=3e-4"],
}


def build_inputs(root: Path) -> tuple[Path, Path]:
    """The tiny model and prompts file every golden run uses (deterministic)."""
    try:
        from ppo.demo.corpus import prompts as corpus_prompts
        from ppo.demo.tiny import build_tiny_model
    except ImportError:  # before the layout move
        from ppo.demo.corpus import prompts as corpus_prompts
        from ppo.demo.tiny import build_tiny_model

    model = build_tiny_model(root / "tiny", hidden=64, layers=2, vocab=512, seed=0)
    prompts = root / "prompts.jsonl"
    rows = list(dict.fromkeys(corpus_prompts(200, seed=7)))[:40]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in rows))
    return model, prompts


def comparable_rows(metrics_file: Path) -> list[dict]:
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(MEASUREMENTS)} for r in rows]


def train_command() -> list[str]:
    """ppo-train as installed beside this interpreter (the console script survives the move)."""
    return [str(Path(sys.executable).with_name("ppo-train"))]


def run_golden(name: str, model: Path, prompts: Path, run_dir: Path) -> subprocess.CompletedProcess:
    overrides = GOLDEN_RUNS[name] + [f"model.path={model}", f"data.path={prompts}", f"hydra.run.dir={run_dir}"]
    return subprocess.run(train_command() + overrides, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "WANDB_SILENT": "true"})


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, prompts = build_inputs(root)
        for name in GOLDEN_RUNS:
            run_dir = root / name
            result = run_golden(name, model, prompts, run_dir)
            if result.returncode != 0:
                sys.exit(result.stderr[-3000:])
            out = HERE / name
            out.mkdir(exist_ok=True)
            shutil.copy(run_dir / "adapters.safetensors", out / "adapters.safetensors")
            record = {
                "overrides": GOLDEN_RUNS[name],
                "machine": platform.machine(),
                "adapters_sha256": hashlib.sha256((run_dir / "adapters.safetensors").read_bytes()).hexdigest(),
                "metrics": comparable_rows(run_dir / "metrics.jsonl"),
            }
            (out / "golden.json").write_text(json.dumps(record, indent=1) + "\n")
            print(f"{name}: {len(record['metrics'])} rows, adapters {record['adapters_sha256'][:12]}")


if __name__ == "__main__":
    main()
