"""What every judge goes through: answer order, cache, ties, metrics and the record.

Why one wrapper: position bias, duplicate pairs, ties and recording are the same problem
for a rule, an LLM, a server and a person, so no judge implements them itself.

- ``order``: ``both`` (default) shows each pair as (A, B) and as (B, A) and averages
  p_ab with 1 - p_ba, which removes position bias by construction: the pipeline's p for
  (A, B) is exactly 1 - its p for (B, A). A pair with either order invalid is invalid
  (averaging the one valid order would let the bias back in). ``random`` shows each pair
  once, flipped by a hash of (seed, pair), so the flip survives a resume. ``fixed`` shows
  it as given.
- ``on_order_disagreement`` (under ``both``): the two orders disagree when, read for the same
  answer A (p_ab and 1 - p_ba), one is strictly above 0.5 and the other strictly below: both
  orders picked the answer in the same position, so the verdict follows where an answer is
  shown, not what it says. ``tie`` (default) makes such a pair a tie, p = 0.5 exactly (zero advantage,
  half a win in evaluation); its record says ``"order_disagreement": true`` and keeps the
  average as ``p_raw``. ``average`` keeps the average as the verdict (the rule before this
  option). One order at exactly 0.5 is not a disagreement (that order abstains and the average
  leans to the other), and ``judge/order_agreement`` (same side of 0.5 in both orders, both
  0.5 included) does not count it as agreeing either. Rule judges never disagree with
  themselves, so the option changes nothing for them. The whole run's order agreement,
  first-position win rate and tie rate go into summary.json (``reliability``).
- Cache: a pair already judged (same prompt, completions and finish flags) is answered
  from memory, under ``both`` also when seen the other way round. The records of a
  resumed run directory are loaded back, so a person is never asked twice. Invalid
  answers are not cached: they are asked again next time.
- Ties: a valid p with confidence |2p - 1| <= ``tie_threshold`` becomes exactly 0.5 (zero
  advantage); the record keeps ``p_raw``.
- ``include_reasoning`` / ``reasoning_markers``: whether a completion's reasoning block
  (``<think> ... </think>``: the tokenizer's markers, or these two strings) is shown to the
  judge; kept here with the other judge-side settings and applied by the trainer
  (``ppo.train.completions``), which holds the token ids.
- Judges that set ``chunk_size`` (the human judge: 1) are called that many pairs at a
  time and each finished pair is recorded at once, so a quit or crash loses nothing.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ppo.errors import ConfigError, JudgeQuit, JudgeUnavailable
from ppo.judges.base import Pair, Verdicts
from ppo.judges.record import JudgmentLog, mirror, pair_key, read_judgments, record_key, verdict_of

ORDERS = ("both", "random", "fixed")
ON_ORDER_DISAGREEMENT = ("tie", "average")
# The judge-reliability verdict (the summary's judge/guessing, ppo-report): a judge whose two
# orders agree on fewer than this share of the pairs decides by position about as often as by
# the answers; two fair coins agree on half the pairs, so 0.6 is a coin plus a small margin.
GUESSING_AGREEMENT = 0.6


@dataclass(frozen=True)
class Judged:
    """The outcome for one (A, B): final p, p before tie snapping, what was shown."""

    p: float
    p_raw: float
    orders: tuple[str, ...]  # "ab": A shown first; "ba": B shown first
    p_shown: tuple[float, ...]  # raw P(first shown is better), one per order
    latency_s: float
    disagreed: bool = False  # both orders decided, for different answers (a tie under on_order_disagreement=tie)

    def p_for_a(self) -> list[float]:
        return [p if o == "ab" else 1.0 - p for o, p in zip(self.orders, self.p_shown)]

    def mirrored(self) -> "Judged":
        flip = {"ab": "ba", "ba": "ab"}
        return replace(self, p=1.0 - self.p, p_raw=1.0 - self.p_raw, orders=tuple(flip[o] for o in self.orders))


def swap(pair: Pair) -> Pair:
    return Pair(pair.prompt, pair.b, pair.a, pair.b_finished, pair.a_finished, pair.prompt_id)


def check_wrapper_options(order, tie_threshold, on_order_disagreement="tie") -> tuple[str, float, str]:
    if order not in ORDERS:
        raise ConfigError(f"invalid judge.order={order!r}: choose both, random or fixed")
    if isinstance(tie_threshold, bool) or not isinstance(tie_threshold, (int, float)) or not 0.0 <= tie_threshold < 1.0:
        raise ConfigError(f"invalid judge.tie_threshold={tie_threshold!r}: must be a number in [0, 1), e.g. 0.1")
    if on_order_disagreement not in ON_ORDER_DISAGREEMENT:
        raise ConfigError(f"invalid judge.on_order_disagreement={on_order_disagreement!r}: choose tie or average")
    return order, float(tie_threshold), on_order_disagreement


def orders_disagree(p_for_a) -> bool:
    """Both orders decided, for different answers: one p (read for A) above 0.5, the other below."""
    return len(p_for_a) == 2 and (p_for_a[0] - 0.5) * (p_for_a[1] - 0.5) < 0.0


def _rate(values) -> float | None:
    return float(np.mean(values)) if len(values) else None


def reliability(records: list[dict], kind: str | None = None, order_mode: str | None = None) -> dict:
    """How far the judge of a run can be trusted, from its judgments.jsonl records (the summary's
    ``judge`` part, read by ppo-report).

    Counted over the pairs the judge actually answered (``cached`` records repeat an answer and
    are left out, so a resumed run counts what a straight run counts), of this judge ``kind`` and
    ``order_mode`` when given. ``judge/order_agreement``: pairs shown in both orders whose two
    answers fall on the same side of 0.5; ``judge/order_disagreement_rate``: pairs whose orders
    picked different answers (a tie under on_order_disagreement=tie); ``judge/first_position_win_rate``:
    answers that favoured the completion shown first (half for 0.5) with its 95% Wilson interval
    over the answers (no bias: 0.5); ``judge/tie_rate``: valid verdicts of exactly 0.5.
    ``judge/guessing``: the two orders agree on fewer than GUESSING_AGREEMENT of the pairs (None
    when no pair was shown both ways), and ``judge/verdict`` says it in words."""
    from ppo.metrics import wilson_interval

    mine = [r for r in records if not r.get("cached") and (kind is None or r.get("judge") == kind)
            and (order_mode is None or r.get("order_mode") == order_mode)]
    valid = [r for r in mine if r.get("p") is not None]
    shown = [float(x) for r in valid for x in r.get("p_shown") or [] if x is not None]
    first = [1.0 if x > 0.5 else 0.0 if x < 0.5 else 0.5 for x in shown]
    both = [[x if o == "ab" else 1.0 - x for o, x in zip(r["orders"], r["p_shown"])] for r in valid
            if len(r.get("orders") or []) == 2 and None not in r["p_shown"]]
    agreement = _rate([np.sign(a - 0.5) == np.sign(b - 0.5) for a, b in both])
    first_rate = _rate(first)
    interval = wilson_interval(first_rate, len(first))
    guessing = None if agreement is None else agreement < GUESSING_AGREEMENT
    if guessing is None:
        verdict = "not measured: no pair was judged in both orders (judge.order=both measures it)"
    elif guessing:
        verdict = (f"guessing: its two orders agree on {agreement:.0%} of {len(both)} pairs (below {GUESSING_AGREEMENT:.0%}; "
                   "two coins agree on half), so its verdicts follow the answer's position, not its content")
    else:
        verdict = f"consistent: its two orders agree on {agreement:.0%} of {len(both)} pairs"
    return {
        "judge/pairs": len(mine),
        "judge/order_agreement": agreement,
        "judge/order_disagreement_rate": _rate([orders_disagree(x) for x in both]),
        "judge/first_position_win_rate": first_rate,
        "judge/first_position_win_rate_low": interval[0] if interval else None,
        "judge/first_position_win_rate_high": interval[1] if interval else None,
        "judge/tie_rate": _rate([r["p"] == 0.5 for r in valid]),
        "judge/invalid_rate": _rate([r.get("p") is None for r in mine]),
        "judge/guessing": guessing,
        "judge/verdict": verdict,
    }


class JudgePipeline:
    """``pipeline(pairs, step=None, phase="train") -> Verdicts`` around any inner judge."""

    def __init__(self, inner, *, order: str = "both", tie_threshold: float = 0.0, on_order_disagreement: str = "tie",
                 include_reasoning: bool = False, reasoning_markers: list | None = None, seed: int = 0,
                 log: JudgmentLog | None = None, kind: str | None = None):
        self.inner = inner
        self.order, self.tie_threshold, self.on_order_disagreement = check_wrapper_options(
            order, tie_threshold, on_order_disagreement)
        # What the judge reads of a completion; applied by the trainer, which holds the
        # sampled token ids, when it builds the pairs (ppo.train.completions.CompletionReader).
        self.include_reasoning = include_reasoning
        self.reasoning_markers = list(reasoning_markers) if reasoning_markers else None
        self.seed = seed
        self.log = log
        self.kind = kind or getattr(inner, "kind", type(inner).__name__)
        self.cache: dict[tuple, Judged] = {}
        self._inner_diagnostics: dict = {}
        if log is not None and log.path.exists():
            self.preload(log.path)

    def preload(self, path: Path) -> int:
        """Load valid records of this judge kind and order mode into the cache (resume).

        The raw answers are kept and the verdict is worked out again under this pipeline's
        rules (``_finish``, bit for bit the same for the same settings), so a record written
        under another ``on_order_disagreement`` is never replayed under the wrong rule."""
        loaded = 0
        for r in read_judgments(path):
            if r.get("p") is None or r.get("judge") != self.kind or r.get("order_mode") != self.order:
                continue
            p_shown = tuple(math.nan if v is None else v for v in r["p_shown"])
            if any(math.isnan(x) for x in p_shown):
                continue
            self.cache[record_key(r)] = self._finish(tuple(r["orders"]), p_shown, 0.0)
            loaded += 1
        return loaded

    def _lookup(self, key: tuple, batch: dict) -> Judged | None:
        for table in (batch, self.cache):
            if key in table:
                return table[key]
            if self.order == "both" and mirror(key) in table:
                return table[mirror(key)].mirrored()
        return None

    def _orders_for(self, key: tuple) -> tuple[str, ...]:
        if self.order == "both":
            return ("ab", "ba")
        if self.order == "fixed":
            return ("ab",)
        digest = hashlib.sha256(f"{self.seed}|{key}".encode()).digest()
        return ("ba",) if digest[0] & 1 else ("ab",)

    def _finish(self, orders, p_shown, latency) -> Judged:
        """Average the orders so that judging (B, A) gives exactly 1 - p(A, B), bit for bit.

        s = p(A) - 1/2 is a sum of per-order terms that change sign (exactly) with the pair;
        the winner's probability w = 1/2 + |s| lies in [1/2, 1], where 1 - w is exact.
        """
        if any(math.isnan(x) for x in p_shown):
            return Judged(math.nan, math.nan, tuple(orders), tuple(float(x) for x in p_shown), latency)
        s = sum((x - 0.5) if o == "ab" else -(x - 0.5) for o, x in zip(orders, p_shown)) / len(orders)
        w = 0.5 + abs(s)
        p_raw = w if s >= 0 else 1.0 - w
        # Symmetric in A and B (p_for_a of the mirror is 1 - each), so mirroring keeps p = 1 - p exact.
        disagreed = orders_disagree([x if o == "ab" else 1.0 - x for o, x in zip(orders, p_shown)])
        tie = 2.0 * abs(s) <= self.tie_threshold or (disagreed and self.on_order_disagreement == "tie")
        p = 0.5 if tie else p_raw
        return Judged(p, p_raw, tuple(orders), tuple(float(x) for x in p_shown), latency, disagreed)

    def __call__(self, pairs: list[Pair], step: int | None = None, phase: str = "train") -> Verdicts:
        started = time.perf_counter()
        pairs = list(pairs)
        keys = [pair_key(x) for x in pairs]
        results: list[Judged | None] = [None] * len(pairs)
        cached = [False] * len(pairs)
        batch: dict[tuple, Judged] = {}
        todo: dict[tuple, list[int]] = {}  # key -> indices of pairs it answers
        later: list[int] = []  # duplicates (or mirrors) of a pair judged in this call
        for i, key in enumerate(keys):
            hit = self._lookup(key, {})
            if hit is not None:
                results[i], cached[i] = hit, True
            elif key in todo or (self.order == "both" and mirror(key) in todo):
                later.append(i)
            else:
                todo[key] = [i]

        shown = [(key, o) for key in todo for o in self._orders_for(key)]  # a pair's orders adjacent
        got: dict[tuple, list[float]] = {key: [] for key in todo}
        latency: dict[tuple, float] = {key: 0.0 for key in todo}
        chunk = getattr(self.inner, "chunk_size", None) or max(len(shown), 1)
        # A judge that labels and numbers its questions (the human judge): the step, the phase and
        # each asked pair's place among the call's pairs, which a resume does not change.
        numbering = hasattr(self.inner, "start_batch")
        if numbering:
            self.inner.start_batch(step, phase, len(pairs))
        for start in range(0, len(shown), chunk):
            part = shown[start : start + chunk]
            if numbering:
                self.inner.numbers = [todo[k][0] + 1 for k, _ in part]
            asked = [pairs[todo[k][0]] if o == "ab" else swap(pairs[todo[k][0]]) for k, o in part]
            tic = time.perf_counter()
            verdicts, p_part = self._ask(asked)
            each = (time.perf_counter() - tic) / len(part)
            self._merge_inner_diagnostics(verdicts.diagnostics)
            done = []
            for (key, _), p in zip(part, p_part):
                got[key].append(float(p))
                latency[key] += each
                if len(got[key]) == len(self._orders_for(key)):
                    done.append(key)
            for key in done:
                judged = self._finish(self._orders_for(key), got[key], latency[key])
                batch[key] = judged
                if not math.isnan(judged.p):
                    self.cache[key] = judged
                for i in todo[key]:
                    results[i] = judged
                self._record([todo[key][0]], pairs, results, cached, step, phase)
        for i in later:
            results[i], cached[i] = self._lookup(keys[i], batch), True
        self._record(later, pairs, results, cached, step, phase)
        for i in range(len(pairs)):  # cache hits from earlier calls
            if cached[i] and i not in later:
                self._record([i], pairs, results, cached, step, phase)

        p = np.array([r.p for r in results], dtype=np.float64)
        diagnostics = self.metrics(results, time.perf_counter() - started)
        diagnostics["judge/cache_hit_rate"] = float(np.mean(cached)) if pairs else math.nan
        diagnostics.update(self._inner_diagnostics)
        self._inner_diagnostics = {}
        return Verdicts(p=p, diagnostics=diagnostics)

    def _ask(self, asked: list[Pair]) -> tuple[Verdicts, np.ndarray]:
        """The inner judge's verdicts on `asked` and their p, one per pair. Every failure of the
        judge, of any kind (a server that dropped the connection, a judge's own bug, an answer
        of the wrong length), is JudgeUnavailable: the trainer saves the last whole step and
        stops with one line (exit code 3), and the run resumes once the judge is fixed."""
        try:
            verdicts = self.inner(asked)
            p = np.asarray(verdicts.p, dtype=np.float64).reshape(-1)
            if len(p) != len(asked):
                raise ValueError(f"it returned {len(p)} verdicts for {len(asked)} pairs")
            return verdicts, p
        except (JudgeUnavailable, JudgeQuit):
            raise
        except ConfigError as err:  # its line names the setting that fixes it
            raise JudgeUnavailable(str(err)) from err
        except Exception as err:
            text = str(err).strip().splitlines()
            raise JudgeUnavailable(f"the {self.kind} judge failed ({type(err).__name__}"
                                   f"{': ' + text[0][:200] if text else ''})") from err

    def _merge_inner_diagnostics(self, diagnostics: dict) -> None:
        """Keep scalar ``judge/...`` metrics an inner judge reports (summed over chunks)."""
        merged = dict(self._inner_diagnostics)
        for k, v in (diagnostics or {}).items():
            if k.startswith("judge/") and isinstance(v, (int, float)):
                merged[k] = merged.get(k, 0.0) + float(v)
        self._inner_diagnostics = merged

    def metrics(self, results: list[Judged], seconds: float) -> dict:
        n = len(results)
        p = np.array([r.p for r in results], dtype=np.float64)
        valid = ~np.isnan(p)
        shown = np.array([x for r in results for x in r.p_shown if not math.isnan(x)], dtype=np.float64)
        first_wins = np.where(shown > 0.5, 1.0, np.where(shown < 0.5, 0.0, 0.5))
        both = [r.p_for_a() for r in results if len(r.p_shown) == 2 and not any(math.isnan(x) for x in r.p_shown)]
        agree = [np.sign(a - 0.5) == np.sign(b - 0.5) for a, b in both]
        return {
            "judge/first_position_win_rate": float(first_wins.mean()) if len(shown) else math.nan,
            "judge/order_agreement": float(np.mean(agree)) if agree else math.nan,
            "judge/tie_rate": float(np.mean(valid & (p == 0.5))) if n else math.nan,
            "judge/invalid_rate": float(np.mean(~valid)) if n else math.nan,
            "judge/seconds": float(seconds),
            "judge/pairs": float(n),
        }

    def _record(self, indices, pairs, results, cached, step, phase) -> None:
        if self.log is None or not indices:
            return
        lines = []
        for i in indices:
            pair, r, key = pairs[i], results[i], pair_key(pairs[i])
            lines.append({
                "step": step, "phase": phase, "prompt_id": pair.prompt_id,
                "prompt_sha256": key[0], "a_sha256": key[1], "a_finished": key[2], "b_sha256": key[3], "b_finished": key[4],
                "orders": list(r.orders), "p_shown": list(r.p_shown), "p": r.p, "p_raw": r.p_raw,
                "verdict": verdict_of(r.p), "latency_s": 0.0 if cached[i] else r.latency_s, "cached": cached[i],
                "judge": self.kind, "order_mode": self.order, "time": time.time(),
                **({"order_disagreement": r.disagreed, "on_order_disagreement": self.on_order_disagreement}
                   if len(r.orders) == 2 else {}),
            })
        self.log.write(lines)

    def flush(self) -> None:
        """Hand buffered records to the writer (a no-op for a single process, whose log writes at once)."""
        flush = getattr(self.log, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()
