"""`ppo-launch [mlx.launch options] [--] OVERRIDES...`: one run on several processes, through
`mlx.launch`, that exits with the worst rank's code.

    ppo-launch -n 2 --backend ring experiment=demo      # = mlx.launch -n 2 --backend ring
                                                        #   --python PYTHON ppo-train experiment=demo

Why a wrapper: `mlx.launch` exits 0 whatever its ranks did (it warns "Node with rank 1 was
killed" and ends the others), so a script that checks the exit code sees a failed run as a
success. This wrapper reads how each rank ended from the launcher's relayed stderr: the
launcher's own warnings (`Node with rank 1 exited with code -9`), and one status line that
each rank (`ppo-train` started with PPO_LAUNCH_STATUS set) prints on its way out, hidden from
the user; a rank that printed none and was not reported died without a word. Exit code: that
of the first rank that failed (the others are then ended by mlx.launch because of it; a
signal N reads as 128 + N, as in a shell), 137 for a rank never heard of, the launcher's own
when it failed before any rank ran. A failed run gets one `error:` line naming the rank, and
its `summary.json` is marked `failed` when it says `finished` or `running`, so the file the
README tells users to check never calls it finished.
`mlx.launch` itself stays usable: without PPO_LAUNCH_STATUS no rank prints a status line.

Speed: ppo-launch runs mlx.launch's own code through `ppo.platform.launcher`, which removes its
busy loops (they took 1.5 of 2 cores from the ranks; 2 ranks ran at 0.69x of one process on 2
cores, 1.42-1.72x without them: benchmarks/bench_distributed.py).

Ports: every `mlx.launch --backend ring` listens on 32323 and up unless given
`--starting-port`, and MLX's ring backend shares a port between processes (SO_REUSEPORT), so
two runs started at once on one machine pair their ranks across the runs at random. Unless
`--starting-port` (`-p`) is given, ppo-launch gives the ring a block of ports free on this
machine, from a random start, and one id (PPO_LAUNCH_ID) to every rank, by which ranks of two
launches that paired up anyway refuse to run (ppo.train.distributed).
"""

from __future__ import annotations

import json
import os
import re
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from ppo.errors import RankTimeout
from ppo.platform.cores import ENV_LAUNCH_ID  # one id per launch in every rank's environment

# Set (to 1) in every rank's environment; ppo.tools.cli.train_main then prints STATUS_LINE.
ENV = "PPO_LAUNCH_STATUS"
STATUS_PREFIX = "ppo-launch-status "
# A rank's run_dir ends where the line ends or where another rank's status line starts: a line
# that reached mlx.launch in two writes can share a line with another rank's (see write_status_line).
STATUS_LINE = re.compile(r"ppo-launch-status rank=(\d+) code=(-?\d+) run_dir=(.*?)(?=ppo-launch-status |$)")
# mlx.launch's own report of a rank that ended badly (a warning line, in colour on a terminal).
LAUNCHER_LINE = re.compile(r"(?:\x1b\[\d+m)?(?:\[WARN\] )?Node with rank (\d+) (?:exited with code (-?\d+)|was killed) ?"
                           r"(?:\x1b\[0m)?")
# The exit code of a rank that died without its status line (as a shell reports SIGKILL).
KILLED = 128 + signal.SIGKILL
# mlx.launch's options that take a value (everything else before the overrides is a flag).
VALUE_OPTIONS = {"-n", "--repeat-hosts", "--hosts", "--hostfile", "--backend", "--env", "--mpi-arg",
                 "--connections-per-ip", "--starting-port", "-p", "--cwd", "--nccl-port", "--python"}


def status_line(rank: int, code: int, run_dir: str) -> str:
    """What a rank prints last (stderr) under ppo-launch."""
    return f"{STATUS_PREFIX}rank={rank} code={code} run_dir={run_dir}"


def write_status_line(rank: int, code: int, run_dir: str) -> None:
    """Write this rank's status line to stderr in one write() call.

    mlx.launch relays each rank's output in the pieces it reads and interleaves the ranks'
    pieces. With PYTHONUNBUFFERED=1 (common in containers and CI) `print` writes the text and
    its newline in two calls, so a rank's line could be cut in two by another rank's and lose
    that rank's status: ppo-launch then called a finished run failed (seen 2 times in about 20
    4-rank runs). One write of less than PIPE_BUF bytes reaches the pipe whole."""
    data = (status_line(rank, code, run_dir) + "\n").encode()
    sys.stderr.flush()
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a replaced stderr (a test's capture): print is all there is
        print(data.decode(), end="", file=sys.stderr, flush=True)
        return
    os.write(fd, data)


def read_statuses(line: str) -> tuple[list[tuple[int, int, str]], str]:
    """The ranks' status lines in one line of mlx.launch's stderr, as (rank, code, run_dir), and
    the rest of the line (another rank's output that shared it), without its newline."""
    text = line.rstrip("\r\n")
    found = [(int(m.group(1)), int(m.group(2)), m.group(3)) for m in STATUS_LINE.finditer(text)]
    return found, STATUS_LINE.sub("", text) if found else text


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(mlx.launch's options, ppo-train's overrides): options first, `--` optional between."""
    launch, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return launch, argv[i + 1:]
        if arg in VALUE_OPTIONS and i + 1 < len(argv):
            launch += argv[i:i + 2]
            i += 2
        elif arg.startswith("-") and not arg.startswith(("-m", "--multirun")):
            launch.append(arg)
            i += 1
        else:
            break
    return launch, argv[i:]


def _option(launch: list[str], *names: str) -> str | None:
    for i, arg in enumerate(launch):
        for name in names:
            if arg == name and i + 1 < len(launch):
                return launch[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def more_ranks_than_cores(launch: list[str], cores: int) -> str | None:
    """A warning when mlx.launch would start more ranks on a machine (-n, per host) than it has
    cores. Measured on 2 cores (benchmarks/README.md): 4 ranks ran at 0.68-0.88x of 2 on the demo
    and 0.74x at SmolLM2, since each rank repeats the step's per-operation work and, decoding,
    reads all the weights for its share of the rows."""
    per_host = _option(launch, "-n", "--repeat-hosts")
    if per_host is None or not per_host.isdigit() or int(per_host) <= cores:
        return None
    return (f"warning: {per_host} ranks per machine on {cores} cores: ranks beyond one per core make each step "
            f"slower, not faster (benchmarks/README.md, \"Several processes on one machine\"); -n {cores} is the most "
            "that helps here")


def expected_ranks(launch: list[str]) -> int | None:
    """How many ranks mlx.launch starts: -n per host, hosts from --hosts or --hostfile (None: unknown)."""
    try:
        per_host = int(_option(launch, "-n", "--repeat-hosts") or 1)
    except ValueError:
        return None
    hostfile = _option(launch, "--hostfile")
    if hostfile:
        try:
            hosts = json.loads(Path(hostfile).read_text())
        except (OSError, ValueError):
            return None
        hosts = hosts.get("hosts") if isinstance(hosts, dict) else hosts
        return per_host * len(hosts) if isinstance(hosts, list) else None
    return per_host * len((_option(launch, "--hosts") or "127.0.0.1").split(","))


# Where free ring ports are looked for: below Linux's ephemeral range (32768-60999), whose ports
# outgoing connections take, and away from mlx.launch's default 32323.
PORT_RANGE = (20000, 32000)


def port_free(port: int) -> bool:
    """Whether nothing on this machine listens on (or holds) `port`: a plain bind, without the
    SO_REUSEPORT that would let it share a port a ring rank is listening on, fails then."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError:
            return False
    return True


def free_port_block(count: int, tries: int = 100) -> int:
    """The first of `count` consecutive free ports, from a random start (two launches at the same
    moment rarely draw the same one; the ranks' launch ids catch the rest)."""
    low, high = PORT_RANGE
    for _ in range(tries):
        start = random.randrange(low, high - count)
        if all(port_free(p) for p in range(start, start + count)):
            return start
    raise OSError(f"no {count} consecutive free ports in {low}-{high} after {tries} tries")


def ring_ports(launch: list[str]) -> list[str]:
    """`--starting-port N` for mlx.launch's ring backend when the user gave none (else [])."""
    if _option(launch, "--starting-port", "-p") is not None or (_option(launch, "--backend") or "ring") != "ring":
        return []
    try:
        per_ip = int(_option(launch, "--connections-per-ip") or 1)
    except ValueError:
        return []
    # Twice the ranks' count: a host with two ips takes two ports per connection.
    return ["--starting-port", str(free_port_block(2 * (expected_ranks(launch) or 16) * per_ip))]


def _beside_python(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def began(run_dir: Path, launch_id: str, since: float) -> bool:
    """Whether the ranks of launch `launch_id`, started at `since`, began the run in `run_dir`:
    its rank 0 claimed the folder (the lock's note names the launch: ppo.train.run_folder.lock)
    and an earlier attempt's summary.json, if any, was rewritten since (a resume marks it
    `running` as it starts: ppo.train.loop.mark_running). A launch refused before that (a
    mistyped override, a resume with another config, a folder another run holds) must leave the
    folder as it was: a finished run stays finished, a live one untouched."""
    from ppo.io import LOCK_FILE, SUMMARY_FILE, read_json

    if (read_json(run_dir / LOCK_FILE) or {}).get("launch") != launch_id:
        return False
    try:
        return (run_dir / SUMMARY_FILE).stat().st_mtime >= since
    except FileNotFoundError:
        return True  # a new run: nothing earlier to keep
    except OSError:
        return True


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is `pid`: /proc on Linux, else `pgrep -P` (macOS)."""
    if Path("/proc/self/stat").exists():
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state_and_parent = stat.read_text().rsplit(")", 1)[1].split()  # "pid (name) state ppid ..."
            except (OSError, IndexError):
                continue  # ended meanwhile
            if state_and_parent[1:2] == [str(pid)]:
                children.append(int(stat.parent.name))
        return children
    try:
        listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(p) for p in listed.split()]


def stop_ranks(launcher: subprocess.Popen, signum: int) -> None:
    """Pass a SIGTERM sent to ppo-launch to the ranks (the launcher's children, local ones as
    themselves, remote ones as their ssh), which stop as ppo-train does: after the running step,
    saved. Sent to mlx.launch itself it killed the launcher and left the ranks training, orphans,
    with no line said. With no child found (none started yet), the launcher gets it as before."""
    ranks = child_pids(launcher.pid)
    for pid in ranks:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    if not ranks and launcher.poll() is None:
        launcher.send_signal(signum)


def mark_failed(run_dir: Path, message: str) -> str | None:
    """summary.json of a failed multi-process run: `failed` where it says `finished` or `running`
    (an earlier attempt's, or rank 0's before another rank failed); returns the status it says."""
    from ppo.io import SUMMARY_FILE, atomic_write_json, read_json

    summary = read_json(run_dir / SUMMARY_FILE)
    if not summary or summary.get("status") not in ("finished", "running"):
        return (summary or {}).get("status")  # none, or already says how it ended (interrupted, failed, ...)
    try:
        atomic_write_json(run_dir / SUMMARY_FILE, {**summary, "status": "failed", "error": message})
    except OSError:
        return summary.get("status")
    return "failed"


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # -9 (killed by SIGKILL) -> 137, as a shell says it


def _describe(rank: int, code: int | None, total: int) -> str:
    if code is None:
        return f"rank {rank} of {total} was stopped by mlx.launch"
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"rank {rank} of {total} was killed by signal {-code}{name}"
    return f"rank {rank} of {total} exited with code {code}"


def outcome(codes: dict[int, int], failures: list[tuple[int, int | None]], expected: int | None,
            launcher: int) -> tuple[int, str | None]:
    """(exit code, the error line's text or None). `codes`: the ranks' status lines; `failures`:
    mlx.launch's own reports ((rank, code), code None for a rank it stopped), in the order they
    came. The first rank that failed is named and its code returned: the others were usually
    stopped because of it (mlx.launch ends them)."""
    ordered = list(failures) + [(r, c) for r, c in codes.items() if c != 0 and r not in dict(failures)]
    seen = set(codes) | {r for r, _ in failures}
    total = expected or (max(seen) + 1 if seen else 0)
    missing = [r for r in range(total) if r not in seen]
    if ordered:
        # A rank that exited with RankTimeout's code only noticed that another one was lost: the
        # lost one (killed, or failed on its own) is the cause, whatever order mlx.launch reports them in.
        causes = [(r, c) for r, c in ordered if c is not None and c != RankTimeout.exit_code]
        rank, code = next(iter(causes), next(((r, c) for r, c in ordered if c is not None), ordered[0]))
        return (_exit_code(code) if code is not None else KILLED) or 1, _describe(rank, code, total)
    if missing:
        if not seen and launcher:
            return launcher, None  # mlx.launch failed before any rank ran: its own message said why
        return KILLED, f"rank {missing[0]} of {total} ended without an exit status (killed?)"
    if not seen:
        return (launcher, None) if launcher else (1, "no rank reported how it ended (were they started?)")
    return (launcher, f"mlx.launch exited with code {launcher}") if launcher else (0, None)


def _waiting_for_the_ranks(signum, frame) -> None:
    """SIGINT (Ctrl-C): the ranks got it from the terminal too and stop by themselves."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    launch, overrides = split_args(argv)
    train_bin = _beside_python("ppo-train")
    if train_bin is None:
        print("error: ppo-launch needs ppo-train beside this Python; reinstall ppo-mlx (pip install -e .)",
              file=sys.stderr)
        return 2
    helping = bool({"-h", "--help"} & set(argv))
    crowded = more_ranks_than_cores(launch, os.cpu_count() or 1)
    if crowded and not helping:  # help trains nothing: no advice about its speed
        print(crowded, file=sys.stderr)
    if expected_ranks(launch) == 1 and not helping:
        print("error: ppo-launch would start one rank: give -n 2 or more (one per core; --hosts or --hostfile for "
              "several machines), or run ppo-train alone for one process", file=sys.stderr)
        return 2
    if _option(launch, "--python") is None:
        launch += ["--python", sys.executable]
    try:
        launch += ring_ports(launch)
    except OSError as err:
        print(f"error: {err}; give mlx.launch's --starting-port yourself", file=sys.stderr)
        return 2
    launch_id = f"ppo-launch-{uuid.uuid4().hex[:12]}"
    # mlx.launch itself, less its busy loops (ppo.platform.launcher): they took 1.5 of 2 cores from the ranks.
    cmd = [sys.executable, "-m", "ppo.platform.launcher", *launch, "--env", f"{ENV}=1", "--env", f"{ENV_LAUNCH_ID}={launch_id}", train_bin, *overrides]
    if helping:  # mlx.launch prints its help (even for a --help after the command): no rank starts or reports
        return subprocess.call(cmd)
    # Ctrl-C reaches the ranks and the launcher from the terminal; this process waits for them.
    # Not SIG_IGN: an ignored signal stays ignored across exec, and the launcher and the ranks
    # would inherit it (a Ctrl-C while the ranks loaded did nothing); a handler is reset there.
    signal.signal(signal.SIGINT, _waiting_for_the_ranks)
    launched_at = time.time()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env={**os.environ, ENV: "1"})
    signal.signal(signal.SIGTERM, lambda signum, frame: stop_ranks(proc, signum))
    codes: dict[int, int] = {}
    failures: list[tuple[int, int | None]] = []
    run_dirs: dict[int, str] = {}
    errors_said: set[str] = set()
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        ending = line[len(line.rstrip("\r\n")):]
        found, rest = read_statuses(line)
        for rank, code, run_dir in found:
            codes[rank], run_dirs[rank] = code, run_dir
        # mlx.launch's "Node with rank N exited with code C": read, not shown (the last line names the rank).
        reported = [(int(m.group(1)), int(m.group(2)) if m.group(2) else None) for m in LAUNCHER_LINE.finditer(rest)]
        failures += reported
        if reported:
            rest = LAUNCHER_LINE.sub("", rest)
        if (found or reported) and not rest.strip():
            continue  # nothing else was on the line
        if rest.startswith("error: "):  # every rank says the same error (a bad override): once is enough
            if rest in errors_said:
                continue
            errors_said.add(rest)
        sys.stderr.write(rest + ending)
        sys.stderr.flush()
    launcher = proc.wait()
    code, what = outcome(codes, failures, expected_ranks(launch), launcher)
    if what is None:
        return code
    run_dir = run_dirs.get(0) or next((a.split("=", 1)[1] for a in overrides if a.startswith("hydra.run.dir=")), "")
    stopped = code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    if errors_said and (stopped or not (run_dir and began(Path(run_dir), launch_id, launched_at))):
        return code  # refused, or stopped by a signal: the ranks' line said what happened and what to run
    if run_dir and not began(Path(run_dir), launch_id, launched_at):  # lost while loading
        print(f"error: {what} before the run began; the run folder {run_dir} is as it was: run the same command "
              "again", file=sys.stderr)
        return code
    status = mark_failed(Path(run_dir), what) if run_dir and Path(run_dir).is_dir() else None
    where = (f"the run in {run_dir} is not finished" + (f" (summary.json says {status})" if status else "")
             if run_dir else "the run is not finished")
    print(f"error: {what}; {where}; its newest complete checkpoint is intact: run the same command again to "
          "resume", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
