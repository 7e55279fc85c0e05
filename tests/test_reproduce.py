"""ppo-reproduce: a run re-run from its saved config (or its wandb log) gives the same metrics."""

import json
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli, sigint_as_default, small_run_overrides
from ppo.tools.reproduce import comparable, wandb_run_files
from ppo.tools.reproduce import main as reproduce_main


def _metrics(run_dir):
    return [comparable(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _reproduce(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ppo.tools.reproduce", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def original(tmp_path_factory, tiny_model_dir, prompts_file):
    run_dir = tmp_path_factory.mktemp("reproduce") / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, logger="wandb") + [
        "loss.epsilon=0.1", "loss.beta=0.05", "seed=11", "train.learning_rate=1e-3", f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides, env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_reproduce_from_run_folder_gives_identical_metrics(original):
    result = _reproduce(original)
    assert result.returncode == 0, result.stderr[-3000:]
    out = original.parent / "run-reproduce"
    rows = _metrics(out)
    assert len(rows) == 4 and rows == _metrics(original)
    assert any(r["clip_fraction"] > 0 for r in rows)  # the policy moved, so equality means something
    assert (out / ".hydra" / "config.yaml").exists() and json.loads((out / "reproduce.json").read_text())["source"]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_reproduce_from_offline_wandb_log_with_override(original, tmp_path):
    (log,) = wandb_run_files(original)
    out = tmp_path / "from-wandb"
    result = _reproduce(log, "train.iters=2", "logger.kind=none", f"hydra.run.dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _metrics(out) == _metrics(original)[:2]


def test_reproduce_bad_input_is_one_line_error(original, tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    for args, needle in [
        ([tmp_path / "not-a-run"], "not a run folder"),
        ([tmp_path / "nothing-here"], "not a run folder"),
        ([original, "loss.no_such_key=1", f"hydra.run.dir={tmp_path}/x"], "no_such_key"),
        ([original, "loss.epsilon=abc", f"hydra.run.dir={tmp_path}/x"], "loss.epsilon"),
        ([original, "loss.epsilon=1.5", f"hydra.run.dir={tmp_path}/x"], "loss.epsilon"),
        ([original, f"hydra.run.dir={original}"], "not empty"),  # never writes into an existing run
    ]:
        code = reproduce_main([str(a) for a in args])  # in-process: each fails before any training
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        assert needle in err and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x").exists()


def test_a_run_trained_on_two_ranks_is_refused_with_the_command_that_repeats_it(original, tmp_path, capsys):
    """One process draws other random streams than 2 ranks: ppo-reproduce trained a whole run
    and then said "not reproduced: the metrics differ"."""
    import shutil

    source = tmp_path / "two-ranks"
    shutil.copytree(original, source)
    summary = json.loads((source / "summary.json").read_text())
    (source / "summary.json").write_text(json.dumps({**summary, "world_size": 2}))
    assert reproduce_main([str(source)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {source} was trained on 2 ranks") and err.strip().count("\n") == 0, err
    assert "ppo-launch -n 2 --backend ring " in err and "seed=11" in err and f"hydra.run.dir={source}-ranks2" in err
    assert not (tmp_path / "two-ranks-reproduce").exists()


@pytest.mark.slow
@pytest.mark.parametrize("delay", [1.0, 2.5])
def test_ctrl_c_while_reproducing_is_one_line_and_exit_130(original, tmp_path, delay):
    """`ppo-reproduce` (its console entry point): a Ctrl-C while it loads gave a traceback."""
    proc = subprocess.Popen([sys.executable, "-c", "from ppo.tools.cli import reproduce_main; reproduce_main()",
                             str(original), "train.iters=500", "--out", str(tmp_path / "again")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err[-3000:]
