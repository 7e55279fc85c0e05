"""metrics.jsonl and real offline wandb files, read back with wandb's own reader."""

import glob
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli, small_run_overrides
from ppo.metrics import wilson_interval
from ppo.train.tracking import MetricsFile


def _wandb_log(run_dir: Path) -> str:
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    return files[0]


def _leet(*args) -> str:
    wandb_cli = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_cli), "leet", "inspect", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wandb_inspect(run_dir: Path) -> dict:
    """The run's state, summary and config as wandb's own reader sees them."""
    return json.loads(_leet("--summary", "--json", _wandb_log(run_dir)))


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of the run's offline log (run, history, artifact, ...), read by wandb's own reader."""
    return [json.loads(line) for line in _leet("--json", _wandb_log(run_dir)).splitlines() if line.strip()]


def _history(records: list[dict], key: str) -> list:
    """`key`'s value in every history record of the offline log that has it, in order."""
    return [r["history"]["item"][key] for r in records if r.get("type") == "history" and key in r["history"]["item"]]


def wandb_run_record(run_dir: Path) -> dict:
    (run,) = [r["run"] for r in wandb_records(run_dir) if r.get("type") == "run"]
    return run


@pytest.mark.slow
def test_wandb_offline_run_holds_config_and_metrics(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb") + [f"hydra.run.dir={run_dir}", "loss.beta=0.05",
                                                                                    "eval_judge=length"]
    # only loss.beta names the run: the test's plumbing keys are kept out of the name
    overrides += ["hydra.job.config.override_dirname.exclude_keys=[hydra.run.dir,model.path,data.path,train.iters,"
                  "train.batch_size,generation.max_completion_length,train.steps_per_eval,train.progress,"
                  "data.max_eval_prompts,logger,eval_judge]"]
    result = run_cli(overrides + ["train.progress=true"], env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = _wandb_inspect(run_dir)
    assert record["state"] == "finished" and record["project"] == "ppo-mlx"
    assert record["config"]["loss"]["beta"] == 0.05
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    summary = {k: v for k, v in record["summary"].items() if not k.startswith("_")}
    # wandb's default summary, the last value of every logged key (the runs table sorts by any of them) ...
    assert set(last) <= set(summary)
    for key in ("kl_penalty", "rewards/margins", "loss", "learning_rate", "entropy"):
        assert summary[key] == pytest.approx(last[key]), key
    # ... with the curated keys on top: the Wilson interval, length control, clip_fraction's health, the status.
    assert {"status", "step", "eval/win_rate", "eval/win_rate_wilson_low", "eval/win_rate_wilson_high", "eval/pairs", "eval/win_rate_lc",
            "eval/win_rate_lc_low", "eval/win_rate_lc_high", "eval/length_ratio", "kl", "clip_fraction",
            "clip_fraction/health", "wall_seconds", "entropy"} <= set(summary)
    assert summary["eval/win_rate_lc_low"] <= summary["eval/win_rate_lc"] <= summary["eval/win_rate_lc_high"]
    for key in ("win_rate", "win_rate_low", "win_rate_high", "pairs"):  # the held-out judge beside the training one
        assert summary[f"eval/length/{key}"] == pytest.approx(last[f"eval/length/{key}"]), key
    assert summary["kl"] == pytest.approx(last["kl"]) and summary["eval/win_rate"] == pytest.approx(last["eval/win_rate"])
    wilson = wilson_interval(last["eval/win_rate"], last["eval/pairs"])
    assert (summary["eval/win_rate_wilson_low"], summary["eval/win_rate_wilson_high"]) == pytest.approx(wilson)
    assert summary["eval/win_rate_wilson_low"] < summary["eval/win_rate_wilson_high"]  # Wilson: never zero width
    # one method per key name: eval/win_rate_low/high stay what metrics.jsonl logged (the normal approximation)
    assert (summary["eval/win_rate_low"], summary["eval/win_rate_high"]) == pytest.approx(
        (last["eval/win_rate_low"], last["eval/win_rate_high"]))
    assert summary["status"] == "finished" and summary["clip_fraction/health"]
    # The Logs tab (the terminal's lines) and the system charts are on by default.
    records = wandb_records(run_dir)
    console = "".join(r["output_raw"]["line"] for r in records if r.get("type") == "output_raw")
    assert "step 4/4" in console
    assert any(r.get("type") == "stats" for r in records)
    # The policy's entropy per sampled token, in the history at every report step, as metrics.jsonl has it.
    logged = [json.loads(line)["entropy"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 4 and all(0 < h <= math.log(512) for h in logged)  # the tiny model's 512 ids
    assert _history(records, "entropy") == pytest.approx(logged)
    # An offline run ends with the one line that uploads it.
    (hint,) = [line for line in (result.stdout + result.stderr).splitlines() if "wandb sync" in line]
    sync_dir = Path(hint.split("wandb sync ", 1)[1])
    assert sync_dir.parent == run_dir / "wandb" and sync_dir.name.startswith("offline-run-") and sync_dir.is_dir()
    run = wandb_run_record(run_dir)
    assert run["display_name"] == "loss.beta=0.05" and "default" in run["tags"]  # a name always, the experiment as a tag
    assert "run_group" not in run  # a single run belongs to no sweep

    # Every evaluation (steps 2 and 4) logs its judged pairs as a `samples` table.
    tables = [r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"]["type"] == "run_table"]
    assert len(tables) == 2 and all(t["name"].endswith("-samples") for t in tables)
    table_files = sorted((run_dir / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json"))
    assert len(table_files) == 2
    table = json.loads(table_files[-1].read_text())
    # The rows of samples.jsonl's evaluation lines, their sides named: `a` is the policy, `b` the reference.
    assert table["columns"] == ["step", "phase", "prompt_id", "prompt", "policy", "reference", "policy_judged",
                                "reference_judged", "policy_finished", "reference_finished", "p_policy", "verdict"]
    assert len(table["data"]) == 4  # data.max_eval_prompts
    assert {row[11] for row in table["data"]} <= {"policy", "reference", "tie", "invalid"}
    assert {row[1] for row in table["data"]} == {"eval"}
    file_rows = [r for line in (run_dir / "samples.jsonl").read_text().splitlines()
                 if (r := json.loads(line))["phase"] == "eval" and r["step"] == 4]
    assert [(r["prompt_id"], r["a"], r["b"], r["p"]) for r in file_rows] == [(row[2], row[4], row[5], row[10])
                                                                             for row in table["data"]]


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


def _train_without_wandb_env(args, cwd, env_extra):
    import os

    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | env_extra
    return subprocess.run([sys.executable, "-m", "ppo.tools.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_wandb_own_settings_are_respected_unless_the_config_sets_a_mode(tmp_path, tiny_model_dir, prompts_file):
    import os

    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {"WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "PYTHONPATH": os.pathsep.join(sys.path)}
    wandb_cli = Path(sys.executable).parent / "wandb"
    done = subprocess.run([str(wandb_cli), "disabled"], cwd=workdir, env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    base = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb", **{"train.iters": 1})
    result = _train_without_wandb_env(base + [f"hydra.run.dir={tmp_path / 'disabled'}"], workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list((tmp_path / "disabled").glob("wandb/offline-run-*"))  # `wandb disabled` was obeyed
    result = _train_without_wandb_env(base + [f"hydra.run.dir={tmp_path / 'forced'}", "logger.wandb.mode=offline"], workdir, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _wandb_inspect(tmp_path / "forced")["state"] == "finished"  # the config's mode wins


@pytest.mark.slow
def test_adapters_logged_as_an_artifact_when_asked_and_logs_and_system_charts_turned_off(tmp_path, tiny_model_dir,
                                                                                        prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb", **{"train.iters": 1}) + [
        f"hydra.run.dir={run_dir}", "logger.wandb.log_adapters=true", "train.progress=true",
        "logger.wandb.console=off", "logger.wandb.system_metrics=false"]
    result = run_cli(overrides, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    records = wandb_records(run_dir)
    (model,) = [r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"]["type"] == "model"]
    assert sorted(c["path"] for c in model["manifest"]["contents"]) == ["adapter_config.json", "adapters.safetensors"]
    assert "step 1/1" in result.stdout + result.stderr  # printed, but not captured:
    assert not [r for r in records if r.get("type") in ("output_raw", "output", "stats")]


def test_run_name_mode_and_lean_summary_rules(monkeypatch):
    from ppo.train.tracking import lean_summary, run_name, wandb_mode

    assert run_name("demo") == "demo"  # `ppo-train experiment=demo` alone still gets a name
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "online" and wandb_mode(None) == "disabled"  # the config first, then wandb's own
    monkeypatch.delenv("WANDB_MODE")
    rows = [{"step": s, "clip_fraction": 0.5 if s > 8 else 0.0, "ratio/max": 1.5, "ratio/min": 0.5, "kl": 0.1 * s,
             "entropy": 3.0 - 0.1 * s} for s in range(1, 11)]
    summary = lean_summary({"status": "finished", "step": 10, "eval": {"eval/win_rate": 1.0, "eval/pairs": 4},
                            "final": rows[-1]}, rows)
    assert summary["clip_fraction"] == 0.5 and summary["clip_fraction/health"] == "moving too far"  # last 20%
    assert (round(summary["eval/win_rate_wilson_low"], 2), summary["eval/win_rate_wilson_high"]) == (0.51, 1.0)
    assert "eval/win_rate_low" not in summary  # that name is the logged normal approximation's (ppo.metrics)
    assert summary["kl"] == pytest.approx(1.0) and summary["entropy"] == pytest.approx(2.0)  # the final step's


def test_console_setting_and_table_columns():
    from ppo.train.tracking import console_mode, table_row

    assert [console_mode(v) for v in ("auto", "wrap", "off", False, True, "False")] == ["auto", "wrap", "off", "off",
                                                                                        "auto", "off"]
    with pytest.raises(ValueError, match="invalid logger.wandb.console='loud'"):
        console_mode("loud")
    row = {"step": 2, "phase": "eval", "a": "x", "b": "y", "a_judged": "x", "b_judged": "y", "a_finished": True,
           "b_finished": False, "p": 0.0, "verdict": "b"}
    assert table_row(row) == {"step": 2, "phase": "eval", "policy": "x", "reference": "y", "policy_judged": "x",
                              "reference_judged": "y", "policy_finished": True, "reference_finished": False,
                              "p_policy": 0.0, "verdict": "reference"}
    # A training row pairs two samples of the policy, in the order the judge saw them.
    assert table_row({**row, "phase": "train", "verdict": "a"}) == {
        "step": 2, "phase": "train", "first": "x", "second": "y", "first_judged": "x", "second_judged": "y",
        "first_finished": True, "second_finished": False, "p_first": 0.0, "verdict": "first"}


def test_configuration_name_drops_the_seed_and_fits_wandb():
    from ppo.train.tracking import JOB_TYPE_LIMIT, configuration_name

    assert configuration_name(["seed=2", "epsilon=tight", "beta=tiny"]) == "beta=tiny,epsilon=tight"
    assert configuration_name(["seed=0", "beta=tiny", "epsilon=tight"]) == configuration_name(["epsilon=tight", "seed=1", "beta=tiny"])
    assert configuration_name(["seed=1", "model.path=/a/b"], excluded=["model.path"]) == "train"
    long_a = configuration_name(["data.system_prompt=" + "x" * 80 + "a"])
    long_b = configuration_name(["data.system_prompt=" + "x" * 80 + "b"])
    assert len(long_a) == JOB_TYPE_LIMIT and long_a != long_b  # cut with a hash of the whole
