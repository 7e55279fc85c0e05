"""What the benchmarks share: the benchmark model, the composed config, medians of a run, and
the runner every script uses (its argument parser, ppo-train in a subprocess, the machine it
ran on, its one JSON object on stdout).

The benchmark model is the foundation issue's setting (and the mlx-lm-lora comparison's
figure): a tiny Qwen3 from `ppo.demo.tiny` with hidden 256, 4 layers, 4 heads and a 4096-token
vocabulary, about 4.2M parameters, random weights, built fresh into a temp folder.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent

BENCH_MODEL = {"hidden": 256, "layers": 4, "vocab": 4096, "heads": 4, "seed": 0}
BENCH_MODEL_NAME = "ppo.demo.tiny qwen3 hidden=256 layers=4 vocab=4096"

# Overrides that keep a timed run to its training steps: no eval, no checkpoint, no bar, no wandb.
QUIET_RUN = ["train.steps_per_eval=1000000", "train.save_every=1000000", "train.progress=false", "logger=none"]


def build_bench_model(path: Path, **changes) -> Path:
    from ppo.demo.tiny import build_tiny_model

    return build_tiny_model(Path(path), **{**BENCH_MODEL, **changes})


# ---------------------------------------------------------------------------------------------
# The runner: what every benchmark script did for itself.


def arguments(doc: str, **shared) -> argparse.ArgumentParser:
    """The script's argument parser, described by the first line of its docstring, with the
    options the benchmarks share, each given with the script's default: `iters=30, warmup=5`
    adds `--iters 30 --warmup 5` (also `reps`, `batch_size` as --batch-size, `max_tokens`)."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    for name, default in shared.items():
        out.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    return out


def emit(result: dict) -> dict:
    """Print the benchmark's result as its one JSON object (what run_all.py reads) and return it."""
    print(json.dumps(result, indent=2))
    return result


def machine() -> dict:
    """Where a benchmark ran: MLX's default device and the BLAS in this process."""
    import mlx.core as mx

    from ppo.platform.blas import blas_in_use

    return {"device": str(mx.default_device()), "blas": blas_in_use()}


def parameters(model_dir: Path) -> int:
    """The parameter count of the mlx-lm model folder, as mlx-lm counts it."""
    from mlx_lm import load
    from mlx_lm.utils import get_total_parameters

    return get_total_parameters(load(str(model_dir))[0])


def run_ppo_train(overrides: list[str], run_dir: Path, skip: int = 0, processes: int = 1,
                  env: dict | None = None) -> list[dict]:
    """`ppo-train OVERRIDES hydra.run.dir=RUN_DIR` in its own process, as a user runs it (with
    `processes` > 1 launched by `ppo-launch -n N --backend ring`, the global batch split over the
    ranks); its metrics rows without the first `skip` (warm-up) steps. A failed run ends the
    benchmark with the tail of its output."""
    exe = Path(sys.executable).with_name("ppo-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ppo.tools.cli"]
    if processes > 1:  # ppo-launch: mlx.launch on a free block of ports, the worst rank's exit code
        cmd = [str(Path(sys.executable).with_name("ppo-launch")), "-n", str(processes), "--backend", "ring"]
    result = subprocess.run([*cmd, *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                            env=env)
    if result.returncode != 0 or not (Path(run_dir) / "metrics.jsonl").exists():  # mlx.launch exits 0 when a rank failed
        raise SystemExit(f"ppo-train ({processes} process{'es' if processes > 1 else ''}) failed:\n"
                         f"{(result.stdout + result.stderr)[-3000:]}")
    return metrics_rows(run_dir, skip=skip)


def metrics_rows(run_dir: Path, skip: int = 0) -> list[dict]:
    """metrics.jsonl of a run, without its first `skip` (warm-up) steps."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()][skip:]


def median(rows: list[dict], key: str) -> float:
    import numpy as np

    return float(np.median([r[key] for r in rows])) if rows else float("nan")


def train_rows(model_dir: Path, run_dir: Path, iters: int, warmup: int, overrides: list[str] = ()) -> list[dict]:
    """Train `iters + warmup` steps on `model_dir` through the real trainer (in this
    process) and return the metrics rows after the warm-up."""
    from ppo.train.config import compose_train
    from ppo.train.loop import train

    cfg = compose_train([f"model.path={model_dir}", f"train.iters={iters + warmup}", *QUIET_RUN, *overrides])
    train(cfg, run_dir)
    return metrics_rows(run_dir, skip=warmup)


def step_rows(cfg, run_dir: Path, iters: int, warmup: int = 0, **variants) -> list[dict]:
    """Run `iters + warmup` steps of the shipped `ppo.train.step.train_step` as the training
    loop sets them up (`ppo.train.loop.train`: models, prompts, judge, optimizer, per-step
    seed), with `variants` (`sample_fn`, `token_logps_fn`) passed to it, and return the
    step metrics after the warm-up. Evaluation, reports and checkpoints are left out: a
    benchmark times the step, and variants go in as arguments, never into module globals."""
    import mlx.core as mx
    import mlx.nn as nn

    from ppo.judges import build_judge
    from ppo.train.validation import validate
    from ppo.train.data import PromptSampler, load_prompts
    from ppo.train.loop import step_seed
    from ppo.train.models import frozen_base, load_policy_and_reference
    from ppo.train.optimizer import learning_rate_schedule, make_optimizer
    from ppo.train.step import Sampling, make_loss_fn, train_step

    validate(cfg)
    train_cfg = cfg.train
    mx.random.seed(cfg.seed)
    policy, reference, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)
    if train_cfg.grad_checkpoint:
        from mlx_lm.tuner.trainer import grad_checkpoint

        grad_checkpoint(policy.layers[0])
    splits = load_prompts(cfg.data, tokenizer, cfg.seed, train_cfg.max_seq_length - cfg.generation.max_completion_length)
    sampler = PromptSampler(splits.train, train_cfg.batch_size, cfg.seed, cfg.data.shuffle)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    judge = build_judge(cfg.judge, run_dir=Path(run_dir), seed=cfg.seed, tokenizer=tokenizer, base_path=cfg.model.path,
                        base=frozen_base(policy, reference, cfg.model, cfg.finetune))
    optimizer = make_optimizer(train_cfg, learning_rate_schedule(train_cfg, cfg.loss.ppo_epochs))
    loss_args = {"token_logps_fn": variants["token_logps_fn"]} if "token_logps_fn" in variants else {}
    loss_and_grad = nn.value_and_grad(policy, make_loss_fn(cfg.loss, **loss_args))
    sampling = Sampling.from_config(cfg.generation, tokenizer)
    rows = []
    try:
        for step in range(1, iters + warmup + 1):
            mx.random.seed(step_seed(cfg.seed, step))
            rows.append(train_step(policy, reference, tokenizer, judge, optimizer, loss_and_grad, sampler.next_batch,
                                   step=step, sampling=sampling, loss_cfg=cfg.loss,
                                   grad_accumulation_steps=train_cfg.grad_accumulation_steps,
                                   dropout=cfg.finetune.dropout, **variants))
    finally:
        judge.close()
    return rows[warmup:]


def fixed_batch(cfg, batch_size: int, max_tokens: int, seed: int = 0) -> SimpleNamespace:
    """What `collect` needs to score one fixed batch, so that scoring and update can be timed
    without a rollout: the models of `cfg`, `batch_size` demo prompts, a `sample_fn` that
    returns the same 2 x `batch_size` random completions of `max_tokens` tokens (no EOS)
    every time, and a judge that prefers the first completion of every pair (all pairs kept)."""
    import numpy as np

    from ppo.demo import corpus
    from ppo.judges import Verdicts
    from ppo.train.data import Prompt
    from ppo.train.models import load_policy_and_reference
    from ppo.train.rollout import Completions
    from ppo.train.step import Sampling

    policy, reference, tokenizer = load_policy_and_reference(cfg.model, cfg.finetune)
    prompts = [Prompt(f"bench:{i}", text, tuple(tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                                              add_generation_prompt=True)))
               for i, text in enumerate(corpus.prompts(batch_size, seed=seed))]
    rng = np.random.default_rng(seed)
    completions = [rng.integers(3, policy.args.vocab_size, size=max_tokens).tolist() for _ in range(2 * batch_size)]

    def sample_fn(model, prompt_ids, **_):
        n = len(prompt_ids)
        half = lambda ids: Completions(ids, [False] * n, 0.0, sum(len(c) for c in ids))  # noqa: E731
        return half(completions[:n]), half(completions[n:])

    def first_wins(pairs, step):
        return Verdicts(np.ones(len(pairs)))

    return SimpleNamespace(cfg=cfg, policy=policy, reference=reference, tokenizer=tokenizer, prompts=prompts,
                           sample_fn=sample_fn, judge=first_wins, sampling=Sampling.from_config(cfg.generation, tokenizer))


def scoring_and_update_seconds(fixed: SimpleNamespace, optimizer, loss_and_grad, **variants) -> tuple[float, float]:
    """One shipped `collect` (its scoring phase; the rollout and judge are `fixed`'s) and one
    shipped `update` on that batch: (scoring seconds, update seconds) as those functions time
    them. `variants` (`token_logps_fn`) go to `collect`; the loss's scorer is `loss_and_grad`'s."""
    from ppo.train.step import collect, update

    cfg = fixed.cfg
    collected = collect(fixed.policy, fixed.reference, fixed.tokenizer, fixed.judge, fixed.prompts, step=0,
                        sampling=fixed.sampling, loss_cfg=cfg.loss, dropout=cfg.finetune.dropout,
                        sample_fn=fixed.sample_fn, **variants)
    updated = update(fixed.policy, optimizer, loss_and_grad, [collected.judged], epochs=cfg.loss.ppo_epochs,
                     rollout_ratio=cfg.loss.ratio == "rollout")
    return collected.metrics["timing/score_seconds"], updated.seconds


def step_seconds(rows: list[dict]) -> dict:
    """Median seconds per iteration and per phase, as the trainer times them."""
    out = {"seconds_per_iter": median(rows, "timing/step_seconds")}
    for phase in ("rollout", "judge", "score", "update"):
        out[f"{phase}_seconds"] = median(rows, f"timing/{phase}_seconds")
    return out


def median_seconds(fn, reps: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `reps` calls, after `warmup` untimed calls."""
    import time

    import numpy as np

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return float(np.median(times))


def median_ms(fn, reps: int) -> float:
    """`median_seconds` in milliseconds, to 2 decimals (the microbenchmarks' unit)."""
    return round(1000 * median_seconds(fn, reps), 2)


def mlx_lm_sample(model, prompts: list[list[int]], *, eos_token_ids, max_tokens: int, temperature: float,
                  top_p: float = 1.0) -> tuple[list[list[int]], list[bool]]:
    """mlx-lm's own batched sampling, `BatchGenerator` driven as the harness drove it before it
    had a decode loop of its own: the sampled tokens (EOS kept) and whether each row stopped
    at EOS. The reference of tests/test_decode.py and of bench_ladder's decode section."""
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    generator = BatchGenerator(model, max_tokens=max_tokens, stop_tokens=[[t] for t in eos_token_ids],
                               sampler=make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0),
                               completion_batch_size=64, prefill_batch_size=64)
    uids = generator.insert(prompts)
    tokens, reasons = {u: [] for u in uids}, {}
    try:
        while responses := generator.next_generated():
            for r in responses:
                tokens[r.uid].append(r.token)
                if r.finish_reason is not None:
                    reasons[r.uid] = r.finish_reason
    finally:
        generator.close()
    return [tokens[u] for u in uids], [reasons[u] == "stop" for u in uids]
