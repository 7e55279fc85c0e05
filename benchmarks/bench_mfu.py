"""Model FLOPs utilization of one training step against the measured matmul peak of this process.

    .venv/bin/python benchmarks/bench_mfu.py [--batch-size 2 --max-tokens 32 --reps 10]

The step is the shipped scoring + update: `ppo.train.step.collect` (its scoring phase:
reference forward under `reference_model`) and `ppo.train.step.update` (`nn.value_and_grad`
of `make_loss_fn(cfg.loss)`, optimizer update), timed by those functions themselves, on the
tiny Qwen3 of the step benchmark (hidden 256, 4 layers, vocab 4096, 4.2M parameters),
default config (LoRA on all layers), a scoring batch of 2B = 4 rows of prompt + 32 tokens.
The rollout and the judge are replaced by arguments to `collect` (the same random
completions every time, the first of each pair preferred), so only scoring and update run.

Model FLOPs, counted over every position the forward processes (rows x (width - 1)):
  policy forward + backward: 6 * N * tokens  (the usual convention; with LoRA the weight
      gradients of the frozen base are not computed, so the work really done is nearer 4 * N * tokens,
      reported as `lora_adjusted`)
  reference forward:         2 * N * tokens
N counts all parameters (the tied embedding as the LM head). Attention score FLOPs are added
(4 * layers * width^2 * hidden per row for QK^T and AV, times 3 for forward + backward).
Peak: float32 `mx.matmul` of 1024 x 1024 by 1024 x 1024 (2 * 1024^3 FLOPs), median of
--reps, in this same process and BLAS. Prints one JSON object.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()


def matmul_peak(mx, n: int = 1024, reps: int = 10) -> float:
    from benchmarks.common import median_seconds

    a = mx.random.normal((n, n), dtype=mx.float32)
    b = mx.random.normal((n, n), dtype=mx.float32)
    mx.eval(a, b)
    return 2 * n**3 / median_seconds(lambda: mx.eval(a @ b), reps, warmup=3) / 1e9


def main(argv=None) -> dict:
    from benchmarks.common import (BENCH_MODEL_NAME, arguments, build_bench_model, emit, fixed_batch, machine,
                                   scoring_and_update_seconds)

    args = arguments(__doc__, batch_size=2, max_tokens=32, reps=10).parse_args(argv)

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    from ppo.train.config import compose_train
    from ppo.train.optimizer import make_optimizer
    from ppo.train.step import make_loss_fn

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        cfg = compose_train([f"model.path={model_dir}", "logger=none", "judge=rule"])
        fixed = fixed_batch(cfg, args.batch_size, args.max_tokens)
    policy = fixed.policy

    trainable = sum(v.size for _, v in tree_flatten(policy.trainable_parameters()))
    adapters = sum(v.size for k, v in tree_flatten(policy.parameters()) if ".lora_" in k or k.endswith((".lora_a", ".lora_b")))
    n_params = sum(v.size for _, v in tree_flatten(policy.parameters())) - adapters  # the base model's N
    margs = policy.args
    rows = 2 * args.batch_size
    width = max(len(p.tokens) for p in fixed.prompts) + args.max_tokens  # the scoring batch collect builds
    positions = rows * (width - 1)
    epochs = cfg.loss.ppo_epochs  # each epoch is one more forward + backward of the policy

    loss_and_grad = nn.value_and_grad(policy, make_loss_fn(cfg.loss))
    optimizer = make_optimizer(cfg.train, cfg.train.learning_rate)

    def step_seconds() -> float:
        return sum(scoring_and_update_seconds(fixed, optimizer, loss_and_grad))

    peak_before = matmul_peak(mx, reps=args.reps)
    for _ in range(3):
        step_seconds()
    step_s = float(np.median([step_seconds() for _ in range(args.reps)]))
    peak_after = matmul_peak(mx, reps=args.reps)
    peak = max(peak_before, peak_after)

    attn_fwd = 4 * margs.num_hidden_layers * width * width * margs.hidden_size * rows  # QK^T and AV, full square
    flops = epochs * (6 * n_params * positions + 3 * attn_fwd) + 2 * n_params * positions + attn_fwd
    flops_lora = epochs * (4 * n_params * positions + 3 * attn_fwd) + 2 * n_params * positions + attn_fwd
    achieved = flops / step_s / 1e9
    result = {
        "benchmark": "mfu_training_step",
        "model": BENCH_MODEL_NAME,
        **machine(),
        "model_parameters": n_params,
        "trainable_parameters": trainable,
        "adapter_parameters_not_counted": adapters,
        "finetune": cfg.finetune.type,
        "scoring_rows": rows,
        "scoring_width": width,
        "positions_processed": positions,
        "step_seconds": step_s,
        "step_model_gflop": flops / 1e9,
        "achieved_gflops": achieved,
        "matmul_peak_gflops_1024": peak,
        "matmul_peak_gflops_before_after": [peak_before, peak_after],
        "mfu": achieved / peak,
        "lora_adjusted": {"step_model_gflop": flops_lora / 1e9, "achieved_gflops": flops_lora / step_s / 1e9,
                          "mfu": flops_lora / step_s / 1e9 / peak},
    }
    return emit(result)


if __name__ == "__main__":
    main()
