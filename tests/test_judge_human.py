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
