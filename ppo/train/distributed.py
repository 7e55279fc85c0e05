"""Data-parallel training over `mlx.launch`: one run, N processes, one writer.

    mlx.launch -n 2 --backend ring --python .venv/bin/python .venv/bin/ppo-train OVERRIDES...

`World.current()` reads the process group that `mlx.launch` set up (ring, MPI, JACCL or
NCCL: MLX's own `mx.distributed`); a plain `ppo-train` gets a world of one, and every
method below returns its input unchanged then, so a single-process run computes exactly
what it did before (tests/test_golden_run.py).

What is split and what is shared (docs/how-to/distributed.md):
- `train.batch_size` is the global number of prompts per step; every rank draws the same
  global batch from the same seeded order and keeps its own contiguous slice (`share`),
  so ranks see disjoint prompts and the union is what one process would see.
- Gradients are averaged before one optimizer step that every rank applies, so the weights
  stay bit-identical on every rank (checked at the end of a run: `summary.json` records
  `ranks_in_sync`).
- Metrics, evaluation verdicts and judgment records are gathered to rank 0, the only
  process that writes the run folder.
- Ranks on several machines do both with MLX's collectives (`mlx.nn.average_gradients`).
  Ranks that all run on one machine do them through their rendezvous (ppo.train.rendezvous),
  where a waiting rank sleeps: MLX's ring backend spins while it waits, which with more ranks
  than cores takes the CPU from the ranks still computing.
- A rank that waits at a collective longer than `train.rank_timeout` seconds (a peer died
  or hangs) prints one line and exits, so no run hangs forever; the last complete
  checkpoint stays intact (checkpoints are written whole and renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from ppo.errors import ConfigError, RankTimeout
from ppo.metrics import STEP_COUNTS
from ppo.train.rendezvous import PeerLost, PeerTimeout, Rendezvous

# `launched` and `launch_rank` read the launcher's environment; they live with the thread
# settings that must be made before MLX is imported.
from ppo.platform.cores import ENV_LAUNCH_ID, launch_rank, launched, rank_threads, user_blas_threads  # noqa: F401


@dataclass
class World:
    """The processes of one run. `group` is None for a single process."""

    group: Any = None
    rank: int = 0
    size: int = 1
    timeout: float = 300.0
    # Seconds spent waiting at collectives since the last `take_wait_seconds` (timing/collective_seconds).
    waited: float = 0.0
    # What a lost rank's message advises: set by the trainer once it knows the run folder
    # (ppo.train.run_folder.continue_command).
    continue_with: str = ""
    # Where ranks on one machine gather and average, asleep while they wait (ppo.train.rendezvous);
    # None for one process, and for ranks on several machines.
    rendezvous: Any = None

    @classmethod
    def current(cls, timeout: float = 300.0) -> "World":
        if not launched():
            return cls(timeout=timeout)
        try:
            group = mx.distributed.init()
        except RuntimeError as err:  # e.g. mlx.launch -n 1: the ring backend cannot read a one-rank hostfile
            raise ConfigError(f"MLX could not start the ranks' process group ({str(err).splitlines()[0]}); launch two "
                              "or more ranks (ppo-launch -n 2 ...), or run ppo-train alone for one process") from None
        if group.size() == 1:
            return cls(timeout=timeout)
        world = cls(group, group.rank(), group.size(), timeout)
        world.check_one_launch_and_share_cores()
        return world

    def check_one_launch_and_share_cores(self) -> None:
        """Refuse ranks of two launches that paired up, then split this machine's cores.

        Every `mlx.launch --backend ring` listens on the same ports unless told otherwise
        (`--starting-port`, default 32323), and MLX's ring backend binds them with SO_REUSEPORT:
        two runs started at once on one machine both listen on 32323, and the kernel hands
        each connecting rank to either run's rank 0 at random. Their ranks then pair across
        the runs, and every collective mixes them (this was the intermittent "ranks were
        started with different configs" refusal of identical commands: another run was
        starting on the machine at the same time). Ranks of one launch share its launcher
        (`launch_identity`), so a pairing across launches is told apart and refused here,
        before anything else is exchanged; `ppo-launch` picks free ports so it does not happen.

        Ranks on one machine then split its cores between their BLAS thread pools: two
        ranks on two cores each running two OpenBLAS threads would oversubscribe the CPU."""
        import socket

        from ppo.platform.blas import set_blas_threads

        server = Rendezvous.listener() if self.is_main else None
        me = {"host": socket.gethostname(), "launch": launch_identity(),
              "rendezvous_port": server.getsockname()[1] if server else None}
        ranks = self.gather_objects(me)
        for rank, other in enumerate(ranks):
            if other["host"] == me["host"] and other["launch"] != me["launch"] and None not in (other["launch"],
                                                                                                me["launch"]):
                if server:
                    server.close()
                raise ConfigError(
                    f"rank {self.rank} and rank {rank} belong to two different launches ({me['launch']} and "
                    f"{other['launch']}): two distributed runs started on this machine at once on the same ports "
                    "(mlx.launch's default --starting-port 32323; MLX's ring backend shares ports between "
                    "processes), so their ranks paired across the runs; relaunch with ppo-launch, which picks free "
                    "ports, or give each run its own mlx.launch --starting-port")
        hosts = [r["host"] for r in ranks]
        if user_blas_threads() is None:
            set_blas_threads(rank_threads(hosts.count(me["host"])))
        if len(set(hosts)) == 1:
            self.rendezvous = self.connect_rendezvous(ranks[0]["rendezvous_port"], server)
        elif server:
            server.close()

    def connect_rendezvous(self, port: int, server=None) -> Rendezvous | None:
        """Every rank's end of the rendezvous on rank 0's `port` (rank 0 accepts on `server`),
        or None on every rank when any rank could not connect: ranks whose machines share a host
        name but not a loopback (containers with their own network) keep MLX's collectives."""
        try:
            # at most half the rank timeout: a rank that failed at once waits for rank 0 at the all_sum below
            rendezvous = Rendezvous.connect(self.rank, self.size, port,
                                            min(self.timeout / 2, RENDEZVOUS_CONNECT_SECONDS), server)
        except (PeerTimeout, PeerLost):
            rendezvous = None
        if int(self._all_sum(mx.array(int(rendezvous is not None))).item()) == self.size:
            return rendezvous
        if rendezvous is not None:
            rendezvous.close()
        return None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: list) -> list:
        """This rank's contiguous slice of a global list whose length the world size divides."""
        if self.size == 1:
            return items
        per_rank = len(items) // self.size
        return items[self.rank * per_rank:(self.rank + 1) * per_rank]

    def split_evenly(self, items: list) -> list:
        """This rank's slice of a list of any length (evaluation prompts): ranks differ by at most one item."""
        if self.size == 1:
            return items
        bounds = np.linspace(0, len(items), self.size + 1).round().astype(int)
        return items[bounds[self.rank]:bounds[self.rank + 1]]

    # -- collectives, each bounded by the rank timeout ---------------------------------------

    def _through_rendezvous(self, exchange, *args):
        """`exchange(*args, timeout)` of the rendezvous, its wait counted; a lost or silent peer
        ends this process in one line, as at an MLX collective."""
        start = time.perf_counter()
        try:
            return exchange(*args, self.timeout)
        except PeerTimeout:
            self._give_up()
        except PeerLost as lost:
            self._lost(str(lost))
        finally:
            self.waited += time.perf_counter() - start

    def _wait(self, *arrays) -> None:
        """mx.eval the collective's result; a peer that never arrives ends this process in one line."""
        timer = threading.Timer(self.timeout, self._give_up)
        timer.daemon = True
        timer.start()
        start = time.perf_counter()
        try:
            mx.eval(*arrays)
        except RuntimeError as err:  # the ring backend: "[ring] connection to a peer was lost"
            self._lost(str(err).splitlines()[0])
        finally:
            timer.cancel()
            self.waited += time.perf_counter() - start

    def _lost(self, why: str) -> None:
        # Said at once: mlx.launch sends SIGTERM to the surviving ranks right after one dies.
        message = (f"rank {self.rank}: lost the other ranks ({why}); a rank died. "
                   f"The last complete checkpoint is intact: relaunch the same command to resume{self._exactly()}")
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise RankTimeout(message, reported=True) from None

    def take_wait_seconds(self) -> float:
        waited, self.waited = self.waited, 0.0
        return waited

    def _exactly(self) -> str:
        return f" (exactly: {self.continue_with})" if self.continue_with else ""

    def _give_up(self) -> None:
        print(f"error: rank {self.rank}: the other ranks did not answer within train.rank_timeout={self.timeout:g} s "
              f"(a rank died or hangs); the last complete checkpoint is intact: relaunch the same command to resume"
              f"{self._exactly()}", file=sys.stderr, flush=True)
        os._exit(RankTimeout.exit_code)

    def all_sum(self, x: mx.array) -> mx.array:
        if self.size == 1:
            return x
        if self.rendezvous is not None:  # asleep until every rank is there, then MLX's all_sum
            self._through_rendezvous(self.rendezvous.meet)
        return self._all_sum(x)

    def _all_sum(self, x: mx.array) -> mx.array:
        out = mx.distributed.all_sum(x, group=self.group)
        self._wait(out)
        return out

    def stop_signal(self, signum: int | None) -> int | None:
        """The signal that stops the run after this step, agreed by every rank (None: none got
        one). Signals reach the ranks microseconds apart: a rank that saw its own only after this
        step's check went on alone into the next step and lost the ranks that stopped."""
        if self.size == 1:
            return signum
        return next((s for s in self.gather_objects(signum) if s), None)

    def gather_objects(self, obj) -> list:
        """Every rank's JSON-serialisable `obj`, in rank order (a list of one for a single process)."""
        if self.size == 1:
            return [obj]
        if self.rendezvous is not None:
            parts = self._through_rendezvous(self.rendezvous.gather, [json.dumps(obj, default=float).encode()])
            return [json.loads(part) for part in parts]
        payload = np.frombuffer(json.dumps(obj, default=float).encode(), dtype=np.uint8)
        lengths = self._all_sum(mx.array(np.eye(self.size, dtype=np.int32)[self.rank] * len(payload)))
        lengths = np.array(lengths).astype(int)
        padded = np.zeros(int(lengths.max()), dtype=np.uint8)
        padded[:len(payload)] = payload
        gathered = mx.distributed.all_gather(mx.array(padded)[None], group=self.group)
        self._wait(gathered)
        rows = np.array(gathered)
        return [json.loads(rows[r, :lengths[r]].tobytes().decode()) for r in range(self.size)]

    def average_gradients(self, grads, like):
        """The mean of the ranks' gradients; a rank without a judged pair this step passes None
        (it contributes nothing, and the mean is over the ranks that had one). None when no rank had any.
        How many ranks contributed travels in the same all-reduce, as one more element."""
        if self.size == 1:
            return grads
        import mlx.nn as nn
        from mlx.utils import tree_map

        local = tree_map(mx.zeros_like, like) if grads is None else grads
        dtype = _leaves(local)[0][1].dtype
        both = {"grads": local, "contributed": mx.array([0 if grads is None else 1], dtype=dtype)}
        if self.rendezvous is not None:
            mean = self._average_on_this_machine(both)
        else:
            mean = nn.average_gradients(both, group=self.group)  # sum / size, bucketed into few all-reduces
            self._wait(*[v for _, v in _leaves(mean)])
        contributors = round(mean["contributed"].item() * self.size)
        if contributors == 0:
            return None
        scale = self.size / contributors
        return tree_map(lambda g: g * scale, mean["grads"]) if scale != 1 else mean["grads"]

    def _average_on_this_machine(self, tree):
        """`tree`'s mean over the ranks, through the rendezvous: rank 0 adds the ranks' arrays in
        rank order and divides by the world size, as `nn.average_gradients` does (bit for bit the
        same with two ranks, where the order of an addition cannot matter), and sends every rank
        the result. Hand-written because MLX's ring all-reduce waits at each hop for its peer to be
        scheduled, and its socket threads spin meanwhile: 4 ranks on 2 cores took 24-28 ms to
        average 1 to 100,000 floats and 102 ms for 1M, against 1.2-3.7 ms and 25.5 ms here; with
        2 ranks the two are within noise, MLX a little ahead on large arrays
        (benchmarks/bench_collectives.py)."""
        from mlx.utils import tree_unflatten

        names, local = zip(*_leaves(tree))
        mx.eval(local)
        mean: list[mx.array] = []

        def combine(parts) -> list:
            next(parts)  # this rank's own: `local`, as arrays
            total = list(local)
            for part in parts:
                total = [t + a for t, a in zip(total, _unpack(part, local))]
            mean.extend(t / self.size for t in total)
            return _pack(mean)

        answer = self._through_rendezvous(lambda payload, timeout: self.rendezvous.reduce(payload, timeout, combine),
                                          _pack(local))
        return tree_unflatten(list(zip(names, mean if self.is_main else _unpack(answer, local))))

    def check_same(self, what: str, value: str) -> None:
        """Refuse to run when the ranks disagree on `value` (e.g. a checkpoint only some could read)."""
        values = self.gather_objects(value)
        if len(set(values)) > 1:
            differing = [r for r, v in enumerate(values) if v != values[0]]
            raise ConfigError(f"ranks were started with different {what} (rank 0 differs from rank {differing[0]}): "
                              "launch every rank with the same command and overrides")

    def check_same_config(self, flat_config: dict) -> None:
        """Refuse to run when any rank's full config (flattened key -> value) differs from rank 0's,
        naming the first differing key and both values. Done first, before a model is loaded: ranks
        that disagree on, say, train.iters would otherwise meet at different collectives and wait
        for each other until train.rank_timeout."""
        configs = self.gather_objects(json.loads(json.dumps(flat_config, default=str)))
        for rank, other in enumerate(configs[1:], start=1):
            key = first_difference(configs[0], other)
            if key is not None:
                missing = "(not set)"
                raise ConfigError(
                    f"ranks were started with different configs: {key}={configs[0].get(key, missing)!r} on rank 0 "
                    f"but {other.get(key, missing)!r} on rank {rank}; launch every rank with the same command and "
                    "overrides")

    def in_sync(self, params) -> bool:
        """Whether every rank holds bit-identical `params` (a sha256 of their bytes)."""
        digest = hashlib.sha256()
        for name, value in sorted(_leaves(params), key=lambda kv: kv[0]):
            digest.update(name.encode())
            digest.update(np.array(value.astype(mx.float32)).tobytes())
        return len(set(self.gather_objects(digest.hexdigest()))) == 1


def first_difference(a: dict, b: dict) -> str | None:
    """The first key (in sorted order) whose value differs between two flattened configs."""
    return next((k for k in sorted(set(a) | set(b)) if k not in a or k not in b or a[k] != b[k]), None)


# How long rank 0 waits for the other ranks of its machine to connect to its rendezvous: they
# do at once, right after the collective that told them the port; a rank that cannot (another
# network namespace under the same host name) makes every rank keep MLX's collectives.
RENDEZVOUS_CONNECT_SECONDS = 60.0

# Programs whose process starts the ranks of one launch, looked for among a rank's ancestors.
LAUNCHERS = ("mlx.launch", "mpirun", "mpiexec", "orterun", "prterun", "prted", "orted")


def launch_identity() -> str | None:
    """What the ranks of one launch share and another launch's do not: ppo-launch's id, else the
    process id of the launcher this rank descends from (mlx.launch starts its local ranks as
    children; an `mpirun` alike), else None (not known: not compared)."""
    if os.environ.get(ENV_LAUNCH_ID):
        return os.environ[ENV_LAUNCH_ID]
    pid = os.getppid()
    for _ in range(16):  # a few wrapper scripts at most between a rank and its launcher
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if any(os.path.basename(arg) in LAUNCHERS for arg in argv[:2]):  # the program, or the script a Python runs
            return f"launcher pid {pid}"
        parent = int(stat.rpartition(")")[2].split()[1])  # the field after the state, past a name with spaces
        if parent <= 1:
            return None
        pid = parent
    return None


# The world of a plain `ppo-train`: the default of every function that takes a world.
SINGLE_PROCESS = World()


def _leaves(tree) -> list[tuple[str, mx.array]]:
    from mlx.utils import tree_flatten

    return tree_flatten(tree)


# Unsigned integers of each item size: arrays travel as their bits (numpy has no bfloat16).
_BITS = {1: mx.uint8, 2: mx.uint16, 4: mx.uint32, 8: mx.uint64}


def _pack(arrays) -> list[memoryview]:
    """The arrays' bytes, to send as they lie (evaluates them)."""
    return [memoryview(np.array(a.view(_BITS[a.dtype.size]))).cast("B") for a in arrays]


def _unpack(data, like) -> list[mx.array]:
    """Arrays shaped and typed as `like`'s, read one after another from `data`."""
    arrays, offset = [], 0
    for a in like:
        bits = np.frombuffer(data, dtype=np.dtype(f"<u{a.dtype.size}"), count=a.size, offset=offset)
        arrays.append(mx.array(bits).view(a.dtype).reshape(a.shape))
        offset += a.size * a.dtype.size
    return arrays


def reduce_metrics(per_rank: list[dict]) -> dict:
    """One step's metrics as one process over the global batch would report them: means of
    per-rank means (every rank holds an equal share), throughput and the step's counts
    (STEP_COUNTS: judge/pairs, ...) summed, timings and memory the slowest / largest rank's."""
    if len(per_rank) == 1:
        return per_rank[0]
    out = {}
    for key in sorted({k for m in per_rank for k in m}):
        values = [float(m[key]) for m in per_rank if key in m and m[key] is not None and m[key] == m[key]]
        if not values:
            out[key] = float("nan")
        elif key == "tokens_per_second" or key in STEP_COUNTS:
            out[key] = sum(values)
        elif key.startswith(("timing/", "memory/")):
            out[key] = max(values)
        else:
            out[key] = float(np.mean(values))
    return out


def check_batch(batch_size: int, world: World, minibatches: int = 1) -> None:
    if batch_size % world.size:
        raise ConfigError(f"invalid train.batch_size={batch_size}: it is the global batch and must divide evenly over "
                          f"{world.size} processes, e.g. train.batch_size={max(world.size, batch_size // world.size * world.size)}")
    per_rank = batch_size // world.size
    if minibatches > per_rank:  # every rank takes every minibatch step, each on its own share of the pairs
        raise ConfigError(f"invalid loss.minibatches={minibatches}: more minibatches than the {per_rank} pairs each of "
                          f"{world.size} processes holds (train.batch_size={batch_size}): use loss.minibatches <= {per_rank} "
                          f"or train.batch_size >= {minibatches * world.size}")
