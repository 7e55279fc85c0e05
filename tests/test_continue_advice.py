"""Every message that tells how to continue a stopped run names the one command that does it for
how the run was started (`ppo.train.run_folder.continue_command`): after a stop by signal (also
while the run sets up), a second signal, a write error or a lost rank, and from ppo-train, a sweep or ppo-reproduce. The printed
command, run as printed, continues the run."""

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, small_run_overrides

BIN = Path(sys.executable).parent


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _printed_command(line: str) -> list[str]:
    """The command after `run: ` (to the end of the line)."""
    assert "train.resume=auto" not in line, line
    return shlex.split(line.split("run: ", 1)[1])


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _stop_after_rows(args: list[str], cwd: Path, metrics_glob: str, rows: int) -> tuple[int, str, Path]:
    """Start `args`, send SIGTERM once a metrics.jsonl under `cwd` matching `metrics_glob` has
    `rows` lines; (exit code, stderr, that run folder)."""
    proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, found = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None:
        found = next((p for p in cwd.glob(metrics_glob) if p.read_text().count("\n") >= rows), None)
        if found:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    assert found is not None, err[-3000:]
    return proc.returncode, err, found.parent


LONG = {"train.iters": 200, "train.save_every": 1000, "train.steps_per_eval": 1000}


@pytest.mark.slow
def test_a_sigterm_stop_prints_the_command_that_continues_it(tmp_path, tiny_model_dir, prompts_file):
    """No hydra.run.dir given: Hydra's time-stamped folder. The printed command names it, and run
    as printed it resumes from the checkpoint the signal saved (stopped again after one more row)."""
    args = small_run_overrides(tiny_model_dir, prompts_file, **LONG)
    code, err, run_dir = _stop_after_rows([sys.executable, "-m", "ppo.tools.cli", *args], tmp_path,
                                          "outputs/*/*/metrics.jsonl", 2)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    (line,) = _errors(err)
    assert line.startswith("error: stopped by signal 15 after step ") and "checkpoint saved; to continue from it, run: " in line
    command = _printed_command(line)
    assert command == ["ppo-train", *args, f"hydra.run.dir={run_dir.resolve()}"]
    saved = _steps(run_dir)[-1]

    code, err, again = _stop_after_rows([str(BIN / command[0]), *command[1:]], tmp_path, "outputs/*/*/metrics.jsonl",
                                        saved + 1)
    assert again == run_dir and code == 128 + signal.SIGTERM, err[-3000:]
    assert _steps(run_dir)[:saved + 1] == list(range(1, saved + 2))  # went on from the saved step, in the same folder
    assert len(list((tmp_path / "outputs").glob("*/*"))) == 1


@pytest.mark.slow
def test_a_write_error_prints_the_command_that_continues_it(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    args = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "hydra.run.dir": run_dir})
    (run_dir / "summary.json").mkdir(parents=True)  # a real I/O error (EISDIR) at the very end, after the last checkpoint
    result = run_cli(args, cwd=tmp_path)
    (line,) = _errors(result.stderr)
    assert result.returncode != 0 and "Traceback" not in result.stderr + result.stdout
    assert "trained to step 2 but could not write" in line and "free space, then continue: " in line
    command = shlex.split(line.split("then continue: ", 1)[1])
    assert command == ["ppo-train", *[a for a in args if not a.startswith("hydra.run.dir=")],
                       f"hydra.run.dir={run_dir.resolve()}"]
    (run_dir / "summary.json").rmdir()  # fixed
    again = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def test_the_messages_name_the_command(tmp_path, monkeypatch):
    from ppo.errors import TrainingAborted, TrainingInterrupted
    from ppo.train.loop import run_folder_write_error

    command = "ppo-train loss.beta=0.05 hydra.run.dir=/runs/a"
    stopped = TrainingInterrupted(15, 3, command)
    assert str(stopped) == f"stopped by signal 15 after step 3; checkpoint saved; to continue from it, run: {command}"
    aborted = TrainingAborted(15).during(4, "step-0000003 (step 3)", command)
    assert str(aborted).endswith(f"the newest checkpoint, step-0000003 (step 3), is the resume point; to continue, run: {command}")
    assert "train.resume=auto" not in str(aborted) + str(stopped)
    err = OSError(28, "No space left on device")
    err.filename = str(tmp_path / "metrics.jsonl")
    monkeypatch.setattr("sys.argv", ["/venv/bin/ppo-train", "loss.beta=0.05", "train.resume=never"])
    line = str(run_folder_write_error(err, tmp_path))
    assert line.endswith(f"then continue: ppo-train loss.beta=0.05 hydra.run.dir={tmp_path.resolve()}"), line


@pytest.mark.parametrize("argv,expected", [
    (["/venv/bin/ppo-reproduce", "/runs/a", "train.iters=5", "--out", "/old"],
     "ppo-reproduce /runs/a train.iters=5 --out '/runs/a b'"),
    (["/src/ppo/tools/reproduce.py", "/runs/a", "hydra.run.dir=/old", "seed=2"], "ppo-reproduce /runs/a seed=2 --out '/runs/a b'"),
    (["/usr/bin/my_script.py"], "the same command with hydra.run.dir='/runs/a b' (train.resume=auto, the default)"),
])
def test_the_command_for_each_program(monkeypatch, argv, expected):
    from ppo.train.run_folder import continue_command

    monkeypatch.setattr("sys.argv", argv)
    assert continue_command("/runs/a b") == expected


@pytest.mark.slow
def test_a_stopped_reproduction_continues_with_the_printed_command(tmp_path, tiny_model_dir, prompts_file):
    """ppo-reproduce picks a new folder each time and never writes into another run's: the printed
    command names its folder (--out), and there it continues its own reproduction."""
    source = tmp_path / "source"
    assert run_cli(small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 1, "hydra.run.dir": source}),
                   cwd=tmp_path).returncode == 0
    overrides = [f"{k}={v}" for k, v in LONG.items()]
    code, err, out = _stop_after_rows([str(BIN / "ppo-reproduce"), str(source), *overrides], tmp_path,
                                      "source-reproduce/metrics.jsonl", 2)
    assert code == 128 + signal.SIGTERM and "Traceback" not in err, err[-3000:]
    (line,) = _errors(err)
    command = _printed_command(line)
    assert command == ["ppo-reproduce", str(source), *overrides, "--out", str(out.resolve())]
    saved = _steps(out)[-1]
    code, err, again = _stop_after_rows([str(BIN / command[0]), *command[1:]], tmp_path, "source-reproduce/metrics.jsonl",
                                        saved + 1)
    assert again == out and code == 128 + signal.SIGTERM, err[-3000:]
    assert "not empty" not in err and _steps(out)[:saved + 1] == list(range(1, saved + 2))
    assert not (tmp_path / "source-reproduce-2").exists()


@pytest.mark.slow
def test_a_sigint_while_the_run_sets_up_names_the_folder_hydra_chose(tmp_path, tiny_model_dir, prompts_file):
    """Ctrl-C as soon as the run folder exists (the model, data and judge are still loading, or the
    first step has begun): the one line names the command with Hydra's time-stamped folder, never
    "the same command", which would open another folder."""
    from conftest import sigint_as_default

    args = small_run_overrides(tiny_model_dir, prompts_file, **LONG)
    proc = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *args], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    deadline = time.time() + 180
    while time.time() < deadline and not list(tmp_path.glob("outputs/*/*/.hydra/config.yaml")):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    (run_dir,) = [p.parent.parent for p in tmp_path.glob("outputs/*/*/.hydra/config.yaml")]
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    (line,) = _errors(err)
    assert _printed_command(line) == ["ppo-train", *args, f"hydra.run.dir={run_dir.resolve()}"]
