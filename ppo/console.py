"""The one live terminal display of a run (the progress bar), and a way to pause it.

A person answering the human judge must see the question and both completions; a live
display redrawing itself every tenth of a second would overwrite them. The trainer's bar
registers itself here and the human judge wraps each question in `paused_live()`. Kept in
its own module because judges may not import the training package.
"""

from __future__ import annotations

import contextlib

_live: list = []  # rich Live-like objects (start() / stop()) now on screen


def register_live(display) -> None:
    _live.append(display)


def unregister_live(display) -> None:
    if display in _live:
        _live.remove(display)


@contextlib.contextmanager
def paused_live():
    """Stop every registered live display for the duration of the block, then restart it."""
    paused = list(_live)
    for display in paused:
        display.stop()
    try:
        yield
    finally:
        for display in paused:
            if display in _live:  # closed meanwhile: leave it stopped
                display.start()
