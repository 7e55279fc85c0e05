"""Scoring and the update at SmolLM2-135M: the layers below the adapters run once, against every forward running them.

    .venv/bin/python benchmarks/bench_scoring.py [--reps 3] [--random-weights] [--override loss.ppo_epochs=2 ...]

With LoRA on the last `finetune.num_layers` layers (16 of SmolLM2's 30, the default) the
reference (the policy's base) and the policy compute the same hidden states below the first
adapter. The shipped `collect` runs those layers once, with the reference's scoring, and the
update's forwards start above them (`ppo.train.scoring.share_frozen_layers`). The previous path,
every forward through all 30 layers, is this benchmark's variant: a `token_logps_fn` that drops
the shared states, passed to `collect` and to the loss (`make_loss_fn`).

One process, the shipped `collect` (its scoring phase; the rollout and the judge are
`benchmarks.common.fixed_batch`'s: fixed random completions, the first of each pair chosen) and
the shipped `update`, on 2 x `--batch-size` rows of chat-templated demo prompts with
`--max-tokens`-token completions (the ladder's smollm2 rung: 8 prompts, 64 tokens, of which its
real completions averaged 51). The variants take turns in each round (a change of load hits both
alike), after one untimed round. Reported: median seconds of the score and update phases as the
step times them, old / shared (> 1: sharing is faster), and, from the same weights before any
update, whether the loss and every gradient are bit for bit the same both ways.

Model: the real SmolLM2-135M-Instruct (`ppo-fetch smollm2`), float32; `--random-weights`: a
random-weight Llama of its exact shape (`benchmarks/smollm2.py`; `--layers N`: N layers, for a smoke test).
"""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402

ensure_fast_blas()


def without_shared_layers(model, batch):
    """`ppo.train.scoring.token_logps` through every layer: the path before the layers were shared."""
    from ppo.train.scoring import token_logps

    return token_logps(model, replace(batch, shared_hidden=None, shared_layers_of=()))


def main(argv=None) -> dict:
    import time

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten

    from benchmarks import smollm2
    from benchmarks.common import QUIET_RUN, arguments, emit, fixed_batch, machine, scoring_and_update_seconds
    from ppo.train.config import compose_train
    from ppo.train.optimizer import learning_rate_schedule, make_optimizer
    from ppo.train.scoring import frozen_leading_layers, token_logps
    from ppo.train.step import collect, make_loss_fn

    parser = arguments(__doc__, reps=3, batch_size=8, max_tokens=64)
    parser.add_argument("--random-weights", action="store_true", help="a random Llama of SmolLM2's shape")
    parser.add_argument("--layers", type=int, default=None, help="with --random-weights: this many layers (a smoke test)")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides (e.g. loss.ppo_epochs=2)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.random_weights:
            changes = {} if args.layers is None else {"num_hidden_layers": args.layers}
            model_dir, weights = smollm2.build_random_llama(Path(tmp) / "model", **changes), "random"
        else:
            model_dir, weights = smollm2.smollm2_dir(), f"real: {smollm2.FOLDER_NAME}"
            problem = smollm2.missing(model_dir)
            if problem:
                raise SystemExit(f"bench_scoring: {problem}: run {smollm2.FETCH_COMMAND} first (or pass --random-weights)")
        cfg = compose_train([f"model.path={model_dir}", "judge=rule", *QUIET_RUN, *args.override])
        fixed = fixed_batch(cfg, args.batch_size, args.max_tokens)
    policy = fixed.policy
    mx.eval(policy.parameters())
    shared_layers = frozen_leading_layers(policy, fixed.reference)

    # Exactness, from the same weights: the loss and gradients of one update's forward both ways.
    collected = collect(policy, fixed.reference, fixed.tokenizer, fixed.judge, fixed.prompts, step=0,
                        sampling=fixed.sampling, loss_cfg=cfg.loss, sample_fn=fixed.sample_fn)
    policy.train()
    outputs = {}
    for name, scorer in (("shared", token_logps), ("old", without_shared_layers)):
        (loss, (metrics, _)), grads = nn.value_and_grad(policy, make_loss_fn(cfg.loss, scorer))(policy, collected.judged)
        mx.eval(loss, grads)
        outputs[name] = [("loss", loss), *tree_flatten(grads)]
    same = all(a[0] == b[0] and np.array_equal(np.array(a[1]), np.array(b[1]))
               for a, b in zip(outputs["shared"], outputs["old"]))

    variants = {"shared": token_logps, "old": without_shared_layers}
    optimizers = {name: make_optimizer(cfg.train, learning_rate_schedule(cfg.train, cfg.loss.ppo_epochs))
                  for name in variants}
    loss_and_grads = {name: nn.value_and_grad(policy, make_loss_fn(cfg.loss, scorer)) for name, scorer in variants.items()}
    times = {name: {"score": [], "update": []} for name in variants}
    load_before = list(os.getloadavg())
    started = time.perf_counter()
    for rep in range(args.reps + 1):  # the first round warms up
        for name, scorer in variants.items():
            score, update = scoring_and_update_seconds(fixed, optimizers[name], loss_and_grads[name], token_logps_fn=scorer)
            if rep:
                times[name]["score"].append(score)
                times[name]["update"].append(update)
    median = {name: {phase: float(np.median(v)) for phase, v in phases.items()} for name, phases in times.items()}
    for name in median:
        median[name]["score_and_update"] = median[name]["score"] + median[name]["update"]
    return emit({
        "benchmark": "bench_scoring",
        "model": {"weights": weights, "path": str(model_dir), "layers": len(policy.model.layers),
                  "adapted_layers": cfg.finetune.num_layers, "shared_layers": shared_layers},
        "shape": {"rows": 2 * args.batch_size, "completion_tokens": args.max_tokens,
                  "width": int(collected.judged.batch.input_ids.shape[1]), "ppo_epochs": cfg.loss.ppo_epochs},
        "reps": args.reps, "overrides": args.override,
        "seconds": median,
        "old_over_shared": {phase: median["old"][phase] / median["shared"][phase] for phase in median["old"]},
        "same_loss_and_gradients": same,
        "machine": machine(), "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
        "wall_seconds": time.perf_counter() - started,
    })


if __name__ == "__main__":
    main()
