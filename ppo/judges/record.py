"""judgments.jsonl: one JSON line per judged pair, appended and flushed at once.

Why: the judge decides what PPO amplifies, so every decision must be inspectable after
the run, and a human's decisions must survive a crash or a quit. A line holds the step,
the prompt id, sha256 hashes of the prompt and both completions (texts are not stored,
so a record can be shared without the data), the order(s) shown with the raw P(first
better) of each, the final p, the verdict (a / b / tie / invalid), latency and judge kind.
`ReplayJudge` (replay.py) answers from these lines.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ppo.io import naming_file, read_jsonl
from ppo.judges.base import Pair, text_hash

VERDICTS = ("a", "b", "tie", "invalid")


def pair_key(pair: Pair) -> tuple:
    """(prompt, first, second) hashes and finish flags: what makes two comparisons the same."""
    return (text_hash(pair.prompt), text_hash(pair.a), bool(pair.a_finished), text_hash(pair.b), bool(pair.b_finished))


def mirror(key: tuple) -> tuple:
    return (key[0], key[3], key[4], key[1], key[2])


def record_key(r: dict) -> tuple:
    return (r["prompt_sha256"], r["a_sha256"], bool(r.get("a_finished", True)), r["b_sha256"], bool(r.get("b_finished", True)))


def verdict_of(p: float) -> str:
    if p is None or math.isnan(p):
        return "invalid"
    return "a" if p > 0.5 else "b" if p < 0.5 else "tie"


def _json_number(x):
    """NaN is not JSON: an invalid probability is written as null."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


class JudgmentLog:
    """Appends records to ``path``; each write is flushed and fsynced before returning."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        with naming_file(self.path):
            for record in records:
                clean = {k: ([_json_number(v) for v in val] if k == "p_shown" else _json_number(val) if k in ("p", "p_raw") else val)
                         for k, val in ((k, record[k]) for k in record)}
                self._file.write(json.dumps(clean, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class GatheredJudgmentLog:
    """The judgment log of a run on several processes: each rank buffers its records, and
    `flush` (called by the loop after every step and evaluation) gathers them to rank 0,
    the one process that writes ``path``. `world` is a `ppo.train.distributed.World`."""

    def __init__(self, path, world):
        self.path = Path(path)
        self.world = world
        self._pending: list[dict] = []
        self._file = JudgmentLog(path) if world.is_main else None

    def write(self, records: list[dict]) -> None:
        self._pending.extend(records)

    def flush(self) -> None:
        gathered = self.world.gather_objects(self._pending)
        self._pending = []
        if self._file is not None:
            for rank, records in enumerate(gathered):
                self._file.write([{**r, "rank": rank} for r in records])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_judgments(path) -> list[dict]:
    """All complete records of a judgments file (a torn last line from a crash is skipped)."""
    return read_jsonl(path)
