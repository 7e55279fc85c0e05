"""Nothing lost, nothing mixed (issue 14): one process per run folder, resume=never moves the
earlier run aside, non-finite values stop the run, checkpoints are verified, a full disk
and bad bytes give one line, sweep job folders are unique, silent cases are refused."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from conftest import ROOT, adapted_model, compose, run_cli, sigint_as_default, small_run_overrides
from ppo.errors import CheckpointError, ConfigError, TrainingDiverged
from ppo.metrics import MEASUREMENT_PREFIXES as MEASUREMENTS
from ppo.train import checkpoint


def _overrides(model, data, run_dir, **extra):
    return small_run_overrides(model, data, **{"train.save_every": 1, **extra}) + [f"hydra.run.dir={run_dir}"]


def _one_line_error(result, needle: str) -> str:
    """The run failed with exactly one `error:` line containing `needle`, and no traceback."""
    assert result.returncode != 0, result.stdout[-2000:]
    text = result.stderr + result.stdout
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr[-3000:]
    return errors[0]


def _metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(MEASUREMENTS)} for r in rows]


def _same_adapters(a: Path, b: Path) -> None:
    wa, wb = mx.load(str(a / "adapters.safetensors")), mx.load(str(b / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(np.array(wa[k]), np.array(wb[k]))


def _summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


# 3. A run folder is owned by one process at a time.

@pytest.mark.slow
def test_second_run_into_a_live_folder_is_refused_and_a_killed_one_frees_it(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *_overrides(
        tiny_model_dir, prompts_file, run_dir, **{"train.iters": 500, "train.save_every": 1000})],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (
                (run_dir / "metrics.jsonl").exists() and (run_dir / "metrics.jsonl").read_text().count("\n") >= 1):
            time.sleep(0.05)
        hydra_files = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
        judgments = (run_dir / "judgments.jsonl").read_bytes()

        second = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 500, "seed": 1}))
        line = _one_line_error(second, f"in use by pid {first.pid}")
        assert "hydra.run.dir" in line
        # Nothing of the second run reached the folder: its config, its judgments.
        assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == hydra_files
        assert "seed: 0" in hydra_files["config.yaml"].decode()
        assert (run_dir / "judgments.jsonl").read_bytes().startswith(judgments)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILL leaves no stale lock: the same command takes the folder over at once.
    again = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 2, "train.resume": "never"}))
    assert again.returncode == 0, again.stderr[-3000:]


# 1. train.resume=never into a folder holding an earlier run, then a crash and a resume.

@pytest.mark.slow
def test_resume_never_moves_the_earlier_run_aside_and_never_mixes_checkpoints(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 4})).returncode == 0
    earlier_metrics = (run_dir / "metrics.jsonl").read_bytes()

    # A new run (another seed) from scratch; it stops after 2 of 4 steps (as a crash would).
    new = _overrides(tiny_model_dir, prompts_file, run_dir, **{"seed": 1, "train.iters": 2, "train.resume": "never"})
    result = run_cli(new)
    assert result.returncode == 0, result.stderr[-3000:]
    (previous,) = run_dir.glob("previous-*")
    assert (previous / "metrics.jsonl").read_bytes() == earlier_metrics
    assert [p.name for p in checkpoint.list_checkpoints(previous)] == ["step-0000002", "step-0000003", "step-0000004"]
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-0000001", "step-0000002"]
    assert "seed: 1" in (run_dir / ".hydra" / "config.yaml").read_text()
    (run_dir / "summary.json").unlink()  # a crash before the end writes no summary

    # Resuming continues the new run (not the earlier run's step 4) and equals an uninterrupted one.
    resumed = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"seed": 1, "train.iters": 4}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "step-0000002" in resumed.stdout + resumed.stderr
    straight = tmp_path / "straight"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, straight, **{"seed": 1, "train.iters": 4})).returncode == 0
    assert _metrics(run_dir) == _metrics(straight)
    _same_adapters(run_dir, straight)


def test_already_finished_only_when_the_folders_outputs_are_complete(tmp_path, tiny_model_dir, prompts_file):
    cfg, model, optimizer = adapted_model(tiny_model_dir, f"data.path={prompts_file}", "train.iters=2")
    state = checkpoint.TrainerState(2, 4, None, checkpoint.config_fingerprint(cfg), {})
    checkpoint.save(tmp_path, model, optimizer, state, cfg)
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "step": 2}))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    assert checkpoint.finished_summary(cfg, tmp_path) is None  # metrics stop at step 1: not this run's, complete
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2}) + "\n")
    assert checkpoint.finished_summary(cfg, tmp_path)["status"] == "finished"


def test_resume_from_a_missing_checkpoint_names_it(tmp_path, tiny_model_dir, prompts_file):
    result = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "run", **{"train.resume": "/nonexistent"}))
    line = _one_line_error(result, "train.resume=/nonexistent: that checkpoint does not exist")
    assert "delete it" not in line
    assert not (tmp_path / "run" / ".hydra").exists()


@pytest.mark.slow
def test_resume_into_a_folder_of_another_config_touches_nothing(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 1})).returncode == 0
    before = (run_dir / ".hydra" / "config.yaml").read_bytes()
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 2, "seed": 5}))
    _one_line_error(result, "different config (seed: 0 there, 5 now)")
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == before


# 4. NaN, a mismatched reference, a checkpoint corrupted in place.

@pytest.mark.slow
def test_non_finite_loss_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    # A huge learning rate: step 1's update is finite but overflows the next forward.
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.learning_rate": 1e30}))
    assert result.returncode == 5
    line = _one_line_error(result, "training diverged at step 2: loss is nan")
    assert "step-0000001 is intact" in line
    summary = _summary(run_dir)
    assert summary["status"] == "diverged" and summary["step"] == 2
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step-0000001"]
    for path in (run_dir / "adapters.safetensors", run_dir / "checkpoints" / "step-0000001" / "adapters.safetensors"):
        assert all(np.isfinite(np.array(v)).all() for v in mx.load(str(path)).values())


def test_non_finite_gradient_is_named_before_the_optimizer_sees_it():
    from ppo.train.step import check_finite_metrics, check_finite_tree

    with pytest.raises(TrainingDiverged, match=r"gradient layers.1.b is inf"):
        check_finite_tree("gradient", {"layers": [{"a": mx.zeros(3)}, {"b": mx.array([0.0, float("inf")])}]})
    with pytest.raises(TrainingDiverged, match=r"kl is nan"):
        check_finite_metrics({"clip_fraction": 0.0, "loss": 1.0, "kl": float("nan")})
    check_finite_tree("weight", {"a": mx.ones(4)})


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [300, 600])
def test_reference_with_another_vocabulary_is_refused(tmp_path, tiny_model_dir, prompts_file, vocab):
    from ppo.demo.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", hidden=64, layers=2, vocab=vocab, seed=1)
    result = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "run", **{"model.reference_path": other}))
    _one_line_error(result, f"with {vocab} tokens there, qwen3 with 512 tokens here")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_checkpoint_corrupted_in_place_is_refused(tmp_path, tiny_model_dir):
    cfg, model, optimizer = adapted_model(tiny_model_dir)
    path = checkpoint.save(tmp_path, model, optimizer, checkpoint.TrainerState(1, 2, None, {}, {}), cfg)
    checkpoint.load(path, model, optimizer)  # intact: loads
    weights = path / "adapters.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # same size, one float's bytes changed (a NaN or a wrong value, never a parse error)
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"adapters.safetensors changed since it was saved: checksum mismatch"):
        checkpoint.load(path, model, optimizer)


# 5. A full disk: one line, no temporary folder, the previous checkpoint kept, an exact resume.

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (needs root; mount(8) is the only honest way to fill a disk)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def _fill(disk: Path, leave_kib: int) -> Path:
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"x" * max(st.f_bavail * st.f_frsize - leave_kib * 1024, 0))
    return filler


def _no_temporary_files(run_dir: Path) -> None:
    left = [p for p in run_dir.rglob("*") if ".tmp" in p.name]
    assert not left, left


def test_full_disk_while_saving_a_checkpoint(small_disk, tiny_model_dir):
    cfg, model, optimizer = adapted_model(tiny_model_dir)
    good = checkpoint.save(small_disk, model, optimizer, checkpoint.TrainerState(1, 2, None, {}, {}), cfg)
    before = (small_disk / "adapters.safetensors").read_bytes()
    _fill(small_disk, 4)
    # MLX's own write fails here: RuntimeError("[write] Unable to write ..."), not an OSError.
    with pytest.raises(CheckpointError, match=r"no space left on device.*step-0000001 is intact"):
        checkpoint.save(small_disk, model, optimizer, checkpoint.TrainerState(2, 4, None, {}, {}), cfg)
    assert checkpoint.latest(small_disk) == good
    _no_temporary_files(small_disk)
    assert (small_disk / "adapters.safetensors").read_bytes() == before
    assert checkpoint.load(good, model, optimizer).step == 1


FULL_DISK_RUN = {"train.iters": 4, "train.steps_per_eval": 2}


@pytest.fixture(scope="module")
def straight_full_disk_run(tmp_path_factory, tiny_model_dir, prompts_file):
    """The full-disk runs' settings, uninterrupted: what both of their resumes must equal."""
    straight = tmp_path_factory.mktemp("straight") / "run"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, straight, **FULL_DISK_RUN)).returncode == 0
    return straight


@pytest.mark.slow
@pytest.mark.parametrize("leave_kib", [0, 100])
def test_full_disk_during_a_run_then_resume_is_exact(small_disk, tiny_model_dir, prompts_file, leave_kib,
                                                     straight_full_disk_run):
    run_dir = small_disk / "run"
    args = FULL_DISK_RUN
    assert run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{**args, "train.iters": 2})).returncode == 0
    (run_dir / "summary.json").unlink()  # as if killed at step 2
    for name in ("report.md", "curves_kl.png", "curves_win_rate.png", "curves_clip_fraction.png"):
        (run_dir / name).unlink(missing_ok=True)
    filler = _fill(small_disk, leave_kib)

    full = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **args))
    _one_line_error(full, "no space left on device")
    _no_temporary_files(run_dir)
    assert checkpoint.latest(run_dir).name == "step-0000002"
    checkpoint.verify(checkpoint.latest(run_dir))

    filler.unlink()
    resumed = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _metrics(run_dir) == _metrics(straight_full_disk_run)
    _same_adapters(run_dir, straight_full_disk_run)


@pytest.mark.slow
@pytest.mark.parametrize("name,needle", [
    ("metrics.jsonl", "I/O error on"),  # at set-up (the tracker), caught around the whole run
    ("judgments.jsonl", "I/O error on"),
    ("summary.json", "trained to step 2 but could not write"),  # at the very end, after the last checkpoint
])
def test_an_unwritable_run_folder_file_gives_one_line(tmp_path, tiny_model_dir, prompts_file, name, needle):
    run_dir = tmp_path / "run"
    (run_dir / name).mkdir(parents=True)  # a real I/O error (EISDIR) on exactly that file
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 2}))
    line = _one_line_error(result, needle)
    assert name in line
    _no_temporary_files(run_dir)


# 2 and 7. Sweep job folders, failed jobs, SIGINT.

def test_sweep_job_folder_names_are_unique_for_paths():
    from ppo.train.job_names import job_dir_name

    exclude = ["hydra.run.dir", "logger"]
    a = job_dir_name(["data.path=/a/prompts.jsonl", "loss.beta=0.1", "logger=none"], exclude)
    b = job_dir_name(["data.path=/b/prompts.jsonl", "loss.beta=0.1", "logger=none"], exclude)
    assert a != b and "/" not in a + b and a.startswith("data.path=prompts.jsonl-") and a.endswith(",loss.beta=0.1")
    assert job_dir_name(["data.path=/a/prompts.jsonl", "loss.beta=0.1"], exclude) == a  # stable
    assert job_dir_name(["model.path=Qwen/Qwen3-0.6B"], exclude) != job_dir_name(["model.path=Other/Qwen3-0.6B"], exclude)


@pytest.mark.slow
def test_sweep_over_data_paths_gives_one_folder_per_job_and_lists_the_failed_one(tmp_path, tiny_model_dir, prompts_file):
    other = tmp_path / "b" / prompts_file.name
    other.parent.mkdir()
    other.write_bytes(prompts_file.read_bytes())
    missing = tmp_path / "c" / prompts_file.name
    sweep_dir = tmp_path / "sweep"
    overrides = [o for o in small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 1}) if not o.startswith("data.path=")]
    result = run_cli(["-m", *overrides, f"data.path={prompts_file},{other},{missing}", f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "does not exist" in errors[0] and "1 sweep job(s) did not finish" in errors[1], errors
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    assert len(jobs) == 3
    statuses = {}
    for job in jobs:
        (path,) = [line[len("- data.path="):] for line in (job / ".hydra" / "overrides.yaml").read_text().splitlines()
                   if line.startswith("- data.path=")]
        statuses[path] = _summary(job)["status"]
    assert statuses == {str(prompts_file): "finished", str(other): "finished", str(missing): "failed"}

    from ppo.tools.report import main as report_main

    assert report_main([str(sweep_dir)]) == 0
    assert "failed" in (sweep_dir / "report.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("delay,again_after", [(1.5, None), (3.0, None), (6.0, None), (2.0, 0.03), (3.0, 0.2)])
def test_sigint_at_any_moment_gives_one_line(tmp_path, tiny_model_dir, prompts_file, delay, again_after):
    """Early (Hydra, model loading) or late (training): one line, exit 130. Ctrl-C pressed twice
    as well: before the fix the second one, landing while the first unwound, gave a traceback,
    or killed the process silently once Python had restored SIGINT's default action (exit -2)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *_overrides(
        tiny_model_dir, prompts_file, run_dir, **{"train.iters": 500, "train.save_every": 1000})],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    if again_after is not None:
        time.sleep(again_after)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-3000:]
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1, err[-3000:]
    summary = run_dir / "summary.json"  # "failed" after a Ctrl-C in the step-0 evaluation, before the fix
    assert not summary.exists() or json.loads(summary.read_text())["status"] == "interrupted"


# 6. Bytes and files.

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from mlx_lm import load

    return load(str(tiny_model_dir))[1]


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b"\n  \n\n", "holds only blank lines"),
    (b'{"prompt": "a"}\n{"prompt": "b\xff"}\n', "line 2 is not UTF-8 text (byte 0xff at column 14); re-save the file as UTF-8"),
    (b'{"prompt": "a"}\n\n{"prompt": \n', "line 3 is not valid JSON"),
    (b'{"prompt": "a"}\n["b"]\n', "line 2 is a JSON list, not an object"),
])
def test_bad_bytes_and_files_name_the_file_the_line_and_the_fix(tmp_path, tokenizer, content, needle):
    from ppo.train.data import read_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_prompts(str(path), "train", "prompt", tokenizer, "error")
    assert needle in str(info.value) and str(path) in str(info.value)


def test_skip_counts_undecodable_and_invalid_lines(tmp_path, tokenizer):
    from ppo.train.data import read_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "b\xff"}\n{"prompt": \n{"prompt": "c"}\n')
    prompts, skipped = read_prompts(str(path), "train", "prompt", tokenizer, "skip")
    assert [p.text for p in prompts] == ["a", "c"] and skipped == 2
    assert [p.id for p in prompts] == ["train:0", "train:3"]


def test_non_utf8_csv_names_the_line(tmp_path, tokenizer):
    from ppo.train.data import read_prompts

    path = tmp_path / "prompts.csv"
    path.write_bytes(b"prompt\nhello\nbad \xfe here\n")
    with pytest.raises(ConfigError, match=r"line 3 is not UTF-8 text"):
        read_prompts(str(path), "train", "prompt", tokenizer, "error")


# 8. Silent or misleading settings.

@pytest.mark.parametrize("override,needle", [
    ("+loss.epsilom=0.2", "unknown key loss.epsilom: the config schema has no such key; did you mean loss.epsilon?"),
    ("model.quantize_group_size=7", "invalid model.quantize_group_size=7"),
    ("train.weight_decay=-1", "invalid train.weight_decay=-1.0"),
    ("loss.delta=-5", "invalid loss.delta=-5.0"),
    ("loss.max_log_ratio=inf", "invalid loss.max_log_ratio=inf: must be a finite number"),
    ("finetune.scale=nan", "invalid finetune.scale=nan"),
    ("generation.max_completion_length=1000000000", "invalid generation.max_completion_length=1000000000: must be below train.max_seq_length"),
])
def test_silent_settings_are_refused(override, needle, tiny_model_dir, prompts_file):
    from ppo.train.validation import validate

    overrides = small_run_overrides(tiny_model_dir, prompts_file) + [override]
    if "quantize_group_size" in override:
        overrides.append("model.quantize=4")
    with pytest.raises(ConfigError) as info:
        validate(compose(overrides))
    assert needle in str(info.value)


def test_a_quantization_that_quantizes_nothing_is_refused(tiny_model_dir):
    from ppo.train.models import load_policy_and_reference

    cfg = compose([f"model.path={tiny_model_dir}", "model.quantize=4", "model.quantize_group_size=128"])
    with pytest.raises(ConfigError, match="quantized no layer"):
        load_policy_and_reference(cfg.model, cfg.finetune)


def test_fingerprint_leaves_out_what_cannot_change_the_trajectory():
    base = ["judge=http", "logger=none"]
    a = checkpoint.config_fingerprint(compose(base))
    b = checkpoint.config_fingerprint(compose(base + ["judge.timeout=600", "judge.backoff=5", "judge.retries=9",
                                                      "train.progress=false", "logger=wandb"]))
    assert a == b
    assert a != checkpoint.config_fingerprint(compose(base + ["judge.model=other"]))


@pytest.mark.slow
def test_a_judge_whose_every_answer_is_invalid_warns(tmp_path, tiny_model_dir, prompts_file):
    # Replaying an empty record with on_missing=invalid: every verdict is invalid.
    (tmp_path / "none.jsonl").write_text("")
    result = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "run", **{
        "judge": "replay", "judge.path": tmp_path / "none.jsonl", "judge.on_missing": "invalid"}))
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout + result.stderr
    assert "judge/invalid_rate=1.00" in text, text[-3000:]
    assert text.count("judge/invalid_rate=1.00") >= 4  # every report step
    assert "judge/invalid_rate: 1.00" in result.stdout
