"""A person at the terminal as the judge.

The prompt is shown in a panel and the two completions side by side (rich), marked when
one was cut at the length cap. Keys: 1 / 2 (that one is better), t (tie: p = 0.5,
zero advantage), s (skip: invalid, excluded from the loss), q (quit). Anything else is
asked again. q, or a closed stdin, raises :class:`JudgeQuit`: every decision made so far
is already recorded (``chunk_size = 1`` makes the pipeline record each pair as soon as it
is decided), the trainer saves a checkpoint and exits, and on resume the recorded pairs
are answered from the record, not asked again.

Streams are injectable so tests can script the keys.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from rich.columns import Columns
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from ppo.judges.base import JudgeQuit, Pair, Verdicts

KEYS = {"1": 1.0, "2": 0.0, "t": 0.5, "s": math.nan}


class HumanJudge:
    kind = "human"
    chunk_size = 1  # one pair per call: each decision is recorded before the next question

    def __init__(self, input_stream=None, output_stream=None, width: int | None = None):
        self.input = input_stream or sys.stdin
        self.console = Console(file=output_stream or sys.stdout, width=width, highlight=False)
        self.asked = 0

    def show(self, pair: Pair) -> None:
        def panel(title: str, text: str, finished: bool) -> Panel:
            subtitle = None if finished else "[yellow]cut at the length cap[/]"
            return Panel(Text(text or "(empty)"), title=title, subtitle=subtitle, expand=True)

        self.asked += 1
        self.console.rule(f"pair {self.asked}")
        self.console.print(Panel(Text(pair.prompt), title="prompt"))
        self.console.print(Columns([panel("1", pair.a, pair.a_finished), panel("2", pair.b, pair.b_finished)],
                                   equal=True, expand=True))

    def ask(self) -> float:
        while True:
            self.console.print("Which is better? [bold]1[/] / [bold]2[/] / [bold]t[/]ie / [bold]s[/]kip / [bold]q[/]uit: ", end="")
            line = self.input.readline()
            if line == "":
                raise JudgeQuit("judge=human: stdin was closed; every decision so far is recorded in judgments.jsonl")
            key = line.strip().lower()
            if key == "q":
                raise JudgeQuit("judge=human: quit at the judge's request; every decision so far is recorded in judgments.jsonl")
            if key in KEYS:
                return KEYS[key]
            self.console.print(f"[red]{key!r} is not one of 1, 2, t, s, q[/]")

    def __call__(self, pairs: list[Pair]) -> Verdicts:
        p = []
        for pair in pairs:
            self.show(pair)
            p.append(self.ask())
        return Verdicts(p=np.array(p, dtype=np.float64))
