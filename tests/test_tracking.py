"""metrics.jsonl and real offline wandb files, read back with wandb's own reader."""

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, small_run_overrides
from ppo.train.tracking import MetricsFile


def _wandb_inspect(run_dir: Path) -> dict:
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_cli), "leet", "inspect", "--summary", "--json", files[0]], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_wandb_offline_run_holds_config_and_metrics(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb") + [f"hydra.run.dir={run_dir}", "loss.beta=0.05"]
    result = run_cli(overrides, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = _wandb_inspect(run_dir)
    assert record["state"] == "finished" and record["project"] == "ppo-mlx"
    assert record["config"]["loss"]["beta"] == 0.05
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["summary"]["kl"]["last"] == pytest.approx(last["kl"])
    assert "max" in record["summary"]["eval/win_rate"]


@pytest.mark.slow
def test_wandb_failure_does_not_stop_training(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb") + [f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides, env={"WANDB_MODE": "no-such-mode"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb disabled for this run" in result.stderr + result.stdout
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4


def test_metrics_file_writes_null_for_nan_and_drops_torn_lines_on_resume(tmp_path):
    metrics = MetricsFile(tmp_path)
    metrics.write(1, {"kl": float("nan"), "loss": 1.0})
    metrics.write(2, {"kl": float("inf"), "loss": 2.0})
    metrics.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # a line torn by a kill
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()[:2]]
    assert rows[0]["kl"] is None and rows[1]["kl"] is None
    resumed = MetricsFile(tmp_path, resume_step=1)
    resumed.close()
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1]
