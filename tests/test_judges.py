"""Rule judges and the verdict -> advantage mapping."""

import numpy as np

from conftest import compose
from ppo.judges import Pair
from ppo.judges.base import advantages_from_verdicts
from ppo.judges.rules import LengthPreference, WordListPreference


def test_word_list_prefers_positive_and_ending():
    judge = WordListPreference(positive=["good", "kind"], negative=["bad"])
    pairs = [
        Pair("p", "a good kind dog", "a bad dog"),
        Pair("p", "a bad dog", "a good dog"),
        Pair("p", "a dog", "the dog"),
        Pair("p", "good good good", "a dog .", a_finished=False, b_finished=True),  # rambling loses
    ]
    assert judge(pairs).p.tolist() == [1.0, 0.0, 0.5, 0.0]
    soft = WordListPreference(positive=["good"], sharpness=1.0)([Pair("p", "good", "x")]).p[0]
    assert 0.5 < soft < 1.0


def test_length_preference():
    judge = LengthPreference(target_words=3)
    assert judge([Pair("p", "one two three", "one"), Pair("p", "one", "one two")]).p.tolist() == [1.0, 0.0]


def test_verdicts_to_advantages_ties_and_invalid():
    p = np.array([1.0, 0.0, 0.5, np.nan, 0.75])
    first_chosen, confidence, valid = advantages_from_verdicts(p, tie_threshold=0.0)
    assert first_chosen.tolist()[:2] == [True, False] and first_chosen[4]
    assert confidence.tolist() == [1.0, 1.0, 0.0, 0.0, 0.5]
    assert valid.tolist() == [True, True, True, False, True]
    _, confidence, _ = advantages_from_verdicts(p, tie_threshold=0.6)
    assert confidence.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_judge_groups_instantiate_from_config():
    from ppo.judges import build_judge

    for name, cls in [("rule", WordListPreference), ("length", LengthPreference)]:
        judge = build_judge(compose([f"judge={name}"]).judge)
        assert isinstance(judge.inner, cls) and judge.order == "both"


def test_distinct_words_cannot_be_won_by_repetition():
    judge = WordListPreference(positive=["happy", "kind"], distinct=True)
    assert judge([Pair("p", "happy happy happy happy", "a happy kind dog")]).p.tolist() == [0.0]
