"""Run mlx-lm-lora 5.10.2's PPO trainer and record seconds per iteration (helper of bench_vs_mlx_lm_lora.py).

Runs ONLY inside the separate mlx-lm-lora venv (never imports `ppo`):

    /tmp/lora-venv/bin/python benchmarks/mlx_lm_lora_runner.py --model DIR --data DIR --iters N --out FILE

The Linux shim: mlx-lm-lora's trainers call
``mx.set_wired_limit(mx.device_info()["max_recommended_working_set_size"])``, a key that
only Metal devices report (on the CPU wheel `device_info()` is
``{'architecture': ..., 'device_name': ...}``), so they crash with a KeyError on Linux.
`apply_linux_shim` wraps `mx.device_info` to add that key (the machine's physical memory)
when it is missing; `mx.set_wired_limit` itself is a no-op on the CPU backend. Nothing
else of mlx-lm-lora is changed. The shim lives in this wrapper and applies only to this
process.

Everything goes through mlx-lm-lora's own CLI path (`mlx_lm_lora.train.run`, i.e. what
`mlx_lm_lora.train --train-mode ppo` runs after parsing), with a TrainingCallback that
records its per-report `iterations_per_second` (steps_per_report=1: one report per
iteration, its timer covers exactly one iteration: generation, judge, scoring, update).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def apply_linux_shim() -> bool:
    import mlx.core as mx

    original = mx.device_info
    if "max_recommended_working_set_size" in original():
        return False

    def device_info():
        info = dict(original())
        info.setdefault("max_recommended_working_set_size", os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        return info

    mx.device_info = device_info
    if hasattr(mx, "metal") and hasattr(mx.metal, "device_info"):
        mx.metal.device_info = device_info
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--adapter-path", required=True)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--judge-max-tokens", type=int, default=0,
                        help="0: as shipped (its judge generates up to 16 tokens per pair); N: cap the judge at N tokens")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    shimmed = apply_linux_shim()
    import types

    import mlx.core as mx
    from mlx_lm.tuner.callbacks import TrainingCallback

    from mlx_lm_lora import train as lora_train

    class Recorder(TrainingCallback):
        def __init__(self):
            self.rows = []

        def on_train_loss_report(self, info):
            self.rows.append({"iteration": info["iteration"], "seconds": 1.0 / info["iterations_per_second"],
                              "loss": info["train_loss"], "peak_memory_gb": info["peak_memory"]})

        def on_val_loss_report(self, info):
            pass

    # What mlx_lm_lora.train.main() does after argparse: parser defaults, then CONFIG_DEFAULTS.
    ns = vars(lora_train.build_parser().parse_args([]))
    ns.update({
        "model": args.model,
        "train": True,
        "train_mode": "ppo",
        "train_type": "lora",
        "data": args.data,
        "adapter_path": args.adapter_path,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "max_completion_length": args.max_tokens,
        "temperature": 0.8,
        "epsilon": 0.2,
        "beta": 0.1,
        "learning_rate": 1e-5,
        "judge": args.model,                 # the same tiny model judges ...
        "reference_model_path": args.model,  # ... and, named as the reference, is loaded once for both
        "steps_per_report": 1,
        "steps_per_eval": 10**6,
        "save_every": 10**6,
        "lora_parameters": {"rank": 8, "dropout": 0.0, "scale": 20.0},  # ours: conf/finetune/lora.yaml
        "num_layers": -1,
        "fuse": False,
        "seed": 0,
    })
    ns = types.SimpleNamespace(**ns)
    for k, v in lora_train.CONFIG_DEFAULTS.items():
        if getattr(ns, k, None) is None:
            setattr(ns, k, v)

    if args.judge_max_tokens:
        from mlx_lm_lora.trainer import judge as lora_judge

        generate = lora_judge.generate

        def capped(*a, **kw):
            kw["max_tokens"] = min(kw.get("max_tokens", args.judge_max_tokens), args.judge_max_tokens)
            return generate(*a, **kw)

        lora_judge.generate = capped

    recorder = Recorder()
    tic = time.perf_counter()
    lora_train.run(ns, training_callback=recorder)
    wall = time.perf_counter() - tic
    with open(args.out, "w") as f:
        json.dump({"rows": recorder.rows, "wall_seconds": wall, "shim_applied": shimmed, "judge_max_tokens": args.judge_max_tokens or 16,
                   "device": str(mx.default_device()), "mlx_version": mx.__version__,
                   "ld_preload": os.environ.get("LD_PRELOAD", "")}, f)


if __name__ == "__main__":
    sys.exit(main())
