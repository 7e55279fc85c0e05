"""Environment check: which BLAS MLX uses, how fast its CPU matmul and exp are, and what each dtype costs.

    python -m ppo.tools.doctor [--size N] [--repeats R]

Prints one JSON object.  mlx and numpy are imported inside functions, after
:func:`ppo.platform.blas.ensure_fast_blas` had a chance to preload OpenBLAS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from ppo.platform.blas import (
    BLAS_WARNING,
    blas_in_use,
    ensure_fast_blas,
    fast_blas_preloaded,
)

SLOW_RATIO = 0.7

# The dtype table's transformer-shaped matmul, (rows x K) @ (K x N): a small model's MLP width, at a
# batch's worth of tokens (256 rows) and at decode (16 rows).
DTYPE_MATMUL_K, DTYPE_MATMUL_N, DTYPE_MATMUL_ROWS = 576, 1536, (256, 16)
# Seconds the dtype table may spend in all, shared by its cells (each gets at least one timed call).
DTYPE_BUDGET_S = 0.6


def _gflops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / max(seconds, 1e-12) / 1e9


def _time_median(fn, repeats: int) -> float:
    """Median wall time of fn() after a warm-up.

    The warm-up runs at least 2 calls and ~0.25 s so BLAS thread pools are
    spun up (the first few OpenBLAS calls are several times slower)."""
    t_start, calls = time.perf_counter(), 0
    while calls < 2 or (time.perf_counter() - t_start < 0.25 and calls < 50):
        fn()
        calls += 1
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def mlx_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """float32 n x n matmul on MLX's CPU device (warmed up, median of repeats)."""
    import mlx.core as mx

    dev = mx.cpu
    a = mx.random.normal((n, n), dtype=mx.float32, stream=dev)
    b = mx.random.normal((n, n), dtype=mx.float32, stream=dev)
    mx.eval(a, b)
    return _gflops(n, _time_median(lambda: mx.eval(mx.matmul(a, b, stream=dev)), repeats))


def numpy_matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Same measurement with numpy, in this process."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _gflops(n, _time_median(lambda: a @ b, repeats))


def exp_ns_per_element(n: int = 1 << 20, repeats: int = 5) -> tuple[float, float]:
    """(MLX, numpy) nanoseconds per element of float32 exp: the cost behind SiLU and
    softmax, which dominate a small model's forward where MLX's CPU exp is scalar (x86)."""
    import mlx.core as mx
    import numpy as np

    x = mx.random.normal((n,), dtype=mx.float32, stream=mx.cpu)
    mx.eval(x)
    xn = np.array(x)
    per = 1e9 / n
    return (_time_median(lambda: mx.eval(mx.exp(x, stream=mx.cpu)), repeats) * per,
            _time_median(lambda: np.exp(xn), repeats) * per)


def _time_within(fn, budget: float) -> float:
    """Median wall time of fn() after one warm-up call, over as many calls as fit in `budget`
    seconds: a fast kernel is timed several times; one slower than `budget` is timed by that
    first call alone (warming up matters for BLAS's threads, and float32 is the fast one)."""
    t0 = time.perf_counter()
    fn()
    warm_up = time.perf_counter() - t0
    if warm_up >= budget:
        return warm_up
    times, deadline = [], time.perf_counter() + max(budget - warm_up, 0.0)
    while not times or (time.perf_counter() + times[-1] < deadline and len(times) < 20):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def dtype_matmul_report(budget: float = DTYPE_BUDGET_S) -> dict:
    """GFLOP/s of the dtype table's matmul in float32, bfloat16, float16 and 4-bit (mx.quantized_matmul,
    groups of 64 and 32; activations and scales in the dtype model.dtype=auto runs, float32 on the CPU),
    and each one's slowdown against float32, on MLX's default device: why model.dtype=auto is float32 on
    the CPU, and what a quantized base costs there (ppo/train/config.py, model.dtype)."""
    import mlx.core as mx

    from ppo.train.models import dtype_name, resolve_dtype

    started = time.perf_counter()
    auto = resolve_dtype("auto")
    quantized_dtype = auto or mx.float16  # on a GPU, a half-precision checkpoint's scales
    k, n = DTYPE_MATMUL_K, DTYPE_MATMUL_N
    weight = mx.random.normal((n, k), key=mx.random.key(0)) / k**0.5
    share = budget / (2 * len(DTYPE_MATMUL_ROWS) + 3 * len(DTYPE_MATMUL_ROWS))
    report = {"device": str(mx.default_device()), "shape": f"rows x {k} @ {k} x {n}",
              "model_dtype_auto": dtype_name(auto) if auto is not None else "the checkpoint's own",
              "4bit_activations_and_scales": dtype_name(quantized_dtype)}
    for rows in DTYPE_MATMUL_ROWS:
        x = mx.random.normal((rows, k), key=mx.random.key(1))
        cells = {name: (lambda d=dtype: (x.astype(d), weight.astype(d)))() for name, dtype in
                 (("float32", mx.float32), ("bfloat16", mx.bfloat16), ("float16", mx.float16))}
        timings = {}
        for name, (a, b) in cells.items():
            mx.eval(a, b)
            timings[name] = _time_within(lambda: mx.eval(a @ b.T), share)
        a = x.astype(quantized_dtype)
        for group in (64, 32):
            w, scales, biases = mx.quantize(weight.astype(quantized_dtype), group_size=group, bits=4)
            mx.eval(a, w, scales, biases)
            timings[f"4bit_g{group}"] = _time_within(lambda: mx.eval(mx.quantized_matmul(
                a, w, scales, biases, transpose=True, group_size=group, bits=4)), share)
        flops = 2.0 * rows * k * n
        report[f"rows_{rows}"] = {name: {"ms": round(t * 1e3, 2), "gflops": round(flops / max(t, 1e-12) / 1e9, 2),
                                         "x_slower_than_float32": round(t / max(timings["float32"], 1e-12), 1)}
                                  for name, t in timings.items()}
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def numpy_blas() -> str:
    """Short description of numpy's BLAS."""
    try:
        from threadpoolctl import threadpool_info  # optional

        import numpy  # noqa: F401 - load its BLAS first

        for info in threadpool_info():
            if info.get("user_api") == "blas":
                return (
                    f"{info.get('internal_api')} {info.get('version') or ''}".strip()
                    + f" ({info.get('filepath')})"
                )
    except Exception:  # noqa: BLE001
        pass
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def install_report() -> dict:
    """The installed package: version, where its configs and cache are, and what is missing
    (each problem with its fix; ppo-doctor exits 1 when there is one)."""
    from ppo import resources
    from ppo.demo.model import state as demo_model_state

    return {
        "ppo_mlx_version": resources.version(),
        "config_dir": str(resources.config_dir()),
        "cache_dir": str(resources.cache_dir()),
        # model=demo's folder in the cache: present, or missing / incomplete / outdated with its fix
        "demo_model": demo_model_state(),
        "problems": resources.install_problems(),
    }


def demo_model_warning(report: dict) -> str | None:
    """A line when the demo model (model=demo, `ppo-train experiment=demo`) is not ready."""
    demo = report.get("demo_model") or {}
    if demo.get("state") in (None, "present"):
        return None
    return f"demo model {demo['state']} in {demo['path']}: {demo['fix']}"


def doctor_report(n: int = 1024, repeats: int = 5) -> dict:
    import mlx.core as mx
    import numpy as np

    mlx_gf = mlx_matmul_gflops(n, repeats)
    # Let the BLAS threads of the first benchmark park (OpenBLAS workers
    # busy-wait briefly after each call) before timing the second one.
    time.sleep(0.2)
    np_gf = numpy_matmul_gflops(n, repeats)
    ratio = mlx_gf / np_gf if np_gf > 0 else float("nan")
    mlx_exp_ns, np_exp_ns = exp_ns_per_element(repeats=repeats)
    preloaded = fast_blas_preloaded()

    warnings: list[str] = []
    if sys.platform.startswith("linux") and not preloaded:
        warnings.append(BLAS_WARNING)
    if ratio < SLOW_RATIO:
        warnings.append(
            f"MLX float32 matmul is {np_gf / max(mlx_gf, 1e-12):.1f}x slower than numpy "
            f"({mlx_gf:.1f} vs {np_gf:.1f} GFLOP/s at n={n}); fix: preload OpenBLAS "
            "(Debian/Ubuntu: sudo apt-get install libopenblas0-pthread, or set "
            "PPO_BLAS_LIBRARY=/path/to/libopenblas.so; the ppo entry points then "
            "preload it automatically unless PPO_NO_BLAS_PRELOAD=1)"
        )

    install = install_report()
    if (line := demo_model_warning(install)) is not None:
        warnings.append(line)
    return {
        **install,
        "mlx_version": getattr(mx, "__version__", "unknown"),
        "mlx_device": str(mx.default_device()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "blas": blas_in_use(),
        "fast_blas_preloaded": preloaded,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "openblas_thread_timeout": os.environ.get("OPENBLAS_THREAD_TIMEOUT"),
        "matmul_size": n,
        "mlx_matmul_gflops": round(mlx_gf, 2),
        "numpy_matmul_gflops": round(np_gf, 2),
        "mlx_over_numpy": round(ratio, 3),
        # Informational: no setting changes it (see docs/benchmarks.md, "Where the step's time goes").
        "mlx_exp_ns_per_element": round(mlx_exp_ns, 2),
        "numpy_exp_ns_per_element": round(np_exp_ns, 2),
        # What each model.dtype (and a 4-bit base) costs here; model.dtype=auto picks float32 on the CPU.
        "dtype_matmul": dtype_matmul_report(),
        "numpy_version": np.__version__,
        "numpy_blas": numpy_blas(),
        "warnings": warnings,
    }


def main(argv: list[str] | None = None) -> int:
    ensure_fast_blas()  # before mlx is imported; may re-exec this command
    parser = argparse.ArgumentParser(prog="ppo-doctor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=int(os.environ.get("PPO_DOCTOR_SIZE", "1024")),
        help="matmul size n (n x n float32; default 1024 or $PPO_DOCTOR_SIZE)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    args = parser.parse_args(argv)
    report = doctor_report(args.size, args.repeats)
    print(json.dumps(report, indent=2))
    for problem in report["problems"]:
        print(f"error: {problem}", file=sys.stderr)
    if (line := demo_model_warning(report)) is not None:  # not a broken install: exits 0
        print(f"warning: {line}", file=sys.stderr)
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
