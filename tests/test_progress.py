"""What a run prints per report step: plain lines when stdout is not a terminal (SLURM,
nohup, CI), the same lines in train.log, health warnings in the same stream, no
third-party INFO chatter; and the live bar's pause for the human judge."""

import io
import logging
import re

import pytest

from conftest import run_cli, small_run_overrides
from ppo import console
from ppo.train.progress import Progress, format_line

STEP_LINE = re.compile(r"\[ppo\.progress\]\[INFO\] - step (\d+)/(\d+)  loss=")


def test_format_line_has_the_numbers_a_cluster_user_needs():
    line = format_line(10, 200, {"loss": 0.5, "clip_fraction": 0.25, "kl": 0.01, "eval/win_rate": 1.0, "eval/pairs": 4},
                       seconds_per_step=1.5)
    assert line.startswith("step 10/200  loss=0.5  clip_fraction=0.250  kl=0.01  eval_win_rate=1.000 (0.51-1.00)")
    assert line.endswith("1.50 s/step  ETA 4m45s")  # 190 steps left at 1.5 s
    assert "eval_win_rate" not in format_line(3, 200, {"loss": 0.5, "eval/win_rate": float("nan")}, None)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_on_a_terminal_pauses_for_the_judge_and_lines_go_to_files_only(tmp_path):
    import sys

    root = logging.getLogger()
    file_handler, console_stream = logging.FileHandler(tmp_path / "train.log"), io.StringIO()
    console_handler = logging.StreamHandler(console_stream)
    stdout_handler = logging.StreamHandler(sys.stdout)  # Hydra's console handler writes to stdout
    root.addHandler(file_handler), root.addHandler(console_handler), root.addHandler(stdout_handler)
    old_level, root.level = root.level, logging.INFO
    terminal = _Terminal()
    try:
        progress = Progress(4, stream=terminal)
        live = progress._bar.live
        logging.getLogger("ppo.health").warning("clip_fraction 0.50 > 30%")
        assert "clip_fraction 0.50 > 30%" in terminal.getvalue()  # printed by the bar's console, above the bar
        assert live.is_started
        with console.paused_live():
            assert not live.is_started  # nothing redraws over the question
        assert live.is_started
        progress.update({"loss": 0.1, "clip_fraction": 0.0, "kl": 0.2}, 1)
        progress.close()
        assert not live.is_started and not console._live
        assert stdout_handler.stream is sys.stdout  # restored
    finally:
        root.removeHandler(file_handler), root.removeHandler(console_handler), root.removeHandler(stdout_handler)
        root.level = old_level
        file_handler.close()
    assert "step 1/4  loss=0.1" in (tmp_path / "train.log").read_text()
    assert "step 1/4" not in console_stream.getvalue()  # the bar shows it; a log line would tear it


@pytest.mark.slow
def test_redirected_stdout_gets_one_line_per_report_step_and_train_log_too(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, **{
        "train.iters": 6, "train.steps_per_report": 2, "train.steps_per_eval": 3, "train.progress": "true",
        # lr so high that clip_fraction passes 0.3: the health warning must land in the same stream
        "train.learning_rate": 0.5}) + [f"hydra.run.dir={run_dir}"]
    # a fresh matplotlib config folder: building its font cache logs an INFO line that must stay out
    result = run_cli(overrides, env={"MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert result.returncode == 0, result.stderr[-3000:]
    printed = [m.groups() for m in STEP_LINE.finditer(result.stdout)]
    assert printed == [("2", "6"), ("4", "6"), ("6", "6")], result.stdout
    assert "eval_win_rate=" in result.stdout and "s/step  ETA" in result.stdout
    log_text = (run_dir / "train.log").read_text()
    assert [m.groups() for m in STEP_LINE.finditer(log_text)] == printed
    assert "moves too far per step" in result.stdout and "moves too far per step" in log_text
    assert (tmp_path / "mpl").exists()  # matplotlib did build its cache in this run...
    assert "matplotlib" not in result.stdout + result.stderr + log_text  # ...without a word in the log


@pytest.mark.slow
def test_progress_false_keeps_the_console_quiet_but_not_train_log(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file) + [f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not STEP_LINE.search(result.stdout)
    assert len(STEP_LINE.findall((run_dir / "train.log").read_text())) == 4


# The ETA counts the evaluations still to come; the step-0 evaluation gets its line (issue 24, item 9).

def test_evaluations_left_counts_every_steps_per_eval_and_the_last_step():
    from ppo.train.progress import evaluations_left

    assert evaluations_left(0, 300, 25) == 12  # 25, 50, ..., 300
    assert evaluations_left(0, 10, 3) == 4  # 3, 6, 9 and the last step, 10
    assert evaluations_left(9, 10, 3) == 1 and evaluations_left(10, 10, 3) == 0
    assert evaluations_left(4, 10, None) == 0  # not evaluating (judge=human)


def test_eta_adds_the_evaluations_left_at_their_own_pace(monkeypatch, caplog):
    """10 steps of 1 s, an evaluation of 10 s at steps 0, 5 and 10: at step 5 the ETA is 5 steps x 1 s
    + 1 evaluation x 10 s = 15 s (the old estimate, 25 s elapsed / 5 steps x 5 steps left, said 25 s
    here, and where evaluations are rarer than reports it said far too little)."""
    import ppo.train.progress as progress_module

    clock = [100.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
    progress = Progress(10, enabled=True, stream=io.StringIO(), steps_per_eval=5)
    with caplog.at_level(logging.INFO, logger="ppo.progress"):
        with progress.evaluation():
            clock[0] += 10
        progress.update({"eval/win_rate": 0.5, "eval/pairs": 64}, 0)
        for step in range(1, 6):
            clock[0] += 1
            if step == 5:
                with progress.evaluation():
                    clock[0] += 10
            progress.update({"loss": 0.1}, step)
    lines = [r.getMessage() for r in caplog.records if r.name == "ppo.progress"]
    assert lines[0].startswith("step 0/10  eval_win_rate=0.500 (0.38-0.62)") and "10.0 s/eval" in lines[0]
    assert "ETA" not in lines[0]  # no step timed yet
    assert lines[-1] == "step 5/10  loss=0.1  1.00 s/step  10.0 s/eval  ETA 0m15s", lines[-1]
    assert progress_module.eta_seconds(5, 10, 1.0, 10.0, 1) == 15.0


@pytest.mark.slow
def test_the_step_0_evaluation_is_a_progress_line(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, **{
        "train.iters": 4, "train.steps_per_report": 2, "train.steps_per_eval": 2, "train.progress": "true",
        "train.eval_at_start": "true"}) + [f"hydra.run.dir={run_dir}"]
    result = run_cli(overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    step0 = re.findall(r"\[ppo\.progress\]\[INFO\] - (step 0/4  eval_win_rate=[^\n]*)", result.stdout)
    assert len(step0) == 1 and "s/eval" in step0[0], result.stdout
    assert "step 0/4  eval_win_rate=" in (run_dir / "train.log").read_text()
    later = [m.group(0) for m in re.finditer(r"step [24]/4  loss=[^\n]*", result.stdout)]
    assert len(later) == 2 and all("s/step" in x and "s/eval" in x and "ETA" in x for x in later), later
