"""Ctrl-C and SIGTERM while a run trains: the first signal stops after the running step, a
second one at once, and a checkpoint being written is never torn."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

from ppo.errors import TrainingAborted

# The trainer's logger: its lines keep the name they always had in train.log.
log = logging.getLogger("ppo.train.loop")


class StopRequests:
    """SIGINT / SIGTERM during training: the first asks for a stop after the running step
    (which is finished, saved, and the run exits); a second one stops at once.

    On a real model one step takes minutes, so waiting for it is not always what the user
    wants. The second signal raises `TrainingAborted` in the main thread wherever it is
    (decoding, judging, the update), except inside a checkpoint save (`saving()`), which
    is finished first: a save is the one thing a stop must never tear. The aborted step is
    not saved; the newest complete checkpoint stays the resume point.
    """

    # Under ppo-launch a SIGTERM sent to the whole process group (a scheduler, systemd, `kill --
    # -PGID`) reaches each rank twice: directly, and passed on by ppo-launch
    # (ppo.tools.launch.stop_ranks). A second SIGTERM this soon after the first is that same
    # request, not a second one; a person's second Ctrl-C (SIGINT) still stops at once.
    LAUNCHED_DUPLICATE_SECONDS = 1.0

    def __init__(self, duplicate_seconds: float | None = None):
        self.signals: list[int] = []
        self.in_save = False
        self.abort_after_save = False
        self.first_at = 0.0
        if duplicate_seconds is None:
            from ppo.tools.launch import ENV

            duplicate_seconds = self.LAUNCHED_DUPLICATE_SECONDS if os.environ.get(ENV) else 0.0
        self.duplicate_seconds = duplicate_seconds

    def __bool__(self) -> bool:
        return bool(self.signals)

    @property
    def signum(self) -> int:
        return self.signals[0]

    def handle(self, signum, frame) -> None:
        if (signum == signal.SIGTERM and self.signals == [signal.SIGTERM]
                and time.monotonic() - self.first_at < self.duplicate_seconds):
            return
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.first_at = time.monotonic()
            log.warning("signal %d: stopping after the running step (it is finished and saved); "
                        "send it again (a second Ctrl-C) to stop at once without saving that step", signum)
        elif self.in_save:
            self.abort_after_save = True
        else:
            raise TrainingAborted(signum)

    @contextlib.contextmanager
    def saving(self):
        self.in_save = True
        try:
            yield
        finally:
            self.in_save = False
        if self.abort_after_save:
            raise TrainingAborted(self.signals[-1])


@contextlib.contextmanager
def stop_requests():
    """SIGINT / SIGTERM handled by a `StopRequests` while the loop runs (so a step is never torn
    by the first one, and a checkpoint by none)."""
    requested = StopRequests()
    previous = {s: signal.signal(s, requested.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
