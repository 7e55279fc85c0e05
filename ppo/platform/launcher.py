"""`mlx.launch` without its busy loops: what `ppo-launch` runs (`python -m ppo.platform.launcher`,
the same options and behaviour as `mlx.launch`).

mlx 0.32.4's launcher (`mlx/_distributed_utils/launch.py`, `_launch_with_io`, used by the ring,
JACCL and NCCL backends) relays the ranks' output with one thread per rank and a main thread:
- each rank's thread loops on `select(rank's stdout and stderr, [rank's stdin pipe], [], 1.0)`:
  an empty pipe is always writable, so select returns at once and the thread spins;
- the main thread loops on `select([stdin], [], [], 0.1)`: a stdin at end of file (a script, a
  test, `< /dev/null`) is always readable, so it spins too.
On the 2-core machine the launcher took 1.5 cores from its 2 ranks (top: 88% + 29% + 29%), and
2 ranks ran at 0.69x of one process (benchmarks/bench_distributed.py). Both loops are upstream's;
this module leaves its code as it is and hands it a `select` that never waits on what cannot
come: the main thread's stdin and the ranks' stdin pipes.

What that gives up: typing into `ppo-launch` no longer reaches the ranks. No rank of a
`ppo-train` reads stdin (the human judge, the only reader, refuses to run on several processes:
ppo.judges.factory), and `mlx.launch` itself is unchanged for whoever needs it.
"""

from __future__ import annotations

import select as _select_module
import signal
import sys
import time

# What upstream's main loop waits on (`sys.stdin.fileno()`); the ranks' pipes are never descriptor 0.
STDIN_FILENO = 0


def select_without_stdin(rlist, wlist, xlist, timeout=None):
    """`select.select` for the launcher's relay loops: waits only for the ranks' output.

    The standard input of the launcher (the main loop's only read descriptor) and the ranks'
    stdin pipes (every write descriptor) are left out; with nothing left to wait for, it sleeps
    for `timeout`, as the loops meant to."""
    readable = [fd for fd in rlist if fd != STDIN_FILENO]
    if not readable and not xlist:
        if timeout:
            time.sleep(timeout)
        return [], [], []
    ready, _, errors = _select_module.select(readable, [], xlist, timeout)
    return ready, [], errors


def _keep_relaying(signum, frame) -> None:
    """SIGTERM or SIGINT: the ranks got it too (it went to the process group) and stop by themselves."""


def main() -> None:
    from mlx._distributed_utils import launch

    # The upstream module imported `select` by name (`from select import select`); its relay loops look it up there.
    launch.select = select_without_stdin
    # Its warnings ("Node with rank 1 exited with code 2", which ppo-launch reads) are printed from
    # the relay threads: whole lines, even under PYTHONUNBUFFERED=1, where a print writes the text
    # and its newline separately and two threads' lines came out cut into each other.
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True, write_through=False)
    # A SIGTERM sent to the whole process group (a scheduler, systemd) would end mlx.launch at once
    # and leave its ranks writing into closed pipes while they save: it keeps relaying until they
    # end. ppo-launch passes its own SIGTERM to the ranks, not here (ppo.tools.launch.stop_ranks).
    signal.signal(signal.SIGTERM, _keep_relaying)
    signal.signal(signal.SIGINT, _keep_relaying)  # Ctrl-C reached the ranks too: no KeyboardInterrupt here
    sys.argv[0] = "mlx.launch"  # its --help and errors name the command whose options these are
    launch.main()


if __name__ == "__main__":
    main()
