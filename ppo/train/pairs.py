"""Which judged pairs of k samples per prompt enter the loss (generation.pair_rule).

With `generation.samples_per_prompt=k` every prompt has k completions, sampled in one batched
decode (`ppo.train.rollout.sample_pairs`). The judge sees a full round robin: every one of the
k(k-1)/2 pairs (i, j), i < j, of a prompt's completions, each once per call, so
`judge/pairs` = the step's prompts x k(k-1)/2 (x2 answers from the inner judge under judge.order=both).
k = 2 is one pair per prompt, exactly the classic rollout. Then a rule picks the pairs of the loss:

- `best_vs_worst` (default): one pair per prompt, its best completion against its worst. A
  completion's score is its Borda count with the judge's probabilities, `s_i = sum_j P(i beats j)`
  over its k-1 games (an invalid verdict counts 0.5 for both: it says nothing). Why Borda: a
  pairwise judge gives no scalar reward to rank by (open-instruct PR #369 takes the top and the
  bottom of k by a reward model's scores; TRL's pairwise judges take exactly one pair per prompt),
  and in a complete round robin the Bradley-Terry maximum-likelihood strengths are ordered as the
  total wins are (the wins are the model's sufficient statistic: Zermelo 1929, Ford 1957), so
  ranking by `s_i` is ranking by the fitted Bradley-Terry strength, without fitting. Ties in
  score go to the lower sample index for the best and the higher for the worst (a stable sort),
  so best != worst even when every game was a tie. The pair's verdict and advantage are the
  judge's own on that pair, already judged in the round robin (no extra call): chosen is the
  completion the judge preferred in that game (with a non-transitive judge the Borda best can
  lose it), advantage its confidence |2p - 1|; an invalid verdict leaves the prompt out.
- `all_pairs`: every judged pair enters the loss, each with its own verdict and confidence:
  prompts x k(k-1)/2 pairs, each completion in k-1 of them.

Rows: the k completions of prompt b sit at rows g * B + b (g the sample index, B the prompts),
so k = 2 keeps the classic layout (firsts, then seconds).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

PAIR_RULES = ("best_vs_worst", "all_pairs")


def round_robin(k: int) -> list[tuple[int, int]]:
    """The judged games of k samples: every (i, j) with i < j, in lexicographic order."""
    return list(combinations(range(k), 2))


@dataclass
class SelectedPairs:
    """The pairs a rule picked, one entry each: prompt index, the two sample indices (a < b, as
    judged) and the judge's P(a is better) (NaN when it could not decide)."""

    prompt: np.ndarray
    a: np.ndarray
    b: np.ndarray
    p: np.ndarray

    def rows(self, num_prompts: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the a and b completions in the k x B rollout (row = sample * B + prompt)."""
        return self.a * num_prompts + self.prompt, self.b * num_prompts + self.prompt


def borda_scores(p: np.ndarray, k: int) -> np.ndarray:
    """(k, B) Borda scores from the round robin's (k(k-1)/2, B) P(first better): for each
    completion, the sum over its games of the judge's probability that it wins (NaN -> 0.5)."""
    p = np.where(np.isnan(p), 0.5, p)
    scores = np.zeros((k, p.shape[1]), dtype=np.float64)
    for game, (i, j) in enumerate(round_robin(k)):
        scores[i] += p[game]
        scores[j] += 1.0 - p[game]
    return scores


def select_pairs(p: np.ndarray, k: int, rule: str) -> SelectedPairs:
    """The loss pairs of a round robin: `p` is the judge's P(first better) of every game, shaped
    (k(k-1)/2, B) in `round_robin(k)` order; entries in prompt order (all_pairs: each prompt's
    games in round-robin order)."""
    games = round_robin(k)
    p = np.asarray(p, dtype=np.float64)
    if p.shape[0] != len(games):
        raise ValueError(f"expected {len(games)} games of {k} samples, got {p.shape[0]}")
    num_prompts = p.shape[1]
    if rule == "all_pairs":
        prompt = np.repeat(np.arange(num_prompts), len(games))
        game = np.tile(np.arange(len(games)), num_prompts)
    elif rule == "best_vs_worst":
        order = np.argsort(-borda_scores(p, k), axis=0, kind="stable")  # best first; ties: lower index first
        best, worst = order[0], order[-1]
        index = {g: m for m, g in enumerate(games)}
        prompt = np.arange(num_prompts)
        game = np.array([index[(min(x, y), max(x, y))] for x, y in zip(best, worst)], dtype=np.int64)
    else:
        raise ValueError(f"unknown pair rule {rule!r}: choose {' or '.join(PAIR_RULES)}")
    pairs = np.array(games, dtype=np.int64).reshape(-1, 2)
    return SelectedPairs(prompt=prompt.astype(np.int64), a=pairs[game, 0], b=pairs[game, 1], p=p[game, prompt])



def trained_completions_per_prompt(gen_cfg) -> int:
    """Completions of a prompt that the loss trains on (the adaptive KL controller's n per prompt):
    2 under best_vs_worst, all k under all_pairs."""
    return 2 if gen_cfg.pair_rule == "best_vs_worst" else gen_cfg.samples_per_prompt
