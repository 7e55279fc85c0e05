"""The judging prompt shared by the model judges (local LLM, HTTP).

One place builds the messages so that the local and the remote judge read the same
words: the rubric as the system message, and a user message showing the prompt as plain
text and the two completions under numbered headings, asking for one label.
"""

from __future__ import annotations

import re

from ppo.errors import ConfigError
from ppo.judges.base import Pair

DEFAULT_RUBRIC = (
    "You are a careful, impartial judge. You compare two responses to the same prompt "
    "and decide which one is better: more helpful, more correct, more relevant to the "
    "prompt, clearer and more complete, without needless padding. A response that stops "
    "mid-sentence is worse. Do not let the order of the responses or their length alone "
    "sway you. Answer with the number of the better response only."
)

QUESTION = (
    "Which response is better?\n\n"
    "[Prompt]\n{prompt}\n\n"
    "[Response {first}]\n{a}\n\n"
    "[Response {second}]\n{b}\n\n"
    "Answer with a single character: {first} or {second}."
)


def rubric(system) -> str:
    """`judge.system` as a string: empty or None gives the default rubric."""
    if system is None or system == "":
        return DEFAULT_RUBRIC
    if not isinstance(system, str):
        raise ConfigError(
            f"invalid judge.system={system!r}: the rubric must be a string (quote it in YAML), "
            "or empty for the default rubric"
        )
    return system


def check_labels(labels) -> tuple[str, str]:
    labels = tuple(labels)
    if len(labels) != 2 or not all(isinstance(x, str) and x.strip() for x in labels) or labels[0] == labels[1]:
        raise ConfigError(f"invalid judge.labels={list(labels)!r}: give two different non-empty strings, e.g. ['1', '2']")
    return labels


def special_pattern(special: tuple[str, ...]) -> re.Pattern | None:
    """One regex matching any of the special strings, longest first (None when there are none)."""
    special = sorted({t for t in special if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, special))) if special else None


def strip_special(text: str, pattern: re.Pattern | None) -> str:
    """Remove chat special tokens from judged text, so a completion cannot close the turn.
    Repeated until none is left: removing one must not join the pieces of another."""
    if pattern is None:
        return text
    while True:
        cleaned = pattern.sub("", text)
        if cleaned == text:
            return text
        text = cleaned


def judging_messages(pair: Pair, system: str, labels: tuple[str, str], special: re.Pattern | None = None) -> list[dict]:
    """[system, user] messages asking which of pair.a (label 0) and pair.b (label 1) is better."""
    clean = lambda s: strip_special(s, special).strip()  # noqa: E731
    user = QUESTION.format(prompt=clean(pair.prompt), a=clean(pair.a), b=clean(pair.b), first=labels[0], second=labels[1])
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
