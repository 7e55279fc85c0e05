"""The human judge driven by scripted keys; every decision recorded at once; quit and resume."""

import io
import re

import numpy as np
import pytest

from ppo.judges import JudgePipeline, JudgeQuit, Pair
from ppo.judges.human import HumanJudge
from ppo.judges.record import JudgmentLog, read_judgments

PAIRS = [Pair(f"prompt {i}", f"first answer {i}", f"second answer {i}", prompt_id=str(i)) for i in range(4)]


def human(keys: str, out=None):
    return HumanJudge(input_stream=io.StringIO(keys), output_stream=out or io.StringIO(), width=100)


def test_keys_nonsense_asked_again_and_side_by_side():
    out = io.StringIO()
    v = JudgePipeline(human("what\n\n1\n2\nt\ns\n", out), order="fixed")(PAIRS)
    assert v.p[:3].tolist() == [1.0, 0.0, 0.5] and np.isnan(v.p[3])
    text = out.getvalue()
    assert "'what' is not one of" in text and "first answer 0" in text and "second answer 0" in text
    assert v.diagnostics["judge/invalid_rate"] == 0.25 and v.diagnostics["judge/tie_rate"] == 0.25


@pytest.mark.parametrize("keys", ["1\n2\nq\n", "1\n2\n"])  # q, or stdin closed (EOF)
def test_quit_keeps_every_decision_and_resume_asks_only_the_rest(tmp_path, keys):
    path = tmp_path / "judgments.jsonl"
    judge = JudgePipeline(human(keys), order="random", seed=0, log=JudgmentLog(path))
    with pytest.raises(JudgeQuit) as err:
        judge(PAIRS, step=3)
    assert "\n" not in str(err.value) and "recorded" in str(err.value)
    judge.close()
    records = read_judgments(path)
    assert [r["prompt_id"] for r in records] == ["0", "1"] and all(r["judge"] == "human" for r in records)
    # random order: the side shown first decides what key 1 means
    assert [r["p"] for r in records] == [1.0 if r["orders"] == ["ab"] else 0.0 for r in records[:1]] + [records[1]["p"]]

    out = io.StringIO()
    resumed = JudgePipeline(human("t\nt\n", out), order="random", seed=0, log=JudgmentLog(path))
    v = resumed(PAIRS, step=3)
    assert out.getvalue().count("prompt 2") == 1 and "prompt 0" not in out.getvalue()
    assert v.p[0] == records[0]["p"] and v.p[2:].tolist() == [0.5, 0.5]
    assert len(read_judgments(path)) == 6


class _Display:
    """A live display as the progress bar registers it (start / stop)."""

    def __init__(self):
        self.running = True

    def start(self):
        self.running = True

    def stop(self):
        self.running = False


def test_the_live_display_pauses_while_a_question_is_open_and_evaluation_is_labelled():
    from ppo import console

    display, seen = _Display(), []

    class Keys(io.StringIO):
        def readline(self):
            seen.append(display.running)  # what the screen does while the person reads
            return super().readline()

    out = io.StringIO()
    judge = JudgePipeline(HumanJudge(input_stream=Keys("1\n2\n"), output_stream=out, width=100), order="fixed")
    console.register_live(display)
    try:
        judge(PAIRS[:1], step=1, phase="train")
        assert "evaluation" not in out.getvalue()
        judge(PAIRS[1:2], step=1, phase="eval")
    finally:
        console.unregister_live(display)
    assert seen == [False, False] and display.running  # paused for each question, running again after
    assert "evaluation" in out.getvalue().split("prompt 1")[0].split("prompt 0")[1]  # the second question is labelled


def _human_run(tmp_path, tiny_model_dir, prompts_file, *extra, **kwargs):
    from conftest import small_run_overrides

    overrides = small_run_overrides(tiny_model_dir, prompts_file, judge="human", **{"train.iters": 1, "train.progress": "true"})
    return [*overrides, f"hydra.run.dir={tmp_path / 'run'}", *extra]


@pytest.mark.slow
def test_evaluation_is_off_with_a_human_judge_unless_asked(tmp_path, tiny_model_dir, prompts_file):
    import json
    import subprocess
    import sys

    args = _human_run(tmp_path, tiny_model_dir, prompts_file)
    result = subprocess.run([sys.executable, "-m", "ppo.tools.cli", *args], input="1\n1\n", capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("judge=human: evaluation against the reference is off") == 1
    assert result.stdout.count("Which is better?") == 2  # the two training pairs only
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["eval"] == {}

    args = _human_run(tmp_path, tiny_model_dir, prompts_file, "train.human_eval=true", f"hydra.run.dir={tmp_path / 'run2'}")
    result = subprocess.run([sys.executable, "-m", "ppo.tools.cli", *args], input="1\n" * 6, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Which is better?") == 6 and result.stdout.count("evaluation") >= 4  # 4 labelled pairs


@pytest.mark.slow
def test_on_a_terminal_the_question_stays_on_screen_while_the_bar_is_on(tmp_path, tiny_model_dir, prompts_file):
    """Under a pseudo-terminal (as in tmux): the rich bar is live, yet once the question is
    printed nothing redraws over it until a single key (no Enter) answers it."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    master, slave = pty.openpty()
    args = _human_run(tmp_path, tiny_model_dir, prompts_file)
    env = {**os.environ, "COLUMNS": "120", "LINES": "200", "TERM": "xterm"}
    proc = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *args], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    screen, answered, quiet_after_question = b"", 0, []
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                screen += chunk
            if screen.count(b"Which is better?") > answered:
                question_at = len(screen)
                time.sleep(1.0)  # ten refreshes of a running bar
                ready, _, _ = select.select([master], [], [], 0)
                quiet_after_question.append(not ready)
                if ready:
                    screen += os.read(master, 65536)
                answered += 1
                os.write(master, b"1")  # one key, no Enter
                assert len(screen) >= question_at
            if proc.poll() is not None and not select.select([master], [], [], 0)[0]:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.wait(timeout=30) == 0, screen[-3000:].decode(errors="replace")
    assert answered == 2 and quiet_after_question == [True, True]
    assert b"prompt" in screen and b"ppo" in screen  # the question and the bar both reached the terminal


LONG = Pair("tell me about the dog", "short one", "a much longer answer " * 40, prompt_id="long")


def _lines_with_both(text: str) -> list[str]:
    return [line for line in text.splitlines() if "short one" in line and "a much longer" in line]


def test_one_layout_per_session_decided_by_the_width_not_the_text():
    wide = io.StringIO()
    JudgePipeline(HumanJudge(io.StringIO("1\n1\n"), wide, width=100), order="fixed")([LONG, PAIRS[0]])
    assert _lines_with_both(wide.getvalue())  # a long completion stays beside the short one
    assert [line for line in wide.getvalue().splitlines() if "first answer 0" in line and "second answer 0" in line]
    narrow = io.StringIO()
    JudgePipeline(HumanJudge(io.StringIO("1\n1\n"), narrow, width=60), order="fixed")([PAIRS[0], LONG])
    assert not _lines_with_both(narrow.getvalue())  # one above the other, short texts too
    assert not [line for line in narrow.getvalue().splitlines() if "first answer 0" in line and "second answer 0" in line]
    assert narrow.getvalue().index("first answer 0") < narrow.getvalue().index("second answer 0")


def test_pair_numbers_count_from_the_step_and_continue_after_a_resume(tmp_path):
    path = tmp_path / "judgments.jsonl"
    out = io.StringIO()
    judge = JudgePipeline(human("1\n2\nq\n", out), order="random", seed=0, log=JudgmentLog(path))
    with pytest.raises(JudgeQuit):
        judge(PAIRS, step=3)
    judge.close()
    assert "step 3 · pair 1 of 4" in out.getvalue() and "step 3 · pair 3 of 4" in out.getvalue()  # q on the third
    resumed_out = io.StringIO()
    resumed = JudgePipeline(human("1\n" * 5, resumed_out), order="random", seed=0, log=JudgmentLog(path))
    resumed(PAIRS, step=3)
    titles = re.findall(r"step \d+ · pair \d+ of \d+", resumed_out.getvalue())
    assert titles == ["step 3 · pair 3 of 4", "step 3 · pair 4 of 4"]  # not "pair 1" again
    # a step's micro-batches are separate calls: the numbers go on over them; a new step starts at 1
    fresh = [Pair(f"prompt {i}", f"third answer {i}", f"fourth answer {i}", prompt_id=str(i)) for i in range(3)]
    resumed(fresh[:2], step=3)
    resumed(fresh[2:], step=4)
    titles = re.findall(r"step \d+ · pair \d+ of \d+", resumed_out.getvalue())
    assert titles[2:] == ["step 3 · pair 5 of 6", "step 3 · pair 6 of 6", "step 4 · pair 1 of 1"]


def test_skips_by_a_person_are_counted_in_their_own_words(caplog):
    import logging

    from ppo.train.loop import warn_judge_invalid

    steps = [{"judge/pairs": 2.0, "judge/invalid_rate": 0.5}, {"judge/pairs": 2.0, "judge/invalid_rate": 0.0}]
    with caplog.at_level(logging.INFO, logger="ppo.train.loop"):
        warn_judge_invalid(2, {"judge/invalid_rate": 0.5}, "human", steps[:1])
        # two micro-batches a step: each row's judge/pairs is the whole step's (ppo.metrics.STEP_COUNTS)
        warn_judge_invalid(4, {"judge/invalid_rate": 0.25}, "human", [{**r, "judge/pairs": 4.0} for r in steps])
        warn_judge_invalid(5, {"judge/invalid_rate": 0.0}, "human", steps[1:])  # nothing skipped: nothing said
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "you skipped 1 of 2 pairs" in lines[0] and "you skipped 2 of 8 pairs" in lines[1]
    assert all("left out of the loss" in line and "server" not in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ppo.train.loop"):
        warn_judge_invalid(2, {"judge/invalid_rate": 0.5}, "llm", steps[:1])  # a model's or server's failure
    (line,) = [r.getMessage() for r in caplog.records]
    assert "no usable verdict for most of the pairs" in line and "check the judge's prompt, labels or server" in line


@pytest.mark.parametrize("argv,expected", [
    (["/venv/bin/ppo-train", "judge=human", "train.resume=never", "loss.beta=0.05"],
     "ppo-train judge=human loss.beta=0.05 hydra.run.dir=/runs/a"),
    (["/src/ppo/tools/cli.py", "judge=human", "hydra.run.dir=old dir"], "ppo-train judge=human hydra.run.dir=/runs/a"),
    (["/venv/bin/ppo-train", "-m", "judge=human", "seed=1,2"], "ppo-train -m judge=human seed=1,2 hydra.sweep.dir=/runs"),
])
def test_the_command_that_continues_a_run(monkeypatch, argv, expected):
    from ppo.train.run_folder import continue_command

    monkeypatch.setattr("sys.argv", argv)
    assert continue_command("/runs/a") == expected


def test_another_program_gets_the_advice_in_words(monkeypatch):
    from ppo.train.run_folder import continue_command

    monkeypatch.setattr("sys.argv", ["/usr/local/bin/my_experiment.py", "/runs/a"])
    assert continue_command("/runs/a b") == "the same command with hydra.run.dir='/runs/a b' (train.resume=auto, the default)"


@pytest.mark.slow
def test_a_person_skips_quits_and_the_printed_command_continues_the_run(tmp_path, tiny_model_dir, prompts_file):
    """No hydra.run.dir given (Hydra's time-stamped folder): a skip gets the person's own line, q
    prints the command that continues, and that command, run as printed, asks only what is left."""
    import json
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from conftest import small_run_overrides

    args = small_run_overrides(tiny_model_dir, prompts_file, judge="human", **{"train.iters": 2})
    first = subprocess.run([sys.executable, "-m", "ppo.tools.cli", *args], input="s\n1\n1\nq\n", capture_output=True,
                           text=True, timeout=300, cwd=tmp_path)
    out = first.stdout + first.stderr
    assert first.returncode == 3, out[-3000:]
    assert "step 1: you skipped 1 of 2 pairs" in out and "no usable verdict" not in out
    assert "step 2 · pair 2 of 2" in out and "train.resume=auto" not in out and "Traceback" not in out
    command = shlex.split(out.split("to continue from it, run: ", 1)[1].splitlines()[0])
    (run_dir,) = [Path(a.split("=", 1)[1]) for a in command if a.startswith("hydra.run.dir=")]
    assert command[0] == "ppo-train" and run_dir.parent.parent == tmp_path / "outputs"
    assert command[1:-1] == args  # the same command, the run folder named

    ppo_train = Path(sys.executable).parent / "ppo-train"
    second = subprocess.run([str(ppo_train), *command[1:]], input="2\n", capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert re.findall(r"step \d+ · pair \d+ of \d+", out) == ["step 2 · pair 2 of 2"]  # only the unanswered pair
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
