"""Seconds per PPO iteration: ours vs mlx-lm-lora 5.10.2's PPO trainer, same model, same settings.

    .venv/bin/python benchmarks/bench_vs_mlx_lm_lora.py [--iters 20] [--warmup 3] [--lora-python /tmp/lora-venv/bin/python]

Both trainers run, one after the other, in this one invocation, on the same tiny Qwen3
(`ppo.demo.tiny.build_tiny_model`: hidden 256, 4 layers, vocab 4096, 4.2M parameters, saved to a
temp dir), the same prompts (ppo/demo/assets/demo_prompts.jsonl), batch 2 prompts (two
completions each), 32-token completions, temperature 0.8, LoRA rank 8 scale 20 on all
layers, Adam at 1e-5, and an LLM judge that is the same tiny model:

- mlx-lm-lora: `mlx_lm_lora.train` (`--train-mode ppo --judge DIR --reference-model-path DIR`)
  in its own venv through `benchmarks/mlx_lm_lora_runner.py` (which carries the Linux shim
  for `mx.device_info()["max_recommended_working_set_size"]`). Run twice: as shipped (its
  judge generates up to 16 tokens per pair, one pair at a time) and with its judge capped at
  2 generated tokens (the "2-token judge" setting, the anchor at its fastest).
- ours: `ppo-train judge=llm judge.model=DIR train.batch_size=2
  generation.max_completion_length=32 logger=none` (the judge reads the policy's own
  weights with adapters off: one batched forward, no generation). Run twice: as shipped
  (`judge.order=both`: every pair judged in both orders, twice the anchor's judging) and
  with `judge.order=random` (each pair judged once, in a random order: the anchor's work).

Both processes get the same OpenBLAS preloaded (`ppo.platform.blas.find_fast_blas`), with the same
OPENBLAS_THREAD_TIMEOUT (4, set by `ppo.platform.blas` at start-up, unless already set). Seconds per
iteration are medians over the iterations after the warm-up. If the anchor cannot run, the
JSON says why and falls back to the 0.51 s/iter measured earlier on this 2-core CPU, labelled as such.
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ppo.platform.blas import ensure_fast_blas  # noqa: E402
from ppo.resources import asset  # noqa: E402

ensure_fast_blas()

EARLIER_MEASUREMENT_SECONDS = 0.51
RUNNER = ROOT / "benchmarks" / "mlx_lm_lora_runner.py"


def run_ours(model_dir: Path, run_dir: Path, iters: int, warmup: int, batch: int, max_tokens: int,
             extra: tuple[str, ...] = (), processes: int = 1) -> dict:
    """Ours through `ppo-train`; with `processes` > 1 launched as a user would, by
    `mlx.launch -n N --backend ring` (the global batch split over the ranks)."""
    from benchmarks.common import QUIET_RUN, median, run_ppo_train, step_seconds

    overrides = [
        f"model.path={model_dir}", "judge=llm", f"judge.model={model_dir}", *extra,
        f"train.iters={iters + warmup}", f"train.batch_size={batch}",
        f"generation.max_completion_length={max_tokens}", "generation.temperature=0.8", *QUIET_RUN,
    ]
    rows = run_ppo_train(overrides, run_dir, skip=warmup, processes=processes)
    return {
        **step_seconds(rows),
        "mean_completion_tokens": median(rows, "completions/mean_length"),
        "iters_measured": len(rows),
        "command": " ".join(["ppo-train", *overrides]),
    }


def run_lora(lora_python: str, model_dir: Path, tmp: Path, iters: int, warmup: int, batch: int, max_tokens: int,
             judge_max_tokens: int, blas: str | None) -> dict:
    data = tmp / "lora_data"
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text(asset("demo_prompts.jsonl").read_text())
    out = tmp / f"lora_{judge_max_tokens}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPO_", "PYTHON"))}
    env["LD_PRELOAD"] = blas or ""
    env["TOKENIZERS_PARALLELISM"] = "false"
    cmd = [lora_python, str(RUNNER), "--model", str(model_dir), "--data", str(data),
           "--adapter-path", str(tmp / f"lora_adapters_{judge_max_tokens}"), "--iters", str(iters + warmup),
           "--batch-size", str(batch), "--max-tokens", str(max_tokens), "--judge-max-tokens", str(judge_max_tokens),
           "--out", str(out)]
    result = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, env=env)
    if result.returncode != 0 or not out.exists():
        tail = (result.stderr or result.stdout)[-1500:]
        return {"error": f"mlx-lm-lora exited with {result.returncode}: {tail}"}
    from benchmarks.common import median

    data = json.loads(out.read_text())
    rows = data["rows"][warmup:]
    return {
        "seconds_per_iter": median(rows, "seconds"),
        "iters_measured": len(rows),
        "judge_max_generated_tokens": data["judge_max_tokens"],
        "invalid_judge_replies": result.stdout.count("Invalid response from the judge model")
        + result.stderr.count("Invalid response from the judge model"),
        "linux_shim_applied": data["shim_applied"],
        "blas": data["ld_preload"] or "reference BLAS of the mlx-cpu wheel",
    }


def main() -> None:
    from benchmarks.common import BENCH_MODEL_NAME, arguments, build_bench_model, emit, machine, parameters
    from ppo.platform.blas import find_fast_blas

    parser = arguments(__doc__, iters=20, warmup=3, batch_size=2, max_tokens=32)
    parser.add_argument("--lora-python", default=os.environ.get("MLX_LM_LORA_PYTHON", "/tmp/lora-venv/bin/python"))
    args = parser.parse_args()

    blas = find_fast_blas()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_bench_model(tmp / "model")
        n_params = parameters(model_dir)
        lora = {}
        if not Path(args.lora_python).exists():
            lora["as_shipped"] = {"error": f"{args.lora_python} not found: python -m venv /tmp/lora-venv && "
                                           "/tmp/lora-venv/bin/pip install mlx-lm-lora==5.10.2 'mlx[cpu]'"}
        else:
            lora["as_shipped"] = run_lora(args.lora_python, model_dir, tmp, args.iters, args.warmup, args.batch_size,
                                          args.max_tokens, 0, blas)
            lora["judge_2_tokens"] = run_lora(args.lora_python, model_dir, tmp, args.iters, args.warmup,
                                              args.batch_size, args.max_tokens, 2, blas)
        ours = run_ours(model_dir, tmp / "ours", args.iters, args.warmup, args.batch_size, args.max_tokens)
        ours_once = run_ours(model_dir, tmp / "ours_once", args.iters, args.warmup, args.batch_size, args.max_tokens,
                             ("judge.order=random",))

    def ratio(entry: dict, mine: dict | None = None) -> float | None:
        s = entry.get("seconds_per_iter")
        return None if s is None else s / (mine or ours)["seconds_per_iter"]

    measured = {k: v for k, v in lora.items() if "error" not in v}
    result = {
        "benchmark": "ppo_step_vs_mlx_lm_lora",
        "model": BENCH_MODEL_NAME,
        "model_parameters": n_params,
        "batch_prompts": args.batch_size,
        "completion_tokens_max": args.max_tokens,
        "judge": "LLM, the same tiny model",
        **machine(),
        "ours": ours,
        "ours_judging_each_pair_once": ours_once,
        "mlx_lm_lora_5_10_2": lora,
        "speedup_vs_as_shipped": ratio(lora["as_shipped"]) if "as_shipped" in measured else None,
        "speedup_vs_judge_2_tokens": ratio(lora["judge_2_tokens"]) if "judge_2_tokens" in measured else None,
        "speedup_judging_each_pair_once_vs_as_shipped":
            ratio(lora["as_shipped"], ours_once) if "as_shipped" in measured else None,
        "speedup_judging_each_pair_once_vs_judge_2_tokens":
            ratio(lora["judge_2_tokens"], ours_once) if "judge_2_tokens" in measured else None,
        "target_speedup_at_least": 3.0,
    }
    if not measured:
        result["mlx_lm_lora_fallback"] = {
            "seconds_per_iter": EARLIER_MEASUREMENT_SECONDS,
            "source": "an earlier measurement ( on this 2-core CPU, 2-token LLM judge), NOT measured in this run",
        }
        result["speedup_vs_earlier_measurement"] = EARLIER_MEASUREMENT_SECONDS / ours["seconds_per_iter"]
    emit(result)


if __name__ == "__main__":
    main()
