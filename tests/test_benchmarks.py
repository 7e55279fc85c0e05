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
