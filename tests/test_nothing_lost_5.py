"""Nothing lost, round 2 (issue 23), the last gaps: Ctrl-C in a multirun whose jobs run in
joblib's worker processes (hydra/launcher=joblib2), W&B rows after a resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, sigint_as_default, small_run_overrides
from test_nothing_lost_3 import _stopped_in_one_line

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")


def _ctrl_c_when_two_jobs_train(args: list[str], sweep_dir: Path):
    """Runs `ppo-train ARGS` in a process group of its own and, once two jobs have logged a step,
    sends SIGINT to the group, as a terminal's Ctrl-C does (it reaches the worker processes too)."""
    proc = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *args], cwd=ROOT, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=sigint_as_default)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and \
            len([p for p in sweep_dir.glob("*/metrics.jsonl") if p.read_text().count("\n") >= 1]) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


def _every_job_saved_and_stopped(sweep_dir: Path) -> list[Path]:
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "interrupted", (job, summary)
        assert [c.name for c in (job / "checkpoints").iterdir()] == [f"step-{summary['step']:07d}"], job
    return jobs


@pytest.mark.slow
def test_ctrl_c_in_a_joblib2_sweep_saves_every_running_job_and_starts_no_other(tmp_path, tiny_model_dir, prompts_file):
    sweep_dir = tmp_path / "sweep"
    long_run = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 500, "train.save_every": 1000})
    code, out, err = _ctrl_c_when_two_jobs_train(
        ["-m", *long_run, "seed=0,1,2", "hydra/launcher=joblib2", f"hydra.sweep.dir={sweep_dir}"], sweep_dir)
    line = _stopped_in_one_line(code, out, err, "the sweep stopped: jobs ")
    assert f"hydra.sweep.dir={sweep_dir} to continue" in line
    jobs = _every_job_saved_and_stopped(sweep_dir)
    assert [job.name for job in jobs] == ["seed=0", "seed=1"]  # the third job never started (n_jobs=2)
    assert all(str(job) in line for job in jobs)
    assert "sweep folder:" not in out  # the closing summary of a multirun that ended is not printed


@pytest.mark.slow
def test_ctrl_c_in_a_joblib2_search_stops_it_without_a_best(tmp_path, tiny_model_dir, prompts_file):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep_dir = tmp_path / "search"
    # two trials side by side (the search itself proposes one at a time: hydra.sweeper.n_jobs=1)
    args = ["hparams_search=eps_beta_win_rate", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib2",
            f"hydra.sweep.dir={sweep_dir}",
            *small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 500, "train.save_every": 1000})]
    code, out, err = _ctrl_c_when_two_jobs_train(args, sweep_dir)
    line = _stopped_in_one_line(code, out, err, "the search stopped: jobs ")
    assert "resume its stored study" in line
    assert len(_every_job_saved_and_stopped(sweep_dir)) == 2  # no trial after the interrupted batch
    assert not (sweep_dir / "optimization_results.yaml").exists()
    assert "Best" not in out + err and "best" not in out.lower()


@pytest.fixture
def wandb_in_this_process(monkeypatch):
    """wandb runs in the test's own process: its service is ended afterwards and its WANDB_SERVICE
    (which wandb.init puts into os.environ) removed, so later tests' children start their own."""
    import wandb

    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # undone after the test: removed again
    yield
    wandb.teardown()


def test_a_resume_sets_unsynced_attempts_aside_and_counts_uploaded_ones(tmp_path, wandb_in_this_process):
    """Real offline W&B runs of one id: an attempt `wandb sync` uploaded already (its .wandb.synced marker)
    keeps its place and its steps count as held; an attempt never uploaded moves to wandb/superseded/
    and the resumed attempt logs its steps up to the checkpoint again."""
    import wandb

    from conftest import compose
    from test_nothing_lost_3 import _sync_would_upload, _wandb_rows

    from ppo.train.tracking import WandbRun

    cfg = compose(["logger=wandb", "logger.wandb.mode=offline", "logger.wandb.console=off",
                   "logger.wandb.system_metrics=false"]).logger.wandb
    rows = [{"step": step, "loss": step / 10} for step in range(1, 8)]

    def attempt(steps, resume_step=None):
        time.sleep(1)  # wandb names an attempt's folder by its start to the second, as real attempts never share one
        run = WandbRun(cfg, tmp_path, {}, run_id="fixedid1")
        restored = run.restore_history(rows, resume_step) if resume_step is not None else ([], [])
        for row in rows:
            if row["step"] in steps:
                run.log(row["step"], {"loss": row["loss"]})
        log_file = Path(run._run.settings.sync_dir) / "run-fixedid1.wandb"
        run.finish()
        wandb.teardown()  # as an attempt's process ends: wandb's service writes the log out and stops
        return log_file, restored

    uploaded, _ = attempt({1, 2, 3})
    uploaded.with_suffix(".wandb.synced").touch()  # what `wandb sync` leaves next to a log it uploaded
    never_uploaded, _ = attempt({4, 5, 6})  # its newest checkpoint at step 5, killed after logging step 6
    resumed, (restored, moved) = attempt({6, 7}, resume_step=5)

    assert restored == [4, 5]  # 1-3 are uploaded already
    assert moved == [tmp_path / "wandb" / "superseded" / never_uploaded.parent.name]
    assert [row["step"] for row in _wandb_rows(moved[0] / never_uploaded.name)] == [4, 5, 6]  # kept whole
    assert uploaded.exists()
    assert _sync_would_upload(tmp_path) == [resumed.resolve()]  # the uploaded attempt is skipped, as it should be
    held = [row["step"] for log in (uploaded, resumed) for row in _wandb_rows(log)]
    assert sorted(held) == list(range(1, 8))
