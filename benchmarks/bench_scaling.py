"""Seconds per iteration of our trainer as completion length and batch grow: cost vs work.

    .venv/bin/python benchmarks/bench_scaling.py [--lengths 32 64 128 256 512] [--batches 1 2 4 8 16]

Runs the shipped step (`ppo.train.step.train_step`, set up as the training loop sets it up:
`benchmarks.common.step_rows`; rule judge, LoRA) on the tiny Qwen3 of the step benchmark
(hidden 256, 4 layers, vocab 4096, 4.2M parameters):
- completion length 32 -> 512 at batch 2 prompts (4 completions per step);
- batch 1 -> 16 prompts (2 -> 32 completions) at 32 tokens.
Every completion is forced to its full length: the step's `sample_fn` argument is the
shipped `sample_pairs` with a stop id equal to the vocabulary size, which can never be
sampled, so the work per iteration is exactly rows x length generated tokens. For each setting: median
seconds/iter after a warm-up, generated tokens/s, and seconds per 1000 generated tokens.
`cost_vs_work` is the log-log slope of seconds/iter against generated tokens between
consecutive settings (1.0 = cost grows exactly like the work, < 1 = slower than the work).
Prints one JSON object.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()


def main(argv=None) -> dict:
    from benchmarks.common import (BENCH_MODEL, BENCH_MODEL_NAME, QUIET_RUN, arguments, build_bench_model, emit, machine,
                                   median, step_rows, step_seconds)

    parser = arguments(__doc__)
    parser.add_argument("--lengths", type=int, nargs="*", default=[32, 64, 128, 256, 512])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    parser.add_argument("--iters", type=int, default=4, help="measured iterations per setting")
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    import logging

    from ppo.train.config import compose_train
    from ppo.train.rollout import sample_pairs

    logging.getLogger("ppo").setLevel(logging.ERROR)  # health warnings are expected on a forced length
    vocab = BENCH_MODEL["vocab"]

    def full_length(model, prompts, **kwargs):
        return sample_pairs(model, prompts, **{**kwargs, "eos_token_ids": [vocab]})  # never sampled: max_tokens each

    started = time.perf_counter()

    def run(model_dir: Path, tmp: Path, batch: int, length: int) -> dict:
        cfg = compose_train([f"model.path={model_dir}", f"train.batch_size={batch}",
                             f"generation.max_completion_length={length}", "judge=rule", *QUIET_RUN])
        rows = step_rows(cfg, tmp / f"b{batch}_l{length}", args.iters, args.warmup, sample_fn=full_length)
        phases = step_seconds(rows)
        s = phases["seconds_per_iter"]
        tokens = 2 * batch * median(rows, "completions/mean_length")
        return {
            "batch_prompts": batch, "completions": 2 * batch, "completion_tokens": length,
            "mean_completion_tokens": median(rows, "completions/mean_length"),
            "generated_tokens_per_iter": tokens,
            **phases,
            "rollout_tokens_per_second": median(rows, "tokens_per_second"),
            "iteration_tokens_per_second": tokens / s,
            "seconds_per_1k_generated_tokens": 1000 * s / tokens,
        }

    def slopes(series: list[dict]) -> list[float]:
        out = []
        for a, b in zip(series, series[1:]):
            out.append(math.log(b["seconds_per_iter"] / a["seconds_per_iter"])
                       / math.log(b["generated_tokens_per_iter"] / a["generated_tokens_per_iter"]))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_bench_model(tmp / "model")
        by_length = [run(model_dir, tmp, 2, n) for n in args.lengths]
        by_batch = [run(model_dir, tmp, b, 32) for b in args.batches]

    def summary(series):
        first, last = series[0], series[-1]
        return {
            "work_growth": last["generated_tokens_per_iter"] / first["generated_tokens_per_iter"],
            "cost_growth": last["seconds_per_iter"] / first["seconds_per_iter"],
            "cost_vs_work_slopes": slopes(series),
            "cost_grows_no_faster_than_work": last["seconds_per_iter"] / first["seconds_per_iter"]
            <= last["generated_tokens_per_iter"] / first["generated_tokens_per_iter"],
        }

    result = {
        "benchmark": "scaling",
        "model": BENCH_MODEL_NAME,
        **machine(),
        "judge": "rule",
        "forced_full_length": True,
        "iters_measured_per_setting": args.iters,
        "completion_length": {"settings": by_length, **summary(by_length)},
        "batch": {"settings": by_batch, **summary(by_batch)},
        "wall_seconds": time.perf_counter() - started,
    }
    return emit(result)


if __name__ == "__main__":
    main()
