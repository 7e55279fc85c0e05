"""Seconds per PPO iteration, split into rollout, judge and scoring+update.

Setting of the foundation issue (and of the earlier mlx-lm-lora figure, 0.51 s/iter):
a tiny Qwen3 with hidden 256, 4 layers, vocab 4096 (about 4.2M parameters), batch of 2
prompts (4 completions), 32-token completions, the rule judge.

    .venv/bin/python benchmarks/bench_step.py [--iters 30] [--warmup 5]

Prints one JSON object. Runs through the real trainer (`ppo.train.loop.train`) and reads
the per-step timings it writes to metrics.jsonl.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()


def main() -> None:
    from benchmarks.common import arguments, build_bench_model, emit, median, parameters, step_seconds, train_rows
    from ppo.platform.blas import blas_in_use

    parser = arguments(__doc__, iters=30, warmup=5, batch_size=2, max_tokens=32)
    parser.add_argument("--judge", choices=["rule", "llm"], default="rule",
                        help="llm: the same tiny model judges (judge.model = model.path)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        n_params = parameters(model_dir)
        overrides = [f"train.batch_size={args.batch_size}", f"generation.max_completion_length={args.max_tokens}"]
        overrides += ["judge=llm", f"judge.model={model_dir}"] if args.judge == "llm" else ["judge=rule"]
        rows = train_rows(model_dir, Path(tmp) / "run", args.iters, args.warmup, overrides)
    phases = step_seconds(rows)

    emit({
        "benchmark": "ppo_step",
        "model_parameters": n_params,
        "batch_prompts": args.batch_size,
        "completion_tokens_max": args.max_tokens,
        "iters_measured": len(rows),
        **phases,
        "scoring_update_seconds": phases["seconds_per_iter"] - phases["rollout_seconds"] - phases["judge_seconds"],
        "judge": args.judge,
        "target_seconds_per_iter_rule_judge": 0.25,
        "generated_tokens_per_second": median(rows, "tokens_per_second"),
        "mean_completion_tokens": median(rows, "completions/mean_length"),
        "mlx_lm_lora_reference_seconds_per_iter": 0.51,
        "blas": blas_in_use(),
    })


if __name__ == "__main__":
    main()
