"""The collectives of a distributed run on one machine, through the rendezvous and through MLX's ring.

    .venv/bin/python benchmarks/bench_collectives.py [--reps 30] [--procs 2 4] [--floats 1 10000 100000 1000000]

Launches N ranks (`python -m ppo.platform.launcher`, what ppo-launch runs; ring backend on
loopback) of this script, each of which times, on its real `World`, the calls a training step
makes: `gather_objects` of a step's metrics (about 40 floats), `average_gradients` of float32
arrays of each size in --floats, and the CPU one rank spends waiting 1 s for a late rank at a
gather. Each twice: through the rendezvous ranks on one machine use (ppo.train.rendezvous), and
through MLX's collectives, the path of ranks on several machines (the World's `rendezvous` set to
None, as it is there). Milliseconds per call, the median of --reps after one untimed call, the
slowest rank's. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, arguments, emit  # noqa: E402

METRICS = {f"metric/{i}": float(i) / 7 for i in range(40)}


def rank_main(reps: int, sizes: list[int]) -> None:
    import mlx.core as mx
    import numpy as np

    from ppo.train.distributed import World

    world = World.current()
    rendezvous = world.rendezvous

    def timed(call) -> float:
        call()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return float(np.median(times)) * 1e3

    out: dict = {}
    for path in ("rendezvous", "mlx"):
        world.rendezvous = rendezvous if path == "rendezvous" else None
        row = {"gather_metrics_ms": timed(lambda: world.gather_objects(METRICS))}
        for n in sizes:
            grads = {"w": mx.ones((n,))}
            row[f"average_{n}_floats_ms"] = timed(lambda: world.average_gradients(grads, like=grads))
        world.gather_objects(0)
        if world.rank == 0:
            time.sleep(1.0)
        cpu = time.process_time()
        world.gather_objects(0)
        row["cpu_seconds_waiting_1s"] = time.process_time() - cpu if world.rank != 0 else None
        out[path] = row
    world.rendezvous = rendezvous
    rows = world.gather_objects(out)
    if world.is_main:
        slowest = {path: {key: max(r[path][key] for r in rows if r[path][key] is not None)
                          for key in rows[0][path]} for path in rows[0]}
        print("RESULT " + json.dumps(slowest), flush=True)


def launch(procs: int, reps: int, sizes: list[int]) -> dict:
    from ppo.tools.launch import free_port_block

    cmd = [sys.executable, "-m", "ppo.platform.launcher", "-n", str(procs), "--backend", "ring", "--starting-port",
           str(free_port_block(2 * procs)), "--python", sys.executable, __file__, "--rank-worker", "--reps",
           str(reps), "--floats", *map(str, sizes)]
    done = subprocess.run(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not result:
        raise SystemExit(f"bench_collectives: {procs} ranks failed:\n{(done.stdout + done.stderr)[-3000:]}")
    timings = json.loads(result[0].removeprefix("RESULT "))
    speedup = {key: timings["mlx"][key] / timings["rendezvous"][key] for key in timings["mlx"]
               if key.endswith("_ms") and timings["rendezvous"][key] > 0}
    return {"processes": procs, **timings, "mlx_over_rendezvous": speedup}


def main() -> None:
    parser = arguments(__doc__, reps=30)
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--floats", type=int, nargs="+", default=[1, 10_000, 100_000, 1_000_000])
    parser.add_argument("--rank-worker", action="store_true", help=argparse_hidden())
    args = parser.parse_args()
    if args.rank_worker:
        rank_main(args.reps, args.floats)
        return
    emit({
        "benchmark": "collectives",
        "setting": "ranks on one machine, ring backend on loopback; ms per call, median, slowest rank",
        "cpu_count": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "runs": [launch(n, args.reps, args.floats) for n in args.procs],
        "loadavg_end": list(os.getloadavg()),
    })


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
