"""Where the ranks of one machine meet, asleep: their gathers and their gradient mean.

MLX's ring backend (0.32) waits for a peer's bytes by polling a non-blocking socket in a loop
(mlx/distributed/ring/ring.cpp, `SocketThread::worker`): a rank that reaches a collective
before the others keeps a core busy until the last one arrives (measured: a rank waiting 2 s
at an `all_sum` used 2.0 s of CPU). With more ranks than cores, the waiting ranks take the CPU
from the ranks still computing, and every hop of the ring waits for its peer to be scheduled:
with 4 ranks on 2 cores, averaging 1 to 100,000 floats took 24-28 ms, gathering a step's
metrics 36 ms (benchmarks/bench_collectives.py).

Here every exchange goes through rank 0 over loopback TCP, and a waiting rank sleeps in a
blocking `recv`:
- `gather`: each other rank sends its part; rank 0 reads one from each, in rank order, and
  sends every rank all of them (the step's metrics, judgments, verdicts and checks, as JSON);
- `reduce`: rank 0 folds the parts as they arrive and sends every rank the result (the
  gradient mean: ppo.train.distributed.World._average_on_this_machine);
- `meet`: a gather of nothing, before an MLX collective that still runs (`World.all_sum`).

Rank 0 listens on 127.0.0.1 on a free port, which the first MLX collective of the run tells the
others; every other rank connects once and says its rank. Ranks spread over several machines
do not use this (ppo.train.distributed.World): they do not share cores, and the backend's
collectives serve them.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import time
from typing import Callable, Iterator, Sequence

# Every message: its length as 8 little-endian bytes, then its bytes.
_LENGTH = struct.Struct("<Q")
# A message's content: bytes-like parts (bytes, bytearray, memoryviews of arrays), sent in order.
Buffers = Sequence[bytes | bytearray | memoryview]


class PeerLost(RuntimeError):
    """A rank's connection closed: it died."""


class PeerTimeout(RuntimeError):
    """The other ranks did not arrive within the timeout."""


class Rendezvous:
    """One rank's end. Rank 0 opens a `listener()` before the ranks exchange its port; then
    every rank calls `connect`."""

    def __init__(self, rank: int, size: int, peers: dict[int, socket.socket]):
        self.rank = rank
        self.size = size
        self._peers = peers  # rank 0: every other rank's socket, by rank; any other rank: {0: rank 0's}

    @staticmethod
    def listener() -> socket.socket:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.bind(("127.0.0.1", 0))
        server.listen()
        return server

    @classmethod
    def connect(cls, rank: int, size: int, port: int, timeout: float,
                server: socket.socket | None = None) -> "Rendezvous":
        """Rank 0 (holding `server`) accepts the other ranks, which connect to `port` and say their rank."""
        deadline = time.monotonic() + timeout
        peers: dict[int, socket.socket] = {}
        try:
            if rank == 0:
                with server:
                    while len(peers) < size - 1:
                        server.settimeout(_left(deadline))
                        conn, _ = server.accept()
                        try:
                            peer = _LENGTH.unpack(_read(conn, _LENGTH.size, deadline))[0]
                        except PeerLost:
                            peer = None
                        if peer in peers or not 0 < (peer or 0) < size:  # not one of our ranks: a stray connection
                            conn.close()
                            continue
                        peers[peer] = _quick(conn)
            else:
                conn = socket.create_connection(("127.0.0.1", port), timeout=_left(deadline))
                conn.sendall(_LENGTH.pack(rank))
                peers[0] = _quick(conn)
        except socket.timeout:
            raise PeerTimeout("the other ranks did not connect") from None
        except OSError as err:
            raise PeerLost(f"connecting the ranks failed: {err}") from None
        return cls(rank, size, peers)

    def meet(self, timeout: float) -> None:
        """Return once every rank has called `meet`."""
        self.gather([], timeout)

    def gather(self, payload: Buffers, timeout: float) -> list[bytearray]:
        """Every rank's `payload` (a list of bytes-like parts, sent as one message), in rank order, on every rank."""
        deadline = time.monotonic() + timeout
        with _in_time():
            if self.rank != 0:
                _send(self._peers[0], payload, deadline, 0)
                return [_read_message(self._peers[0], deadline, 0) for _ in range(self.size)]
            parts = [_joined(payload)] + [_read_message(self._peers[r], deadline, r) for r in range(1, self.size)]
            for r in range(1, self.size):
                for part in parts:
                    _send(self._peers[r], [part], deadline, r)
            return parts

    def reduce(self, payload: Buffers, timeout: float,
               combine: Callable[[Iterator[Buffers]], Buffers]) -> Buffers | bytearray:
        """`combine` of every rank's `payload`, in rank order, computed on rank 0 and sent to every
        other rank, which gets its bytes; rank 0 gets what `combine` returned. `combine` is given
        the parts as an iterator that reads each part when asked for it (rank 0's own first, as
        given), so it can fold them one by one instead of holding them all."""
        deadline = time.monotonic() + timeout
        with _in_time():
            if self.rank != 0:
                _send(self._peers[0], payload, deadline, 0)
                return _read_message(self._peers[0], deadline, 0)
            others = (_read_message(self._peers[r], deadline, r) for r in range(1, self.size))
            parts = itertools.chain([payload], others)
            result = combine(parts)
            for r in range(1, self.size):
                _send(self._peers[r], result, deadline, r)
            return result

    def close(self) -> None:
        for conn in self._peers.values():
            conn.close()
        self._peers = {}


@contextlib.contextmanager
def _in_time():
    try:
        yield
    except socket.timeout:
        raise PeerTimeout("the other ranks did not arrive") from None


def _joined(parts: Buffers) -> bytearray:
    return bytearray(b"".join(parts))


def _quick(conn: socket.socket) -> socket.socket:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one small message each way: no Nagle delay
    return conn


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    return left


def _send(conn: socket.socket, parts: Buffers, deadline: float, peer: int) -> None:
    """One message: the parts' total length, then the parts, each sent from where it lies."""
    conn.settimeout(_left(deadline))
    try:
        conn.sendall(_LENGTH.pack(sum(memoryview(p).nbytes for p in parts)))
        for part in parts:
            conn.sendall(part)
    except socket.timeout:
        raise
    except OSError:
        raise PeerLost(f"rank {peer}'s connection closed") from None


def _read_message(conn: socket.socket, deadline: float, peer: int) -> bytearray:
    return _read(conn, _LENGTH.unpack(_read(conn, _LENGTH.size, deadline, peer))[0], deadline, peer)


def _read(conn: socket.socket, n: int, deadline: float, peer: int | None = None) -> bytearray:
    data = bytearray(n)
    view, got = memoryview(data), 0
    while got < n:
        conn.settimeout(_left(deadline))
        try:
            count = conn.recv_into(view[got:])
        except socket.timeout:
            raise
        except OSError:
            count = 0
        if not count:
            raise PeerLost(f"rank {peer}'s connection closed" if peer is not None else "a rank's connection closed")
        got += count
    return data
