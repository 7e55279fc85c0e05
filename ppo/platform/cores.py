"""How many threads each rank of a distributed run starts, set before MLX and OpenBLAS are loaded.

Ranks on one machine split its cores: every launched rank's OPENBLAS_NUM_THREADS and
OMP_NUM_THREADS are the machine's cores divided by the ranks of the launch on this machine
(at least 1), so that two ranks on two cores run one BLAS thread each instead of two each.
MLX's own CPU work runs on one thread per stream and needs no setting. A thread count the user
set (either variable) wins, for every rank. A single process (no launcher) is left as it is.

Standard library only: the entry points call `share_cores_env` before MLX is imported (and
before ppo.platform.blas re-executes the process with OpenBLAS preloaded, which keeps it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Environment variables by which the launchers MLX supports tell a process its rank.
LAUNCH_VARIABLES = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MLX_JACCL_COORDINATOR", "NCCL_COMM_ID")
# Set by ppo-launch in every rank's environment: one id per launch (ppo.train.distributed.launch_identity).
ENV_LAUNCH_ID = "PPO_LAUNCH_ID"
# The thread count share_cores_env chose for this rank (its mark: the BLAS variables are then ours).
ENV_RANK_THREADS = "PPO_RANK_THREADS"
# OPENBLAS_NUM_THREADS or OMP_NUM_THREADS as the user set it, recorded by share_cores_env.
ENV_USER_BLAS_THREADS = "PPO_USER_BLAS_THREADS"
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def launched() -> bool:
    """Whether this process was started by a distributed launcher (mlx.launch, mpirun)."""
    return any(os.environ.get(name) for name in LAUNCH_VARIABLES)


def launch_rank() -> int:
    """This process's rank as the launcher's environment says it, before any group exists (0 if none)."""
    for name in ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def local_ranks() -> int:
    """How many ranks of this launch run on this machine, before any process group exists: MPI's
    local size, else mlx.launch's ring hostfile (MLX_HOSTFILE: one list of "ip:port" per rank;
    the ranks whose first ip is this rank's), else 1."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    try:
        nodes = json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())
        ips = [node[0].rpartition(":")[0] for node in nodes]
        return max(1, ips.count(ips[launch_rank()]))
    except (KeyError, OSError, ValueError, IndexError, TypeError, AttributeError):
        return 1


def rank_threads(ranks_here: int) -> int:
    """BLAS threads for one of `ranks_here` ranks on this machine: an equal share of its cores."""
    return max(1, (os.cpu_count() or 1) // max(1, ranks_here))


def user_blas_threads() -> str | None:
    """The BLAS thread count the user set for the ranks, or None."""
    if os.environ.get(ENV_USER_BLAS_THREADS):
        return os.environ[ENV_USER_BLAS_THREADS]
    if os.environ.get(ENV_RANK_THREADS):
        return None  # the variables hold share_cores_env's own count
    return next((os.environ[v] for v in BLAS_THREAD_VARIABLES if os.environ.get(v)), None)


def share_cores_env() -> None:
    """A launched rank's OPENBLAS_NUM_THREADS and OMP_NUM_THREADS: its share of the machine's cores
    (see the module docstring), unless the user set one. Call before MLX is imported."""
    if not launched() or os.environ.get(ENV_RANK_THREADS) or os.environ.get(ENV_USER_BLAS_THREADS):
        return
    user = user_blas_threads()
    if user is not None:
        os.environ[ENV_USER_BLAS_THREADS] = user
        for name in BLAS_THREAD_VARIABLES:  # one count for both, as the user gave it
            os.environ.setdefault(name, user)
        return
    threads = str(rank_threads(local_ranks()))
    os.environ[ENV_RANK_THREADS] = threads
    for name in BLAS_THREAD_VARIABLES:
        os.environ[name] = threads
