"""ppo.platform.launcher: mlx.launch without its busy loops (what ppo-launch runs)."""

import os
import subprocess
import sys

from ppo.platform.launcher import select_without_stdin
from ppo.tools.launch import free_port_block, more_ranks_than_cores


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


def test_the_ranks_output_still_reaches_the_user(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text("import os, sys\nprint('out', os.environ['MLX_RANK'])\nprint('err', os.environ['MLX_RANK'], "
                      "file=sys.stderr)\nsys.exit(int(os.environ['MLX_RANK']) * 3)\n")
    done = subprocess.run([sys.executable, "-m", "ppo.platform.launcher", "-n", "2", "--backend", "ring",
                           "--starting-port", str(free_port_block(4)), "--python", sys.executable, str(script)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
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
