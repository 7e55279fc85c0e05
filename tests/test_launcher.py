"""ppo.platform.launcher: mlx.launch without its busy loops (what ppo-launch runs)."""

import os
import shutil
import subprocess
import sys

import pytest

from ppo.platform.launcher import select_without_stdin
from ppo.tools.launch import free_port_block, more_ranks_than_cores, read_statuses


def test_the_launcher_sleeps_while_its_ranks_work(tmp_path):
    """Two ranks that sleep 3 s: mlx.launch 0.32.4 itself burns about 4 s of CPU in that time
    (its relay threads spin on the ranks' always-writable stdin pipes and on a stdin at end of
    file); the launcher ppo-launch runs must stay near its start-up cost."""
    script = tmp_path / "rank.py"
    script.write_text("import time\ntime.sleep(3)\n")
    proc = subprocess.Popen([sys.executable, "-m", "ppo.platform.launcher", "-n", "2", "--backend", "ring",
                             "--starting-port", str(free_port_block(4)), "--python", sys.executable, str(script)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)  # the launcher and the ranks it waited for
    assert os.waitstatus_to_exitcode(status) == 0, proc.stdout.read()
    assert usage.ru_utime + usage.ru_stime < 1.5


@pytest.mark.parametrize("unbuffered", ["", "1"])
def test_the_ranks_output_still_reaches_the_user(tmp_path, unbuffered):
    script = tmp_path / "rank.py"
    script.write_text("import os, sys\nprint('out', os.environ['MLX_RANK'])\nprint('err', os.environ['MLX_RANK'], "
                      "file=sys.stderr)\nsys.exit(int(os.environ['MLX_RANK']) * 3)\n")
    done = subprocess.run([sys.executable, "-m", "ppo.platform.launcher", "-n", "2", "--backend", "ring",
                           "--starting-port", str(free_port_block(4)), "--python", sys.executable, str(script)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    assert {"out 0", "out 1"} <= set(done.stdout.split("\n")), done.stdout
    assert "err 0" in done.stderr and "err 1" in done.stderr
    assert "Node with rank 1 exited with code 3" in done.stderr  # mlx.launch's own report, which ppo-launch reads


def test_select_without_stdin_waits_only_for_output(tmp_path):
    read_end, write_end = os.pipe()
    try:
        # A write descriptor (a rank's stdin pipe) is always ready: it must not end the wait.
        assert select_without_stdin([read_end], [write_end], [], 0.05) == ([], [], [])
        os.write(write_end, b"x")
        assert select_without_stdin([read_end], [write_end], [], 1.0) == ([read_end], [], [])
    finally:
        os.close(read_end)
        os.close(write_end)


def test_more_ranks_than_cores_is_a_warning_naming_the_count_that_helps():
    warning = more_ranks_than_cores(["-n", "4", "--backend", "ring"], cores=2)
    assert warning.startswith("warning: 4 ranks per machine on 2 cores") and "-n 2 is the most" in warning
    assert more_ranks_than_cores(["-n=3"], cores=2).startswith("warning: 3 ranks")
    assert more_ranks_than_cores(["-n", "2", "--backend", "ring"], cores=2) is None
    assert more_ranks_than_cores(["--backend", "ring"], cores=1) is None  # one rank per host


def test_status_lines_cut_into_each_other_are_all_read():
    """Two ranks' status lines as mlx.launch relayed them when one arrived in two writes (text,
    then its newline) around the other's: both ranks are read, and other output on the line kept."""
    first, second = "ppo-launch-status rank=2 code=0 run_dir=/runs/a", "ppo-launch-status rank=1 code=0 run_dir=/runs/a"
    assert read_statuses(first + second + "\n") == ([(2, 0, "/runs/a"), (1, 0, "/runs/a")], "")
    assert read_statuses("step 3ppo-launch-status rank=0 code=137 run_dir=/runs/b c\n") == (
        [(0, 137, "/runs/b c")], "step 3")
    assert read_statuses("loss 0.5\n") == ([], "loss 0.5")


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_a_rank_writes_its_status_line_in_one_write_even_unbuffered(tmp_path):
    """Under PYTHONUNBUFFERED=1 `print` wrote the line and its newline in two write() calls,
    which let another rank's line fall between them (a finished 4-rank run was called failed)."""
    trace = tmp_path / "trace"
    code = "from ppo.tools.cli import _launch_status; _launch_status(0)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PPO_LAUNCH_STATUS": "1", "MLX_RANK": "3"}
    done = subprocess.run(["strace", "-e", "trace=write", "-s", "200", "-o", str(trace), sys.executable, "-c", code],
                          env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and not trace.exists():
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()[:200]}")
    assert "ppo-launch-status rank=3 code=0" in done.stderr
    writes = [line for line in trace.read_text().splitlines() if "ppo-launch-status" in line]
    assert len(writes) == 1 and 'run_dir=\\n"' in writes[0], trace.read_text()


@pytest.mark.parametrize("args", [["-n", "64", "--help"], ["-n", "2", "--", "--help"]])
def test_help_is_help_with_exit_0_and_no_error_or_warning(args):
    """mlx.launch prints its help and starts no rank: ppo-launch said a rank ended without an exit
    status (exit 137), and warned about more ranks than cores."""
    launch = str(os.path.join(os.path.dirname(sys.executable), "ppo-launch"))
    done = subprocess.run([launch, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "usage: mlx.launch" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("ranks", [[], ["-n", "1"]])
def test_a_launch_of_one_rank_is_one_line_and_exit_2(tmp_path, ranks):
    """Without -n, mlx.launch starts one rank, whose ring backend failed with a traceback."""
    launch = str(os.path.join(os.path.dirname(sys.executable), "ppo-launch"))
    done = subprocess.run([launch, *ranks, "train.iters=1", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("error: ppo-launch would start one rank: give -n 2") and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_rank_whose_process_group_cannot_start_says_so_in_one_line(tmp_path):
    """mlx.launch -n 1 (not ppo-launch): MLX's ring backend raises at init; the rank exits 2 with one line."""
    launch = os.path.join(os.path.dirname(sys.executable), "mlx.launch")
    train = os.path.join(os.path.dirname(sys.executable), "ppo-train")
    done = subprocess.run([launch, "-n", "1", "--backend", "ring", "--starting-port", str(free_port_block(2)),
                           "--python", sys.executable, train, "experiment=demo", "train.iters=1", "logger=none",
                           f"hydra.run.dir={tmp_path / 'run'}"], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "MLX could not start the ranks' process group" in errors[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_a_sweep_under_ppo_launch_is_the_ranks_one_line(tmp_path):
    """Every rank refuses -m; ppo-launch added "the run is not finished ... resume" for a run that never began."""
    launch = str(os.path.join(os.path.dirname(sys.executable), "ppo-launch"))
    done = subprocess.run([launch, "-n", "2", "--backend", "ring", "-m", "experiment=demo", "train.iters=1",
                           "logger=none", "seed=1,2", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: a sweep (-m) cannot run under mlx.launch"), done.stderr
