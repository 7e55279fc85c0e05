"""One run on 1, 2 and 4 MLX processes (mlx.launch, ring backend on loopback): steps per second
and the share of each step spent waiting at collectives, at the same global batch.

    .venv/bin/python benchmarks/bench_distributed.py [--iters 12] [--warmup 3] [--procs 1 2 4]

The demo configuration (`experiment=demo`: the demo model, batch 16, 48-token completions,
the rule judge, textbook PPO form), without evaluation or checkpoints, launched exactly as a
user would (`ppo-launch -n N --backend ring ...`, which runs `mlx.launch` on free ports; N=1 is a
plain `ppo-train`). Each rank runs its share of the machine's cores as BLAS threads
(ppo/platform/cores.py): cores // local ranks, recorded as `blas_threads_per_rank`.
Seconds per step are the trainer's own `timing/step_seconds` (the slowest rank's), median
over the steps after the warm-up. Prints one JSON object.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUIET_RUN, arguments, emit, run_ppo_train  # noqa: E402
from ppo.platform.cores import rank_threads, user_blas_threads  # noqa: E402


def run(procs: int, iters: int, warmup: int, run_dir: Path) -> dict:
    rows = run_ppo_train(["experiment=demo", f"train.iters={iters + warmup}", *QUIET_RUN, "train.eval_at_start=false"],
                         run_dir, skip=warmup, processes=procs, env={**os.environ, "WANDB_SILENT": "true"})
    step = float(np.median([r["timing/step_seconds"] for r in rows]))
    waited = [r.get("timing/collective_seconds", 0.0) / r["timing/step_seconds"] for r in rows]
    threads = user_blas_threads() or (rank_threads(procs) if procs > 1 else os.cpu_count())
    return {"processes": procs, "blas_threads_per_rank": int(threads),
            "seconds_per_step": step, "steps_per_second": 1.0 / step,
            "collective_share": float(np.median(waited)), "steps_measured": len(rows)}


def main() -> None:
    parser = arguments(__doc__, iters=12, warmup=3)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(n, args.iters, args.warmup, Path(tmp) / f"n{n}") for n in args.procs]
    base = next((r for r in results if r["processes"] == 1), None)
    for r in results:
        r["speedup_vs_1"] = base["seconds_per_step"] / r["seconds_per_step"] if base else None
    emit({
        "benchmark": "distributed",
        "setting": "experiment=demo (batch 16, 48 tokens, rule judge), ring backend on loopback",
        "cpu_count": os.cpu_count(),
        "runs": results,
        "target": "2 processes >= 0.95x the steps per second of 1 on the 2-core CPU, 4 no worse than 2 (issue 26)",
    })


if __name__ == "__main__":
    main()
