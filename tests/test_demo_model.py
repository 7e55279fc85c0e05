"""The demo model ships inside the package (issue 24, item 3): `python -m ppo.demo_model` copies it
into the cache in about a second instead of pre-training for minutes, the builder still gives
the shipped weights (bit for bit on the recording machine's rounding, else to a tolerance),
and a missing model is named, with its command, by ppo-train and ppo-doctor."""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from record import (DEMO_MODEL_RECORD, DEMO_SHORT_STEPS, compare_sketches, demo_model_build_command,  # noqa: E402
                    rounding_fingerprint, same_rounding, weight_sketch)

from ppo.demo import model as demo_model  # noqa: E402

# Off the recording machine's rounding the weights are not comparable (see
# test_the_builder_reproduces_the_shipped_weights): there the rebuilt model's held-out loss must be
# within DEMO_LOSS_RTOL of the shipped model's.
DEMO_LOSS_RTOL = 0.08


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record() -> dict:
    return json.loads(DEMO_MODEL_RECORD.read_text())


def _command(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "ppo.demo_model", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_the_shipped_model_is_the_recorded_one_of_the_current_recipe():
    shipped, record = demo_model.shipped_dir(), _record()
    for name in demo_model.FILES:
        assert (shipped / name).is_file(), name
    assert {name: _sha(shipped / name) for name in record["sha256"]} == record["sha256"]
    assert (shipped / "model.safetensors").stat().st_size < 3_000_000  # about 2 MB inside the wheel
    # A recipe change must re-record the shipped model (tests/golden/record.py --demo-model).
    assert demo_model.read_marker(shipped)["settings"] == demo_model.DEMO_SETTINGS == record["recipe"]


def test_the_command_copies_the_shipped_weights_in_seconds(tmp_path):
    out = tmp_path / "cache" / "models" / "demo"
    assert demo_model.state(out)["state"] == "missing"
    started = time.perf_counter()
    result = _command("--out", out)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "copied the shipped demo model" in result.stdout and seconds < 60, (seconds, result.stdout)
    for name in demo_model.FILES[:-1]:
        assert _sha(out / name) == _sha(demo_model.shipped_dir() / name), name
    assert demo_model.read_marker(out)["installed_from"] == "package"
    assert demo_model.state(out)["state"] == "present"
    assert [p.name for p in out.parent.iterdir()] == ["demo"]  # no temporary folder left
    again = _command("--out", out, "--if-missing")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout
    from mlx_lm import load

    model, tokenizer = load(str(out))
    assert tokenizer.eos_token == "<|im_end|>"


def test_states_and_their_fix(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "config.json").write_text("{}")
    incomplete = demo_model.state(out)
    assert incomplete["state"] == "incomplete" and "python -m ppo.demo_model" in incomplete["fix"]
    demo_model.install_shipped(out, log=lambda line: None)
    marker = demo_model.read_marker(out)
    (out / demo_model.MARKER).write_text(json.dumps({**marker, "settings": {**marker["settings"], "steps": 5}}))
    assert demo_model.state(out)["state"] == "outdated"
    demo_model.build_demo_model(out, if_missing=True, log=lambda line: None)  # replaced by the shipped copy
    assert demo_model.state(out)["state"] == "present"


def test_a_missing_demo_model_names_the_documented_command(tmp_path, monkeypatch):
    from ppo.errors import ConfigError
    from ppo.train.config import compose_train
    from ppo.train.models import load_model

    monkeypatch.setenv("PPO_CACHE", str(tmp_path / "empty"))
    path = compose_train(["model=demo"]).model.path
    with pytest.raises(ConfigError) as info:
        load_model(path)
    assert "run `python -m ppo.demo_model` first" in str(info.value)
    install_page = (ROOT / "docs" / "getting-started" / "install.md").read_text()
    assert "python -m ppo.demo_model" in install_page  # the same command the docs give


def test_doctor_reports_the_demo_model(tmp_path):
    env = {"PPO_CACHE": str(tmp_path / "cache")}
    doctor = [sys.executable, "-m", "ppo.tools.doctor", "--size", "64", "--repeats", "1"]

    def run():
        result = subprocess.run(doctor, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        return result, json.loads(result.stdout)

    result, report = run()
    assert result.returncode == 0, result.stderr  # not a broken install
    assert report["demo_model"]["state"] == "missing"
    assert report["demo_model"]["path"] == str(tmp_path / "cache" / "models" / "demo")
    warning = f"warning: demo model missing in {tmp_path / 'cache' / 'models' / 'demo'}: run `python -m ppo.demo_model`"
    assert warning in result.stderr and any(w.startswith("demo model missing") for w in report["warnings"])
    assert _command(env=env).returncode == 0
    result, report = run()
    assert report["demo_model"]["state"] == "present" and "demo model" not in result.stderr
    assert report["demo_model"]["origin"] == "the weights shipped in the package"


def heldout_loss(model_dir: Path, documents: int = 512, seed: int = 12345) -> float:
    """Mean next-token cross-entropy of a demo model on corpus documents it never trained on (the
    pre-training loss's own formatting and masking; its documents are drawn with seed 0)."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx_lm import load

    from ppo.demo import corpus
    from ppo.demo.pretrain import _encode_examples, _make_batch

    model, tokenizer = load(str(model_dir))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    examples = _encode_examples(tokenizer, corpus.documents(documents, seed=seed), eos)
    total = count = 0.0
    for start in range(0, len(examples), 64):
        inputs, targets, mask = (mx.array(a) for a in _make_batch(examples[start:start + 64], pad))
        losses = nn.losses.cross_entropy(model(inputs).astype(mx.float32), targets) * mask
        total, count = total + losses.sum().item(), count + mask.sum().item()
    return total / count


def test_the_shipped_model_is_a_trained_one():
    """What the demo needs from it: far below the untrained loss (6.9) on documents it never saw."""
    assert heldout_loss(demo_model.shipped_dir(), documents=128) < 3.6  # 3.42 (7 s on the reference BLAS)


def _same_config_and_vocabulary(built: Path, reference: Path) -> None:
    assert json.loads((built / "config.json").read_text()) == json.loads((reference / "config.json").read_text())
    vocab = [json.loads((d / "tokenizer.json").read_text())["model"]["vocab"] for d in (built, reference)]
    assert vocab[0] == vocab[1]


@pytest.mark.slow
def test_the_builder_cut_to_50_steps_gives_the_recorded_model(tmp_path):
    """CI's check of the builder (the full rebuild below is opt-in, minutes): the builder's own
    command with `--steps 50` (13 s) runs the same tokenizer training, model initialisation and
    pre-training code as the shipped 1000 steps. On the recording machine's rounding its files
    equal the recorded ones bit for bit; elsewhere the config and vocabulary are the shipped
    model's and every tensor is within SHORT_BUILD_RTOL of the recorded one (through the recorded
    sketch; how the tolerance was chosen: tests/golden/record.py). A change to the recipe or to the code it runs
    fails here: pre-training's weight decay x 1.1 moves a tensor 4.8x the tolerance, the learning
    rate x 1.001 200x (and the recipe check above fails first for a change of DEMO_SETTINGS)."""
    record = _record()["short_build"]
    assert record["recipe"] == demo_model.demo_settings(DEMO_SHORT_STEPS)  # the recipe the shipped model was built with
    out = tmp_path / "demo"
    result = subprocess.run(demo_model_build_command(out, DEMO_SHORT_STEPS), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert demo_model.read_marker(out)["settings"] == record["recipe"]
    if same_rounding(record["fingerprint"], rounding_fingerprint()):
        assert {name: _sha(out / name) for name in record["sha256"]} == record["sha256"]
        return
    _same_config_and_vocabulary(out, demo_model.shipped_dir())  # the steps change neither
    problems = compare_sketches(weight_sketch(out / "model.safetensors"), record["sketch"])
    assert not problems, problems[:10]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PPO_FULL_REBUILD") != "1",
                    reason="the full rebuild takes minutes: PPO_FULL_REBUILD=1 runs it (CI runs the 50-step build)")
def test_the_builder_reproduces_the_shipped_weights(tmp_path):
    """`python -m ppo.demo_model --rebuild` pre-trains from scratch (3-14 minutes on 2 busy cores): on
    the recording machine's rounding the files equal the shipped ones bit for bit; elsewhere the
    config, the tokenizer's vocabulary and the tensors' names and shapes are equal, and the held-out
    loss is within DEMO_LOSS_RTOL of the shipped model's.

    Why no tolerance on the weights (measured 2026-12-03, AMD EPYC family 25 model 1, OpenBLAS
    0.3.21, mlx 0.32.4): OpenBLAS's default Zen kernel and OPENBLAS_CORETYPE=Haswell (the same sgemm
    kernels) gave the shipped file bit for bit; the Sandybridge kernel with 1 thread (other roundings
    in every matmul) diverged within 100 of the 1000 AdamW steps, ending with tensors as far from the
    shipped ones as their own size (relative Frobenius distance 0.1-1.08, max|diff| up to 2.1x the
    largest value): another draw of the same training, not a drifted copy. Its held-out loss was
    3.341 against the shipped 3.429 (2.6% apart; training loss 3.179 against 3.305), so
    DEMO_LOSS_RTOL is 3x that; an untrained or broken build (loss 6.9 at the start) fails by far."""
    out = tmp_path / "demo"
    result = subprocess.run(demo_model_build_command(out), cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert result.returncode == 0, result.stderr[-3000:]
    record, shipped = _record(), demo_model.shipped_dir()
    if same_rounding(record["fingerprint"], rounding_fingerprint()):
        assert {name: _sha(out / name) for name in record["sha256"]} == record["sha256"]
        return
    import mlx.core as mx

    _same_config_and_vocabulary(out, shipped)
    got, want = mx.load(str(out / "model.safetensors")), mx.load(str(shipped / "model.safetensors"))
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}
    rebuilt, reference = heldout_loss(out), heldout_loss(shipped)
    assert abs(rebuilt - reference) <= DEMO_LOSS_RTOL * reference, (rebuilt, reference)
