"""Where a PPO iteration's time goes, and what candidate speedups measure.

    .venv/bin/python benchmarks/profile_step.py [--iters 30 --warmup 5] [--variants baseline blas1 ...]

Each variant runs in its own process on the step benchmark's setting (tiny Qwen3 hidden 256,
4 layers, vocab 4096; batch 2; 32 tokens; rule judge unless the variant says llm): the shipped
step, `ppo.train.step.train_step`, set up as the training loop sets it up
(`benchmarks.common.step_rows`), and reports median seconds/iter with the step's own split.
A candidate fix is an environment variable of that process or an argument of `train_step`
(`sample_fn`, `token_logps_fn`); ppo/ is never patched:

- baseline            as shipped
- blas1               OPENBLAS_NUM_THREADS=1 (tiny matmuls: threading overhead vs 2 threads)
- blas_spin_default   OPENBLAS_THREAD_TIMEOUT=28, OpenBLAS's own default (idle threads spin)
- head_on_completion  token_logps_fn: scoring runs the LM head only from the first completion
                      position on (reference forward and the loss)
- fused_lora_rollout  sample_fn: the rollout samples from a copy of the policy with its LoRA
                      adapters folded into the base weights (`LoRALinear.fuse()`, ~4 ms per
                      step), so each decode step runs plain Linear layers: fewer ops per token
- all                 blas1 + head_on_completion + fused_lora_rollout
- llm / llm_all       the same with judge=llm (the same tiny model as judge)
- llm_all_order_fixed llm_all with judge.order=fixed (each pair shown once instead of in both orders;
                      a config option, but it gives up the position-bias removal)
- cprofile            baseline under cProfile: top functions by cumulative and own time
- isolated            microbenchmarks: one decode step of the bare model vs the rollout's
                      per-token time, and the shipped scoring + update (`collect`, `update` on a
                      fixed batch) eager vs with `mx.compile`d scorer and value_and_grad passed in
- streams             a forward / value_and_grad split over two MLX CPU streams vs one
- decode              the rollout at a model-size rung of bench_ladder.py (--rung, default 80m;
                      batch 8 prompts = 16 rows, --max-tokens 64, EOS impossible): the shipped
                      `ppo.train.rollout.sample` on the LoRA policy and on a LoRA-folded copy,
                      a bare decode loop (model, logsumexp, mlx-lm's sampler), the parts of one
                      decode step evaluated one by one, and the step's floor (weights streamed
                      once at this process's measured bandwidth + FLOPs at its matmul peak)
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

ALL = ["head_on_completion", "fused_lora_rollout"]
VARIANTS = {  # name: (environment, train_step arguments, judge, extra overrides)
    "baseline": ({}, [], "rule", []),
    "blas1": ({"OPENBLAS_NUM_THREADS": "1"}, [], "rule", []),
    "blas_spin_default": ({"OPENBLAS_THREAD_TIMEOUT": "28"}, [], "rule", []),  # OpenBLAS's own default
    "head_on_completion": ({}, ["head_on_completion"], "rule", []),
    "fused_lora_rollout": ({}, ["fused_lora_rollout"], "rule", []),
    "all": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "rule", []),
    "llm": ({}, [], "llm", []),
    "llm_all": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "llm", []),
    "llm_all_order_fixed": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "llm", ["judge.order=fixed"]),
}
MICROBENCHMARKS = ("cprofile", "isolated", "streams", "decode")


def token_logps_head_on_completion(model, batch):
    """ppo.train.scoring.token_logps, but the LM head (and logsumexp) only on positions that predict
    completion tokens: columns from the first completion token of any row onwards."""
    import mlx.core as mx
    import numpy as np

    from ppo.judges.llm import _body_and_head
    from ppo.train.scoring import token_logps

    parts = _body_and_head(model)
    mask_np = np.array(batch.completion_mask)
    cols = np.flatnonzero(mask_np.any(axis=0))
    if parts is None or not len(cols) or cols[0] < 1:
        return token_logps(model, batch)
    s = int(cols[0])
    body, head = parts
    hidden = body(batch.input_ids[:, :-1])
    logits = head(hidden[:, s - 1 :]).astype(mx.float32)
    targets = batch.input_ids[:, s:]
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    logps = picked - mx.logsumexp(logits, axis=-1)
    return mx.pad(logps * batch.completion_mask[:, s:], [(0, 0), (s, 0)])


def step_arguments(names: list[str]) -> dict:
    """The `train_step` keyword arguments of the named candidate fixes."""
    from ppo.train.rollout import sample_pairs

    out = {}
    if "head_on_completion" in names:
        out["token_logps_fn"] = token_logps_head_on_completion
    if "fused_lora_rollout" in names:
        out["sample_fn"] = lambda model, prompts, **kwargs: sample_pairs(fused_copy(model), prompts, **kwargs)
    return out


def fused_copy(model):
    """The policy with its LoRA adapters folded into plain Linear layers (a sampling-only copy)."""
    import copy

    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.lora import LoRALinear

    clone = copy.deepcopy(model)
    fused = [(n, m.fuse()) for n, m in clone.named_modules() if isinstance(m, LoRALinear)]
    if fused:
        clone.update_modules(tree_unflatten(fused))
    clone.eval()
    return clone


def run_variant(names: list[str], judge: str, iters: int, warmup: int, profile: bool, extra=()) -> dict:
    from benchmarks.common import QUIET_RUN, build_bench_model, median, step_rows, step_seconds
    from ppo.train.config import compose_train

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        overrides = [f"model.path={model_dir}", "train.batch_size=2", "generation.max_completion_length=32", *QUIET_RUN]
        overrides += ["judge=llm", f"judge.model={model_dir}"] if judge == "llm" else ["judge=rule"]
        cfg = compose_train([*overrides, *extra])
        run = lambda: step_rows(cfg, Path(tmp) / "run", iters, warmup, **step_arguments(names))  # noqa: E731
        out = {}
        if profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            rows = run()
            prof.disable()
            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(25)
                out[f"top_{key}"] = [line.strip() for line in buf.getvalue().splitlines() if line.strip()][-26:]
        else:
            rows = run()
    phases = step_seconds(rows)
    out.update({
        **phases,
        "other_seconds": phases["seconds_per_iter"] - sum(phases[f"{k}_seconds"] for k in ("rollout", "judge", "score", "update")),
        "tokens_per_second": median(rows, "tokens_per_second"),
        "iters_measured": len(rows),
    })
    return out


def compiled_token_logps():
    """A `token_logps_fn` that runs `ppo.train.scoring.token_logps` under `mx.compile`, one
    compiled graph per model (its parameters are inputs, so updated weights are read)."""
    import mlx.core as mx

    from ppo.train.scoring import ScoringBatch, token_logps

    compiled = {}

    def scorer(model, batch):
        key = (id(model), batch.longest_completion)  # the completion block's width is part of the graph
        if key not in compiled:
            width = batch.longest_completion
            compiled[key] = mx.compile(lambda ids, mask, starts: token_logps(model, ScoringBatch(ids, mask, starts, width)),
                                       inputs=[model.state])
        return compiled[key](batch.input_ids, batch.completion_mask, batch.prompt_lengths)

    return scorer


def compiled_loss_and_grad(policy, loss_fn):
    """`nn.value_and_grad(policy, loss_fn)` under `mx.compile`, with the signature the shipped
    `update` calls. The policy's state is an implicit input and output, as in mlx-lm's
    tuner: value_and_grad writes the traced parameters into the model."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn

    from ppo.train.scoring import ScoringBatch
    from ppo.train.step import JudgedBatch

    value_and_grad = nn.value_and_grad(policy, loss_fn)
    state = [policy.state]
    by_width = {}  # one compiled graph per completion block width

    def compiled_for(width: int):
        @partial(mx.compile, inputs=state, outputs=state)
        def compiled(input_ids, mask, starts, chosen, rejected, advantages, ref_token_logps, *old_logps):
            judged = JudgedBatch(ScoringBatch(input_ids, mask, starts, width), chosen, rejected, advantages,
                                 ref_token_logps, old_logps[0] if old_logps else None)
            return value_and_grad(policy, judged)
        return compiled

    def loss_and_grad(model, judged):
        old = () if judged.old_logps is None else (judged.old_logps,)
        batch = judged.batch
        if batch.longest_completion not in by_width:
            by_width[batch.longest_completion] = compiled_for(batch.longest_completion)
        return by_width[batch.longest_completion](batch.input_ids, batch.completion_mask, batch.prompt_lengths,
                                                  judged.chosen, judged.rejected, judged.advantages,
                                                  judged.ref_token_logps, *old)

    return loss_and_grad


def isolated(reps: int = 20) -> dict:
    """Decode-step floor of the bare model, and the shipped scoring + update eager vs compiled."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    from benchmarks.common import build_bench_model, fixed_batch, scoring_and_update_seconds
    from ppo.train.config import compose_train
    from ppo.train.optimizer import make_optimizer
    from ppo.train.rollout import sample
    from ppo.train.step import make_loss_fn

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        cfg = compose_train([f"model.path={model_dir}", "logger=none", "judge=rule"])
        fixed = fixed_batch(cfg, 2, 32)
    policy = fixed.policy
    policy.eval()
    prompts = [list(p.tokens) for p in fixed.prompts] * 2
    out = {}

    # 1. rollout: 4 rows x 32 tokens through BatchGenerator (ppo.train.rollout.sample), EOS impossible
    for _ in range(2):
        sample(policy, prompts, eos_token_ids=[4096], max_tokens=32, temperature=0.8)
    t = []
    for _ in range(5):
        tic = time.perf_counter()
        sample(policy, prompts, eos_token_ids=[4096], max_tokens=32, temperature=0.8)
        t.append(time.perf_counter() - tic)
    out["rollout_4x32_seconds"] = float(np.median(t))
    out["rollout_ms_per_decode_step"] = 1000 * float(np.median(t)) / 32

    # 2. bare decode step: the model on 4 rows x 1 token with a KV cache, one eval per step
    width = max(len(p) for p in prompts)
    ids = mx.array([p + [0] * (width - len(p)) for p in prompts])
    cache = make_prompt_cache(policy)
    mx.eval(policy(ids, cache=cache))
    y = mx.zeros((4, 1), dtype=mx.int32)
    for _ in range(3):
        mx.eval(policy(y, cache=cache))
    t = []
    for _ in range(32):
        tic = time.perf_counter()
        logits = policy(y, cache=cache)
        mx.eval(mx.argmax(logits[:, -1], axis=-1))
        t.append(time.perf_counter() - tic)
    out["bare_decode_step_ms"] = 1000 * float(np.median(t))
    # the same step as mx.compile'd function is not possible with a growing KV cache without
    # fixed-size caches; report the matmul-only floor instead: 4 rows through the weights
    flops = 2 * 4 * 4.197e6
    out["bare_decode_step_model_gflop"] = flops / 1e9

    # 2b. generator overhead: BatchGenerator vs a minimal pipelined loop (same 4 rows of ONE prompt,
    #     so no padding mask is needed; the loop reads each step's tokens back like the generator does)
    from mlx_lm.sample_utils import make_sampler

    same = [prompts[0]] * 4
    sampler = make_sampler(temp=0.8)

    def minimal_loop(model, steps=32):
        cache = make_prompt_cache(model)
        logits = model(mx.array(same), cache=cache)[:, -1]
        y = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        mx.async_eval(y)
        rows = []
        for _ in range(steps):
            logits = model(y[:, None], cache=cache)[:, -1]
            nxt = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
            mx.async_eval(nxt)
            rows.append(y.tolist())  # host read of the current step (EOS check), next step already queued
            y = nxt
        return rows

    fused = fused_copy(policy)
    for label, fn in (("batch_generator_4x32_one_prompt_s", lambda: sample(policy, same, eos_token_ids=[4096], max_tokens=32, temperature=0.8)),
                      ("minimal_loop_4x32_one_prompt_s", lambda: minimal_loop(policy)),
                      ("batch_generator_fused_lora_4x32_one_prompt_s", lambda: sample(fused, same, eos_token_ids=[4096], max_tokens=32, temperature=0.8)),
                      ("minimal_loop_fused_lora_4x32_one_prompt_s", lambda: minimal_loop(fused))):
        fn()
        t = []
        for _ in range(7):
            tic = time.perf_counter()
            fn()
            t.append(time.perf_counter() - tic)
        out[label] = float(np.median(t))
    tic = time.perf_counter()
    for _ in range(5):
        fused_copy(policy)
    out["fuse_lora_copy_s"] = (time.perf_counter() - tic) / 5

    # 3. the shipped scoring (collect's phase) + update on one fixed batch of 4 x 32 tokens: eager,
    #    and with a compiled scorer and value_and_grad passed in (mlx-lm's tuner compiles its step)
    optimizer = make_optimizer(cfg.train, cfg.train.learning_rate)
    loss_fn = make_loss_fn(cfg.loss)

    def timed(loss_and_grad, **variants) -> tuple[float, float]:
        for _ in range(3):
            scoring_and_update_seconds(fixed, optimizer, loss_and_grad, **variants)
        times = [scoring_and_update_seconds(fixed, optimizer, loss_and_grad, **variants) for _ in range(reps)]
        return float(np.median([t[0] for t in times])), float(np.median([t[1] for t in times]))

    er, eu = timed(nn.value_and_grad(policy, loss_fn))
    cr, cu = timed(compiled_loss_and_grad(policy, loss_fn), token_logps_fn=compiled_token_logps())
    out["score_update_eager"] = {"reference_forward_s": er, "value_and_grad_plus_adam_s": eu, "total_s": er + eu}
    out["score_update_compiled"] = {"reference_forward_s": cr, "value_and_grad_plus_adam_s": cu, "total_s": cr + cu}
    out["compile_speedup"] = (er + eu) / (cr + cu)
    return out


def two_streams(reps: int = 10) -> dict:
    """Rows of one forward split over two MLX CPU streams (one OpenBLAS thread) against one
    stream (two OpenBLAS threads): log-probs forward, and value_and_grad of their mean."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map
    from mlx_lm import load

    from benchmarks.common import build_bench_model, median_seconds
    from ppo.platform.blas import single_threaded_blas
    from ppo.train.scoring import ScoringBatch, token_logps

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load(str(build_bench_model(Path(tmp) / "model")))
    second = mx.new_stream(mx.cpu)

    def logps(ids):  # the shipped scorer, every position but the first counted
        starts = mx.ones((ids.shape[0],), dtype=mx.int32)
        return token_logps(model, ScoringBatch(ids, mx.ones(ids.shape), starts, ids.shape[1] - 1))[:, 1:]

    grad_fn = nn.value_and_grad(model, lambda m, ids: -logps(ids).mean())

    def split(fn, ids, combine):
        half = ids.shape[0] // 2
        first = fn(ids[:half])
        with mx.stream(second):
            other = fn(ids[half:])
        return combine(first, other)

    def ms(fn) -> float:
        return round(1000 * median_seconds(lambda: mx.eval(fn()), reps), 2)

    def both_ways(fn, ids, combine) -> dict:
        one = ms(lambda: fn(ids))
        with single_threaded_blas():
            two = ms(lambda: split(fn, ids, combine))
        return {"one_stream_ms": one, "two_streams_ms": two, "speedup": round(one / two, 2)}

    average = lambda a, b: ((a[0] + b[0]) / 2, tree_map(lambda x, y: (x + y) / 2, a[1], b[1]))  # noqa: E731
    out = {}
    for rows, tokens in [(4, 45), (4, 100), (32, 60)]:
        ids = mx.random.randint(0, 4000, (rows, tokens), key=mx.random.key(rows))
        out[f"forward_{rows}x{tokens}"] = both_ways(logps, ids, lambda a, b: mx.concatenate([a, b]))
        if rows == 4 and tokens == 45:
            out[f"value_and_grad_{rows}x{tokens}"] = both_ways(lambda x: grad_fn(model, x), ids, average)
            ids_half = ids.shape[0] // 2
            out["split_changes_logps_by"] = float(mx.abs(logps(ids) - mx.concatenate([logps(ids[:ids_half]), logps(ids[ids_half:])])).max())
    return out


def decode(rung: str = "80m", batch: int = 8, max_tokens: int = 64, reps: int = 3) -> dict:
    """Where the rollout's time goes at a ladder rung, per decode step, against its floor."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.sample_utils import make_sampler

    from benchmarks.bench_ladder import RUNGS, matmul_peak, mean_prompt_tokens, memory_bandwidth, model_counts
    from benchmarks.common import build_bench_model, median_seconds
    from ppo.demo import corpus
    from ppo.judges.llm import _body_and_head
    from ppo.platform.blas import single_threaded_blas
    from ppo.train.config import compose_train
    from ppo.train.models import load_policy_and_reference
    from ppo.train.rollout import sample

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model", **RUNGS[rung])
        config = json.loads((model_dir / "config.json").read_text())
        cfg = compose_train([f"model.path={model_dir}", "logger=none", "judge=rule"])
        policy, _, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)  # with LoRA, as the step samples
    policy.eval()
    fused = fused_copy(policy)
    counts = model_counts(config)
    rows = 2 * batch
    vocab = config["vocab_size"]
    texts = corpus.prompts(batch, seed=0)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts] * 2
    kwargs = dict(eos_token_ids=[vocab], max_tokens=max_tokens, temperature=0.8)  # an id no row can sample: full length

    def per_step_ms(fn) -> float:
        return 1000 * median_seconds(fn, reps) / max_tokens

    out = {"rung": rung, "rows": rows, "decode_steps": max_tokens, "parameters": counts["parameters"],
           "loadavg_before": list(os.getloadavg())}
    # 1. the shipped rollout (BatchGenerator, one BLAS thread), as the step calls it, and on a LoRA-folded copy
    out["shipped_sample_lora_ms_per_step"] = per_step_ms(lambda: sample(policy, prompts, **kwargs))
    out["shipped_sample_fused_lora_ms_per_step"] = per_step_ms(lambda: sample(fused, prompts, **kwargs))

    # 2. a bare decode loop: all rows the same prompt (no padding mask), the model, the
    #    normalisation and mlx-lm's sampler, one eval per step (what BatchGenerator computes)
    sampler = make_sampler(temp=0.8)
    same = mx.array([prompts[0]] * rows)

    def bare(model, blas1: bool = True, normalise: bool = True, tokens: list | None = None):
        """`normalise=False` samples from the raw logits: mlx-lm's categorical sampler takes
        argmax(logits / temp + Gumbel noise), and subtracting a row's logsumexp shifts every
        entry of the row alike, so the same key must pick the same tokens (checked below)."""
        def run():
            mx.random.seed(0)
            context = single_threaded_blas() if blas1 else contextlib.nullcontext()
            picked = []
            with context:
                cache = make_prompt_cache(model)
                logits = model(same, cache=cache)[:, -1]
                y = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True) if normalise else logits)
                mx.eval(y)
                picked.append(y)
                for _ in range(max_tokens - 1):
                    logits = model(y[:, None], cache=cache)[:, -1]
                    y = sampler(logits - mx.logsumexp(logits, axis=-1, keepdims=True) if normalise else logits)
                    mx.eval(y)
                    picked.append(y)
            if tokens is not None:
                tokens.append(mx.stack(picked, axis=1).tolist())
        return run

    out["bare_loop_lora_ms_per_step"] = per_step_ms(bare(policy))
    normalised, raw = [], []
    out["bare_loop_fused_ms_per_step"] = per_step_ms(bare(fused, tokens=normalised))
    out["bare_loop_fused_two_blas_threads_ms_per_step"] = per_step_ms(bare(fused, blas1=False))
    out["bare_loop_fused_no_logsumexp_ms_per_step"] = per_step_ms(bare(fused, normalise=False, tokens=raw))
    out["no_logsumexp_same_tokens"] = normalised[0] == raw[0]
    out["no_logsumexp_tokens_differing"] = int(sum(a != b for ra, rb in zip(normalised[0], raw[0]) for a, b in zip(ra, rb)))

    # 3. one decode step's parts on the folded model, each evaluated alone (so their sum
    #    includes one synchronisation each), at a context of prompt + 32 tokens
    body, head = _body_and_head(fused)
    parts = {"body_lora": [], "body": [], "lm_head": [], "logsumexp": [], "sampler": []}
    lora_body, _ = _body_and_head(policy)
    with single_threaded_blas():
        caches = {"body": make_prompt_cache(fused), "body_lora": make_prompt_cache(policy)}
        mx.eval(body(same, cache=caches["body"]), lora_body(same, cache=caches["body_lora"]))
        y = mx.zeros((rows, 1), dtype=mx.int32)
        for step in range(max_tokens):
            for key, fn in (("body_lora", lambda: lora_body(y, cache=caches["body_lora"])),
                            ("body", lambda: body(y, cache=caches["body"]))):  # last: its hidden state goes on
                tic = time.perf_counter()
                hidden = fn()
                mx.eval(hidden)
                parts[key].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            logits = head(hidden[:, -1])
            mx.eval(logits)
            parts["lm_head"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            mx.eval(logprobs)
            parts["logsumexp"].append(time.perf_counter() - tic)
            tic = time.perf_counter()
            mx.eval(sampler(logprobs))
            parts["sampler"].append(time.perf_counter() - tic)
    out["parts_ms"] = {k: 1000 * float(np.median(v[2:])) for k, v in parts.items()}

    # 4. the floor of one decode step: the weights streamed once, 2 N_m FLOPs per row at the peak
    bandwidth = memory_bandwidth()
    peak = matmul_peak(rows, config["hidden_size"], config["intermediate_size"])
    prompt = mean_prompt_tokens(tokenizer)
    attention = counts["attention_flops_per_pair"] * (prompt + max_tokens / 2)
    floor = {"stream_ms": 1000 * counts["weight_bytes"] / (bandwidth["used_gbs"] * 1e9),
             "flops_ms": 1000 * rows * (2 * counts["matmul_parameters"] + attention) / (peak["used_gflops"] * 1e9),
             "bandwidth_gbs": bandwidth["used_gbs"], "matmul_peak_gflops": peak["used_gflops"],
             "decode_shape_gflops": peak["gflops_model_shape"], "weight_mb": counts["weight_bytes"] / 1e6}
    floor["step_ms"] = floor["stream_ms"] + floor["flops_ms"]
    out["floor_per_step"] = floor
    out["shipped_over_floor"] = out["shipped_sample_lora_ms_per_step"] / floor["step_ms"]
    out["loadavg_after"] = list(os.getloadavg())
    return out


def main() -> None:
    from benchmarks.common import arguments, emit

    parser = arguments(__doc__, iters=30, warmup=5)
    parser.add_argument("--variants", nargs="*", default=[*VARIANTS, *MICROBENCHMARKS],
                        help=f"any of {', '.join([*VARIANTS, *MICROBENCHMARKS])}; NAME#TAG runs NAME again under another key")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions of each isolated / streams measurement (default 20 / 10)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the list this many times, interleaved; medians over rounds (noisy shared machines)")
    parser.add_argument("--rung", default="80m", help="decode: the bench_ladder.py rung (toy, 80m, 250m)")
    parser.add_argument("--max-tokens", type=int, default=64,
                        help="decode: steps per row (64 as bench_ladder.py; fewer only for a smoke test)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [n for n in args.variants if n.split("#")[0] not in (*VARIANTS, *MICROBENCHMARKS)]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")

    if args.child:
        reps = {} if args.reps is None else {"reps": args.reps}
        child = args.child.split("#")[0]
        if child == "isolated":
            res = isolated(**reps)
        elif child == "streams":
            res = two_streams(**reps)
        elif child == "decode":
            res = decode(args.rung, max_tokens=args.max_tokens, **reps)
        elif child == "cprofile":
            res = run_variant([], "rule", args.iters, args.warmup, profile=True)
        else:
            _, names, judge, extra = VARIANTS[args.child.split("#")[0]]
            res = run_variant(names, judge, args.iters, args.warmup, profile=False, extra=extra)
        print(json.dumps(res))
        return

    import numpy as np

    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name in args.variants:
            if name.split("#")[0] in MICROBENCHMARKS and name in runs:
                continue
            env = dict(os.environ)
            env.update(VARIANTS.get(name.split("#")[0], ({}, [], "", []))[0])
            reps = [] if args.reps is None else ["--reps", str(args.reps)]
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--iters", str(args.iters),
                                   "--warmup", str(args.warmup), "--rung", args.rung,
                                   "--max-tokens", str(args.max_tokens), *reps], cwd=ROOT, env=env, capture_output=True, text=True)
            try:
                res = json.loads(proc.stdout.strip().splitlines()[-1])
            except Exception:  # noqa: BLE001
                res = {"error": proc.stderr[-2000:]}
            runs.setdefault(name, []).append(res)
            print(f"[profile_step] {name}: {res.get('seconds_per_iter', '')}", file=sys.stderr, flush=True)
    results = {}
    for name, rs in runs.items():
        ok = [r for r in rs if "seconds_per_iter" in r]
        if len(rs) == 1 or not ok:
            results[name] = rs[0]
            continue
        keys = [k for k in ok[0] if isinstance(ok[0][k], (int, float))]
        results[name] = {k: float(np.median([r[k] for r in ok])) for k in keys}
        results[name]["seconds_per_iter_each_round"] = [r["seconds_per_iter"] for r in ok]
    base = results.get("baseline", {}).get("seconds_per_iter")
    if base:
        results["speedup_vs_baseline"] = {k: base / v["seconds_per_iter"] for k, v in results.items()
                                          if isinstance(v, dict) and v.get("seconds_per_iter") and k not in ("llm", "llm_all")}
    llm = results.get("llm", {}).get("seconds_per_iter")
    if llm and results.get("llm_all", {}).get("seconds_per_iter"):
        results["speedup_llm_all_vs_llm"] = llm / results["llm_all"]["seconds_per_iter"]
    emit({"benchmark": "profile_step", **results})


if __name__ == "__main__":
    main()
