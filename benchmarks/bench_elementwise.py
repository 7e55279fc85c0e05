"""Why forwards of small models are slow on a Linux x86 CPU: MLX's transcendental ops.

    .venv/bin/python benchmarks/bench_elementwise.py [--rows 5376 --cols 768 --reps 5]

Times, on one float32 array the size of a SiLU input in the judge's forward (16 rows x
336 tokens, MLP width 768), MLX's add, exp, sigmoid, softmax and a compiled SiLU, numpy's
exp, the matmul that produces such an activation, and an exp written with MLX ops under
`mx.compile` (the Cephes polynomial MLX itself uses, rounding by adding 1.5 * 2^23 and
2^n built with `mx.view`), with its largest relative error against float64. Off Apple
silicon MLX's CPU SIMD width is 1, so its own exp runs one element at a time.
Milliseconds, medians of --reps after a warm-up. Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()

LOG2E = 1.4426950408889634
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that n * LN2_HI is exact
ROUND = 12582912.0  # 1.5 * 2^23: adding and subtracting it rounds a float32 to an integer


def polynomial_exp(x):
    """exp(x) from MLX elementwise ops: x = n ln2 + r, exp(r) by Cephes' polynomial, 2^n
    written straight into the float32 exponent bits."""
    import mlx.core as mx

    x = mx.clip(x, -87.0, 88.0)
    n = (x * LOG2E + ROUND) - ROUND
    r = x - n * LN2_HI - n * LN2_LO
    p = 1.9875691500e-4
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = p * r + c
    p = p * r * r + r + 1.0
    return p * mx.view((n.astype(mx.int32) + 127) << 23, mx.float32)


def main(argv=None) -> dict:
    from benchmarks.common import arguments, emit, machine, median_ms

    args = arguments(__doc__, rows=5376, cols=768, reps=5).parse_args(argv)

    import mlx.core as mx
    import numpy as np

    # Serve these 16 MB buffers from the heap: left to glibc's default, the first compiled
    # function maps a fresh buffer per call (12,000 page faults, +28 ms of system time)
    # until its dynamic mmap threshold has grown, which depends on what ran before.
    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(m_mmap_threshold, 32 * 1024 * 1024)

    def ms(fn) -> float:
        return median_ms(fn, args.reps)

    x = mx.random.normal((args.rows, args.cols), key=mx.random.key(0)) * 5
    h = mx.random.normal((args.rows, 256), key=mx.random.key(1))
    w = mx.random.normal((256, args.cols), key=mx.random.key(2))
    mx.eval(x, h, w)
    silu = mx.compile(lambda a: a * mx.sigmoid(a))
    fast_exp = mx.compile(polynomial_exp)
    xn = np.array(x)
    mlx_ms = {
        "add": ms(lambda: mx.eval(x + 1.0)),
        "exp": ms(lambda: mx.eval(mx.exp(x))),
        "sigmoid": ms(lambda: mx.eval(mx.sigmoid(x))),
        "softmax": ms(lambda: mx.eval(mx.softmax(x, axis=-1))),
        "silu_compiled": ms(lambda: mx.eval(silu(x))),
        "matmul_256_to_cols": ms(lambda: mx.eval(h @ w)),
        "polynomial_exp_compiled": ms(lambda: mx.eval(fast_exp(x))),
    }
    exact = np.exp(xn.astype(np.float64))
    error = float(np.max(np.abs(np.array(fast_exp(x), dtype=np.float64) - exact) / exact))
    result = {
        "benchmark": "elementwise",
        **machine(),
        "shape": [args.rows, args.cols],
        "mlx_ms": mlx_ms,
        "numpy_exp_ms": ms(lambda: np.exp(xn)),
        "exp_ns_per_element": round(1e6 * mlx_ms["exp"] / x.size, 2),
        "add_ns_per_element": round(1e6 * mlx_ms["add"] / x.size, 2),
        "exp_over_add": round(mlx_ms["exp"] / mlx_ms["add"], 1),
        "polynomial_exp_speedup": round(mlx_ms["exp"] / mlx_ms["polynomial_exp_compiled"], 2),
        "polynomial_exp_max_relative_error": error,
    }
    return emit(result)


if __name__ == "__main__":
    main()
