"""Crash-safe checkpoints: exact resume after SIGKILL, signals, bad checkpoints, full disk."""

import json
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from conftest import ROOT, adapted_model, run_cli, small_run_overrides
from ppo.train import checkpoint
from ppo.train.checkpoint import CheckpointError

from ppo.metrics import MEASUREMENT_PREFIXES as MEASUREMENTS  # noqa: E402


def _metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(MEASUREMENTS)} for r in rows]


def _overrides(model, data, run_dir, iters=8, **extra):
    return small_run_overrides(model, data, **{"train.iters": iters, "train.save_every": 2, "train.steps_per_eval": 4, **extra}) + [
        f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir, prompts_file):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    return run_dir


def _assert_same_run(a, b):
    assert _metrics(a) == _metrics(b)
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(np.array(wa[k]), np.array(wb[k]))


@pytest.mark.slow
def test_sigkill_during_training_then_resume_is_identical(tmp_path, tiny_model_dir, prompts_file, uninterrupted):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ppo.tools.cli", *_overrides(tiny_model_dir, prompts_file, run_dir)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints").exists():
        time.sleep(0.05)
    while time.time() < deadline:  # kill once a checkpoint exists and the run has gone past it
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(run_dir) is not None
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_half_written_checkpoint_is_ignored(tmp_path, tiny_model_dir, prompts_file, uninterrupted):
    """A SIGKILL during a save leaves only a temporary folder: resume uses the last complete one."""
    run_dir = tmp_path / "run"
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, iters=4))
    assert result.returncode == 0
    torn = run_dir / "checkpoints" / ".tmp-step-0000006"
    torn.mkdir()
    (torn / "adapters.safetensors").write_bytes(b"\x00garbage")
    (run_dir / "summary.json").unlink()
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, iters=8))
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_nonzero(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ppo.tools.cli", *_overrides(tiny_model_dir, prompts_file, run_dir, iters=200, **{"train.save_every": 1000})]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "to continue from it, run: ppo-train " in err and f"hydra.run.dir={run_dir}" in err and "Traceback" not in err
    state = checkpoint.read_state(checkpoint.latest(run_dir))
    assert state.step >= 2
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_second_signal_stops_at_once_and_the_last_checkpoint_resumes(tmp_path, tiny_model_dir, prompts_file,
                                                                      uninterrupted):
    """A second SIGTERM stops within the running step, without saving it: the newest complete
    checkpoint is the resume point, and resuming from it gives the uninterrupted run exactly."""
    import queue
    import threading

    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ppo.tools.cli", *_overrides(tiny_model_dir, prompts_file, run_dir, iters=200)]
    # stdout and stderr together: the log line of the first signal is on stdout, the error on stderr.
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    deadline = time.time() + 120
    while time.time() < deadline and not ((run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 3):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    # Two signals that arrive while the process is inside one C call are one signal (POSIX
    # does not queue them), so the second is sent once the first has been handled: at once,
    # well within the step (or the save, which is finished first) that the first lets end.
    seen = []
    while time.time() < deadline and not any("send it again" in line for line in seen):
        seen.append(lines.get(timeout=max(0.1, deadline - time.time())))
    proc.send_signal(signal.SIGTERM)
    signalled = time.time()
    proc.wait(timeout=120)
    time.sleep(0.2)  # the reader thread drains the pipe
    while not lines.empty():
        seen.append(lines.get())
    err = "".join(seen)
    assert time.time() - signalled < 30, "a second signal must stop the run within seconds"
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "stopped at once by a second signal" in errors[0], err[-3000:]
    newest = checkpoint.latest(run_dir)
    assert f"{newest.name} (step {checkpoint.read_state(newest).step}), is the resume point" in errors[0]
    assert "; to continue, run: ppo-train " in errors[0] and errors[0].endswith(f"hydra.run.dir={run_dir}")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"
    assert not list((run_dir / "checkpoints").glob(".tmp-*")), "a save was torn"
    assert checkpoint.read_state(newest).step <= 8
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(uninterrupted, run_dir)


@pytest.mark.slow
def test_resume_with_a_different_config_is_refused(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, iters=2)).returncode == 0
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, iters=4) + ["loss.beta=0.3"])
    assert result.returncode != 0
    assert "different config (loss.beta: 0.1 there, 0.3 now)" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint_is_named(tmp_path, tiny_model_dir):
    cfg, model, optimizer = adapted_model(tiny_model_dir)
    state = checkpoint.TrainerState(1, 2, None, {}, {})
    path = checkpoint.save(tmp_path, model, optimizer, state, cfg)
    (path / "adapters.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="is corrupt"):
        checkpoint.load(path, model, optimizer)


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import errno

    cfg, model, optimizer = adapted_model(tiny_model_dir)
    good = checkpoint.save(tmp_path, model, optimizer, checkpoint.TrainerState(1, 2, None, {}, {}), cfg)
    before = (tmp_path / "adapters.safetensors").read_bytes()

    real_save = mx.save_safetensors

    def full_disk(path, *args, **kwargs):
        if "optimizer" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", full_disk)
    with pytest.raises(CheckpointError, match=r"no space left on device.*step-0000001 is intact"):
        checkpoint.save(tmp_path, model, optimizer, checkpoint.TrainerState(2, 4, None, {}, {}), cfg)
    assert checkpoint.latest(tmp_path) == good
    assert not any(p.name.startswith(".tmp") for p in (tmp_path / "checkpoints").iterdir())
    assert (tmp_path / "adapters.safetensors").read_bytes() == before
    monkeypatch.setattr(mx, "save_safetensors", real_save)
    assert checkpoint.load(good, model, optimizer).step == 1


def test_keeps_only_the_last_k(tmp_path, tiny_model_dir):
    cfg, model, optimizer = adapted_model(tiny_model_dir)
    for step in range(1, 6):
        checkpoint.save(tmp_path, model, optimizer, checkpoint.TrainerState(step, 0, None, {}, {}), cfg, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]


def test_checkpoint_from_another_model_is_refused(tmp_path, tiny_model_dir):
    from ppo.demo.tiny import build_tiny_model

    other_dir = build_tiny_model(tmp_path / "other", hidden=32, layers=1, vocab=300)
    cfg, other, other_optimizer = adapted_model(other_dir)
    path = checkpoint.save(tmp_path / "run", other, other_optimizer, checkpoint.TrainerState(1, 0, None, {}, {}), cfg)

    _, model, optimizer = adapted_model(tiny_model_dir)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        checkpoint.load(path, model, optimizer)


def test_a_setting_added_since_the_checkpoint_does_not_block_its_resume():
    """A newer version adds keys (e.g. train.eval_samples_per_prompt): a checkpoint made before
    them ran as if they had their defaults, so it still resumes unless the key is now changed."""
    from conftest import compose
    from ppo.train.checkpoint import config_fingerprint, fingerprint_differences

    current = config_fingerprint(compose(["judge=rule"]))
    older = {k: v for k, v in current.items() if k not in ("train.eval_samples_per_prompt", "judge.include_reasoning")}
    assert fingerprint_differences(older, current) == []
    changed = config_fingerprint(compose(["judge=rule", "train.eval_samples_per_prompt=3"]))
    assert fingerprint_differences(older, changed) == ["train.eval_samples_per_prompt"]
    assert fingerprint_differences(current, config_fingerprint(compose(["judge=rule", "seed=1"]))) == ["seed"]
