"""Why ppo/ keeps MLX's logsumexp and SiLU on x86, although MLX's exp is scalar there.

    .venv/bin/python benchmarks/bench_fast_activations.py [--reps 3]

Two candidate replacements, measured against MLX's own op in one process, forward alone
and forward plus gradient (`mx.value_and_grad`), which is what scoring and the update run:

- logsumexp over the vocabulary of 4 x 44 positions (the bench step's scoring batch) with
  `bench_elementwise.polynomial_exp` under `mx.compile` and a custom vjp
  (softmax = exp(x - logsumexp)), at vocabularies of 4,096 (the bench model), 32,768 and
  151,936 (Qwen). Also the process's minor page faults per call.
- SiLU in a SwiGLU like mlx-lm's (`nn.silu(gate) * x`, compiled shapeless) on a (180, 768)
  activation, with sigmoid(x) = (1 + tanh(x/2)) / 2 and Eigen's rational tanh (no exp at
  all, so it fuses and vectorizes; using it would mean patching `mlx.nn.silu`).

Milliseconds, medians of --reps after a warm-up. Prints one JSON object.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

# Eigen's generic_fast_tanh_float: odd numerator of degree 13, even denominator of degree 6.
TANH_NUMERATOR = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
                  -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_DENOMINATOR = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_CLAMP = 7.90531110763549805  # where float32 tanh rounds to +-1


def rational_silu(x):
    import mlx.core as mx

    t = mx.clip(0.5 * x, -TANH_CLAMP, TANH_CLAMP)
    t2 = t * t
    p = TANH_NUMERATOR[-1]
    for c in TANH_NUMERATOR[-2::-1]:
        p = p * t2 + c
    q = TANH_DENOMINATOR[-1]
    for c in TANH_DENOMINATOR[-2::-1]:
        q = q * t2 + c
    return x * (0.5 + 0.5 * t * p / q)


def polynomial_logsumexp():
    """logsumexp over the last axis (kept) with the compiled polynomial exp and its own vjp."""
    import mlx.core as mx

    from benchmarks.bench_elementwise import polynomial_exp

    fast_exp = mx.compile(polynomial_exp)

    @mx.custom_function
    def logsumexp(x):
        top = mx.stop_gradient(mx.max(x, axis=-1, keepdims=True))
        return mx.log(fast_exp(x - top).sum(axis=-1, keepdims=True)) + top

    @logsumexp.vjp
    def logsumexp_vjp(primals, cotangent, output):
        x = primals[0] if isinstance(primals, (tuple, list)) else primals
        return (fast_exp(x - output) * cotangent,)

    return logsumexp


def main(argv=None) -> dict:
    from benchmarks.common import arguments, emit, machine, median_ms

    parser = arguments(__doc__, reps=3)
    parser.add_argument("--vocabs", type=int, nargs="*", default=[4096, 32768, 151936])
    args = parser.parse_args(argv)

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    def ms(fn) -> float:
        return median_ms(fn, args.reps)

    def ms_and_faults(fn) -> tuple[float, int]:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = ms(fn)
        return t, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // (args.reps + 1)

    fast_lse = polynomial_logsumexp()
    implementations = {"mlx": lambda a: mx.logsumexp(a, axis=-1, keepdims=True), "polynomial": fast_lse}
    logsumexp = {}
    for vocab in args.vocabs:
        x = mx.random.normal((4, 44, vocab), key=mx.random.key(0)) * 3
        cotangent = mx.random.normal((4, 44, 1), key=mx.random.key(1))
        mx.eval(x, cotangent)
        exact = np.log(np.exp(np.array(x, dtype=np.float64)).sum(-1, keepdims=True))
        row = {}
        for name, lse in implementations.items():
            value_and_grad = mx.value_and_grad(lambda a, f=lse, c=cotangent: (f(a) * c).sum())
            forward_ms, forward_faults = ms_and_faults(lambda f=lse, x=x: mx.eval(f(x)))
            both_ms, both_faults = ms_and_faults(lambda g=value_and_grad, x=x: mx.eval(g(x)))
            row[name] = {"forward_ms": forward_ms, "value_and_grad_ms": both_ms,
                         "forward_page_faults": forward_faults, "value_and_grad_page_faults": both_faults,
                         "max_abs_error": float(np.abs(np.array(lse(x), dtype=np.float64) - exact).max())}
        row["value_and_grad_speedup"] = round(row["mlx"]["value_and_grad_ms"] / row["polynomial"]["value_and_grad_ms"], 2)
        logsumexp[str(vocab)] = row

    # mlx-lm's swiglu is `nn.silu(gate) * x` compiled shapeless; the candidate swaps the SiLU.
    swiglus = {"mlx": mx.compile(lambda g, u: nn.silu(g) * u, shapeless=True),
               "rational_tanh": mx.compile(lambda g, u: rational_silu(g) * u, shapeless=True)}
    gate = mx.random.normal((180, 768), key=mx.random.key(2)) * 3
    up = mx.random.normal((180, 768), key=mx.random.key(3))
    mx.eval(gate, up)
    exact = np.array(gate, dtype=np.float64) / (1 + np.exp(-np.array(gate, dtype=np.float64))) * np.array(up)
    silu = {}
    for name, f in swiglus.items():
        value_and_grad = mx.value_and_grad(lambda g, f=f: f(g, up).sum())
        silu[name] = {"forward_ms": ms(lambda f=f: mx.eval(f(gate, up))),
                      "value_and_grad_ms": ms(lambda g=value_and_grad: mx.eval(g(gate))),
                      "max_abs_error": float(np.abs(np.array(f(gate, up), dtype=np.float64) - exact).max())}
    for key in ("forward_ms", "value_and_grad_ms"):
        silu[key.replace("_ms", "_speedup")] = round(silu["mlx"][key] / silu["rational_tanh"][key], 2)

    result = {
        "benchmark": "fast_activations",
        **machine(),
        "logsumexp_4x44_positions": logsumexp,
        "swiglu_180x768": silu,
    }
    return emit(result)


if __name__ == "__main__":
    main()
