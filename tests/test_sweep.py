"""Hydra multirun sweeps: experiment files, folders named by their overrides, the joblib
launcher, a failing job, a second launch that finishes only what is missing, ppo-report."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, compose, run_cli, small_run_overrides

from ppo.tools.report import main as report_main

# Until conf/hydra/default.yaml excludes them itself: keep paths and infrastructure keys out
# of the sweep folder names (a model.path=/a/b override would otherwise nest folders).
NAME_KEYS_EXCLUDED = ("hydra.job.config.override_dirname.exclude_keys=[hydra.run.dir,hydra.sweep.dir,train.progress,"
                      "logger,experiment,model.path,data.path,hydra/launcher,hydra.launcher.n_jobs,"
                      "train.iters,train.batch_size,generation.max_completion_length,train.steps_per_eval,"
                      "data.max_eval_prompts]")


@pytest.mark.parametrize("name,swept", [
    ("eps_beta_grid", {"epsilon": "tight,classic,loose", "beta": "tiny,default,stronger"}),
    ("loss_types", {"loss_type": "ppo_clip,sigmoid,hinge,ipo,dpop"}),
    ("advantage", {"loss.advantage": "judge,logprob_gap"}),
])
def test_experiment_files_compose(name, swept):
    cfg = compose([f"experiment={name}"])
    assert cfg.experiment_name == name
    assert cfg.logger.wandb.group is None  # set when the sweep runs: its own folder (test_two_sweeps_two_wandb_groups)
    with open(ROOT / "experiments" / f"{name}.yaml") as f:
        assert f.readline().strip() == "# @package _global_"
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        full = hydra_compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    assert dict(full.hydra.sweeper.params) == swept
    # every swept value composes into a valid config
    from ppo.train.validation import validate

    for key, values in swept.items():
        for value in values.split(","):
            validate(compose([f"experiment={name}", f"{key}={value}"]))


def test_grid_presets_reach_the_loss():
    cfg = compose(["experiment=eps_beta_grid", "epsilon=tight", "beta=stronger"])
    assert (cfg.loss.epsilon, cfg.loss.beta) == (0.1, 0.5)


def _sweep(tmp_path, tiny_model_dir, prompts_file, *extra, logger="none"):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *small_run_overrides(tiny_model_dir, prompts_file, logger=logger, **{"train.iters": 2}),
            f"hydra.sweep.dir={sweep_dir}", NAME_KEYS_EXCLUDED, *extra]
    return sweep_dir, run_cli(args, env={"WANDB_MODE": "offline"})


def _wandb_record(run_dir):
    """The run as wandb's own reader sees it (`wandb leet inspect --summary --json`)."""
    import subprocess
    import sys

    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--summary", "--json", str(log)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.slow
def test_eps_beta_sweep_then_report_then_resume(tmp_path, tiny_model_dir, prompts_file, capsys):
    sweep_dir, result = _sweep(tmp_path, tiny_model_dir, prompts_file, "experiment=eps_beta_grid",
                               "epsilon=tight,loose", "beta=tiny,stronger", logger="wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert names == ["beta=stronger,epsilon=loose", "beta=stronger,epsilon=tight",
                     "beta=tiny,epsilon=loose", "beta=tiny,epsilon=tight"]
    for name in names:
        assert _summary(sweep_dir / name)["status"] == "finished"
        assert len(list((sweep_dir / name / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
    record = _wandb_record(sweep_dir / "beta=tiny,epsilon=loose")
    assert record["name"] == "eps_beta_grid beta=tiny,epsilon=loose"  # run name: the experiment and the overrides
    assert (record["config"]["loss"]["epsilon"], record["config"]["loss"]["beta"]) == (0.3, 0.01)
    for key in ("eval/win_rate", "kl", "clip_fraction", "clip_fraction/health", "status"):
        assert key in record["summary"], key
    assert "kl_penalty" in record["summary"]  # wandb's default summary: the last value of every logged key

    assert report_main([str(sweep_dir)]) == 0
    assert "best configuration: epsilon=" in capsys.readouterr().out
    report = (sweep_dir / "report.md").read_text()
    runs_part, reliability_part = report.split("## Judge reliability")
    assert sum(line.startswith("| `beta=") for line in runs_part.splitlines()) == 4  # one row per run
    assert sum(line.startswith("| `beta=") for line in reliability_part.splitlines()) == 4  # and its judge
    assert all((sweep_dir / f"heatmap_{m}.png").exists() for m in ("win_rate", "clip_fraction", "kl"))
    # `wandb leet SWEEP_DIR/wandb` browses the sweep side by side: a link per run's offline log
    links = sorted((sweep_dir / "wandb").iterdir())
    assert len(links) == 4 and all(link.is_symlink() and list(link.glob("run-*.wandb")) for link in links)
    assert f"wandb leet {sweep_dir / 'wandb'}" in report

    # The check the trainer makes before loading anything (ppo.train.checkpoint.finished_summary):
    # same config -> the finished summary; another config -> None (train again or refuse).
    from ppo.train.checkpoint import finished_summary

    job = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb", **{"train.iters": 2}) + [
        "experiment=eps_beta_grid", "epsilon=tight", "beta=tiny"]
    assert finished_summary(compose(job), sweep_dir / "beta=tiny,epsilon=tight")["status"] == "finished"
    assert finished_summary(compose(job + ["seed=1"]), sweep_dir / "beta=tiny,epsilon=tight") is None
    assert finished_summary(compose(job + ["train.iters=3"]), sweep_dir / "beta=tiny,epsilon=tight") is None

    # A job killed mid-sweep: its summary and newest checkpoint are gone. A second launch
    # into the same folder finishes it and leaves the finished runs alone.
    killed, done = sweep_dir / "beta=tiny,epsilon=loose", sweep_dir / "beta=tiny,epsilon=tight"
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "checkpoints")
    done_metrics = (done / "metrics.jsonl").stat().st_mtime_ns
    _, again = _sweep(tmp_path, tiny_model_dir, prompts_file, "experiment=eps_beta_grid",
                      "epsilon=tight,loose", "beta=tiny,stronger", logger="wandb")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _summary(killed)["status"] == "finished"
    assert (done / "metrics.jsonl").stat().st_mtime_ns == done_metrics  # skipped, not re-trained


@pytest.mark.slow
def test_two_sweeps_two_wandb_groups(tmp_path, tiny_model_dir, prompts_file):
    from test_tracking import wandb_run_record

    groups = {}
    for name in ("first", "second"):
        sweep_dir, result = _sweep(tmp_path / name, tiny_model_dir, prompts_file, "loss.beta=0.01,0.5", "train.iters=1",
                                   logger="wandb")
        assert result.returncode == 0, result.stderr[-3000:]
        runs = [wandb_run_record(sweep_dir / job) for job in ("loss.beta=0.01", "loss.beta=0.5")]
        assert {r["run_group"] for r in runs} == {f"{name}/sweep"}  # the sweep's own folder, shared by its jobs
        assert all(r["tags"] == ["default"] for r in runs)  # the experiment name as a tag
        groups[name] = runs[0]["run_group"]
    assert groups["first"] != groups["second"]


@pytest.mark.slow
def test_seeds_as_a_sweep_axis(tmp_path, tiny_model_dir, prompts_file, capsys):
    # `seed=0,1` on the command line: a job folder and a W&B run per seed, one W&B job type per
    # configuration (the seeds grouped), and ppo-report pools the seeds into one row per configuration.
    from test_tracking import wandb_run_record

    sweep_dir, result = _sweep(tmp_path, tiny_model_dir, prompts_file, "loss.beta=0.01,0.5", "seed=0,1",
                               "train.iters=1", logger="wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir() and p.name != "wandb")
    assert names == ["loss.beta=0.01,seed=0", "loss.beta=0.01,seed=1", "loss.beta=0.5,seed=0", "loss.beta=0.5,seed=1"]
    records = {name: wandb_run_record(sweep_dir / name) for name in names}
    assert {name: r["job_type"] for name, r in records.items()} == {
        "loss.beta=0.01,seed=0": "loss.beta=0.01", "loss.beta=0.01,seed=1": "loss.beta=0.01",
        "loss.beta=0.5,seed=0": "loss.beta=0.5", "loss.beta=0.5,seed=1": "loss.beta=0.5"}
    assert records["loss.beta=0.5,seed=1"]["display_name"] == "loss.beta=0.5,seed=1"  # the run names carry the seed
    assert len({r["run_group"] for r in records.values()}) == 1

    assert report_main([str(sweep_dir)]) == 0
    assert "4 runs (4 finished) in 2 configurations" in capsys.readouterr().out
    rows = [line for line in (sweep_dir / "report.md").read_text().splitlines() if line.startswith("| beta=")]
    assert len(rows) == 2 and all("(2 seeds: too few)" in row for row in rows)


@pytest.mark.slow
def test_joblib_launcher_runs_two_jobs(tmp_path, tiny_model_dir, prompts_file):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir, result = _sweep(tmp_path, tiny_model_dir, prompts_file, "hydra/launcher=joblib",
                               "hydra.launcher.n_jobs=2", "loss.beta=0.01,0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stderr + result.stdout
    for name in ("loss.beta=0.01", "loss.beta=0.5"):
        assert _summary(sweep_dir / name)["status"] == "finished"


def test_job_folders_are_named_by_the_swept_keys_with_short_floats(monkeypatch):
    from ppo.train.job_names import SWEPT_KEYS_ENV, job_dir_name

    overrides = ["model.path=/home/me/models/SmolLM2-135M-Instruct", "train.iters=20", "data.max_eval_prompts=32",
                 "loss.beta=0.22112721129989238", "loss.epsilon=0.1", "seed=1"]
    monkeypatch.delenv(SWEPT_KEYS_ENV, raising=False)  # not known: every override, as Hydra names them
    full = job_dir_name(overrides, ["logger"])
    assert full.startswith("data.max_eval_prompts=32,loss.beta=0.221127,") and "SmolLM2-135M-Instruct-" in full
    monkeypatch.setenv(SWEPT_KEYS_ENV, "loss.beta,seed")
    assert job_dir_name(overrides, ["logger"]) == "loss.beta=0.221127,seed=1"  # 38 characters, not 120
    # a float keeps 6 significant digits: proposals that differ within them keep their own folders
    assert job_dir_name(["loss.beta=0.0123456789"], [], ["loss.beta"]) == "loss.beta=0.0123457"
    assert job_dir_name(["loss.beta=0.0123446789"], [], ["loss.beta"]) != job_dir_name(["loss.beta=0.0123456789"], [], ["loss.beta"])
    assert job_dir_name(["loss.beta=0.1", "train.iters=5"], [], []) == "loss.beta=0.1,train.iters=5"


@pytest.mark.slow
def test_a_sweep_says_what_it_found_and_tags_its_jobs_lines(tmp_path, tiny_model_dir, prompts_file):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep_dir = tmp_path / "sweep"
    # no exclude_keys by hand: the fixed overrides (model, data, iters, ...) stay out of the names by themselves
    result = run_cli(["-m", *small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2}),
                      f"hydra.sweep.dir={sweep_dir}", "hydra/launcher=joblib2", "loss.beta=0.01,0.5"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["loss.beta=0.01", "loss.beta=0.5"]
    out = result.stdout
    # each job's lines carry its number; its progress lines in its train.log too
    for num, name in enumerate(["loss.beta=0.01", "loss.beta=0.5"]):
        assert any(f"][#{num}][ppo.tools.sweep][INFO] - result: eval win rate " in line for line in out.splitlines())
        assert f"][#{num}][ppo.progress][INFO] - step 2/2" in (sweep_dir / name / "train.log").read_text()
    # the closing lines: the folder, one line per job (win rate, interval, KL and its unit, status), the report
    closing = out[out.index("sweep folder: "):].splitlines()
    assert closing[0] == f"sweep folder: {sweep_dir} (2 runs: 2 finished)"
    for num, name in enumerate(["loss.beta=0.01", "loss.beta=0.5"]):
        line = closing[1 + num]
        assert line.startswith(f"  #{num} {name}: eval win rate ") and "(95% Wilson " in line
        assert "nats per sequence, finished" in line and ", kl " in line
    assert closing[-1].startswith(f"next: ppo-report {sweep_dir}")


@pytest.mark.slow
def test_failed_job_does_not_stop_the_others(tmp_path, tiny_model_dir, prompts_file):
    # the first job fails at start (an invalid epsilon), the second must still run
    sweep_dir, result = _sweep(tmp_path, tiny_model_dir, prompts_file, "loss.epsilon=1.5,0.2")
    assert result.returncode == 1
    summaries = {p.name: _summary(p) for p in sweep_dir.iterdir() if (p / "summary.json").exists()}
    statuses = sorted(s["status"] for s in summaries.values())
    assert statuses == ["failed", "finished"], summaries


@pytest.mark.parametrize("launcher,target,plugin", [
    ("joblib2", "StoppableJoblibLauncher", "hydra_plugins.hydra_joblib_launcher"),  # ours: Ctrl-C handled
    ("slurm", "SlurmLauncher", "hydra_plugins.hydra_submitit_launcher"),
])
def test_launcher_configs_compose(launcher, target, plugin):
    pytest.importorskip(plugin)
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ppo.train.config import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = hydra_compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "joblib2":
        assert cfg.hydra.launcher.n_jobs == 2
