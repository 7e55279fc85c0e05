"""The human judge driven by scripted keys; every decision recorded at once; quit and resume."""

import io

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
    assert "evaluation" in out.getvalue().split("prompt 1")[0].split("pair 2")[1]  # the second question is labelled


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
