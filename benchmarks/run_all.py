"""Run every benchmark, one after the other, and write one combined JSON.

    .venv/bin/python benchmarks/run_all.py [--only step generation ...] [--out benchmarks/results/latest.json]

Each benchmark runs in its own process (quietly, one at a time: run nothing else heavy
meanwhile on a small machine) and prints one JSON object; the combined object is printed
and written to benchmarks/results/<UTC timestamp>.json and benchmarks/results/latest.json
(or --out). A benchmark that fails is recorded with its error tail; the others still run.
The mlx-lm-lora comparison needs its own venv (see bench_vs_mlx_lm_lora.py):
    python -m venv /tmp/lora-venv && /tmp/lora-venv/bin/pip install mlx-lm-lora==5.10.2 'mlx[cpu]'
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

BENCHMARKS = {
    "step": ["bench_step.py"],
    "vs_mlx_lm_lora": ["bench_vs_mlx_lm_lora.py"],
    # The anchor judges one pair at a time, so the ratio depends on the batch: also batch 8.
    "vs_mlx_lm_lora_batch8": ["bench_vs_mlx_lm_lora.py", "--batch-size", "8", "--iters", "10", "--warmup", "2"],
    "generation": ["bench_generation.py"],
    "mfu": ["bench_mfu.py"],
    "scaling": ["bench_scaling.py"],
    "judge": ["bench_judge.py"],
    "memory": ["bench_memory.py"],
    "elementwise": ["bench_elementwise.py"],
    "fast_activations": ["bench_fast_activations.py"],
    "distributed": ["bench_distributed.py"],
    # A step's collectives on one machine: through the rendezvous against MLX's ring, 2 and 4 ranks.
    "collectives": ["bench_collectives.py"],
    # The step against mlx-lm-lora at the toy and ~80M rungs, each phase against this machine's floor.
    "ladder": ["bench_ladder.py"],
    # mx.compile against eager for decode, scoring and the update (toy and SmolLM2's shape).
    "compile": ["bench_compile.py"],
    # Scoring and update at SmolLM2's shape: the layers below the adapters run once vs by every forward.
    "scoring": ["bench_scoring.py", "--random-weights"],
}


def last_json_object(text: str) -> dict:
    """The JSON object a benchmark printed (the last top-level '{' ... '}' block of stdout)."""
    lines = text.splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].startswith("{"):
            try:
                return json.loads("\n".join(lines[start:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object in the output")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    names = args.only or list(BENCHMARKS)
    started = dt.datetime.now(dt.timezone.utc)
    combined = {
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "results": {},
    }
    for name in names:
        script = HERE / BENCHMARKS[name][0]
        tic = time.perf_counter()
        print(f"[run_all] {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(script), *BENCHMARKS[name][1:]], cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - tic
        try:
            if proc.returncode != 0:
                raise RuntimeError(f"exit {proc.returncode}")
            result = last_json_object(proc.stdout)
        except Exception as err:  # noqa: BLE001 - record and go on
            result = {"error": f"{err}: {(proc.stderr or proc.stdout)[-2000:]}"}
        result["bench_wall_seconds"] = round(seconds, 1)
        combined["results"][name] = result
        print(f"[run_all] {name} done in {seconds:.0f}s", file=sys.stderr, flush=True)

    try:
        import mlx.core as mx

        combined["machine"]["mlx"] = mx.__version__
    except Exception:  # noqa: BLE001
        pass
    combined["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps(combined, indent=2)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    outs = [args.out] if args.out else [results / f"{started:%Y%m%dT%H%M%SZ}.json", results / "latest.json"]
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
    print(f"[run_all] wrote {', '.join(str(o) for o in outs)}", file=sys.stderr)


if __name__ == "__main__":
    main()
