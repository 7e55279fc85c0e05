"""The benchmarks time the shipped step: their variants are arguments, never patches.

A benchmark that assigns to a module's global times whatever that module does with the
name, and once the module stops reading it (as `ppo/rollout.py` stopped calling
`mx.clear_cache()`) the "variant" silently times the baseline. These tests keep the
benchmarks runnable, keep ppo/ unpatched by them, and check that the variants passed as
arguments are the code that runs.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT, compose, small_run_overrides

BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(ROOT))


def _is_ppo_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def ppo_module_patches(source: str) -> list[str]:
    """Lines that assign to (or setattr / delattr on) an attribute of a `ppo` module, given
    the names the source binds to ppo modules through its imports (at any depth)."""
    tree = ast.parse(source)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "ppo" or alias.name.startswith("ppo."):
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and (node.module == "ppo" or node.module.startswith("ppo.")):
            for alias in node.names:
                if _is_ppo_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)

    def root(expr) -> str | None:
        while isinstance(expr, ast.Attribute):
            expr = expr.value
        return expr.id if isinstance(expr, ast.Name) else None

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") and node.args:
            if root(node.args[0]) in modules:
                found.append(f"line {node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
            continue
        flat = []
        for t in targets:
            flat.extend(t.elts if isinstance(t, (ast.Tuple, ast.List)) else [t])
        for t in flat:
            if isinstance(t, ast.Attribute) and root(t) in modules:
                found.append(f"line {node.lineno}: {ast.unparse(t)} = ...")
    return found


@pytest.mark.parametrize("source, expected", [
    ("import ppo.train.rollout\nppo.train.rollout.mx = None\n", 1),
    ("import ppo.train.loop as loop\nloop.sample_pairs = len\n", 1),
    ("from ppo.train import step\nstep.token_logps = len\n", 1),
    ("from ppo.train import step\nsetattr(step, 'token_logps', len)\n", 1),
    ("def f():\n    import ppo.train.loop\n    ppo.train.loop.token_logps, x = len, 1\n", 1),
    # not patches: a local object's attribute, a name imported from a module, a module that is not ppo's
    ("from ppo.train.step import Sampling\nimport os\ns = Sampling([0], 1, 1.0)\ns.x = 1\nos.environ['A'] = '1'\n", 0),
    ("from ppo.train.rollout import sample_pairs\nsample_pairs = len\n", 0),
])
def test_patch_finder_flags_module_attribute_assignments(source, expected):
    assert len(ppo_module_patches(source)) == expected, ppo_module_patches(source)


def test_no_benchmark_patches_a_ppo_module():
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert BENCHMARKS / "profile_step.py" in files
    patches = {str(f.relative_to(ROOT)): p for f in files if (p := ppo_module_patches(f.read_text()))}
    assert not patches, f"benchmarks must pass variants to the shipped functions as arguments: {patches}"


def run_benchmark(*args: str, timeout: int = 300) -> dict:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / args[0]), *args[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from benchmarks.run_all import last_json_object

    return last_json_object(proc.stdout)


def test_bench_scoring_smallest_prints_its_json():
    """The layers below the adapters (here 2 of 4) run once: the update's loss and gradients are
    bit for bit those of every forward running all layers."""
    result = run_benchmark("bench_scoring.py", "--random-weights", "--layers", "4", "--override", "finetune.num_layers=2",
                           "--batch-size", "1", "--max-tokens", "4", "--reps", "1")
    assert result["model"]["shared_layers"] == 2 and result["same_loss_and_gradients"] is True
    assert set(result["old_over_shared"]) == {"score", "update", "score_and_update"}


def test_bench_mfu_smallest_prints_its_json():
    result = run_benchmark("bench_mfu.py", "--batch-size", "1", "--max-tokens", "4", "--reps", "1")
    assert result["benchmark"] == "mfu_training_step"
    assert result["scoring_rows"] == 2
    assert result["positions_processed"] == 2 * (result["scoring_width"] - 1)
    assert result["step_seconds"] > 0 and 0 < result["mfu"] and 0 < result["lora_adjusted"]["mfu"] < result["mfu"]


@pytest.mark.slow
def test_profile_step_smallest_prints_its_json():
    variants = ["baseline", "head_on_completion", "fused_lora_rollout"]
    result = run_benchmark("profile_step.py", "--iters", "1", "--warmup", "0", "--variants", *variants, timeout=600)
    assert result["benchmark"] == "profile_step"
    for name in variants:
        assert "error" not in result[name], result[name]["error"]
        assert result[name]["iters_measured"] == 1
        assert result[name]["seconds_per_iter"] >= result[name]["rollout_seconds"] > 0
    assert set(result["speedup_vs_baseline"]) == set(variants)


def test_profile_step_refuses_a_removed_variant():
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "profile_step.py"), "--variants", "no_clear_cache"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown variant(s) no_clear_cache" in proc.stderr


def test_step_rows_runs_the_variants_it_is_given(tiny_model_dir, prompts_file, tmp_path):
    """The harness passes `sample_fn` and `token_logps_fn` into the shipped step: both are
    called, the scorer by the reference forward (collect) and by the loss (update)."""
    from benchmarks.common import step_rows
    from ppo.train.rollout import sample_pairs
    from ppo.train.scoring import token_logps

    calls = {"sample": 0, "score": 0}

    def counting_sample(model, prompts, **kwargs):
        calls["sample"] += 1
        return sample_pairs(model, prompts, **kwargs)

    def counting_score(model, batch):
        calls["score"] += 1
        return token_logps(model, batch)

    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file))
    rows = step_rows(cfg, tmp_path / "run", iters=2, warmup=1, sample_fn=counting_sample, token_logps_fn=counting_score)
    assert len(rows) == 2 and all("timing/update_seconds" in r for r in rows)
    assert calls["sample"] == 3
    # a reference forward per step, and a loss forward per step whose judge kept a pair
    updates = sum("loss" in r for r in rows)
    assert updates and calls["score"] - 3 in (updates, updates + 1)


def test_profile_step_variants_change_the_code_that_runs(tiny_model_dir, prompts_file):
    """head_on_completion must not fall back to the shipped scorer (it would time the
    baseline) and must score the same; fused_lora_rollout must sample from a model
    without LoRA layers."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tuner.lora import LoRALinear

    from benchmarks.profile_step import fused_copy, step_arguments
    from ppo.judges.llm import _body_and_head
    from ppo.train.models import load_policy_and_reference
    from ppo.train.scoring import build_scoring_batch, token_logps

    cfg = compose(small_run_overrides(tiny_model_dir, prompts_file))
    policy, _, _ = load_policy_and_reference(cfg.model, cfg.finetune)
    assert _body_and_head(policy) is not None
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 500, size=n).tolist() for n in (5, 9)]
    completions = [rng.integers(3, 500, size=n).tolist() for n in (7, 3)]
    batch = build_scoring_batch(prompts, completions, pad_id=0)
    args = step_arguments(["head_on_completion", "fused_lora_rollout"])
    assert np.allclose(np.array(args["token_logps_fn"](policy, batch)), np.array(token_logps(policy, batch)), atol=1e-5)
    assert any(isinstance(m, LoRALinear) for _, m in policy.named_modules())
    fused = fused_copy(policy)
    assert not any(isinstance(m, LoRALinear) for _, m in fused.named_modules())
    ids = mx.array([prompts[0]])
    assert np.allclose(np.array(fused(ids)), np.array(policy(ids)), atol=1e-4)


def test_ladder_counts_parameters_from_the_config(tiny_model_dir):
    """model_counts on the toy rung's config gives the figures worked out by hand (hidden 256,
    4 layers, 4 heads of 64 with 2 KV heads, MLP 768, vocab 4096, tied), and on any built
    model the parameter count mlx-lm loads."""
    import json

    from mlx.utils import tree_flatten
    from mlx_lm import load

    from benchmarks.bench_ladder import RUNGS, model_counts
    from ppo.demo.tiny import model_config

    toy = RUNGS["toy"]
    counts = model_counts(model_config(hidden=toy["hidden"], layers=toy["layers"], vocab=toy["vocab"],
                                       heads=toy["heads"], intermediate=None, eos_token_id=2))
    attention = 256 * 256 + 2 * 256 * 128 + 256 * 256  # q, k, v (2 KV heads of 64), o
    mlp = 3 * 256 * 768
    assert counts["body_matmul_parameters"] == 4 * (attention + mlp) == 3_145_728
    assert counts["lm_head_parameters"] == 256 * 4096
    assert counts["matmul_parameters"] == 3_145_728 + 1_048_576
    assert counts["parameters"] == 4096 * 256 + 4 * (attention + mlp + 2 * 256 + 2 * 64) + 256 == 4_197_120
    assert counts["weight_bytes"] == 4 * 4_197_120
    assert counts["attention_flops_per_pair"] == 4 * 4 * 4 * 64

    config = json.loads((tiny_model_dir / "config.json").read_text())
    model, _ = load(str(tiny_model_dir))
    assert model_counts(config)["parameters"] == sum(v.size for _, v in tree_flatten(model.parameters()))


def test_ladder_counts_a_llama_config(tmp_path):
    """model_counts on SmolLM2-135M's llama config.json (no head_dim key, no q/k norms, tied)
    gives the figures worked out by hand, and on llama-shaped tiny models (grouped KV heads;
    KV heads absent, biases and an untied head) the parameter count mlx-lm loads."""
    import json

    from mlx.utils import tree_flatten
    from mlx_lm import load

    from benchmarks.bench_ladder import model_counts
    from benchmarks.smollm2 import SMOLLM2_CONFIG, SMOLLM2_PARAMETERS, build_random_llama

    assert "head_dim" not in SMOLLM2_CONFIG and SMOLLM2_CONFIG["model_type"] == "llama"
    counts = model_counts(SMOLLM2_CONFIG)
    attention = 576 * 576 + 2 * 576 * 192 + 576 * 576  # q, k, v (3 KV heads of 576 / 9 = 64), o
    mlp = 3 * 576 * 1536
    assert counts["body_matmul_parameters"] == 30 * (attention + mlp) == 106_168_320
    assert counts["lm_head_parameters"] == 576 * 49152 == 28_311_552
    assert counts["matmul_parameters"] == 106_168_320 + 28_311_552
    assert counts["parameters"] == 49152 * 576 + 30 * (attention + mlp + 2 * 576) + 576 == SMOLLM2_PARAMETERS
    assert counts["weight_bytes"] == 4 * SMOLLM2_PARAMETERS
    assert counts["attention_flops_per_pair"] == 4 * 30 * 9 * 64

    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, vocab_size=512)
    for i, changes in enumerate([{"num_key_value_heads": 2},
                                 {"num_key_value_heads": None, "attention_bias": True, "mlp_bias": True,
                                  "tie_word_embeddings": False}]):
        folder = build_random_llama(tmp_path / str(i), **small, **changes)
        config = json.loads((folder / "config.json").read_text())
        model, _ = load(str(folder))
        assert type(model).__module__ == "mlx_lm.models.llama"
        assert model_counts(config)["parameters"] == sum(v.size for _, v in tree_flatten(model.parameters()))
    with pytest.raises(ValueError, match="not counted"):
        model_counts({**SMOLLM2_CONFIG, "model_type": "gpt2"})


def test_bench_ladder_smollm2_without_its_folder_says_fetch_first(tmp_path):
    """The smollm2 rung reads the folder ppo-fetch writes; without it the ladder stops at once
    (before any rung, even one listed first) with one line naming the command."""
    import os

    env = {**os.environ, "PPO_CACHE": str(tmp_path / "empty-cache")}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_ladder.py"), "--rungs", "toy", "smollm2",
                           "--lora-python", str(tmp_path / "no-venv")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and proc.stdout == ""
    assert lines[-1] == (f"bench_ladder: rung smollm2: {tmp_path / 'empty-cache' / 'models' / 'SmolLM2-135M-Instruct'} "
                         "not found: run ppo-fetch smollm2 first (or pass --random-weights)"), proc.stderr
    assert not any("[bench_ladder]" in line for line in lines)  # no rung started

    from benchmarks.smollm2 import missing

    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert missing(folder) == f"{folder} has no tokenizer.json, tokenizer_config.json, *.safetensors"


def test_ladder_floor_arithmetic():
    """floors() on round numbers, each phase worked out by hand from FLOOR_FORMULAS."""
    from benchmarks.bench_ladder import floors

    counts = {"matmul_parameters": 1e6, "body_matmul_parameters": 5e5, "lm_head_parameters": 5e5,
              "weight_bytes": 4e6, "attention_flops_per_pair": 1000}
    out = floors(counts, rows=2, prompt_tokens=3, completion_tokens=2, decode_steps=2, judge_rows=2, judge_tokens=4,
                 judge_head=10, bandwidth_gbs=10, peak_gflops=100)
    # rollout: 2 rows x (2 x 1e6 x 5 tokens + 1000 x (6 + 6 + 3) attention pairs); 2 weight streams of 4 MB at 10 GB/s
    assert out["gflop"]["rollout"] == pytest.approx(2 * (1e7 + 15_000) / 1e9)
    assert out["rollout_weight_stream_seconds"] == pytest.approx(8e-4)
    assert out["seconds"]["rollout"] == pytest.approx(20_030_000 / 1e11 + 8e-4)
    # judge: 2 rows x (body 2 x 5e5 x 4 + head at one position 2 x 5e5 + 1000 x (4 x 10 + 10))
    assert out["seconds"]["judge"] == pytest.approx(2 * (4e6 + 1e6 + 50_000) / 1e11)
    # score and update over n = 3 + 2 - 1 = 4 positions, 10 causal attention pairs
    assert out["seconds"]["score"] == pytest.approx(2 * (8e6 + 10_000) / 1e11)
    assert out["seconds"]["update"] == pytest.approx(2 * (16e6 + 30_000) / 1e11)
    assert out["update_gflop_6n_convention"] == pytest.approx(2 * (24e6 + 30_000) / 1e9)
    assert out["seconds"]["step"] == pytest.approx(sum(out["seconds"][k] for k in ("rollout", "judge", "score", "update")))


@pytest.mark.slow
def test_bench_ladder_toy_rung_without_mlx_lm_lora(tmp_path):
    """One iteration at the toy rung, the anchor's venv missing: the anchor's entries say why
    it was not measured, ours and the floor are measured."""
    missing = tmp_path / "no-venv" / "python"
    result = run_benchmark("bench_ladder.py", "--rungs", "toy", "--iters", "1", "--warmup", "0", "--decode-reps", "1",
                           "--max-tokens", "8", "--processes", "1", "--lora-python", str(missing), timeout=600)
    assert result["benchmark"] == "ppo_step_ladder_vs_mlx_lm_lora" and list(result["rungs"]) == ["toy"]
    assert len(result["loadavg_start"]) == 3 and len(result["loadavg_end"]) == 3
    rung = result["rungs"]["toy"]
    for key in ("as_shipped", "judge_2_tokens"):
        why = rung["mlx_lm_lora_5_10_2"][key]["not_measured"]
        assert why.startswith("not measured:") and str(missing) in why
    assert rung["speedup_vs_as_shipped"] is None and rung["speedup_vs_judge_2_tokens"] is None
    assert rung["model"]["parameters"] == rung["model"]["parameters_loaded"] == 4_197_120
    assert rung["ours"]["iters_measured"] == 1
    assert rung["machine"]["bandwidth_gbs_used"] > 0 and rung["machine"]["matmul_peak_gflops_used"] > 0
    assert set(rung["ours_over_floor"]) == {"rollout", "judge", "score", "update", "step"}
    # a floor is a lower bound: the measured step cannot beat the rates this process measured
    assert rung["ours_over_floor"]["step"] > 1
    decode = rung["decode"]  # the shipped decode loop against mlx-lm's BatchGenerator: same tokens, timed
    # 16 rows x hidden 256 x vocab 4096 = 16.8M multiply-adds per LM head: every BLAS thread
    assert decode["same_tokens_as_mlx_lm"] is True and decode["shipped_uses_one_blas_thread"] is False
    assert set(decode["ms_per_decode_step"]) == {"shipped", "shipped_one_blas_thread", "shipped_all_blas_threads",
                                                 "mlx_lm_batch_generator", "shipped_with_entropy"}
    assert decode["entropy_over_shipped"] > 0  # the entropy metric's cost in the decode, measured
    from benchmarks.bench_ladder import markdown_table

    row = markdown_table(result).splitlines()[-1]
    assert row.startswith("| toy (4.2M) |") and "n/m / n/m" in row  # the anchor: not measured
    assert rung["ours_more_processes"] == {} and "| n/m |" in row  # --processes 1: no 2-process run


@pytest.mark.slow
def test_bench_ladder_smollm2_rung_reads_the_fetched_folder(tmp_path):
    """The smollm2 rung on the folder ppo-fetch writes (here a llama-shaped tiny stand-in at
    $PPO_CACHE, the anchor's venv missing): ours and the floor measured on that folder, the
    counts matching what mlx-lm loads, the completions' length and EOS rate recorded."""
    import os

    from benchmarks.smollm2 import FOLDER_NAME, build_random_llama

    folder = build_random_llama(tmp_path / "cache" / "models" / FOLDER_NAME, hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, intermediate_size=96, vocab_size=512)
    missing = tmp_path / "no-venv" / "python"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_ladder.py"), "--rungs", "smollm2", "--iters", "1",
                           "--warmup", "0", "--batch-size", "2", "--max-tokens", "8", "--decode-reps", "1",
                           "--processes", "1", "--lora-python", str(missing)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PPO_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    from benchmarks.run_all import last_json_object

    rung = last_json_object(proc.stdout)["rungs"]["smollm2"]
    assert rung["model"]["build"]["path"] == str(folder) and rung["model"]["build"]["weights"].startswith("real")
    assert rung["model"]["config"]["model_type"] == "llama" and rung["model"]["config"]["head_dim"] is None
    assert rung["model"]["parameters"] == rung["model"]["parameters_loaded"]
    assert rung["mlx_lm_lora_5_10_2"]["as_shipped"]["not_measured"].startswith("not measured:")
    shape = rung["shape"]
    assert len(shape["eos_rate_per_iter"]) == len(shape["mean_completion_tokens_per_iter"]) == 1
    assert 0 <= shape["eos_rate"] <= 1 and 0 < shape["mean_completion_tokens"] <= 8
    assert set(rung["ours_over_floor"]) == {"rollout", "judge", "score", "update", "step"}
    assert rung["decode"]["same_tokens_as_mlx_lm"] is True


@pytest.mark.slow
def test_bench_collectives_prints_its_json():
    result = run_benchmark("bench_collectives.py", "--reps", "2", "--procs", "2", "--floats", "10")
    run = result["runs"][0]
    assert run["processes"] == 2 and set(run) >= {"rendezvous", "mlx", "mlx_over_rendezvous"}
    assert run["rendezvous"]["average_10_floats_ms"] > 0 and run["mlx"]["gather_metrics_ms"] > 0


def test_run_all_runs_every_benchmark_script():
    """run_all is the one command for all benchmarks: every bench_*.py is in it (the ladder too)."""
    from benchmarks.run_all import BENCHMARKS as RUN_ALL

    listed = {args[0] for args in RUN_ALL.values()}
    assert "bench_ladder.py" in listed
    assert listed == {f.name for f in BENCHMARKS.glob("bench_*.py")}


@pytest.mark.slow
def test_profile_step_decode_at_the_toy_rung():
    result = run_benchmark("profile_step.py", "--variants", "decode", "--rung", "toy", "--reps", "1", "--max-tokens", "8",
                           timeout=600)
    decode = result["decode"]
    assert "error" not in decode, decode.get("error")
    assert decode["rung"] == "toy" and decode["rows"] == 16 and decode["parameters"] == 4_197_120
    assert decode["decode_steps"] == 8
    assert decode["shipped_sample_lora_ms_per_step"] > 0 and decode["bare_loop_fused_ms_per_step"] > 0
    assert set(decode["parts_ms"]) == {"body_lora", "body", "lm_head", "logsumexp", "sampler"}
    assert decode["bare_loop_fused_no_logsumexp_ms_per_step"] > 0 and isinstance(decode["no_logsumexp_same_tokens"], bool)
    floor = decode["floor_per_step"]
    assert floor["step_ms"] == pytest.approx(floor["stream_ms"] + floor["flops_ms"])
    assert decode["shipped_over_floor"] == pytest.approx(decode["shipped_sample_lora_ms_per_step"] / floor["step_ms"])
