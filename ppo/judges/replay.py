"""Answer from a recorded judgments.jsonl: re-run a human-judged run without the human.

A pair is looked up by the sha256 of its prompt text and of both completions (and
whether each ended by itself); the recorded final p is returned, or 1 - p when the
recording saw the pair the other way round. Prompt ids are kept in the record for
reading, but not used as keys: the prompt text is what the judge saw.

An unknown pair means the new run diverged from the recorded one. By default that is an
error naming the file (``on_missing: error``); ``on_missing: invalid`` answers NaN
instead (excluded from the loss, never a win) and counts them in
``judge/replay_missing``.

Evaluation follows the recorded run: a file with no evaluation records (a ``judge=human``
run, which does not evaluate unless ``train.human_eval=true``) turns evaluation off here too
(``recorded_evaluation``, read by ``ppo.train.evaluation.evaluation_enabled``, which says so in
one line), so the replay asks only for pairs the file holds and reproduces the recorded run's
metrics. A file with evaluation records (``train.human_eval=true``, or any other judge) evaluates.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from ppo.errors import ConfigError
from ppo.judges.base import Pair, Verdicts
from ppo.judges.record import mirror, pair_key, read_judgments, record_key

log = logging.getLogger(__name__)


class ReplayJudge:
    kind = "replay"

    def __init__(self, path: str, on_missing: str = "error"):
        if on_missing not in ("error", "invalid"):
            raise ConfigError(f"invalid judge.on_missing={on_missing!r}: choose error or invalid")
        if not path or not Path(path).is_file():
            raise ConfigError(f"invalid judge.path={path!r}: give a recorded judgments.jsonl, e.g. judge.path=outputs/RUN/judgments.jsonl")
        self.path, self.on_missing = str(path), on_missing
        self.table: dict[tuple, float] = {}
        phases = set()
        for r in read_judgments(path):
            p = r.get("p")
            self.table[record_key(r)] = math.nan if p is None else float(p)
            phases.add(r.get("phase"))
        # Whether the recorded run evaluated (its file holds evaluation pairs): the replay does as it did.
        # None for an empty file: no recorded run to follow, the run's own setting decides.
        self.recorded_evaluation = ("eval" in phases) if phases else None
        self.missing = 0

    def lookup(self, pair: Pair) -> float | None:
        key = pair_key(pair)
        if key in self.table:
            return self.table[key]
        if mirror(key) in self.table:
            return 1.0 - self.table[mirror(key)]
        return None

    def __call__(self, pairs: list[Pair]) -> Verdicts:
        p = np.full(len(pairs), np.nan)
        missing = 0
        for i, pair in enumerate(pairs):
            found = self.lookup(pair)
            if found is None:
                if self.on_missing == "error":
                    raise ConfigError(
                        f"judge=replay: a pair (prompt id {pair.prompt_id or '?'}) is not in {self.path}: this run diverged "
                        "from the recorded one; set judge.on_missing=invalid to score unknown pairs as invalid"
                    )
                missing += 1
            else:
                p[i] = found
        if missing:
            log.warning("judge=replay: %d of %d pairs not in %s, scored invalid", missing, len(pairs), self.path)
        self.missing += missing
        return Verdicts(p=p, diagnostics={"judge/replay_missing": float(missing)})
