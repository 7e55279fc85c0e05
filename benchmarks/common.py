"""What the benchmarks share: the benchmark model, the composed config, medians of a run.

The benchmark model is the foundation issue's setting (and MISSION.md's mlx-lm-lora
figure): a tiny Qwen3 from `ppo.demo.tiny` with hidden 256, 4 layers, 4 heads and a 4096-token
vocabulary, about 4.2M parameters, random weights, built fresh into a temp folder.
"""

from __future__ import annotations

import json
from pathlib import Path

BENCH_MODEL = {"hidden": 256, "layers": 4, "vocab": 4096, "heads": 4, "seed": 0}
BENCH_MODEL_NAME = "ppo.demo.tiny qwen3 hidden=256 layers=4 vocab=4096"

# Overrides that keep a timed run to its training steps: no eval, no checkpoint, no bar, no wandb.
QUIET_RUN = ["train.steps_per_eval=1000000", "train.save_every=1000000", "train.progress=false", "logger=none"]


def build_bench_model(path: Path, **changes) -> Path:
    from ppo.demo.tiny import build_tiny_model

    return build_tiny_model(Path(path), **{**BENCH_MODEL, **changes})


def metrics_rows(run_dir: Path, skip: int = 0) -> list[dict]:
    """metrics.jsonl of a run, without its first `skip` (warm-up) steps."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][skip:]


def median(rows: list[dict], key: str) -> float:
    import numpy as np

    return float(np.median([r[key] for r in rows])) if rows else float("nan")


def train_rows(model_dir: Path, run_dir: Path, iters: int, warmup: int, overrides: list[str] = ()) -> list[dict]:
    """Train `iters + warmup` steps on `model_dir` through the real trainer (in this
    process) and return the metrics rows after the warm-up."""
    from ppo.train.config import compose_train
    from ppo.train.loop import train

    cfg = compose_train([f"model.path={model_dir}", f"train.iters={iters + warmup}", *QUIET_RUN, *overrides])
    train(cfg, run_dir)
    return metrics_rows(run_dir, skip=warmup)


def step_seconds(rows: list[dict]) -> dict:
    """Median seconds per iteration and per phase, as the trainer times them."""
    out = {"seconds_per_iter": median(rows, "timing/step_seconds")}
    for phase in ("rollout", "judge", "score", "update"):
        out[f"{phase}_seconds"] = median(rows, f"timing/{phase}_seconds")
    return out


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `reps` calls, after `warmup` untimed calls."""
    import time

    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))
