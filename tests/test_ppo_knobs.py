"""The PPO knobs of issue 25: token-level ratios (loss.ratio_level), minibatched epochs
(loss.minibatches), the adaptive KL controller (loss.kl_control) and the missing-EOS penalty
(loss.missing_eos_penalty). The formulas are tested in tests/test_loss.py; here: the config,
the step (shuffle, pairs kept together, every optimizer step taken), and whole runs, including
an exact resume of the adaptive beta after SIGKILL."""

import json
import signal
import subprocess
import sys
import time

import mlx.core as mx
import numpy as np
import pytest

from conftest import ROOT, compose, run_cli, small_run_overrides
from ppo.errors import ConfigError
from ppo.metrics import comparable
from ppo.train import checkpoint
from ppo.train.validation import validate


def _validate(*overrides):
    validate(compose(["judge=rule", *overrides]))


# ---- config ------------------------------------------------------------------------------------------------------

def test_ppo_form_token_is_textbook_with_token_ratios_and_minibatches():
    loss = compose(["ppo_form=token"]).loss
    textbook = compose(["ppo_form=textbook"]).loss
    assert (loss.ratio_level, loss.minibatches) == ("token", 4)
    assert all(loss[k] == textbook[k] for k in ("ratio", "logprob_reduction", "kl_estimator", "ppo_epochs"))
    default = compose([]).loss
    assert (default.ratio_level, default.minibatches, default.kl_control, default.missing_eos_penalty) == (
        "sequence", 1, "fixed", 0.0)


@pytest.mark.parametrize("overrides,needle", [
    (["loss.minibatches=9"], "invalid loss.minibatches=9: more minibatches than the 8 pairs of a batch"),
    (["loss.minibatches=0"], "invalid loss.minibatches=0: must be >= 1"),
    (["loss.ratio_level=word"], "invalid loss.ratio_level='word': choose sequence or token"),
    (["loss.kl_control=pid"], "invalid loss.kl_control='pid': choose fixed or adaptive"),
    (["loss.kl_control=adaptive", "loss_type=sigmoid"], "sigmoid's beta is not one"),
    (["loss.kl_control=adaptive", "loss.beta=0"], "the adaptive KL controller multiplies beta"),
    (["loss.target_kl=0"], "invalid loss.target_kl=0.0: must be > 0"),
    (["loss.kl_horizon=-1"], "invalid loss.kl_horizon=-1.0: must be > 0"),
    (["loss.missing_eos_penalty=-1"], "invalid loss.missing_eos_penalty=-1.0: must be >= 0"),
    (["loss.missing_eos_penalty=1", "loss_type=ipo"], "ipo has none"),
    (["loss.missing_eos_penalty=nan"], "must be a finite number"),
])
def test_bad_knob_values_are_refused_with_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        _validate(*overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_knobs_that_fit_are_accepted():
    _validate("ppo_form=token")  # batch 8 >= 4 minibatches
    _validate("ppo_form=token", "loss.kl_control=adaptive", "loss.missing_eos_penalty=0.5", "train.batch_size=4")
    _validate("loss_type=sigmoid", "ppo_form=token")  # the DPO losses ignore ratio_level, as they ignore loss.ratio


def test_minibatches_must_fit_each_process_share():
    from ppo.train.distributed import World, check_batch

    check_batch(8, World(size=2), minibatches=4)
    with pytest.raises(ConfigError, match=r"invalid loss.minibatches=3: more minibatches than the 2 pairs each of 2 "
                                          r"processes holds \(train.batch_size=4\)"):
        check_batch(4, World(size=2), minibatches=3)


def test_too_many_minibatches_is_one_line_at_the_cli(tmp_path, tiny_model_dir, prompts_file):
    result = run_cli(small_run_overrides(tiny_model_dir, prompts_file) + ["ppo_form=token", f"hydra.run.dir={tmp_path}/r"])
    assert result.returncode != 0
    assert "invalid loss.minibatches=4: more minibatches than the 2 pairs of a batch" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# ---- the step ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy_and_cfg(tiny_model_dir):
    from mlx_lm import load

    from ppo.train.models import add_adapters

    cfg = compose([f"model.path={tiny_model_dir}", "ppo_form=token", "loss.minibatches=2", "train.learning_rate=1e-3"])
    model, tokenizer = load(str(tiny_model_dir))
    add_adapters(model, cfg.finetune)
    return model, tokenizer, cfg


def _judged(model, pairs=3):
    """A hand-made judged batch of `pairs` pairs with sampling-time log-probs, as `collect` makes it."""
    from ppo.train.scoring import build_scoring_batch, token_logps
    from ppo.train.step import JudgedBatch

    rng = np.random.default_rng(pairs)
    prompts = [[1] + list(rng.integers(3, 100, rng.integers(1, 4))) for _ in range(pairs)]
    completions = [list(rng.integers(3, 100, rng.integers(1, 6))) for _ in range(2 * pairs)]
    batch = build_scoring_batch(prompts * 2, completions, pad_id=0)
    model.eval()
    ref = mx.stop_gradient(token_logps(model, batch))
    first_chosen = rng.integers(0, 2, pairs).astype(bool)
    chosen = np.where(first_chosen, np.arange(pairs), np.arange(pairs) + pairs)
    rejected = np.where(first_chosen, np.arange(pairs) + pairs, np.arange(pairs))
    return JudgedBatch(batch, mx.array(chosen), mx.array(rejected), mx.array(rng.uniform(0.2, 1, pairs).astype(np.float32)),
                       ref, None, old_token_logps=ref)


def test_select_keeps_each_pair_together_and_scores_the_same(policy_and_cfg):
    from ppo.train.scoring import token_logps

    model, _, _ = policy_and_cfg
    judged = _judged(model, pairs=4)
    part = judged.select(np.array([3, 1]))
    assert part.num_pairs == 2
    np.testing.assert_array_equal(np.array(part.advantages), np.array(judged.advantages)[[3, 1]])
    full, sub = np.array(token_logps(model, judged.batch)), np.array(token_logps(model, part.batch))
    rows = np.array(judged.chosen)[[3, 1]].tolist() + np.array(judged.rejected)[[3, 1]].tolist()
    width = part.batch.input_ids.shape[1]
    assert width <= judged.batch.input_ids.shape[1]
    np.testing.assert_allclose(sub, full[rows, :width], atol=1e-5)  # chosen rows first, then their rejected twins
    np.testing.assert_array_equal(np.array(part.chosen), [0, 1])
    np.testing.assert_array_equal(np.array(part.rejected), [2, 3])
    np.testing.assert_array_equal(np.array(part.old_token_logps), np.array(judged.old_token_logps)[rows, :width])


def _update(model, cfg, judged, seed=(0, 1), epochs=2):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from ppo.train.optimizer import make_optimizer
    from ppo.train.step import make_loss_fn, update

    start = [(k, mx.array(v)) for k, v in tree_flatten(model.trainable_parameters())]
    optimizer = make_optimizer(cfg.train, cfg.train.learning_rate)
    try:
        out = update(model, optimizer, nn.value_and_grad(model, make_loss_fn(cfg.loss)), judged, epochs=epochs,
                     rollout_ratio=True, minibatches=cfg.loss.minibatches, shuffle_seed=seed)
        weights = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
        return out, int(optimizer.step.item()), weights
    finally:
        model.load_weights(start, strict=False)


def test_minibatches_take_epochs_times_m_steps_with_a_seeded_shuffle(policy_and_cfg):
    model, _, cfg = policy_and_cfg
    out, steps, weights = _update(model, cfg, [_judged(model, 3), _judged(model, 4)])
    assert steps == 2 * 2  # ppo_epochs x minibatches
    assert len(out.loss_metrics) == 2 * 2 * 2  # and each step forwards both micro-batches
    first = out.loss_metrics[0]
    assert first["ratio/mean"] == pytest.approx(1.0, abs=1e-5) and first["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert max(m["approx_kl"] for m in out.loss_metrics) > 0  # later minibatches see a moved policy
    _, _, again = _update(model, cfg, [_judged(model, 3), _judged(model, 4)])
    assert all(np.array_equal(weights[k], again[k]) for k in weights)  # same (seed, step): the same run
    _, _, other = _update(model, cfg, [_judged(model, 3), _judged(model, 4)], seed=(0, 2))
    assert any(not np.array_equal(weights[k], other[k]) for k in weights)  # another step shuffles otherwise


def test_a_micro_batch_with_fewer_pairs_than_minibatches_sits_out_a_step(policy_and_cfg):
    model, _, cfg = policy_and_cfg
    out, steps, _ = _update(model, cfg, [_judged(model, 1), _judged(model, 3)], epochs=1)
    assert steps == 2 and len(out.loss_metrics) == 3  # the 1-pair micro-batch joins one of the two steps
    out, steps, _ = _update(model, cfg, [_judged(model, 1)], epochs=1)
    assert steps == 1  # alone, the empty minibatch is no step


def test_missing_eos_penalty_reaches_the_truncated_side(policy_and_cfg):
    """collect: a pair's completion cut at the length cap carries loss.missing_eos_penalty, on whichever side it is."""
    from ppo.judges import Verdicts
    from ppo.train.data import Prompt
    from ppo.train.rollout import Completions
    from ppo.train.step import Sampling, collect

    model, tokenizer, cfg = policy_and_cfg
    cfg = compose([f"model.path={cfg.model.path}", "loss.missing_eos_penalty=0.5"])
    prompts = [Prompt(f"train:{i}", f"p{i}", (1, 5 + i)) for i in range(4)]
    eos = tokenizer.eos_token_id
    # first completions: ended, cut, cut, ended; second: cut, ended, cut, ended
    first = Completions([[7, eos], [8, 9], [10, 11], [12, eos]], [True, False, False, True], 0.0, 8)
    second = Completions([[13, 14], [15, eos], [16, 17], [18, eos]], [False, True, False, True], 0.0, 8)
    p = np.array([0.9, 0.9, 0.2, np.nan])  # the 4th pair is undecided: left out

    out = collect(model, None, tokenizer, lambda pairs, step: Verdicts(p=p), prompts, step=1,
                  sampling=Sampling.from_config(cfg.generation, tokenizer), loss_cfg=cfg.loss,
                  sample_fn=lambda m, ids, **kw: (first, second))
    judged = out.judged
    assert judged.num_pairs == 3
    # pair 0: chosen first (ended) / rejected second (cut); pair 1: chosen first (cut) / second (ended);
    # pair 2: chosen second (cut) / rejected first (cut)
    np.testing.assert_array_equal(np.array(judged.chosen_penalty), [0.0, 0.5, 0.5])
    np.testing.assert_array_equal(np.array(judged.rejected_penalty), [0.5, 0.0, 0.5])
    assert judged.old_token_logps is None  # the sequence form with one minibatch scores nothing more
    off = collect(model, None, tokenizer, lambda pairs, step: Verdicts(p=p), prompts, step=1,
                  sampling=Sampling.from_config(cfg.generation, tokenizer), loss_cfg=compose([f"model.path={cfg.model.path}"]).loss,
                  sample_fn=lambda m, ids, **kw: (first, second))
    assert off.judged.chosen_penalty is None and off.judged.rejected_penalty is None


# ---- whole runs --------------------------------------------------------------------------------------------------

KNOBS = ["ppo_form=token", "loss.minibatches=2", "loss.kl_control=adaptive", "loss.kl_horizon=20", "loss.target_kl=0.001",
         "loss.missing_eos_penalty=0.5", "train.batch_size=4", "train.learning_rate=1e-3"]


def _overrides(model, data, run_dir, iters=8):
    return small_run_overrides(model, data, **{"train.iters": iters, "train.save_every": 2, "train.steps_per_eval": 4}) + [
        *KNOBS, f"hydra.run.dir={run_dir}"]


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def knob_run(tmp_path_factory, tiny_model_dir, prompts_file):
    run_dir = tmp_path_factory.mktemp("knobs") / "run"
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_a_run_with_every_knob_logs_them_and_follows_the_controller(knob_run):
    from ppo.train.loss import adaptive_kl_beta

    rows = _rows(knob_run)
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert {"approx_kl", "kl/beta", "clip_fraction", "ratio/min", "ratio/max"} <= set(r)
        assert r["approx_kl"] >= 0 and r["learning_rate"] == pytest.approx(1e-3)
    assert rows[0]["kl/beta"] == 0.1  # starts at loss.beta
    for before, after in zip(rows, rows[1:]):  # beta' = beta * (1 + clip(kl / target - 1, +-0.2) * 2 * 4 / 20), exactly
        assert after["kl/beta"] == adaptive_kl_beta(before["kl/beta"], before["kl"], target_kl=0.001, horizon=20, n_steps=8)
    assert rows[-1]["kl/beta"] != rows[0]["kl/beta"]
    state = checkpoint.read_state(checkpoint.latest(knob_run))
    assert state.extra["kl_beta"] == adaptive_kl_beta(rows[-1]["kl/beta"], rows[-1]["kl"], target_kl=0.001, horizon=20,
                                                     n_steps=8)


@pytest.mark.slow
def test_sigkill_then_resume_continues_the_same_beta_sequence(tmp_path, tiny_model_dir, prompts_file, knob_run):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ppo.tools.cli", *_overrides(tiny_model_dir, prompts_file, run_dir)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:  # kill once a checkpoint exists and the run has gone past it
        if checkpoint.latest(run_dir) is not None and (run_dir / "metrics.jsonl").exists() and \
                len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpoint.read_state(checkpoint.latest(run_dir)).step
    assert 2 <= killed_at < 8
    result = run_cli(_overrides(tiny_model_dir, prompts_file, run_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert [comparable(r) for r in _rows(run_dir)] == [comparable(r) for r in _rows(knob_run)]
    assert [r["kl/beta"] for r in _rows(run_dir)] == [r["kl/beta"] for r in _rows(knob_run)]
    assert (run_dir / "adapters.safetensors").read_bytes() == (knob_run / "adapters.safetensors").read_bytes()


@pytest.mark.slow
def test_the_report_shows_the_final_beta(knob_run, tmp_path):
    from ppo.tools.report import write_report

    path, runs, _ = write_report(knob_run, tmp_path / "report")
    text = path.read_text()
    final = _rows(knob_run)[-1]["kl/beta"]
    assert "## Adaptive KL" in text
    row = next(line for line in text.splitlines() if line.startswith(f"| `{runs[0].name}` | 0.1 |"))
    assert f"| {final:.4g} | 0.001 |" in row
