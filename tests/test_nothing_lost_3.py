"""Nothing lost, nothing falsely finished, round 2 (issue 23), continued: open-ended mappings,
W&B after a kill, ppo-reproduce that compares, Ctrl-C in a search or a sweep, bounds on every
numeric setting that can hang, overflow or exhaust memory, unreadable inputs and unwritable folders."""

import json
import re
from pathlib import Path

import pytest

from conftest import compose, run_cli, small_run_overrides
from ppo.errors import ConfigError
from test_nothing_lost import _one_line_error, _overrides  # round 1's helpers


# Item 13: the README's own `+data.chat_template_kwargs.reasoning_effort=low`.

def test_a_new_chat_template_setting_is_accepted_and_a_typo_next_to_it_is_not(tiny_model_dir, prompts_file):
    from ppo.train.validation import schema_paths, validate

    base = small_run_overrides(tiny_model_dir, prompts_file)
    cfg = compose(base + ["+data.chat_template_kwargs.reasoning_effort=low"])
    validate(cfg)
    assert dict(cfg.data.chat_template_kwargs) == {"enable_thinking": False, "reasoning_effort": "low"}
    assert "data.chat_template_kwargs" in schema_paths()
    assert not [p for p in schema_paths() if p.startswith("data.chat_template_kwargs.")]  # never "did you mean" one
    with pytest.raises(ConfigError, match=r"unknown key data\.chat_template_kwarg: .*did you mean data\.chat_template_kwargs"):
        validate(compose(base + ["+data.chat_template_kwarg.reasoning_effort=low"]))


@pytest.mark.slow
def test_a_run_passes_a_new_chat_template_setting_and_says_how_to_add_one(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 1})
                     + ["+data.chat_template_kwargs.reasoning_effort=low"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reasoning_effort: low" in (run_dir / ".hydra" / "config.yaml").read_text()

    without_plus = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "other", **{"train.iters": 1})
                           + ["data.chat_template_kwargs.reasoning_effort=low"])
    _one_line_error(without_plus, "data.chat_template_kwargs.reasoning_effort is not set yet: add it with "
                                  "+data.chat_template_kwargs.reasoning_effort=low")


# Item 3: W&B after a kill holds every step.

def _wandb_rows(log_file: Path) -> list[dict]:
    """The metrics rows of an offline W&B log, read by wandb's own reader."""
    import subprocess
    import sys

    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log_file)],
                         capture_output=True, text=True, timeout=120, check=True)
    items = [json.loads(line).get("history", {}).get("item", {}) for line in out.stdout.splitlines()
             if json.loads(line).get("type") == "history"]
    return [item for item in items if "loss" in item]


def _run_logs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def _sync_would_upload(run_dir: Path) -> list[Path]:
    """The .wandb files `wandb sync RUN_DIR/wandb` would upload: wandb's own selection (its --dry-run list)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # which would silence the list
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "sync", "--dry-run", str(run_dir / "wandb")],
                         cwd=run_dir, capture_output=True, text=True, timeout=120, check=True, env=env)
    lines = [line.removeprefix("wandb:").strip() for line in (out.stdout + out.stderr).splitlines()]
    listed = lines[next(i for i, line in enumerate(lines) if line.startswith("Would sync")) + 1:]
    return sorted((run_dir / line).resolve() for line in listed if line.endswith(".wandb"))


def _each_step_once(log_file: Path, metrics_file: Path) -> None:
    """The W&B log holds every step of metrics.jsonl once, with its values, and each evaluation's samples table once."""
    rows = _wandb_rows(log_file)
    expected = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [row["step"] for row in rows] == [row["step"] for row in expected]
    assert [row["loss"] for row in rows] == [row["loss"] for row in expected]
    import subprocess
    import sys

    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log_file)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    tables = [item["step"] for line in out.splitlines() if json.loads(line).get("type") == "history"
              for item in [json.loads(line)["history"]["item"]] if "samples._type" in item]
    assert tables == [row["step"] for row in expected if "eval/win_rate" in row]


@pytest.mark.slow
def test_wandb_after_a_kill_holds_every_step_once(tmp_path, tiny_model_dir, prompts_file):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from ppo.train import checkpoint

    run_dir = tmp_path / "run"
    args = _overrides(tiny_model_dir, prompts_file, run_dir, **{
        "train.iters": 12, "train.save_every": 6, "logger": "wandb", "logger.wandb.mode": "offline"})
    killed = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *args], cwd=ROOT, env=os.environ,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # wandb writes its offline log in 32 KiB blocks: killed once the first is on disk (about step 8,
    # past the checkpoint at step 6), and before the checkpoint at step 12.
    deadline = time.time() + 180
    while time.time() < deadline and not any(p.stat().st_size >= 32768 for p in _run_logs(run_dir)):
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    resume_step = checkpoint.read_state(checkpoint.latest(run_dir)).step
    (killed_log,) = _run_logs(run_dir)
    killed_steps = [row["step"] for row in _wandb_rows(killed_log)]
    # What this case is about: the killed attempt's W&B log holds steps after its newest checkpoint,
    # which the resumed attempt trains and logs again.
    assert max(killed_steps) > resume_step == 6

    resumed = run_cli(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # `wandb sync` uploads one attempt, the resumed one, and it holds every step once with metrics.jsonl's values.
    (uploaded,) = _sync_would_upload(run_dir)
    assert uploaded != killed_log.resolve() and uploaded.name == killed_log.name  # the same W&B run (one id)
    _each_step_once(uploaded, run_dir / "metrics.jsonl")
    assert [row["step"] for row in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())] == list(range(1, 13))
    # The killed attempt's log is kept whole, where `wandb sync` does not look.
    kept = run_dir / "wandb" / "superseded" / killed_log.parent.name / killed_log.name
    assert [row["step"] for row in _wandb_rows(kept)][:len(killed_steps)] == killed_steps
    assert "W&B: logged steps 1-6 again from metrics.jsonl" in (run_dir / "train.log").read_text()

    # An extension of the finished run: still one attempt to upload, holding steps 1-13 once each.
    extended = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{
        "train.iters": 13, "train.save_every": 6, "logger": "wandb", "logger.wandb.mode": "offline"}))
    assert extended.returncode == 0, extended.stderr[-3000:]
    (uploaded_again,) = _sync_would_upload(run_dir)
    assert uploaded_again != uploaded
    _each_step_once(uploaded_again, run_dir / "metrics.jsonl")
    assert len(list((run_dir / "wandb" / "superseded").iterdir())) == 2


# Item 8: ppo-reproduce compares what it ran with the original.

def _reproduce(*args):
    import subprocess
    import sys

    from conftest import ROOT

    return subprocess.run([sys.executable, "-m", "ppo.tools.reproduce", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_reproduce_says_whether_it_reproduced_and_names_a_hand_edit(tmp_path, tiny_model_dir, prompts_file):
    run_dir = tmp_path / "run"
    original = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{
        "train.iters": 3, "train.learning_rate": 1e-3, "loss.beta": 0.1}))
    assert original.returncode == 0, original.stderr[-3000:]

    same = _reproduce(run_dir, f"hydra.run.dir={tmp_path / 'same'}")
    assert same.returncode == 0, same.stderr[-3000:]
    assert "reproduced exactly: 3 steps of metrics.jsonl equal the original's" in same.stdout

    # A deliberate override: the difference is named, and expected.
    steered = _reproduce(run_dir, "loss.beta=0.5", f"hydra.run.dir={tmp_path / 'steered'}")
    assert steered.returncode == 0, steered.stderr[-3000:]
    assert "the metrics differ from the original's from step" in steered.stdout
    assert "as the overrides change loss.beta" in steered.stdout

    # The same change made by hand in the saved config: not reproduced, the step and the key named.
    saved = run_dir / ".hydra" / "config.yaml"
    text = saved.read_text()
    assert "beta: 0.1\n" in text
    saved.write_text(text.replace("beta: 0.1\n", "beta: 0.5\n"))
    edited = _reproduce(run_dir, f"hydra.run.dir={tmp_path / 'edited'}")
    line = _one_line_error(edited, "not reproduced: the metrics differ from the original's from step ")
    assert "the saved config differs from the one the original run trained with" in line
    assert "loss.beta (0.1 there, 0.5 here)" in line and edited.returncode == 1
    steered_line = next(x for x in steered.stdout.splitlines() if "differ from the original's" in x)
    assert steered_line.split(" (")[0] in line  # the same first step as the deliberate change


# Item 9: Ctrl-C stops a whole sweep or search.

def _interrupt_after_first_step(args: list[str], sweep_dir: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, sigint_as_default

    proc = subprocess.Popen([sys.executable, "-m", "ppo.tools.cli", *args], cwd=ROOT, env=os.environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_default)
    deadline = time.time() + 180
    while time.time() < deadline and not any(p.read_text().count("\n") >= 1 for p in sweep_dir.glob("*/metrics.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def _stopped_in_one_line(code: int, out: str, err: str, needle: str) -> str:
    assert code == 130, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err[-3000:]
    return errors[0]


@pytest.mark.slow
def test_ctrl_c_in_a_grid_sweep_stops_the_sweep(tmp_path, tiny_model_dir, prompts_file):
    sweep_dir = tmp_path / "sweep"
    long_run = small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 500, "train.save_every": 1000})
    code, out, err = _interrupt_after_first_step(["-m", *long_run, "seed=0,1,2", f"hydra.sweep.dir={sweep_dir}"],
                                                 sweep_dir)
    line = _stopped_in_one_line(code, out, err, "the sweep stopped: job ")
    assert f"hydra.sweep.dir={sweep_dir} to continue" in line
    (job,) = [p for p in sweep_dir.iterdir() if p.is_dir()]  # the next jobs never started
    assert json.loads((job / "summary.json").read_text())["status"] == "interrupted"
    assert (job / "checkpoints").is_dir()


@pytest.mark.slow
def test_ctrl_c_in_an_optuna_trial_stops_the_search_without_a_best(tmp_path, tiny_model_dir, prompts_file):
    sweep_dir = tmp_path / "search"
    args = ["hparams_search=eps_beta_win_rate", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}",
            *small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 500, "train.save_every": 1000})]
    code, out, err = _interrupt_after_first_step(args, sweep_dir)
    line = _stopped_in_one_line(code, out, err, "the search stopped: job ")
    assert "resume its stored study" in line
    assert len([p for p in sweep_dir.iterdir() if p.is_dir()]) == 1  # no trial after the interrupted one
    assert not (sweep_dir / "optimization_results.yaml").exists()
    assert "Best" not in out + err and "best" not in out.lower()


# Item 11: every numeric setting that can hang, overflow or exhaust memory has a bound.

@pytest.mark.parametrize("override, needle", [
    ("train.rank_timeout=1e10", "invalid train.rank_timeout=10000000000.0: must be at most 86400 (a longer wait "
                                "overflows the rank's timer thread"),
    ("finetune.rank=1000000", "invalid finetune.rank=1000000: must be at most 1024 (an adapter wider than"),
    ("train.batch_size=1000000", "invalid train.batch_size=1000000: must be at most 4096 (one process samples"),
    ("loss.max_log_ratio=100", "invalid loss.max_log_ratio=100.0: must be at most 80 (exp() of a larger log-ratio "
                               "overflows float32"),
    ("seed=-1", "invalid seed=-1: must be >= 0"),
    ("seed=4294967296", "invalid seed=4294967296: must be at most 4294967295 (NumPy"),
])
def test_values_that_hang_overflow_or_exhaust_memory_are_refused(override, needle, tiny_model_dir, prompts_file):
    from ppo.train.validation import validate

    with pytest.raises(ConfigError) as info:
        validate(compose(small_run_overrides(tiny_model_dir, prompts_file) + [override]))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_every_bound_lets_its_own_value_through_and_refuses_the_next(tiny_model_dir, prompts_file):
    from ppo.train.validation import limits, validate

    bounded = dict(limits())
    assert {"train.rank_timeout", "finetune.rank", "train.batch_size", "generation.samples_per_prompt",
            "train.max_seq_length", "loss.ppo_epochs", "train.grad_accumulation_steps", "seed"} <= set(bounded)
    base = small_run_overrides(tiny_model_dir, prompts_file)
    for key, limit in bounded.items():
        most = int(limit.most) if float(limit.most).is_integer() and key != "train.rank_timeout" else limit.most
        validate(compose(base + [f"{key}={most}"]))
        step = 1 if isinstance(most, int) else 0.5
        shown = int(limit.most) if float(limit.most).is_integer() else limit.most
        with pytest.raises(ConfigError, match=rf"invalid {re.escape(key)}=.*must be at most {shown} \("):
            validate(compose(base + [f"{key}={most + step}"]))


@pytest.mark.parametrize("settings, needle", [
    ({"timeout": 1e10}, "invalid judge.timeout=10000000000.0: must be at most 86400 s"),
    ({"retries": 60}, "invalid judge.retries=60: with judge.backoff=1 the doubling waits"),
    ({"retries": 17, "backoff": 1.0}, "invalid judge.retries=17"),
    ({"concurrency": 100000}, "invalid judge.concurrency=100000: must be at most 256"),
])
def test_an_http_judge_that_could_wait_forever_is_refused(settings, needle):
    from ppo.judges.http import HTTPJudge

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        HTTPJudge(**settings)
    HTTPJudge(retries=16, backoff=1.0, timeout=86400, concurrency=256)  # the bounds themselves are allowed


def test_a_huge_rank_timeout_is_one_line_at_the_command_line(tmp_path, tiny_model_dir, prompts_file):
    result = run_cli(_overrides(tiny_model_dir, prompts_file, tmp_path / "run", **{"train.rank_timeout": 1e10}))
    _one_line_error(result, "invalid train.rank_timeout=10000000000.0: must be at most 86400")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# Item 12: an unreadable starting adapter, an unwritable run folder, a run folder that is a file.

@pytest.mark.parametrize("content, needle", [
    (b"", "adapters.safetensors is empty"),
    (b"not a safetensors file at all", "adapters.safetensors is not a safetensors file ([load_safetensors]"),
])
def test_a_garbage_starting_adapter_is_one_line(tmp_path, tiny_model_dir, content, needle):
    from test_adapter_start import write_adapter

    from ppo.train.models import load_policy_and_reference

    adapter = write_adapter(tiny_model_dir, tmp_path / "sft", "lora")
    (adapter / "adapters.safetensors").write_bytes(content)
    cfg = compose([f"model.path={tiny_model_dir}", f"model.adapter_path={adapter}"])
    with pytest.raises(ConfigError) as info:
        load_policy_and_reference(cfg.model, cfg.finetune)
    assert needle in str(info.value) and f"model.adapter_path={adapter}" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.fixture
def read_only():
    """Makes a folder read-only: by its mode, or, for root (whom modes do not stop), by a
    read-only bind mount of it over itself; skips where neither is possible."""
    import os
    import subprocess

    mounted = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            for path in [folder, *folder.rglob("*")]:
                path.chmod(0o555 if path.is_dir() else 0o444)
            return
        for command in (["mount", "--bind", str(folder), str(folder)],
                        ["mount", "-o", "remount,bind,ro", str(folder)]):
            if subprocess.run(command, capture_output=True).returncode != 0:
                pytest.skip("cannot mount a read-only folder here")
            if command[1] == "--bind":
                mounted.append(folder)

    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_read_only_run_folder_is_one_line_for_the_trainer_and_the_report(tmp_path, tiny_model_dir, prompts_file,
                                                                             read_only):
    from ppo.tools.report import main as report_main

    run_dir = tmp_path / "run"
    assert run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 1})).returncode == 0
    for name in ("report.md", "curves_win_rate.png", "curves_kl.png", "curves_clip_fraction.png"):
        (run_dir / name).unlink(missing_ok=True)  # the report to be written again
    read_only(run_dir)

    again = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir, **{"train.iters": 2}))
    line = _one_line_error(again, f"cannot write the run folder: {run_dir}")
    assert "choose a writable hydra.run.dir" in line

    inside = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir / "new", **{"train.iters": 1}))
    _one_line_error(inside, f"cannot write the run folder: {run_dir / 'new'}")

    import subprocess
    import sys

    from conftest import ROOT

    report = subprocess.run([sys.executable, "-c", "import sys; from ppo.tools.report import main; sys.exit(main())",
                             str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = _one_line_error(report, "cannot write the report: ")
    assert f"--out DIR (ppo-report {run_dir} --out DIR)" in line
    assert report_main([str(run_dir), "--out", str(tmp_path / "elsewhere")]) == 0


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path, tiny_model_dir, prompts_file):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    result = run_cli(_overrides(tiny_model_dir, prompts_file, afile, **{"train.iters": 1}))
    _one_line_error(result, f"cannot make the run folder: {afile} is a file, not a folder; choose another hydra.run.dir")
    below = run_cli(_overrides(tiny_model_dir, prompts_file, afile / "run", **{"train.iters": 1}))
    _one_line_error(below, f"cannot make the run folder: {afile / 'run'} lies under a file")
    assert afile.read_text() == "mine"
