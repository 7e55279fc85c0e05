"""A person at the terminal as the judge.

The prompt is shown in a panel and the two completions in two panels, marked when one was cut
at the length cap. The layout is one per session, chosen by the terminal's width when the judge
starts: side by side (two equal columns, each wrapping its text) from SIDE_BY_SIDE_MIN_WIDTH
columns on, one above the other below that; a long completion never switches it. Each question
is numbered by the training step and the pair's place in that step's batch ("step 3 · pair 2 of
4"), so the numbers continue where they were after a resume.

Keys: 1 / 2 (that one is better), t (tie: p = 0.5, zero advantage), s (skip: invalid, excluded
from the loss; the trainer counts the skips at each report step in a line of their own), q (quit).
Anything else is asked again. q, or a closed stdin, raises :class:`JudgeQuit`: every decision made so far
is already recorded (``chunk_size = 1`` makes the pipeline record each pair as soon as it
is decided), the trainer saves a checkpoint and exits, and on resume the recorded pairs
are answered from the record, not asked again; the trainer's last line is the command that
continues the run (`ppo.train.run_folder.continue_command`).

While a question is on screen the trainer's live progress bar is paused
(`ppo.console.paused_live`), so its refreshes never overwrite the question. Evaluation
questions (the policy against the reference, not used for training) are labelled as such.
A question taller than the terminal opens in a pager (rich's, i.e. $PAGER or less); on a
terminal a single key answers, without Enter.

Streams are injectable so tests can script the keys.
"""

from __future__ import annotations

import math
import sys

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ppo import console as live_display
from ppo.judges.base import JudgeQuit, Pair, Verdicts

KEYS = {"1": 1.0, "2": 0.0, "t": 0.5, "s": math.nan}

# From this terminal width on, the two completions are shown side by side (each panel then has
# at least 36 columns of text); on a narrower terminal one above the other.
SIDE_BY_SIDE_MIN_WIDTH = 80


class HumanJudge:
    kind = "human"
    chunk_size = 1  # one pair per call: each decision is recorded before the next question

    def __init__(self, input_stream=None, output_stream=None, width: int | None = None):
        self.input = input_stream or sys.stdin
        self.console = Console(file=output_stream or sys.stdout, width=width, highlight=False)
        self.asked = 0
        # One layout for the whole session (module docstring): the width, never the text, decides.
        self.side_by_side = self.console.width >= SIDE_BY_SIDE_MIN_WIDTH
        # Set by the judge pipeline at each call (`start_batch`): "train" or "eval" (labels the question).
        self.phase = "train"
        # The step being judged and the pairs of its earlier calls (micro-batches) this phase.
        self._batch: tuple = (None, None, 0)
        self._offset = 0
        # Set by the pipeline before each question: the 1-based place in the call's pairs of each pair asked.
        self.numbers: list[int] = []

    def start_batch(self, step: int | None, phase: str, pairs: int) -> None:
        """The pipeline starts judging `pairs` pairs of `step` (numbers continue over a step's
        micro-batches, which are separate calls)."""
        last_step, last_phase, last_pairs = self._batch
        self._offset = self._offset + last_pairs if step is not None and (step, phase) == (last_step, last_phase) else 0
        self._batch = (step, phase, pairs)
        self.phase = phase

    def title(self, index: int) -> str:
        """ "step 3 · pair 2 of 4": the pair's place in the step's batch, which a resume does not
        change; a judge called outside the pipeline counts the questions it asked."""
        step, _, pairs = self._batch
        if index < len(self.numbers):
            title = f"pair {self._offset + self.numbers[index]} of {self._offset + pairs}"
            title = title if step is None else f"step {step} · {title}"
        else:
            title = f"pair {self.asked}"
        if self.phase == "eval":
            title += ": [bold magenta]evaluation[/] (the policy against the reference, in random order; not used for training)"
        return title

    def show(self, pair: Pair, index: int = 0) -> None:
        def panel(title: str, text: str, finished: bool) -> Panel:
            subtitle = None if finished else "[yellow]cut at the length cap[/]"
            return Panel(Text(text or "(empty)"), title=title, subtitle=subtitle, expand=True)

        self.asked += 1
        first, second = panel("1", pair.a, pair.a_finished), panel("2", pair.b, pair.b_finished)
        if self.side_by_side:  # two equal columns whatever the texts' lengths (rich's Columns would stack long ones)
            answers = Table.grid(expand=True, padding=(0, 1))
            answers.add_column(ratio=1)
            answers.add_column(ratio=1)
            answers.add_row(first, second)
        else:
            answers = Group(first, second)
        question = [Panel(Text(pair.prompt), title="prompt"), answers]
        self.console.rule(self.title(index))
        height = sum(len(self.console.render_lines(part, pad=False)) for part in question)
        if self.console.is_terminal and height > self.console.height - 3:
            with self.console.pager(styles=True):  # too tall to see at once: scroll it, then answer below
                for part in question:
                    self.console.print(part)
        for part in question:
            self.console.print(part)

    def _read_key(self) -> str:
        """One key on a terminal (no Enter needed), else a line (scripted input, pipes)."""
        if self.input is sys.stdin and sys.stdin.isatty():
            try:
                import termios
                import tty
            except ImportError:  # no POSIX terminal control: answer with Enter
                return self.input.readline()
            fd = sys.stdin.fileno()
            saved = termios.tcgetattr(fd)
            try:
                tty.setraw(fd)
                key = sys.stdin.read(1)
            finally:
                termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            self.console.print(key if key.isprintable() else "")
            return "q" if key in ("\x03", "\x04") else key  # Ctrl-C / Ctrl-D quit like q
        return self.input.readline()

    def ask(self) -> float:
        while True:
            self.console.print("Which is better? [bold]1[/] / [bold]2[/] / [bold]t[/]ie / [bold]s[/]kip / [bold]q[/]uit: ", end="")
            line = self._read_key()
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
        with live_display.paused_live():  # the progress bar would overwrite the question
            for index, pair in enumerate(pairs):
                self.show(pair, index)
                p.append(self.ask())
        return Verdicts(p=np.array(p, dtype=np.float64))
