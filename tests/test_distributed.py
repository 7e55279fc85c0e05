"""One run on two MLX processes (`mlx.launch --backend ring`, loopback only): disjoint prompts,
one writer, identical weights, exact resume after SIGKILL, and a lost rank ends the run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, small_run_overrides
from ppo.metrics import comparable
from ppo.train.distributed import World, reduce_metrics

BIN = Path(sys.executable).parent
# mlx.launch less its busy loops (ppo.platform.launcher), as ppo-launch runs it: the same options and
# behaviour, without taking 1.5 of 2 cores from the ranks.
LAUNCHER = [sys.executable, "-m", "ppo.platform.launcher"]


def launch(overrides, n=2, timeout=240, wait=True):
    cmd = [*LAUNCHER, "-n", str(n), "--backend", "ring", "--python", sys.executable, str(BIN / "ppo-train"),
           *overrides]
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    if wait:
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def rank_pids(run_dir: Path) -> dict[int, int]:
    """rank -> pid of the ppo-train processes of this run (found by their command line and MLX_RANK;
    {} without /proc). Where ppo-train re-executes itself with OpenBLAS preloaded, only once it has."""
    from ppo.platform import blas

    reexecs = sys.platform.startswith("linux") and not blas._env_flag(blas.ENV_DISABLE) and blas.find_fast_blas()
    found = {}
    for proc in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "ppo-train" in cmdline and f"hydra.run.dir={run_dir}" in cmdline:
            for item in environ:
                if item.startswith("MLX_RANK=") and (not reexecs or f"{blas.ENV_GUARD}=1" in environ):
                    found[int(item.split("=")[1])] = int(proc.name)
    return found


def wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def overrides(model, prompts, run_dir, **extra):
    return small_run_overrides(model, prompts, **{"train.batch_size": 4, "train.save_every": 2, **extra}) + [
        f"hydra.run.dir={run_dir}"]


def test_reduce_metrics_reads_like_one_process():
    per_rank = [{"loss": 1.0, "timing/step_seconds": 2.0, "tokens_per_second": 10.0, "memory/peak_gb": 1.0},
                {"loss": 3.0, "timing/step_seconds": 5.0, "tokens_per_second": 30.0, "memory/peak_gb": 0.5}]
    assert reduce_metrics(per_rank) == {"loss": 2.0, "timing/step_seconds": 5.0, "tokens_per_second": 40.0,
                                        "memory/peak_gb": 1.0}
    assert reduce_metrics(per_rank[:1]) is per_rank[0]


def test_a_single_process_is_a_world_of_one():
    world = World.current()
    assert (world.rank, world.size, world.group) == (0, 1, None)
    assert world.share([1, 2, 3]) == [1, 2, 3] and world.gather_objects({"a": 1}) == [{"a": 1}]


@pytest.mark.slow
def test_two_ranks_train_one_run(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    result = launch(overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4]  # one writer: each step once
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["world_size"] == 2 and summary["ranks_in_sync"] is True
    assert summary["eval"]["eval/pairs"] == 4  # evaluation prompts split over the ranks and gathered
    judgments = [json.loads(line) for line in (run_dir / "judgments.jsonl").read_text().splitlines()]
    for step in (1, 2, 3, 4):
        train = [j for j in judgments if j["phase"] == "train" and j["step"] == step]
        by_rank = {r: {j["prompt_id"] for j in train if j["rank"] == r} for r in (0, 1)}
        assert len(by_rank[0]) == len(by_rank[1]) == 2 and not by_rank[0] & by_rank[1]  # disjoint halves of 4
    assert not (run_dir / ".hydra" / "overrides.yaml").read_text().count("output_subdir")  # rank 0's own record
    assert result.stdout.count("eval win rate against the reference") == 1  # one outcome, from rank 0
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    evals = [s for s in samples if s["phase"] == "eval"]  # every rank's evaluation pairs, gathered, written once
    assert [s["step"] for s in evals] == [2] * 4 + [4] * 4 and len({s["prompt_id"] for s in evals}) == 4
    assert [s["step"] for s in samples if s["phase"] == "train"] == [1, 1, 2, 2, 3, 3, 4, 4]  # rank 0's first pairs


@pytest.mark.slow
def test_two_ranks_stay_in_step_with_minibatches_and_adaptive_kl(tmp_path, tiny_model_dir, prompts_file):
    """ppo_form=token (4 shuffled minibatches per epoch) on 2 ranks of 4 pairs each: every rank takes the
    same 8 optimizer steps per rollout on gradients averaged across ranks, and the same adaptive beta."""
    run_dir = tmp_path / "run"
    result = launch(overrides(tiny_model_dir, prompts_file, run_dir, **{"train.batch_size": 8}) + [
        "ppo_form=token", "loss.kl_control=adaptive", "loss.kl_horizon=20", "train.learning_rate=1e-3"])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["ranks_in_sync"] is True
    logged = rows(run_dir)
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and all("approx_kl" in r and "kl/beta" in r for r in logged)
    assert logged[0]["kl/beta"] == 0.1 and logged[-1]["kl/beta"] != 0.1


@pytest.mark.slow
def test_batch_must_divide_over_the_ranks(tmp_path, tiny_model_dir, prompts_file):
    result = launch(overrides(tiny_model_dir, prompts_file, tmp_path / "run", **{"train.batch_size": 3}))
    out = result.stdout + result.stderr
    assert "train.batch_size=3" in out and "2 processes" in out and "Traceback" not in out
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_human_judge_refuses_two_ranks(tmp_path, tiny_model_dir, prompts_file):
    result = launch(overrides(tiny_model_dir, prompts_file, tmp_path / "run") + ["judge=human"])
    out = result.stdout + result.stderr
    assert "judge=human cannot run on 2 processes" in out and "Traceback" not in out


@pytest.mark.slow
def test_sigkill_of_every_rank_then_resume_equals_a_straight_run(tmp_path, tiny_model_dir, prompts_file):
    straight = tmp_path / "straight"
    assert launch(overrides(tiny_model_dir, prompts_file, straight)).returncode == 0

    killed = tmp_path / "killed"
    args = overrides(tiny_model_dir, prompts_file, killed, **{"train.iters": 400})
    proc = launch(args, wait=False)
    try:
        assert wait_for(lambda: (killed / "checkpoints" / "step-0000002").exists(), 300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in rank_pids(killed).values():
        os.kill(pid, signal.SIGKILL)
    resumed = launch(overrides(tiny_model_dir, prompts_file, killed))  # the same command, train.iters back to 4
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert [comparable(r) for r in rows(killed)] == [comparable(r) for r in rows(straight)]
    assert (killed / "adapters.safetensors").read_bytes() == (straight / "adapters.safetensors").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_ends_the_run_within_the_bound(tmp_path, tiny_model_dir, prompts_file, how):
    if not Path("/proc").is_dir():
        pytest.skip("finds and stops the ranks through /proc (Linux)")
    run_dir = tmp_path / "run"
    proc = launch(overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 100000, "train.rank_timeout": 5}),
                  wait=False)
    try:
        assert wait_for(lambda: (run_dir / "metrics.jsonl").exists() and len(rows(run_dir)) >= 2, 300)
        pids = rank_pids(run_dir)
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        lost_at = time.time()
        assert wait_for(lambda: not Path(f"/proc/{pids[0]}").exists(), 60), "rank 0 did not stop"
        assert time.time() - lost_at < 30
        if how == "hung":  # a stopped process ignores mlx.launch's SIGTERM: end it as an operator would
            os.kill(pids[1], signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
    finally:
        for pid in rank_pids(run_dir).values():
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "error: rank 0:" in out and "relaunch the same command to resume" in out, out[-3000:]
    assert "Traceback" not in out
    assert (run_dir / "checkpoints").exists() or rows(run_dir)  # whatever was saved is complete


def rank_one_python(folder: Path, override: str) -> Path:
    """A launcher "python" (mlx.launch --python) that gives rank 1 one more override, as a mistyped
    per-host command would."""
    python = folder / "python"
    python.write_text(f'#!/bin/bash\nif [ "$MLX_RANK" = "1" ]; then exec {sys.executable} "$@" {override}; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    return python


@pytest.mark.slow
def test_ranks_started_with_different_configs_are_refused(tmp_path, tiny_model_dir, prompts_file):
    python = rank_one_python(tmp_path, "seed=7")
    run_dir = tmp_path / "run"
    cmd = [*LAUNCHER, "-n", "2", "--backend", "ring", "--python", str(python), str(BIN / "ppo-train"),
           *overrides(tiny_model_dir, prompts_file, run_dir)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "WANDB_SILENT": "true"})
    out = result.stdout + result.stderr
    assert "ranks were started with different configs" in out and "Traceback" not in out
    assert not (run_dir / "metrics.jsonl").exists()
