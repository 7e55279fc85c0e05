"""Nothing lost, round 2, continued (issue 23 items 6, 7 and 14): ranks whose configs differ or
that belong to two launches, a reference or adapter made for another model, and messages that
name the file and what is wrong in it."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from ppo.tools import launch as ppo_launch
from ppo.train.distributed import first_difference
from test_distributed import BIN, overrides  # the 2-rank runs' launch and overrides

# Item 6: every rank's full config is compared at start; ranks of two launches are told apart.

# One rank that opens the process group, as ppo-train does first, and says what it saw.
RANK = """
import os, sys
from ppo.errors import ConfigError
from ppo.train.distributed import World
try:
    world = World.current(timeout=60)
except ConfigError as err:
    print("refused:", err, flush=True)
    sys.exit(2)
peers = world.gather_objects(os.environ.get("PAIR_TAG", ""))
print("accepted", os.environ.get("PAIR_TAG", ""), "peers", ",".join(peers), flush=True)
"""


def _two_ranks(tmp_path: Path, launch_ids: tuple[str | None, str | None]) -> list[str]:
    """Rank 0 and rank 1 started by hand on a ring of two free ports (the pairing mlx.launch makes),
    each with its own PPO_LAUNCH_ID (None: unset); what each printed."""
    start = ppo_launch.free_port_block(2)
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{start}"], [f"127.0.0.1:{start + 1}"]]))
    procs = []
    for rank, launch_id in enumerate(launch_ids):
        env = {k: v for k, v in os.environ.items() if k != "PPO_LAUNCH_ID"}
        env.update({"MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile), "PAIR_TAG": str(launch_id)})
        if launch_id is not None:
            env["PPO_LAUNCH_ID"] = launch_id
        procs.append(subprocess.Popen([sys.executable, "-c", RANK], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    return [p.communicate(timeout=120)[0] for p in procs]


def test_ranks_of_two_launches_that_paired_up_are_refused(tmp_path):
    outs = _two_ranks(tmp_path, ("ppo-launch-aaaa", "ppo-launch-bbbb"))
    for out in outs:
        assert out.startswith("refused:") and "two different launches" in out and "--starting-port" in out, out
        assert "Traceback" not in out
    # Ranks of one launch, and ranks whose launcher is not known (started by hand), are accepted.
    for ids in (("ppo-launch-aaaa", "ppo-launch-aaaa"), (None, None)):
        assert all(out.startswith("accepted") for out in _two_ranks(tmp_path, ids)), ids


@pytest.mark.slow
def test_two_mlx_launches_at_once_never_train_across_each_other(tmp_path):
    """The cause of the intermittent refusal: every mlx.launch listens on 32323 and up, shared
    (SO_REUSEPORT), so two launches at once on one machine pair their ranks at random (3 of 3
    tries here). Now each rank either trains with its own launch's peers or is refused."""
    script = tmp_path / "rank.py"
    script.write_text(RANK.replace('os.environ.get("PAIR_TAG", "")', "str(os.getppid())"))
    cmd = [str(BIN / "mlx.launch"), "-n", "2", "--backend", "ring", "--python", sys.executable, str(script)]
    env = {k: v for k, v in os.environ.items() if k != "PPO_LAUNCH_ID"}
    launches = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in launches]
    lines = [line for out in outs for line in out.splitlines() if line.startswith(("accepted", "refused"))]
    assert len(lines) == 4, outs
    for line in lines:
        if line.startswith("accepted"):
            me, peers = line.split()[1], line.split()[3].split(",")
            assert set(peers) == {me}, line  # both ranks started by the same mlx.launch
        else:
            assert "two different launches" in line


def test_ppo_launch_gives_the_ring_free_ports_unless_told(monkeypatch):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert not ppo_launch.port_free(busy.getsockname()[1])
    start = int(ppo_launch.ring_ports(["-n", "4", "--backend", "ring"])[1])
    assert ppo_launch.PORT_RANGE[0] <= start and all(ppo_launch.port_free(p) for p in range(start, start + 8))
    assert ppo_launch.ring_ports(["-n", "2", "--starting-port", "5000"]) == []
    assert ppo_launch.ring_ports(["-n", "2", "-p", "5000"]) == []
    assert ppo_launch.ring_ports(["-n", "2", "--backend", "mpi"]) == []


def test_first_difference_names_the_first_differing_key():
    assert first_difference({"a": 1, "b": 2}, {"a": 1, "b": 3}) == "b"
    assert first_difference({"a": 1}, {"a": 1, "c": 0}) == "c"
    assert first_difference({"a": [1, 2]}, {"a": [1, 2]}) is None


@pytest.mark.slow
def test_ranks_with_different_iterations_are_refused_at_start(tmp_path, tiny_model_dir, prompts_file):
    # A launcher "python" that gives rank 1 other iterations, as a mistyped per-host command would.
    python = tmp_path / "python"
    python.write_text(f'#!/bin/bash\nif [ "$MLX_RANK" = "1" ]; then exec {sys.executable} "$@" train.iters=12; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "mlx.launch"), "-n", "2", "--backend", "ring", "--python", str(python), str(BIN / "ppo-train"),
           *overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 6, "train.rank_timeout": 300})]
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "WANDB_SILENT": "true"})
    out = result.stdout + result.stderr
    assert time.monotonic() - started < 200  # at start, not after train.rank_timeout
    assert "ranks were started with different configs: train.iters=6 on rank 0 but 12 on rank 1" in out, out[-3000:]
    assert "Traceback" not in out and "checkpoint is intact" not in out
    assert not (run_dir / "metrics.jsonl").exists()
