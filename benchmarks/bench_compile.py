"""Compiled against eager: the decode loop, scoring and the update's loss-and-gradient.

    .venv/bin/python benchmarks/bench_compile.py [--sizes toy smollm2] [--reps N] [--out FILE]

For each size, one process measures, on the same LoRA policy (the default finetune group,
adapters moved off zero) and the same rows, the eager path the trainer runs with the
train.compile_* settings off against `ppo.train.compiled`'s:

- decode: `ppo.train.rollout.sample` of 2 x batch chat-templated demo prompts, `--tokens`
  steps each (a stop id outside the vocabulary, so no row ends early), eager mlx-lm caches vs
  `CompiledDecodeStep`; the same seed, so the tokens must be equal (`same_tokens`);
- scoring: the reference's per-token log-probs of those rows (the policy with adapters off,
  as `collect` scores them), `token_logps` vs `CompiledScorer`;
- update: loss and gradient of the default loss (seed form, ppo_clip) on the rows as pairs,
  `nn.value_and_grad` vs `CompiledLossAndGrad`, evaluated.

Each phase's variants take turns within each repetition (a change of load hits both alike);
the first round is timed apart: it holds the compiles (`first_call_seconds`). Reported:
median seconds, eager / compiled (`speedup`, > 1: compiling is faster), the number of graphs
traced, and the largest relative difference of the compiled log-probs and gradients, against
the eager path (compiling and the length padding together) and against the eager path on the
same padded batch (compiling alone: 0 when the compiled graph rounds as the eager one).

Sizes: toy, the benchmark model (`benchmarks.common.BENCH_MODEL`, 4.2M); smollm2, random
weights of SmolLM2-135M-Instruct's exact shape (`benchmarks.smollm2.build_random_llama`: 30
layers of width 576, 9 heads / 3 KV heads, MLP 1536, vocabulary 49,152, float32).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMPILE_BUCKET = 32  # ppo.train.compiled.COMPILE_BUCKET (not imported here: mlx loads after the BLAS choice)

# (prompts per batch, decode steps) per size: the ladder's smollm2 rung is batch 8, 64 tokens.
SIZES = {"toy": (8, 64), "smollm2": (8, 64)}


def build_model(size: str, folder: Path) -> Path:
    from benchmarks import smollm2
    from benchmarks.common import build_bench_model

    return build_bench_model(folder) if size == "toy" else smollm2.build_random_llama(folder)


def timed_rounds(variants: dict, reps: int) -> tuple[dict, dict, dict]:
    """(first call seconds, median seconds of the `reps` later calls, last result) per variant,
    the variants taking turns within each round."""
    import numpy as np

    first, times, results = {}, {k: [] for k in variants}, {}
    for rep in range(reps + 1):
        for key, fn in variants.items():
            tic = time.perf_counter()
            results[key] = fn()
            seconds = time.perf_counter() - tic
            if rep == 0:
                first[key] = seconds
            else:
                times[key].append(seconds)
    return first, {k: float(np.median(v)) for k, v in times.items()}, results


def max_relative_difference(got, want) -> float:
    import numpy as np

    got, want = np.array(got, dtype=np.float64), np.array(want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def phase_result(first: dict, median: dict, compiles: int, **extra) -> dict:
    return {"eager_seconds": median["eager"], "compiled_seconds": median["compiled"],
            "speedup": median["eager"] / median["compiled"],
            "first_call_seconds": first, "compiles": compiles, **extra}


def progress(message: str) -> None:
    print(f"bench_compile: {message}", file=sys.stderr, flush=True)


def run_size(size: str, reps: int, tmp: Path, batch: int | None = None, tokens: int | None = None,
             bucket: int = COMPILE_BUCKET) -> dict:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm import load

    from benchmarks.bench_ladder import demo_prompt_ids
    from ppo.train.compiled import CompiledDecodeStep, CompiledLossAndGrad, CompiledScorer, pad_scoring_batch
    from ppo.train.config import compose_train
    from ppo.train.models import add_adapters, adapters_disabled
    from ppo.train.rollout import sample
    from ppo.train.scoring import build_scoring_batch, token_logps
    from ppo.train.step import JudgedBatch, make_loss_fn

    batch, tokens = batch or SIZES[size][0], tokens or SIZES[size][1]
    tic = time.perf_counter()
    model_dir = build_model(size, tmp / size)
    build_seconds = time.perf_counter() - tic
    cfg = compose_train([f"model.path={model_dir}", "logger=none"])
    policy, tokenizer = load(str(model_dir))
    add_adapters(policy, cfg.finetune)
    # adapters a little off zero, so the ratios are near 1 as in training (not all clipped)
    policy.update(tree_map(lambda p: p + 1e-3, policy.trainable_parameters()))
    policy.eval()
    prompts = demo_prompt_ids(tokenizer)[:batch] * 2
    vocab = policy.args.vocab_size
    out = {"model": {"size": size, "layers": policy.args.num_hidden_layers, "hidden": policy.args.hidden_size,
                     "vocab": vocab, "build_seconds": build_seconds},
           "rows": len(prompts), "decode_steps": tokens, "reps": reps, "bucket": bucket}

    # decode
    decode_step = CompiledDecodeStep(bucket)
    kwargs = dict(eos_token_ids=[vocab], max_tokens=tokens, temperature=0.8)

    def decode(compiled: bool):
        def run():
            mx.random.seed(0)
            return sample(policy, prompts, decode_step=decode_step if compiled else None, **kwargs).token_ids
        return run

    progress(f"{size}: decode")
    first, median, results = timed_rounds({"eager": decode(False), "compiled": decode(True)}, reps)
    out["decode"] = phase_result(first, median, decode_step.compiles,
                                 ms_per_step={k: 1000 * v / tokens for k, v in median.items()},
                                 same_tokens=results["eager"] == results["compiled"])
    completions = results["eager"]

    # scoring: the reference's log-probs, as collect scores them
    scoring_batch = build_scoring_batch(prompts, completions, tokenizer.pad_token_id or 0)
    scorer = CompiledScorer(bucket)

    def score(fn):
        def run():
            with adapters_disabled(policy):
                logps = fn(policy, scoring_batch)
                mx.eval(logps)
            return logps
        return run

    progress(f"{size}: scoring")
    first, median, results = timed_rounds({"eager": score(token_logps), "compiled": score(scorer)}, reps)
    padded = pad_scoring_batch(scoring_batch, bucket)
    with adapters_disabled(policy):
        eager_padded = token_logps(policy, padded)[:, :scoring_batch.input_ids.shape[1]]
    # vs eager: compiling plus the padding to length buckets; vs eager_padded: compiling alone
    out["scoring"] = phase_result(
        first, median, scorer.compiles,
        max_relative_difference=max_relative_difference(results["compiled"], results["eager"]),
        max_relative_difference_vs_eager_padded=max_relative_difference(results["compiled"], eager_padded))
    ref = results["eager"]

    # update: loss and gradient of the default loss on the rows as pairs
    n = len(prompts) // 2
    judged = JudgedBatch(batch=scoring_batch, chosen=mx.arange(n), rejected=mx.arange(n) + n,
                         advantages=mx.linspace(0.2, 1.0, n), ref_token_logps=ref, old_logps=None)
    loss_fn = make_loss_fn(cfg.loss)
    compiled_loss = CompiledLossAndGrad(policy, loss_fn, bucket)
    eager_loss = nn.value_and_grad(policy, loss_fn)

    def update(fn):
        def run():
            (loss, (metrics, _)), grads = fn(policy, judged)
            mx.eval(loss, metrics, grads)
            return loss, grads
        return run

    progress(f"{size}: update")
    policy.train()
    first, median, results = timed_rounds({"eager": update(eager_loss), "compiled": update(compiled_loss)}, reps)
    width = padded.input_ids.shape[1]
    judged_padded = JudgedBatch(batch=padded, chosen=judged.chosen, rejected=judged.rejected,
                                advantages=judged.advantages, old_logps=None,
                                ref_token_logps=mx.pad(ref, [(0, 0), (0, width - ref.shape[1])]))
    (padded_loss, _), padded_grads = eager_loss(policy, judged_padded)
    policy.eval()
    want, got = dict(tree_flatten(results["eager"][1])), dict(tree_flatten(results["compiled"][1]))
    want_padded = dict(tree_flatten(padded_grads))
    # Per tensor, max |difference| / max |eager|: tensors whose gradient nearly cancels (the adapters' A
    # matrices while B is near zero) show the padding's rounding the most.
    out["update"] = phase_result(
        first, median, compiled_loss.compiles,
        max_relative_difference_loss=max_relative_difference(results["compiled"][0], results["eager"][0]),
        max_relative_difference_gradients=max(max_relative_difference(got[k], want[k]) for k in want),
        max_relative_difference_gradients_vs_eager_padded=max(
            max_relative_difference(got[k], want_padded[k]) for k in want),
        max_relative_difference_loss_vs_eager_padded=max_relative_difference(results["compiled"][0], padded_loss))
    out["loadavg_after"] = list(os.getloadavg())
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["toy", "smollm2"])
    parser.add_argument("--reps", type=int, default=3, help="timed calls per variant after the first")
    parser.add_argument("--batch", type=int, default=None, help="prompts (2 rows each); default: per size (8)")
    parser.add_argument("--tokens", type=int, default=None, help="decode steps; default: per size (64)")
    parser.add_argument("--bucket", type=int, default=COMPILE_BUCKET,
                        help="pad lengths to multiples of this (1: no padding, one compile per length)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)

    from ppo.platform.blas import ensure_fast_blas

    ensure_fast_blas()
    import mlx.core as mx

    result = {"benchmark": "bench_compile", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "mlx": mx.__version__, "device": str(mx.default_device()), "cpus": os.cpu_count(), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            result["sizes"][size] = run_size(size, args.reps, Path(tmp), args.batch, args.tokens, args.bucket)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
