"""What the judge is shown of a sampled completion: its answer, without the reasoning block.

Why: a thinking model (Qwen3 and the like) writes `<think> ... </think>` before its
answer. The judge compares answers, so showing it the reasoning would reward or punish
how a model thinks aloud, and a completion cut at the length cap inside its reasoning
would look like a long answer. The reasoning block is found on the sampled token ids, with
the tokenizer's own think markers (mlx-lm's `TokenizerWrapper.think_start_tokens` /
`think_end_tokens`) or the strings in `judge.reasoning_markers`:

- the completion contains the end marker: the answer is what follows its last one;
- else, when the completion opens a block (a start marker) or starts inside one (the prompt
  ends with an unclosed start marker, as some templates write it): there is no answer,
  the judge is shown an empty text, and a completion cut at the length cap stays "cut";
- else the whole completion is the answer (thinking off, or a model without markers).

`judge.include_reasoning=true` shows the judge every sampled token instead. Only the
judge's view changes: scoring and the loss use every sampled token as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ppo.errors import ConfigError


@dataclass(frozen=True)
class Markers:
    """The token ids that open and close a reasoning block."""

    start: tuple[int, ...]
    end: tuple[int, ...]


def _find(seq: list[int], sub: tuple[int, ...], reverse: bool = False) -> int:
    """Index of the first (or last) occurrence of `sub` in `seq`, -1 when absent."""
    n = len(sub)
    positions = range(len(seq) - n, -1, -1) if reverse else range(len(seq) - n + 1)
    for i in positions:
        if tuple(seq[i : i + n]) == sub:
            return i
    return -1


def reasoning_markers(tokenizer, configured=None) -> Markers | None:
    """`configured` ([start, end] strings) encoded, else the tokenizer's think markers, else None."""
    if configured:
        if len(configured) != 2 or not all(isinstance(m, str) and m for m in configured):
            raise ConfigError(f"invalid judge.reasoning_markers={list(configured)!r}: give two non-empty strings, "
                              "e.g. ['<think>', '</think>'], or null for the tokenizer's own")
        encoded = [tuple(tokenizer.encode(m, add_special_tokens=False)) for m in configured]
        if not all(encoded):
            raise ConfigError(f"invalid judge.reasoning_markers={list(configured)!r}: a marker encodes to no tokens")
        return Markers(*encoded)
    start, end = getattr(tokenizer, "think_start_tokens", None), getattr(tokenizer, "think_end_tokens", None)
    if not start or not end:
        return None
    return Markers(tuple(start), tuple(end))


def opens_reasoning(prompt_ids: list[int], markers: Markers) -> bool:
    """Whether the prompt ends inside a reasoning block (its last start marker is not closed)."""
    start = _find(prompt_ids, markers.start, reverse=True)
    return start >= 0 and _find(prompt_ids[start:], markers.end) < 0


def answer_ids(prompt_ids: list[int], completion_ids: list[int], markers: Markers) -> tuple[list[int], bool]:
    """(the answer's token ids, whether there is an answer) of one completion (module docstring)."""
    end = _find(completion_ids, markers.end, reverse=True)
    if end >= 0:
        return list(completion_ids[end + len(markers.end) :]), True
    if _find(completion_ids, markers.start) >= 0 or opens_reasoning(prompt_ids, markers):
        return [], False
    return list(completion_ids), True


class CompletionReader:
    """Turns sampled token ids into the texts a judge reads (module docstring)."""

    def __init__(self, tokenizer, include_reasoning: bool = False, markers=None):
        if not isinstance(include_reasoning, bool):
            raise ConfigError(f"invalid judge.include_reasoning={include_reasoning!r}: choose true or false")
        self.tokenizer = tokenizer
        self.include_reasoning = include_reasoning
        self.markers = None if include_reasoning else reasoning_markers(tokenizer, markers)

    @classmethod
    def for_judge(cls, judge, tokenizer) -> "CompletionReader":
        """The reader a judge pipeline's settings ask for (plain callables: the defaults)."""
        return cls(tokenizer, getattr(judge, "include_reasoning", False), getattr(judge, "reasoning_markers", None))

    def texts(self, prompt_ids: list[list[int]], completions: list[list[int]]) -> list[str]:
        """The judged text of each completion (special tokens such as the ending EOS dropped)."""
        if self.markers is None:
            return self.tokenizer.batch_decode(completions, skip_special_tokens=True)
        answers = [answer_ids(p, c, self.markers)[0] for p, c in zip(prompt_ids, completions)]
        # The blank line after the end marker is framing, as Qwen3's own template treats it.
        return [t.lstrip("\n") for t in self.tokenizer.batch_decode(answers, skip_special_tokens=True)]
