"""What a run shows per report step: a rich bar on a terminal, plain lines everywhere else.

On a cluster (SLURM, nohup, CI) stdout is a file, where a live bar prints nothing until the
run ends; there every report step becomes one plain log line on the logger `ppo.progress`,
which Hydra's job logging sends to the console and to `RUN_DIR/train.log`. On a terminal the
bar shows the same numbers and the same line still goes to train.log (and only there), so
the log file reads the same however the run was started.

`train.progress=false` keeps the console quiet; train.log still gets every line. While the
bar is live, console log lines (health warnings) go through rich, so they print above it.

While a person answers the human judge, `ppo.console.paused_live()` stops the bar, so the
question and both completions are not overwritten by its refreshes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from contextlib import contextmanager

from ppo import console
from ppo.metrics import held_out_names, wilson_interval

log = logging.getLogger("ppo.progress")

# The numbers on each line, in order: (metrics key, label, format).
FIELDS = (("loss", "loss", "{:.4g}"), ("clip_fraction", "clip_fraction", "{:.3f}"), ("kl", "kl", "{:.4g}"))


def _finite(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def format_stats(metrics: dict) -> str:
    """The metrics part of a line (also the bar's text): loss, clip_fraction, kl, eval win rate,
    its length-controlled twin and the policy-over-reference length ratio."""
    parts = [f"{label}={spec.format(v)}" for key, label, spec in FIELDS if (v := _finite(metrics, key)) is not None]
    win = _finite(metrics, "eval/win_rate")
    if win is not None:
        interval = wilson_interval(win, _finite(metrics, "eval/pairs"))
        parts.append(f"eval_win_rate={win:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else ""))
    controlled = _finite(metrics, "eval/win_rate_lc")
    if controlled is not None:
        low, high = _finite(metrics, "eval/win_rate_lc_low"), _finite(metrics, "eval/win_rate_lc_high")
        parts.append(f"length_controlled={controlled:.3f}" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else ""))
    for name in held_out_names(metrics):  # eval_judge=NAME: the judge the policy never trained against
        rate, low, high = (_finite(metrics, f"eval/{name}/win_rate{s}") for s in ("", "_low", "_high"))
        if rate is not None:
            parts.append(f"eval_win_rate[{name}]={rate:.3f}" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else ""))
    ratio = _finite(metrics, "eval/length_ratio")
    if ratio is not None:
        parts.append(f"length_ratio={ratio:.2f}")
    return "  ".join(parts)


def evaluations_left(step: int, total: int, steps_per_eval: int | None) -> int:
    """Evaluations still to run after `step`: every steps_per_eval-th step and the last one."""
    if not steps_per_eval or step >= total:
        return 0
    return total // steps_per_eval - step // steps_per_eval + (total % steps_per_eval != 0)


def eta_seconds(step: int, total: int, seconds_per_step: float | None, seconds_per_eval: float | None = None,
                evaluations: int = 0) -> float | None:
    """The steps left at the training pace plus the evaluations left at the evaluation pace
    (None before a step has been timed)."""
    if seconds_per_step is None:
        return None
    return seconds_per_step * (total - step) + (seconds_per_eval or 0.0) * evaluations


def format_line(step: int, total: int, metrics: dict, seconds_per_step: float | None,
                seconds_per_eval: float | None = None, evaluations: int = 0) -> str:
    """`step 10/200 loss=... clip_fraction=... kl=... win_rate=0.61 (0.52-0.70) 1.23 s/step 14.2 s/eval ETA 4m12s`:
    s/step is the training pace (evaluations left out), s/eval the mean evaluation, and the ETA
    counts the `evaluations` still to run as well as the steps."""
    parts = [f"step {step}/{total}", format_stats(metrics)]
    if seconds_per_step is not None:
        parts.append(f"{seconds_per_step:.2f} s/step")
    if seconds_per_eval is not None:
        parts.append(f"{seconds_per_eval:.1f} s/eval")
    eta = eta_seconds(step, total, seconds_per_step, seconds_per_eval, evaluations)
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    return "  ".join([p for p in parts if p])


def _to_log_files(line: str) -> None:
    """`line` into every log file of the root logger (Hydra's train.log), not the console,
    where the bar is drawing."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def _log_console_through(stdout, proxy) -> list:
    """Point the console log handlers that write to `stdout` at `proxy` (rich's stdout while
    the bar is live), so a health warning prints above the bar instead of tearing it.
    Returns (handler, old stream) pairs for `close` to restore."""
    if proxy is stdout:  # the bar did not redirect stdout (not a terminal): nothing to route
        return []
    moved = []
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler and handler.stream is stdout:
            moved.append((handler, handler.setStream(proxy)))
    return moved


class Progress:
    """One report step at a time: `update(metrics, step)`, then `close()`. Evaluations run inside
    `with progress.evaluation():`, so that their time is measured apart from the steps' and the ETA
    adds the evaluations still to come (every `steps_per_eval` steps and the last; None: none)."""

    def __init__(self, total: int, completed: int = 0, enabled: bool = True, stream=None,
                 steps_per_eval: int | None = None):
        stream = stream if stream is not None else sys.stdout
        self.total, self._started, self._first_step = total, time.perf_counter(), completed
        self.steps_per_eval, self._eval_seconds = steps_per_eval, []
        self._bar, self._moved = None, []
        self._plain = enabled and not stream.isatty()
        if enabled and not self._plain:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(  # the ETA is ours: rich's own would not know about evaluations
                TextColumn("[bold]ppo"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"), TextColumn("{task.fields[stats]}"), console=Console(file=stream),
            )
            self._task = self._bar.add_task("train", total=total, completed=completed, stats="", eta="")
            before = sys.stdout
            self._bar.start()
            self._moved = _log_console_through(before, sys.stdout)
            console.register_live(self._bar)

    @contextmanager
    def evaluation(self):
        """Times an evaluation (its time is left out of s/step and counted per evaluation)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self._eval_seconds.append(time.perf_counter() - started)

    def seconds_per_step(self, step: int) -> float | None:
        """The training pace: time in this process, evaluations left out, per step run in it."""
        done = step - self._first_step  # steps run in this process (a resumed run starts later)
        busy = time.perf_counter() - self._started - sum(self._eval_seconds)
        return max(busy, 0.0) / done if done > 0 else None

    def seconds_per_eval(self) -> float | None:
        return sum(self._eval_seconds) / len(self._eval_seconds) if self._eval_seconds else None

    def update(self, metrics: dict, step: int) -> None:
        if not metrics:  # nothing to show (a step-0 evaluation that did not run)
            return
        per_step, per_eval = self.seconds_per_step(step), self.seconds_per_eval() if self.steps_per_eval else None
        evaluations = evaluations_left(step, self.total, self.steps_per_eval)
        line = format_line(step, self.total, metrics, per_step, per_eval, evaluations)
        if self._plain:
            log.info(line)  # console and train.log, through Hydra's job logging
            return
        _to_log_files(line)
        if self._bar is not None:
            eta = eta_seconds(step, self.total, per_step, per_eval, evaluations)
            self._bar.update(self._task, completed=step, stats=format_stats(metrics),
                             eta=f"ETA {_duration(eta)}" if eta is not None else "")

    def close(self) -> None:
        if self._bar is not None:
            console.unregister_live(self._bar)
            self._bar.stop()
            for handler, stream in self._moved:
                handler.setStream(stream)
            self._bar = None
