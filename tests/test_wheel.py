"""Installed, not cloned: the sdist and the wheel built from it, in a fresh venv, from a folder
outside the checkout (issue 11's done-when).

`python -m build` makes the sdist from a copy of the source tree and then the wheel from
that sdist, so both are exercised. The fresh venv resolves the wheel's dependencies from
the package index like any user's `pip install` (pip's cache makes it quick on a second run).
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "outputs", "multirun", ".cache",
                                       "__pycache__", ".pytest_cache", "docs", "benchmarks", "wandb")


def _run(cmd, cwd, env=None, timeout=900):
    # Without PYTHONPATH: the installed wheel, not a checkout on the path, must be what runs.
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**base, "WANDB_SILENT": "true", **(env or {})})
    assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder of a fresh venv holding only the built wheel and its dependencies, a cwd outside the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE, symlinks=True)
    _run([sys.executable, "-m", "build", "--outdir", root / "dist", source], cwd=root)
    wheels, sdists = list((root / "dist").glob("*.whl")), list((root / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "ppo/conf/train.yaml" in names and "ppo/conf/experiment/demo.yaml" in names
    assert "ppo/demo/assets/demo_prompts.jsonl" in names
    assert "ppo/demo/assets/demo_model/model.safetensors" in names and "ppo/demo/assets/demo_model/tokenizer.json" in names
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    # --no-compile: byte-compiling the 800 MB of dependencies took 60% of the install's time, and
    # the commands below import only a small part of them (compiled as they are imported).
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-compile", "--disable-pip-version-check", wheels[0]],
         cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return venv / "bin", work


@pytest.mark.slow
def test_installed_commands_work_from_any_folder(installed, tiny_model_dir, prompts_file, tmp_path):
    bin_dir, work = installed
    env = {"PPO_CACHE": str(tmp_path / "cache")}  # never the checkout's or site-packages

    help_text = _run([bin_dir / "ppo-train", "--help"], cwd=work, env=env).stdout
    for group in ("experiment:", "judge:", "loss_type:", "beta:", "epsilon:"):
        assert group in help_text
    job = _run([bin_dir / "ppo-train", "experiment=demo", "--cfg", "job"], cwd=work, env=env).stdout
    assert "experiment_name: demo" in job and "${ppo_asset:demo_prompts.jsonl}" in job
    resolved = _run([bin_dir / "ppo-train", "experiment=demo", "--cfg", "job", "--resolve"], cwd=work, env=env).stdout
    assert "site-packages/ppo/demo/assets/demo_prompts.jsonl" in resolved and str(tmp_path / "cache") in resolved

    doctor = json.loads(_run([bin_dir / "ppo-doctor", "--size", "64", "--repeats", "1"], cwd=work, env=env).stdout)
    assert doctor["problems"] == [] and doctor["ppo_mlx_version"] and "site-packages" in doctor["config_dir"]
    assert doctor["demo_model"]["state"] == "missing" and "python -m ppo.demo_model" in doctor["demo_model"]["fix"]
    # The shipped demo model, copied from the wheel into the cache (no pre-training).
    copied = _run([bin_dir / "python", "-m", "ppo.demo_model"], cwd=work, env=env).stdout
    assert "copied the shipped demo model" in copied
    weights = (tmp_path / "cache" / "models" / "demo" / "model.safetensors").read_bytes()
    assert weights == (ROOT / "ppo" / "demo" / "assets" / "demo_model" / "model.safetensors").read_bytes()

    run_dir = work / "run"
    _run([bin_dir / "ppo-train", f"model.path={tiny_model_dir}", f"data.path={prompts_file}", "train.iters=2",
          "train.batch_size=2", "generation.max_completion_length=8", "train.steps_per_eval=2", "train.progress=false",
          "data.max_eval_prompts=2", "logger=none", f"hydra.run.dir={run_dir}"], cwd=work, env=env)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["package_version"] and summary["git_commit"] is None
    assert (run_dir / "adapters.safetensors").exists()
    assert not (work / "outputs").exists() or not any((work / "outputs").iterdir())


@pytest.mark.slow
def test_user_config_dir_adds_an_experiment(installed, tiny_model_dir, prompts_file, tmp_path):
    bin_dir, work = installed
    user_conf = tmp_path / "my_conf"
    (user_conf / "experiment").mkdir(parents=True)
    (user_conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n"
        "defaults:\n  - override /judge: length\n  - override /epsilon: loose\n\n"
        "experiment_name: mine\n"
        f"model:\n  path: {tiny_model_dir}\n"
        f"data:\n  path: {prompts_file}\n  max_eval_prompts: 2\n"
        "train:\n  iters: 2\n  batch_size: 2\n  steps_per_eval: 2\n  progress: false\n"
        "generation:\n  max_completion_length: 8\n"
    )
    run_dir = work / "mine"
    env = {"PPO_CACHE": str(tmp_path / "cache")}
    job = _run([bin_dir / "ppo-train", "--config-dir", user_conf, "experiment=mine", "--cfg", "job"], cwd=work, env=env).stdout
    assert "experiment_name: mine" in job and "epsilon: 0.3" in job and "LengthPreference" in job
    _run([bin_dir / "ppo-train", "--config-dir", user_conf, "experiment=mine", "logger=none", f"hydra.run.dir={run_dir}"],
         cwd=work, env=env)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


@pytest.mark.slow
def test_doctor_reports_a_broken_install(installed, tmp_path):
    """Runs last in this module: it breaks the installed package on purpose."""
    bin_dir, work = installed
    site = next((bin_dir.parent / "lib").glob("python*/site-packages"))
    (site / "ppo" / "conf" / "train.yaml").unlink()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(bin_dir / "ppo-doctor"), "--size", "64", "--repeats", "1"], cwd=work, capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 1
    assert "configs not found" in result.stderr and "pip install --force-reinstall ppo-mlx" in result.stderr
    assert "Traceback" not in result.stderr
