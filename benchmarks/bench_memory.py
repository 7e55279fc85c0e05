"""Peak memory of a LoRA run: reference shared with the policy vs a second-copy reference.

    .venv/bin/python benchmarks/bench_memory.py [--hidden 640 --layers 8 --vocab 32000]

Builds a tiny-architecture Qwen3 of at least 50M parameters, then runs the real trainer
twice in fresh processes (same settings; `model.reference_path` empty vs the same model
loaded again) and compares MLX's peak memory (`mx.get_peak_memory`, logged as
memory/peak_gb). Prints one JSON object with the ratio.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import QUIET_RUN, arguments, emit, parameters, run_ppo_train  # noqa: E402


def run(model_dir: Path, data: Path, run_dir: Path, reference_path: str, iters: int) -> dict:
    rows = run_ppo_train([f"model.path={model_dir}", f"data.path={data}", f"model.reference_path={reference_path}",
                          f"train.iters={iters}", "train.batch_size=2", "generation.max_completion_length=16",
                          *QUIET_RUN], run_dir)
    return {"peak_gb": max(r["memory/peak_gb"] for r in rows), "seconds_per_iter": rows[-1]["timing/step_seconds"]}


def main() -> None:
    parser = arguments(__doc__, hidden=640, layers=8, vocab=32000, iters=3)
    args = parser.parse_args()

    from ppo.platform.blas import ensure_fast_blas

    ensure_fast_blas()
    from ppo.demo.tiny import build_tiny_model
    from ppo.resources import asset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_tiny_model(tmp / "model", hidden=args.hidden, layers=args.layers, vocab=args.vocab, heads=8)
        n_params = parameters(model_dir)
        data = asset("demo_prompts.jsonl")
        shared = run(model_dir, data, tmp / "shared", "", args.iters)
        copy = run(model_dir, data, tmp / "copy", str(model_dir), args.iters)
    emit({
        "benchmark": "reference_memory",
        "model_parameters": n_params,
        "weights_gb": n_params * 4 / 1e9,
        "shared_reference_peak_gb": shared["peak_gb"],
        "second_copy_reference_peak_gb": copy["peak_gb"],
        "ratio": shared["peak_gb"] / copy["peak_gb"],
        "target_ratio_at_most": 0.6,
    })


if __name__ == "__main__":
    main()
