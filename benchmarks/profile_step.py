"""Where a PPO iteration's time goes, and what candidate speedups measure (benchmark-only patches).

    .venv/bin/python benchmarks/profile_step.py [--iters 30 --warmup 5] [--variants baseline blas1 ...]

Each variant runs the real trainer (`ppo.train.loop.train`) in its own process on the step
benchmark's setting (tiny Qwen3 hidden 256, 4 layers, vocab 4096; batch 2; 32 tokens; rule
judge unless the variant says llm) and reports median seconds/iter with its split.
Candidate fixes are applied as monkeypatches in that process only; ppo/ is not changed:

- baseline            as shipped
- blas1               OPENBLAS_NUM_THREADS=1 (tiny matmuls: threading overhead vs 2 threads)
- no_clear_cache      ppo/rollout.py without its `mx.clear_cache()` after every rollout
- head_on_completion  scoring runs the LM head only from the first completion position on
- fused_lora_rollout  the rollout samples from a copy of the policy with its LoRA adapters folded
                      into the base weights (`LoRALinear.fuse()`, ~4 ms per step), so each decode
                      step runs plain Linear layers: fewer ops per token
- blas1_rollout       one OpenBLAS thread during the rollout only (openblas_set_num_threads(1) around
                      sample_pairs, back to the default for judge, scoring and update)
- all                 blas1 + no_clear_cache + head_on_completion + fused_lora_rollout
- all_blas1_rollout   `all` with blas1_rollout instead of blas1
- llm / llm_all       the same with judge=llm (the same tiny model as judge)
- llm_all_order_fixed llm_all with judge.order=fixed (each pair shown once instead of in both orders;
                      a config option, but it gives up the position-bias removal)
- cprofile            baseline under cProfile: top functions by cumulative and own time
- isolated            microbenchmarks: one decode step of the bare model vs the rollout's
                      per-token time, and the update step (reference forward + value_and_grad
                      + Adam) eager vs mx.compile
Prints one JSON object.
"""

from __future__ import annotations

import argparse
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

ALL = ["no_clear_cache", "head_on_completion", "fused_lora_rollout"]
VARIANTS = {  # name: (environment, patches, judge, extra overrides)
    "baseline": ({}, [], "rule", []),
    "blas1": ({"OPENBLAS_NUM_THREADS": "1"}, [], "rule", []),
    "blas_spin_default": ({"OPENBLAS_THREAD_TIMEOUT": "28"}, [], "rule", []),  # OpenBLAS's own default
    "no_clear_cache": ({}, ["no_clear_cache"], "rule", []),
    "head_on_completion": ({}, ["head_on_completion"], "rule", []),
    "fused_lora_rollout": ({}, ["fused_lora_rollout"], "rule", []),
    "blas1_rollout": ({}, ["blas1_rollout"], "rule", []),
    "all": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "rule", []),
    "all_blas1_rollout": ({}, ALL + ["blas1_rollout"], "rule", []),
    "llm": ({}, [], "llm", []),
    "llm_all": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "llm", []),
    "llm_all_order_fixed": ({"OPENBLAS_NUM_THREADS": "1"}, ALL, "llm", ["judge.order=fixed"]),
}


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


def apply_patches(patches: list[str]) -> None:
    import mlx.core as mx

    import ppo.train.loop

    if "no_clear_cache" in patches:
        import ppo.train.rollout

        class _NoClear:
            def __getattr__(self, name):
                return (lambda: None) if name == "clear_cache" else getattr(mx, name)

        ppo.train.rollout.mx = _NoClear()
    if "head_on_completion" in patches:
        ppo.train.loop.token_logps = token_logps_head_on_completion
    if "fused_lora_rollout" in patches:
        original = ppo.train.loop.sample_pairs

        def sample_pairs_fused(model, prompts, **kwargs):
            return original(fused_copy(model), prompts, **kwargs)

        ppo.train.loop.sample_pairs = sample_pairs_fused
    if "blas1_rollout" in patches:
        import ctypes

        from ppo.platform.blas import blas_in_use

        lib = ctypes.CDLL(blas_in_use())
        default = lib.openblas_get_num_threads()
        inner = ppo.train.loop.sample_pairs

        def sample_pairs_one_thread(model, prompts, **kwargs):
            lib.openblas_set_num_threads(1)
            try:
                return inner(model, prompts, **kwargs)
            finally:
                lib.openblas_set_num_threads(default)

        ppo.train.loop.sample_pairs = sample_pairs_one_thread


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


def run_variant(patches: list[str], judge: str, iters: int, warmup: int, profile: bool, extra=()) -> dict:
    from benchmarks.common import QUIET_RUN, build_bench_model, median, metrics_rows, step_seconds
    from ppo.train.config import compose_train
    from ppo.train.loop import train

    apply_patches(patches)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        overrides = [f"model.path={model_dir}", f"train.iters={iters + warmup}", "train.batch_size=2",
                     "generation.max_completion_length=32", *QUIET_RUN]
        overrides += ["judge=llm", f"judge.model={model_dir}"] if judge == "llm" else ["judge=rule"]
        cfg = compose_train([*overrides, *extra])
        run_dir = Path(tmp) / "run"
        out = {}
        if profile:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            train(cfg, run_dir)
            prof.disable()
            for key in ("cumulative", "tottime"):
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(25)
                out[f"top_{key}"] = [line.strip() for line in buf.getvalue().splitlines() if line.strip()][-26:]
        else:
            train(cfg, run_dir)
        rows = metrics_rows(run_dir, skip=warmup)
    phases = step_seconds(rows)
    out.update({
        **phases,
        "other_seconds": phases["seconds_per_iter"] - sum(phases[f"{k}_seconds"] for k in ("rollout", "judge", "score", "update")),
        "tokens_per_second": median(rows, "tokens_per_second"),
        "iters_measured": len(rows),
    })
    return out


def isolated(reps: int = 20) -> dict:
    """Decode-step floor of the bare model and eager vs compiled update step."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx_lm.models.cache import make_prompt_cache

    from ppo.demo import corpus
    from benchmarks.common import build_bench_model
    from ppo.train.config import compose_train
    from ppo.train.models import load_policy_and_reference, reference_model
    from ppo.train.rollout import sample
    from ppo.train.scoring import ScoringBatch, build_scoring_batch, token_logps
    from ppo.train.loop import JudgedBatch, make_loss_fn, make_optimizer

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_bench_model(Path(tmp) / "model")
        cfg = compose_train([f"model.path={model_dir}", "logger=none", "judge=rule"])
        policy, reference, tok = load_policy_and_reference(cfg.model, cfg.finetune)
    policy.eval()
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
               for p in corpus.prompts(2, seed=0)] * 2
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

    # 3. update step eager vs compiled (fixed width; mlx-lm's tuner uses the same pattern)
    rng = np.random.default_rng(0)
    comps = [rng.integers(3, 4096, size=32).tolist() for _ in range(4)]
    batch = build_scoring_batch(prompts, comps, tok.pad_token_id)
    loss_fn = make_loss_fn(cfg.loss)
    optimizer = make_optimizer(cfg.train, cfg.train.learning_rate)
    loss_and_grad = nn.value_and_grad(policy, loss_fn)
    b = 2

    def ref_forward(input_ids, mask):
        with reference_model(policy, reference) as ref:
            return mx.stop_gradient(token_logps(ref, ScoringBatch(input_ids, mask)))

    def update(input_ids, mask, ref_lp):
        judged = JudgedBatch(batch=ScoringBatch(input_ids, mask), chosen=mx.arange(b), rejected=mx.arange(b) + b,
                             advantages=mx.ones(b), ref_token_logps=ref_lp, old_logps=None)
        (loss, _), grads = loss_and_grad(policy, judged)
        optimizer.update(policy, grads)
        return loss

    def timed(ref_fn, upd_fn):
        for _ in range(3):
            r = ref_fn(batch.input_ids, batch.completion_mask)
            mx.eval(r)
            mx.eval(upd_fn(batch.input_ids, batch.completion_mask, r), policy.trainable_parameters(), optimizer.state)
        tr, tu = [], []
        for _ in range(reps):
            tic = time.perf_counter()
            r = ref_fn(batch.input_ids, batch.completion_mask)
            mx.eval(r)
            mid = time.perf_counter()
            mx.eval(upd_fn(batch.input_ids, batch.completion_mask, r), policy.trainable_parameters(), optimizer.state)
            tu.append(time.perf_counter() - mid)
            tr.append(mid - tic)
        return float(np.median(tr)), float(np.median(tu))

    policy.train()
    er, eu = timed(ref_forward, update)
    state = [policy.state, optimizer.state]
    cr, cu = timed(mx.compile(ref_forward), partial(mx.compile, inputs=state, outputs=state)(update))
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

    with tempfile.TemporaryDirectory() as tmp:
        model, _ = load(str(build_bench_model(Path(tmp) / "model")))
    second = mx.new_stream(mx.cpu)

    def logps(ids):
        logits = model(ids[:, :-1])
        return mx.take_along_axis(logits, ids[:, 1:, None], axis=-1).squeeze(-1) - mx.logsumexp(logits, axis=-1)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variants", nargs="*", default=["baseline", "blas1", "no_clear_cache", "head_on_completion",
                                                           "fused_lora_rollout", "all", "llm", "llm_all",
                                                           "llm_all_order_fixed", "cprofile", "isolated", "streams"])
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the list this many times, interleaved; medians over rounds (noisy shared machines)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        if args.child == "isolated":
            res = isolated()
        elif args.child == "streams":
            res = two_streams()
        elif args.child == "cprofile":
            res = run_variant([], "rule", args.iters, args.warmup, profile=True)
        else:
            _, patches, judge, extra = VARIANTS[args.child.split("#")[0]]
            res = run_variant(patches, judge, args.iters, args.warmup, profile=False, extra=extra)
        print(json.dumps(res))
        return

    import numpy as np

    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name in args.variants:
            if name in ("cprofile", "isolated", "streams") and name in runs:
                continue
            env = dict(os.environ)
            env.update(VARIANTS.get(name, ({}, [], "", []))[0])
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--iters", str(args.iters),
                                   "--warmup", str(args.warmup)], cwd=ROOT, env=env, capture_output=True, text=True)
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
    print(json.dumps({"benchmark": "profile_step", **results}, indent=2))


if __name__ == "__main__":
    main()
