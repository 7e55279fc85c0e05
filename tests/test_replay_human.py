"""judge=replay on a judge=human run's judgments.jsonl: the documented command, no extra settings,
reproduces the human-judged run (evaluation follows the recorded run's setting)."""

import json
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import small_run_overrides
from ppo.judges import JudgePipeline, Pair
from ppo.judges.record import JudgmentLog
from ppo.judges.replay import ReplayJudge
from ppo.judges.rules import LengthPreference
from ppo.metrics import comparable
from ppo.train.evaluation import evaluation_enabled

PAIRS = [Pair(f"prompt {i}", "x" * (i + 1), "y" * 3, prompt_id=str(i)) for i in range(3)]
# What a replay measures of itself rather than of the run: the position each pair was shown in
# (the person saw random sides, the replay's order is fixed), and its own count of unknown pairs.
REPLAY_OWN = ("judge/first_position_win_rate", "judge/replay_missing")


def _recorded(path, phases):
    judge = JudgePipeline(LengthPreference(), order="fixed", log=JudgmentLog(path))
    for phase in phases:
        judge(PAIRS, step=1, phase=phase)
    judge.close()
    return JudgePipeline(ReplayJudge(str(path)), order="fixed")


def test_evaluation_follows_the_recorded_run(tmp_path, caplog):
    off = SimpleNamespace(human_eval=False)
    with caplog.at_level(logging.INFO, logger="ppo.train.evaluation"):
        assert not evaluation_enabled(_recorded(tmp_path / "train.jsonl", ["train"]), off, 4)
        assert evaluation_enabled(_recorded(tmp_path / "both.jsonl", ["train", "eval"]), off, 4)
    (line,) = [r.getMessage() for r in caplog.records]  # one line, only when evaluation is off
    assert "as in the recorded run" in line and "train.jsonl holds no evaluation pairs" in line
    assert evaluation_enabled(JudgePipeline(LengthPreference()), off, 4)  # other judges: unchanged
    (tmp_path / "empty.jsonl").write_text("")  # no recorded run to follow: the run's own setting
    assert evaluation_enabled(JudgePipeline(ReplayJudge(str(tmp_path / "empty.jsonl"))), off, 4)


def _cli(args, keys=None):
    return subprocess.run([sys.executable, "-m", "ppo.tools.cli", *args], input=keys, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_replaying_a_human_judged_run_reproduces_its_metrics(tmp_path, tiny_model_dir, prompts_file):
    base = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2, "train.steps_per_eval": 1})
    human = _cli([*base, "judge=human", f"hydra.run.dir={tmp_path / 'human'}"], keys="1\n2\nt\n1\n")
    assert human.returncode == 0, human.stderr[-3000:]
    recorded = tmp_path / "human" / "judgments.jsonl"

    # The documented command: the recorded file and the same seed, nothing else.
    replay = _cli([*base, "judge=replay", f"judge.path={recorded}", f"hydra.run.dir={tmp_path / 'replay'}"])
    assert replay.returncode == 0, (replay.stdout + replay.stderr)[-3000:]
    assert (replay.stdout + replay.stderr).count("evaluation against the reference is off, as in the recorded run") == 1

    def rows(run):
        return [comparable(json.loads(line)) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    original, replayed = rows("human"), rows("replay")
    assert [r["step"] for r in original] == [1, 2] and not any(k.startswith("eval/") for r in original for k in r)
    assert all(r["judge/replay_missing"] == 0 for r in replayed)
    strip = lambda r: {k: v for k, v in r.items() if k not in REPLAY_OWN}  # noqa: E731
    assert [strip(r) for r in replayed] == [strip(r) for r in original]
    assert original[-1]["judge/tie_rate"] == 0.5  # step 2: the tie of "t" and "1" was replayed
