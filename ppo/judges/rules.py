"""Rule judges: a score per completion, the higher-scoring completion wins.

Cheap, deterministic judges for tests, the demo and quick experiments. Each one is a
class selected in config by ``_target_``; its ``score`` is the whole rule, so writing a
new one is a few lines.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from ppo.errors import ConfigError
from ppo.judges.base import Pair, Verdicts

_WORD = re.compile(r"[\w']+")


class ScoreRule:
    """Compare two completions by a per-completion score.

    ``require_ending``: a completion that ran into the length cap loses to one that ended
    by itself, whatever the scores, so a rule cannot be won by rambling.
    ``sharpness``: p = sigmoid(sharpness * (score_a - score_b)); ``None`` gives hard
    verdicts (1, 0, or 0.5 on equal scores).
    """

    def __init__(self, require_ending: bool = True, sharpness: float | None = None):
        self.require_ending = require_ending
        self.sharpness = sharpness

    def score(self, prompt: str, completion: str) -> float:
        raise NotImplementedError

    def __call__(self, pairs: Sequence[Pair]) -> Verdicts:
        score_a = np.array([self.score(x.prompt, x.a) for x in pairs], dtype=np.float64)
        score_b = np.array([self.score(x.prompt, x.b) for x in pairs], dtype=np.float64)
        if self.sharpness is None:
            p = np.where(score_a > score_b, 1.0, np.where(score_a < score_b, 0.0, 0.5))
        else:
            p = 1.0 / (1.0 + np.exp(-self.sharpness * (score_a - score_b)))
        if self.require_ending:
            a_ended = np.array([x.a_finished for x in pairs])
            b_ended = np.array([x.b_finished for x in pairs])
            p = np.where(a_ended & ~b_ended, 1.0, np.where(b_ended & ~a_ended, 0.0, p))
        return Verdicts(p=p, diagnostics={"score_a": score_a, "score_b": score_b})


class WordListPreference(ScoreRule):
    """Prefers completions with more words from ``positive`` and fewer from ``negative``.

    score = (#positive words - #negative words), case-insensitive whole words; with
    ``distinct`` each word counts once, so repeating one positive word ("happy happy
    happy") earns nothing: the policy has to use the lexicon, not game it.
    """

    def __init__(self, positive: Sequence[str], negative: Sequence[str] = (), distinct: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.positive = {w.lower() for w in positive}
        self.negative = {w.lower() for w in negative}
        self.distinct = distinct

    def score(self, prompt: str, completion: str) -> float:
        words = _WORD.findall(completion.lower())
        if self.distinct:
            words = set(words)
        return float(sum(w in self.positive for w in words) - sum(w in self.negative for w in words))


class LengthPreference(ScoreRule):
    """Prefers completions whose word count is closer to ``target_words``.

    score = -|#words - target_words|.
    """

    def __init__(self, target_words: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.target_words = target_words

    def score(self, prompt: str, completion: str) -> float:
        return -abs(len(_WORD.findall(completion)) - self.target_words)


class SentimentPreference(ScoreRule):
    """Prefers the completion whose answer VADER reads as more positive.

    score = VADER's compound score of the completion (``vaderSentiment``), in [-1, 1]: the
    lexicon valences of its words, adjusted by VADER's rules (negation, "but", intensifiers,
    CAPITALS, "!"), summed and squashed by x / sqrt(x^2 + 15). The lexicon ships inside the
    vaderSentiment wheel, so nothing is downloaded. The sum saturates toward 1, so more
    positive words (even the same one repeated) score higher: see conf/judge/sentiment.yaml.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise ConfigError("judge=sentiment needs the vaderSentiment package: pip install vaderSentiment==3.3.2 "
                              "(a dependency of ppo-mlx; reinstall it)") from None
        # Built once per judge: the constructor parses the 7,500-entry lexicon (about 35 ms),
        # a call then costs about 0.15 ms.
        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompt: str, completion: str) -> float:
        return float(self.analyzer.polarity_scores(completion)["compound"])
