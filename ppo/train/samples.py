"""RUN_DIR/samples.jsonl: what the policy saw and wrote, what the judge read and decided.

Why: `judgments.jsonl` keeps hashes only; a researcher looks at samples first. One JSON
line per judged pair, at every evaluation (every held-out pair: `a` is the policy, `b` the
reference) and for the first `train.samples_per_report` pairs of every report step
(`a` and `b` are the policy's two samples):

    step, phase (train | eval), prompt_id,
    prompt       the prompt as the policy read it: its token ids decoded, template included,
    a, b         the completions as sampled (special tokens and reasoning kept),
    a_judged, b_judged   the texts the judge was shown (ppo.train.completions),
    a_finished, b_finished   whether each ended by itself (EOS) rather than at the length cap,
    p            P(a is better) after the judge pipeline (null when the judge could not decide),
    verdict      a | b | tie | invalid.

Lines are written whole and flushed, like metrics.jsonl; on resume the lines past the
checkpoint's step are dropped, so a resumed run holds each row once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ppo.io import SAMPLES_FILE, atomic_write_text, naming_file, read_jsonl
from ppo.judges.record import verdict_of


def sample_rows(step: int | None, phase: str, tokenizer, prompts, first, second, judged_a: list[str],
                judged_b: list[str], p, limit: int | None = None) -> list[dict]:
    """Rows for the first `limit` pairs (all when None). `first` / `second`: the sampled
    `Completions` (token ids and finish flags), `p`: the pipeline's P(first is better)."""
    n = len(prompts) if limit is None else min(limit, len(prompts))
    rows = []
    for i in range(n):
        p_i = float(p[i])
        rows.append({
            "step": step, "phase": phase, "prompt_id": prompts[i].id,
            "prompt": tokenizer.decode(list(prompts[i].tokens), skip_special_tokens=False),
            "a": tokenizer.decode(first.token_ids[i], skip_special_tokens=False),
            "b": tokenizer.decode(second.token_ids[i], skip_special_tokens=False),
            "a_judged": judged_a[i], "b_judged": judged_b[i],
            "a_finished": bool(first.finished[i]), "b_finished": bool(second.finished[i]),
            "p": None if math.isnan(p_i) else p_i, "verdict": verdict_of(p_i),
        })
    return rows


class SamplesFile:
    """Append-only samples.jsonl; on resume, rows past the checkpoint's step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None):
        self.path = Path(run_dir) / SAMPLES_FILE
        if resume_step is not None and self.path.exists():
            kept = [row for row in read_jsonl(self.path) if (row.get("step") or 0) <= resume_step]  # a torn line is dropped
            atomic_write_text(self.path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._file = None

    def write(self, step: int, rows: list[dict]) -> None:
        if not rows:
            return
        if self._file is None:  # opened on the first rows: a run that samples nothing leaves no file
            self._file = open(self.path, "a", encoding="utf-8")
        with naming_file(self.path):
            self._file.write("".join(json.dumps({**row, "step": step}, ensure_ascii=False) + "\n" for row in rows))
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
