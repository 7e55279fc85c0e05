"""The PPO step against mlx-lm-lora 5.10.2 at rungs of model size, and each phase against this machine's floor.

    .venv/bin/python benchmarks/bench_ladder.py [--rungs toy 80m 250m smollm2] [--iters N] [--warmup N]
                                                [--batch-size 8] [--max-tokens 64] [--lora-python PATH]
                                                [--random-weights]

Rungs toy, 80m, 250m (random-weight Qwen3 models built by `ppo.demo.tiny.build_tiny_model`,
float32, tied embeddings, grouped-query attention with half as many KV heads, MLP width 3 x hidden):

    toy    hidden 256,  4 layers,  4 heads, vocab   4,096   (4.2M; benchmarks/common.py BENCH_MODEL)
    80m    hidden 768,  8 layers, 12 heads, vocab  32,768   (82M)
    250m   hidden 1024, 8 layers, 16 heads, vocab 151,936   (256M; Qwen3's vocabulary)

Rung smollm2: a real model, SmolLM2-135M-Instruct (llama, float32, tied embeddings, hidden 576,
30 layers, 9 heads / 3 KV heads of 64, MLP 1536, vocab 49,152; 134.5M), read from the folder
`ppo-fetch smollm2` writes (`ppo.resources.cache_dir() / "models" / "SmolLM2-135M-Instruct"`);
without it the command stops at once with one line saying to run `ppo-fetch smollm2` first.
`--random-weights` runs it on a random-weight Llama of exactly that shape instead
(`benchmarks/smollm2.py`: its tokenizer is the demo-corpus BPE padded to 49,152 ids with
SmolLM2's chat template, not SmolLM2's; the JSON says so), for smoke tests and for measuring
before the real weights are there. A real chat model can end its completions (EOS) before
--max-tokens, the random rungs practically never do: every rung records ours' measured mean
completion length and EOS rate (`shape`), and the floor uses the measured length c.

At each rung the comparison of `bench_vs_mlx_lm_lora.py` runs, through its own functions
(`run_ours`, `run_lora`): same model, prompts, LoRA r8/s20, Adam 1e-5, temperature 0.8, the
same model as LLM judge; ours with its default `judge.order=both`, mlx-lm-lora as shipped and
with its judge capped at 2 generated tokens. Batch 8 prompts, 64-token completions.

The floor. In this process, before and after the rung's runs (the higher rate of the two
kept, so the floor is the tighter one), two rates are measured:
  bandwidth  B: GB/s streaming a 256 MiB float32 array, the best of numpy's sum (SIMD, one
             core) and MLX's float32 matrix-vector product (its BLAS gemv); MLX's own `sum`
             is recorded too but not used (it is compute-bound on x86: scalar reduction)
  peak       P: GFLOP/s of an MLX float32 matmul, the best of 1024^3 and a model-shaped
             (positions x hidden) @ (hidden x intermediate)
Counting, from the model's config.json (`model_counts`; a test checks it against the loaded
model's parameter count):
  N_m   weights a token is multiplied by: every Linear of every layer plus the LM head
        (the tied embedding, hidden x vocab); norms and the embedding gather excluded
  N_b   the same without the LM head (the judge runs the head at one position per row)
  W     bytes streamed per forward: all parameters x 4 (float32; tied, so the embedding is
        read once, as the LM head)
  A(k)  attention FLOPs for k (query, key) pairs: 4 x layers x heads x head_dim x k (QK^T and AV)
Shapes, from the run: R = 2 x batch rows, p = mean prompt tokens of the demo prompts (chat
template applied), c = ours' measured mean completion tokens, T = --max-tokens decode steps,
the judge's J = batch x 2 rows (both orders) of j tokens each after its cached head of h
tokens (the judging prompt of demo prompts and c random tokens, encoded by the judge itself).
  rollout  T x W / B  +  R x (2 N_m (p + c) + A(p(p+1)/2 + c p + c(c+1)/2)) / P
           (every decode step streams the weights once; FLOPs of prefill and decode at the peak)
  judge    J x (2 N_b j + 2 hidden vocab + A(j h + j(j+1)/2)) / P
           (the body over j tokens, the LM head at one position, attention over head + row)
  score    R x (2 N_m n + A(n(n+1)/2)) / P,  n = p + c - 1 (the reference forward, no padding)
  update   R x (4 N_m n + 3 A(n(n+1)/2)) / P  per epoch (forward 2N, backward through the
           activations 2N; LoRA computes no weight gradient for the frozen base; the 6N
           convention is reported as well)
Each phase of ours is reported as measured / floor (1 = at the floor). Figures depend on the
machine's load: the JSON records os.getloadavg() before and after every rung.

If the mlx-lm-lora venv is missing (or its run fails), its entries say "not measured: <why>"
and everything else is still measured. Prints one JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

from benchmarks import smollm2  # noqa: E402
from benchmarks.common import BENCH_MODEL  # noqa: E402

RUNGS = {
    "toy": dict(BENCH_MODEL),
    "80m": {"hidden": 768, "layers": 8, "vocab": 32768, "heads": 12, "seed": 0},
    "250m": {"hidden": 1024, "layers": 8, "vocab": 151936, "heads": 16, "seed": 0},
}
# Rungs on a real model folder (not built here): name -> (folder, the command that writes it).
REAL_RUNGS = {"smollm2": (smollm2.smollm2_dir, smollm2.FETCH_COMMAND)}
# (iterations measured, warm-up) per rung when --iters / --warmup are not given: sized so a
# rung (ours + mlx-lm-lora twice) stays within a few minutes on the 2-core CPU. smollm2 (an
# estimate, not yet measured on a quiet machine): its floor at batch 8 and 64 full-length
# tokens is 14-16 s a step (FLOOR_FORMULAS at B 25 GB/s, P 190 GFLOP/s; the 250m rung's: 17-19;
# its prompts are longer: SmolLM2's default system turn, 58 tokens with the --random-weights
# tokenizer against 13, likely fewer with the real one), so ours
# about 30-40 s a step at the other rungs' 2-2.5x of the floor, ours on 2 processes about 60,
# mlx-lm-lora about 60-75 (250m: 61-73); 3 steps of each of those four runs plus the decode
# section (16 rollouts of 64 steps at 0.1-0.2 s) and the two floor measurements: about 13-17
# minutes, 12-15 with --decode-reps 2 (the 250m rung, so run, took 19); less where the real
# model stops at EOS early.
DEFAULT_ITERS = {"toy": (8, 2), "80m": (3, 1), "250m": (2, 1), "smollm2": (2, 1)}
LORA_SETUP = "python3 -m venv /tmp/lora-venv && /tmp/lora-venv/bin/pip install mlx-lm-lora==5.10.2 'mlx[cpu]'"
FLOAT32_BYTES = 4

FLOOR_FORMULAS = {
    "rollout": "T*W/B + R*(2*N_m*(p+c) + A(p(p+1)/2 + c*p + c(c+1)/2))/P",
    "judge": "J*(2*N_b*j + 2*hidden*vocab + A(j*h + j(j+1)/2))/P",
    "score": "R*(2*N_m*n + A(n(n+1)/2))/P, n = p+c-1",
    "update": "epochs*R*(4*N_m*n + 3*A(n(n+1)/2))/P",
    "A(k)": "4*layers*heads*head_dim*k",
    "B": "max(numpy float32 sum, MLX float32 matvec) over a 256 MiB array, GB/s",
    "P": "max(MLX float32 matmul 1024^3, (R*(p+c)) x hidden @ hidden x intermediate), GFLOP/s",
}


def model_counts(config: dict) -> dict:
    """Parameters, matmul weights and bytes per forward of a qwen3 or llama config.json (see
    the docstring). As mlx-lm reads them: KV heads default to the heads, head_dim to hidden /
    heads, tie_word_embeddings to true; qwen3 has a q_norm and k_norm per layer, llama none
    but optional biases (attention_bias, mlp_bias; counted as parameters, not matmul weights)."""
    model_type = config.get("model_type")
    if model_type not in ("qwen3", "llama"):
        raise ValueError(f"model_counts: model_type {model_type!r} is not counted (qwen3, llama)")
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    tied = config.get("tie_word_embeddings", True)
    attention_linear = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h  # q, k, v, o
    mlp_linear = 3 * h * inter  # gate, up, down
    per_layer_extra = 2 * h  # input and post-attention RMSNorm
    if model_type == "qwen3":
        per_layer_extra += 2 * head_dim  # q_norm and k_norm
    else:
        if config.get("attention_bias", False):
            per_layer_extra += heads * head_dim + 2 * kv_heads * head_dim + h
        if config.get("mlp_bias", False):
            per_layer_extra += 2 * inter + h
    body_linear = layers * (attention_linear + mlp_linear)
    head = h * vocab
    parameters = vocab * h + layers * (attention_linear + mlp_linear + per_layer_extra) + h + (0 if tied else head)
    return {
        "parameters": parameters,
        "matmul_parameters": body_linear + head,  # N_m
        "body_matmul_parameters": body_linear,  # N_b
        "weight_bytes": FLOAT32_BYTES * (parameters - (0 if tied else vocab * h)),  # the gathered embedding is not streamed
        "attention_flops_per_pair": 4 * layers * heads * head_dim,  # A(1)
        "lm_head_parameters": head,
    }


def floors(counts: dict, *, rows: int, prompt_tokens: float, completion_tokens: float, decode_steps: int,
           judge_rows: int, judge_tokens: float, judge_head: int, bandwidth_gbs: float, peak_gflops: float,
           epochs: int = 1) -> dict:
    """Floor seconds and FLOPs of each phase of one step (FLOOR_FORMULAS)."""
    nm, nb, a = counts["matmul_parameters"], counts["body_matmul_parameters"], counts["attention_flops_per_pair"]
    p, c, j, head = prompt_tokens, completion_tokens, judge_tokens, judge_head
    peak, bw = peak_gflops * 1e9, bandwidth_gbs * 1e9
    n = p + c - 1
    flops = {
        "rollout": rows * (2 * nm * (p + c) + a * (p * (p + 1) / 2 + c * p + c * (c + 1) / 2)),
        "judge": judge_rows * (2 * nb * j + 2 * counts["lm_head_parameters"] + a * (j * head + j * (j + 1) / 2)),
        "score": rows * (2 * nm * n + a * n * (n + 1) / 2),
        "update": epochs * rows * (4 * nm * n + 3 * a * n * (n + 1) / 2),
    }
    stream_seconds = decode_steps * counts["weight_bytes"] / bw
    seconds = {k: v / peak for k, v in flops.items()}
    seconds["rollout"] += stream_seconds
    seconds["step"] = sum(seconds.values())
    return {
        "seconds": seconds,
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "rollout_weight_stream_seconds": stream_seconds,
        "update_gflop_6n_convention": epochs * rows * (6 * nm * n + 3 * a * n * (n + 1) / 2) / 1e9,
    }


def memory_bandwidth(mib: int = 256, reps: int = 5) -> dict:
    """GB/s reading a `mib` MiB float32 array: numpy's sum, MLX's matvec (both used), MLX's sum (recorded)."""
    import mlx.core as mx
    import numpy as np

    from benchmarks.common import median_seconds

    n = mib * 2**20 // FLOAT32_BYTES
    side = int(n**0.5)
    # A constant: the values do not change the time of a sum or a matvec (no denormals), and the
    # fill takes 0.07 s where 64M Gaussian draws took 5 s, twice per rung.
    host = np.ones(side * side, dtype=np.float32)
    matrix = mx.array(host.reshape(side, side))
    vector = mx.ones((side, 1))
    mx.eval(matrix, vector)
    nbytes = host.nbytes
    out = {
        "numpy_sum_gbs": nbytes / median_seconds(lambda: host.sum(), reps) / 1e9,
        "mlx_matvec_gbs": nbytes / median_seconds(lambda: mx.eval(matrix @ vector), reps) / 1e9,
        "mlx_sum_gbs_not_used": nbytes / median_seconds(lambda: mx.eval(mx.sum(matrix)), reps) / 1e9,
        "array_mib": nbytes / 2**20,
    }
    out["used_gbs"] = max(out["numpy_sum_gbs"], out["mlx_matvec_gbs"])
    return out


def matmul_peak(m: int, k: int, n: int, reps: int = 5) -> dict:
    """GFLOP/s of an MLX float32 matmul at 1024^3 and at (m, k) @ (k, n); `used` is the higher."""
    import mlx.core as mx

    from benchmarks.common import median_seconds

    def rate(a, b, c) -> float:
        x, w = mx.random.normal((a, b)), mx.random.normal((b, c))
        mx.eval(x, w)
        return 2 * a * b * c / median_seconds(lambda: mx.eval(x @ w), reps, warmup=2) / 1e9

    out = {"gflops_1024_cubed": rate(1024, 1024, 1024), "model_shape": [m, k, n], "gflops_model_shape": rate(m, k, n)}
    out["used_gflops"] = max(out["gflops_1024_cubed"], out["gflops_model_shape"])
    return out


def machine_floor(m: int, k: int, n: int) -> dict:
    return {"bandwidth": memory_bandwidth(), "matmul": matmul_peak(m, k, n), "loadavg": list(os.getloadavg())}


def demo_prompt_ids(tokenizer) -> list[list[int]]:
    """The demo prompts with the chat template applied (what the sampler feeds)."""
    return [tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True)
            for t in demo_prompt_texts()]


def mean_prompt_tokens(tokenizer) -> float:
    """Mean length of the templated demo prompts."""
    ids = demo_prompt_ids(tokenizer)
    return sum(len(p) for p in ids) / len(ids)


def demo_prompt_texts() -> list[str]:
    from ppo.resources import asset

    return [json.loads(line)["prompt"] for line in asset("demo_prompts.jsonl").read_text().splitlines() if line.strip()]


def judge_shape(model, tokenizer, model_dir: Path, batch: int, completion_tokens: float) -> dict:
    """The shipped LLM judge's tokens per row after its cached head, for `batch` demo prompts
    with random completions of `completion_tokens` tokens, encoded by the judge itself."""
    import numpy as np

    from ppo.judges import Pair
    from ppo.judges.llm import LLMJudge

    judge = LLMJudge(model=str(model_dir), preloaded=(model, tokenizer))
    rng = np.random.default_rng(0)
    length = max(1, round(completion_tokens))

    def completion() -> str:
        return tokenizer.decode(rng.integers(3, model.args.vocab_size, size=length).tolist(), skip_special_tokens=True)

    head = len(judge._prefix_cache.head)  # the rubric and chat framing, run once per run (read only)
    rows = [judge.encode(Pair(t, completion(), completion())) for t in demo_prompt_texts()[:batch]]
    return {"judge_head_tokens": head, "judge_tokens_per_row": float(np.mean([len(r) - head for r in rows]))}


def decode_comparison(model, tokenizer, *, batch: int, max_tokens: int, reps: int) -> dict:
    """The rollout alone, ms per decode step: the shipped `ppo.train.rollout.sample` (BLAS
    threads chosen by model size), the same forced to one and to all BLAS threads, and mlx-lm's
    BatchGenerator (`benchmarks.common.mlx_lm_sample`, one BLAS thread: the harness's rollout
    before its own loop), and the shipped loop measuring the policy's entropy at every token as
    training does (`sample(entropy=True)`, the `entropy` metric: `entropy_over_shipped`). 2 x
    `batch` rows of chat-templated demo prompts, as `sample_pairs` decodes them, `max_tokens`
    steps each (a stop id outside the vocabulary: no row ends early).
    The variants take turns within each repetition, so a change of load hits them alike."""
    import mlx.core as mx
    import numpy as np

    from benchmarks.common import mlx_lm_sample
    from ppo.platform.blas import single_threaded_blas
    from ppo.train.rollout import decodes_with_one_blas_thread, sample

    prompts = demo_prompt_ids(tokenizer)[:batch] * 2
    kwargs = {"eos_token_ids": [model.args.vocab_size], "max_tokens": max_tokens, "temperature": 0.8}

    def mlx_lm_one_thread():
        with single_threaded_blas():
            return mlx_lm_sample(model, prompts, **kwargs)[0]

    variants = {
        "shipped": lambda: sample(model, prompts, **kwargs).token_ids,
        "shipped_with_entropy": lambda: sample(model, prompts, entropy=True, **kwargs).token_ids,
        "shipped_one_blas_thread": lambda: sample(model, prompts, one_blas_thread=True, **kwargs).token_ids,
        "shipped_all_blas_threads": lambda: sample(model, prompts, one_blas_thread=False, **kwargs).token_ids,
        "mlx_lm_batch_generator": mlx_lm_one_thread,
    }
    tokens, times = {}, {k: [] for k in variants}
    for rep in range(reps + 1):  # the first round warms up
        for key, fn in variants.items():
            mx.random.seed(0)
            tic = time.perf_counter()
            tokens[key] = fn()
            if rep:
                times[key].append(time.perf_counter() - tic)
    ms = {k: 1000 * float(np.median(v)) / max_tokens for k, v in times.items()}
    return {
        "rows": len(prompts), "decode_steps": max_tokens, "reps": reps,
        "ms_per_decode_step": ms,
        "shipped_speedup_vs_mlx_lm": ms["mlx_lm_batch_generator"] / ms["shipped"],
        "all_over_one_blas_thread": ms["shipped_all_blas_threads"] / ms["shipped_one_blas_thread"],
        "entropy_over_shipped": ms["shipped_with_entropy"] / ms["shipped"],
        "shipped_uses_one_blas_thread": decodes_with_one_blas_thread(model, len(prompts)),
        "same_tokens_as_mlx_lm": all(tokens[k] == tokens["mlx_lm_batch_generator"] for k in variants),
        "loadavg_after": list(os.getloadavg()),
    }


def real_rung_problem(name: str, random_weights: bool) -> str | None:
    """One line saying why rung `name` cannot run (its real folder missing and no
    --random-weights), or None."""
    if name not in REAL_RUNGS or random_weights:
        return None
    folder, fetch = REAL_RUNGS[name]
    why = smollm2.missing(folder())
    return None if why is None else f"bench_ladder: rung {name}: {why}: run {fetch} first (or pass --random-weights)"


def rung_model(name: str, args, rung_dir: Path) -> tuple[Path, dict]:
    """The rung's model folder and what it is: built here (random weights) or a real folder."""
    if name in RUNGS:
        from benchmarks.common import build_bench_model

        return build_bench_model(rung_dir / "model", **RUNGS[name]), {"weights": "random", **RUNGS[name]}
    if args.random_weights:
        return smollm2.build_random_llama(rung_dir / "model"), {"weights": "random", "note": smollm2.RANDOM_WEIGHTS_NOTE}
    problem = real_rung_problem(name, False)
    if problem:
        raise SystemExit(problem)
    folder, fetch = REAL_RUNGS[name]
    return folder(), {"weights": f"real: {smollm2.FOLDER_NAME}", "path": str(folder()), "written_by": fetch}


def load_float32(model_dir: Path):
    """mlx_lm.load, refusing weights that are not float32 (the floor counts 4 bytes a weight)."""
    from mlx.utils import tree_flatten
    from mlx_lm import load

    model, tokenizer = load(str(model_dir))
    dtypes = {str(v.dtype) for _, v in tree_flatten(model.parameters())}
    if dtypes != {"mlx.core.float32"}:
        raise SystemExit(f"bench_ladder: {model_dir} holds {sorted(dtypes)} weights; the ladder runs float32")
    return model, tokenizer


def run_decode_only(name: str, args, tmp: Path) -> dict:
    """`--decode-only`: the rung's decode section alone (no step, no anchor, no floor)."""
    model_dir, build = rung_model(name, args, tmp / name)
    model, tokenizer = load_float32(model_dir)
    return {"model": build, "decode": decode_comparison(model, tokenizer, batch=args.batch_size,
                                                         max_tokens=args.max_tokens, reps=args.decode_reps)}


def run_rung(name: str, args, tmp: Path, blas: str | None) -> dict:
    import numpy as np
    from mlx.utils import tree_flatten

    from benchmarks.bench_vs_mlx_lm_lora import run_lora, run_ours
    from benchmarks.common import metrics_rows

    iters, warmup = DEFAULT_ITERS[name]
    iters = args.iters if args.iters is not None else iters
    warmup = args.warmup if args.warmup is not None else warmup
    started = time.perf_counter()
    rung_dir = tmp / name
    rung_dir.mkdir(parents=True, exist_ok=True)  # a real rung reads its model elsewhere: nothing else creates it
    model_dir, build = rung_model(name, args, rung_dir)
    config = json.loads((model_dir / "config.json").read_text())
    counts = model_counts(config)
    rows = 2 * args.batch_size
    model, tokenizer = load_float32(model_dir)
    loaded = sum(v.size for _, v in tree_flatten(model.parameters()))
    prompt_tokens = mean_prompt_tokens(tokenizer)
    # the model-shaped matmul: the scoring batch's positions through the MLP's up projection
    floor_shape = (round(rows * (prompt_tokens + args.max_tokens)), config["hidden_size"], config["intermediate_size"])
    before = machine_floor(*floor_shape)
    decode = decode_comparison(model, tokenizer, batch=args.batch_size, max_tokens=args.max_tokens,
                               reps=args.decode_reps)

    lora = {}
    if not Path(args.lora_python).exists():
        why = f"not measured: {args.lora_python} not found (set it up: {LORA_SETUP})"
        lora = {"as_shipped": {"not_measured": why}, "judge_2_tokens": {"not_measured": why}}
    else:
        for key, judge_tokens in (("as_shipped", 0), ("judge_2_tokens", 2)):
            entry = run_lora(args.lora_python, model_dir, rung_dir, iters, warmup, args.batch_size, args.max_tokens,
                             judge_tokens, blas)
            if "error" in entry:
                entry = {"not_measured": f"not measured: {entry['error']}"}
            lora[key] = entry
    ours = run_ours(model_dir, rung_dir / "ours", iters, warmup, args.batch_size, args.max_tokens)
    more_processes = {}
    for n in (p for p in args.processes if p > 1):
        run = run_ours(model_dir, rung_dir / f"ours_{n}_processes", iters, warmup, args.batch_size,
                       args.max_tokens, processes=n)
        run["speedup_vs_1_process"] = ours["seconds_per_iter"] / run["seconds_per_iter"]
        more_processes[str(n)] = run
    after = machine_floor(*floor_shape)

    bandwidth = max(before["bandwidth"]["used_gbs"], after["bandwidth"]["used_gbs"])
    peak = max(before["matmul"]["used_gflops"], after["matmul"]["used_gflops"])
    ours_rows = metrics_rows(rung_dir / "ours", skip=warmup)
    completions = {  # ours' measured iterations: a real model can stop at EOS before --max-tokens
        "mean_completion_tokens_per_iter": [r["completions/mean_length"] for r in ours_rows],
        "eos_rate_per_iter": [r["completions/eos_rate"] for r in ours_rows],
        "eos_rate": float(np.mean([r["completions/eos_rate"] for r in ours_rows])),
    }
    shape = {"mean_prompt_tokens": prompt_tokens, **completions,
             **judge_shape(model, tokenizer, model_dir, args.batch_size, ours["mean_completion_tokens"])}
    del model
    floor = floors(counts, rows=rows, prompt_tokens=prompt_tokens,
                   completion_tokens=ours["mean_completion_tokens"], decode_steps=args.max_tokens,
                   judge_rows=2 * args.batch_size, judge_tokens=shape["judge_tokens_per_row"],
                   judge_head=shape["judge_head_tokens"], bandwidth_gbs=bandwidth, peak_gflops=peak)
    measured = {k: ours[f"{k}_seconds"] for k in ("rollout", "judge", "score", "update")}
    measured["step"] = ours["seconds_per_iter"]

    def speedup(key: str) -> float | None:
        s = lora[key].get("seconds_per_iter")
        return None if s is None else s / ours["seconds_per_iter"]

    return {
        "model": {"build": build, "config": {k: config.get(k) for k in (
            "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings")},
                  **counts, "parameters_loaded": loaded},
        "iters_measured": iters, "warmup": warmup,
        "shape": {"rows": rows, "decode_steps": args.max_tokens, "mean_completion_tokens": ours["mean_completion_tokens"],
                  "judge_rows": 2 * args.batch_size, **shape},
        "machine": {"bandwidth_gbs_used": bandwidth, "matmul_peak_gflops_used": peak, "before": before, "after": after},
        "floor_seconds": floor["seconds"],
        "floor_gflop": floor["gflop"],
        "floor_rollout_weight_stream_seconds": floor["rollout_weight_stream_seconds"],
        "ours": ours,
        "ours_more_processes": more_processes,
        "ours_over_floor": {k: measured[k] / floor["seconds"][k] for k in measured},
        "update_fraction_of_peak": floor["seconds"]["update"] / measured["update"],
        "update_fraction_of_peak_6n_convention": floor["update_gflop_6n_convention"] / peak / measured["update"],
        "decode": decode,
        "mlx_lm_lora_5_10_2": lora,
        "speedup_vs_as_shipped": speedup("as_shipped"),
        "speedup_vs_judge_2_tokens": speedup("judge_2_tokens"),
        "rung_wall_seconds": time.perf_counter() - started,
    }


def markdown_table(result: dict) -> str:
    """The README's table of a ladder JSON: per rung, ours (phases), the anchor, the ratios to the floor."""
    def num(x, fmt="{:.2f}"):
        return "n/m" if x is None else fmt.format(x)

    lines = ["| rung (parameters) | ours s/iter: rollout, judge, score, update | mlx-lm-lora as shipped / 2-token judge, s/iter | speedup | ours / floor: rollout, judge, score, update, step | floor: B GB/s, P GFLOP/s | update at peak (4N / 6N) | ours on 2 processes, s/iter (vs 1) | load before, after |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rungs"].items():
        o, f, lora = r["ours"], r["ours_over_floor"], r["mlx_lm_lora_5_10_2"]
        two = r.get("ours_more_processes", {}).get("2")
        two_text = "n/m" if two is None else f"{two['seconds_per_iter']:.2f} ({two['speedup_vs_1_process']:.2f}x)"
        lines.append(
            f"| {name} ({r['model']['parameters'] / 1e6:.1f}M) "
            f"| **{o['seconds_per_iter']:.2f}**: {o['rollout_seconds']:.2f}, {o['judge_seconds']:.2f}, {o['score_seconds']:.2f}, {o['update_seconds']:.2f} "
            f"| {num(lora['as_shipped'].get('seconds_per_iter'))} / {num(lora['judge_2_tokens'].get('seconds_per_iter'))} "
            f"| **{num(r['speedup_vs_as_shipped'], '{:.2f}x')}** / {num(r['speedup_vs_judge_2_tokens'], '{:.2f}x')} "
            f"| {f['rollout']:.1f}, {f['judge']:.1f}, {f['score']:.1f}, {f['update']:.1f}, **{f['step']:.1f}** "
            f"| {r['machine']['bandwidth_gbs_used']:.1f}, {r['machine']['matmul_peak_gflops_used']:.0f} "
            f"| {r['update_fraction_of_peak']:.2f} / {r['update_fraction_of_peak_6n_convention']:.2f} "
            f"| {two_text} "
            f"| {r['machine']['before']['loadavg'][0]:.1f}, {r['machine']['after']['loadavg'][0]:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    from benchmarks.common import arguments, emit, machine

    parser = arguments(__doc__, batch_size=8, max_tokens=64)
    parser.add_argument("--rungs", nargs="+", choices=[*RUNGS, *REAL_RUNGS], default=["toy", "80m"],
                        help="model sizes to run (250m: about 2 minutes per iteration of the anchor here; "
                             "smollm2: the real SmolLM2-135M-Instruct, after ppo-fetch smollm2)")
    parser.add_argument("--random-weights", action="store_true",
                        help="smollm2: a random-weight Llama of its exact shape instead of the fetched model "
                             "(tokenizer not SmolLM2's; benchmarks/smollm2.py)")
    parser.add_argument("--iters", type=int, default=None, help=f"measured iterations (default per rung: {DEFAULT_ITERS})")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2],
                        help="ours also on this many processes (mlx.launch, ring on loopback); the anchor runs on one")
    parser.add_argument("--decode-only", action="store_true",
                        help="only the decode section of each rung (rows = 2 x --batch-size), e.g. to place the BLAS-thread rule")
    parser.add_argument("--decode-reps", type=int, default=3, help="repetitions of the decode section (after one warm-up round)")
    parser.add_argument("--lora-python", default=os.environ.get("MLX_LM_LORA_PYTHON", "/tmp/lora-venv/bin/python"))
    parser.add_argument("--table", type=Path, nargs="+", default=None,
                        help="print the markdown table of saved ladder JSON files (their rungs merged) and exit")
    args = parser.parse_args(argv)
    if args.table:
        merged = {"rungs": {}}
        for path in args.table:
            merged["rungs"].update(json.loads(path.read_text())["rungs"])
        print(markdown_table(merged))
        return merged

    for name in args.rungs:  # before any rung runs: a missing folder is one line, at once
        if problem := real_rung_problem(name, args.random_weights):
            raise SystemExit(problem)

    import mlx.core as mx

    from ppo.platform.blas import find_fast_blas

    blas = find_fast_blas()
    result = {
        "benchmark": "ppo_step_ladder_vs_mlx_lm_lora",
        "command": " ".join(["benchmarks/bench_ladder.py", *(argv if argv is not None else sys.argv[1:])]),
        "started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "loadavg_start": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        **machine(),
        "mlx": mx.__version__,
        "batch_prompts": args.batch_size,
        "completion_tokens_max": args.max_tokens,
        "judge": "LLM, the rung's own model (ours: judge.order=both, the default)",
        "floor_formulas": FLOOR_FORMULAS,
        "target_speedup_at_least": 3.0,
        "rungs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rungs:
            print(f"[bench_ladder] {name} ...", file=sys.stderr, flush=True)
            run = run_decode_only(name, args, Path(tmp)) if args.decode_only else run_rung(name, args, Path(tmp), blas)
            result["rungs"][name] = run
    result["loadavg_end"] = list(os.getloadavg())
    result["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return emit(result)


if __name__ == "__main__":
    main()
