"""The golden runs: the same command gives the same metrics and adapters as recorded.

Recorded by tests/golden/record.py before the package-and-layout move (issue 11); a
refactor that changes what a run computes fails here. Where this machine's rounding
fingerprint (CPU model, MLX device, BLAS library, build, kernel and threads, MLX version)
equals the recorded one in every field, metrics and adapters must be bit-identical; elsewhere
the numbers are compared to a tolerance (record.RTOL, ATOL, ADAPTER_RTOL: the numbers and how
they were chosen are there). The tests below the golden run hold that tolerance to account on
any machine: drift-sized noise and another BLAS kernel pass it, loss.beta x 1.01 fails it.
"""

import copy
import json
import platform
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from record import (  # noqa: E402
    ATOL,
    GOLDEN_RUNS,
    HERE,
    RTOL,
    build_inputs,
    comparable_rows,
    compare_adapters,
    compare_golden,
    rounding_fingerprint,
    run_golden,
    same_rounding,
)

# The largest cross-kernel drift measured against the recorded seed_form rows (record.py):
# relative on kl, kl_penalty and loss; absolute on the small rewards/* values.
MEASURED_REL_DRIFT = 7.2e-4
MEASURED_ABS_DRIFT = 7.6e-7


def _expected(name: str) -> dict:
    return json.loads((HERE / name / "golden.json").read_text())


@pytest.fixture(scope="module")
def golden_inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def fingerprint():
    return rounding_fingerprint()


def _run(name, golden_inputs, run_dir, extra=(), env=None) -> list[dict]:
    model, prompts = golden_inputs
    result = run_golden(name, model, prompts, run_dir, extra=extra, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return comparable_rows(run_dir / "metrics.jsonl")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_golden_run_unchanged(name, golden_inputs, fingerprint, tmp_path):
    expected = _expected(name)
    exact = same_rounding(expected.get("fingerprint"), fingerprint)
    rows = _run(name, golden_inputs, tmp_path / "run")
    how = "bit for bit" if exact else f"to rtol {RTOL:g}, atol {ATOL:g} (another rounding: {fingerprint})"
    problems = compare_golden(rows, expected["metrics"], exact=exact)
    assert not problems, f"metrics differ {how}:\n" + "\n".join(problems[:20])
    problems = compare_adapters(tmp_path / "run" / "adapters.safetensors", HERE / name / "adapters.safetensors",
                                expected["adapters_sha256"], exact=exact)
    assert not problems, f"adapters differ {how}:\n" + "\n".join(problems[:20])


@pytest.mark.slow
def test_a_one_percent_change_of_beta_fails_the_tolerance(golden_inputs, tmp_path):
    """A one-line change of the loss (beta x 1.01 through the same golden command) cannot hide
    under the tolerance that lets another CPU's rounding through."""
    expected = _expected("seed_form")
    beta = 0.1  # conf/beta/default.yaml, which the golden command uses
    rows = _run("seed_form", golden_inputs, tmp_path / "run", extra=[f"loss.beta={beta * 1.01:.6g}"])
    problems = compare_golden(rows, expected["metrics"], exact=False)
    assert any(" kl_penalty:" in p for p in problems) and any(" loss:" in p for p in problems), problems


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OpenBLAS kernels are chosen on Linux only")
def test_another_blas_kernel_passes_the_tolerance(golden_inputs, fingerprint, tmp_path):
    """The rounding of another CPU, made on this one: OpenBLAS's generic kernel on one thread
    (OPENBLAS_CORETYPE, a DYNAMIC_ARCH build) instead of the one chosen for this CPU."""
    if fingerprint["blas_config"] in ("reference", None) or "OpenBLAS" not in str(fingerprint["blas_config"]):
        pytest.skip(f"no OpenBLAS in use here: {fingerprint['blas']}")
    core = {"x86_64": "Prescott", "aarch64": "ARMV8"}.get(platform.machine())
    if core is None:
        pytest.skip(f"no generic OpenBLAS core named for {platform.machine()}")
    env = {"OPENBLAS_CORETYPE": core, "OPENBLAS_NUM_THREADS": "1"}
    other = rounding_fingerprint(env)
    expected = _expected("seed_form")
    rows = _run("seed_form", golden_inputs, tmp_path / "run", env=env)
    assert not compare_golden(rows, expected["metrics"], exact=False)
    assert not compare_adapters(tmp_path / "run" / "adapters.safetensors", HERE / "seed_form" / "adapters.safetensors",
                                expected["adapters_sha256"], exact=False)
    # the fingerprint sees the change, so this run is never held to bit-identity with the default one
    assert not same_rounding(fingerprint, other) and other["blas_threads"] == 1


def _perturbed(rows: list[dict], rng: random.Random, rel: float, absolute: float) -> list[dict]:
    out = copy.deepcopy(rows)
    for row in out:
        for key, value in row.items():
            if key != "step" and isinstance(value, float) and value == value:
                row[key] = value * (1 + rng.uniform(-rel, rel)) + rng.uniform(-absolute, absolute)
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_drift_sized_noise_passes_the_tolerance_and_fails_bit_identity(name):
    recorded = _expected(name)["metrics"]
    rng = random.Random(28)
    for rel in (1e-6, 1e-5, 1e-4, MEASURED_REL_DRIFT):
        for _ in range(20):
            noisy = _perturbed(recorded, rng, rel, MEASURED_ABS_DRIFT)
            assert not compare_golden(noisy, recorded, exact=False)
            assert compare_golden(noisy, recorded, exact=True)
    assert not compare_golden(recorded, recorded, exact=True)


def test_the_issues_drift_passes_and_beta_sized_changes_do_not():
    recorded = _expected("seed_form")["metrics"]
    step3 = next(i for i, r in enumerate(recorded) if r["step"] == 3)
    assert recorded[step3]["kl"] == -0.0055789947509765625
    drifted = copy.deepcopy(recorded)
    drifted[step3]["kl"] = -0.005580902099609375  # issue 28: the same wheel on another EPYC
    assert not compare_golden(drifted, recorded, exact=False)
    assert compare_golden(drifted, recorded, exact=True) == [
        "step 3 kl: -0.005580902099609375 != recorded -0.0055789947509765625"]
    for key in ("kl_penalty", "loss", "rewards/margins"):  # what beta x 1.01 moves, by 1%
        changed = copy.deepcopy(recorded)
        for row in changed:
            row[key] = row[key] * 1.01
        assert compare_golden(changed, recorded, exact=False), key
    missing = copy.deepcopy(recorded)
    del missing[0]["kl"]
    assert compare_golden(missing, recorded, exact=False)
    assert compare_golden(recorded[:-1], recorded, exact=False)  # a step less


def test_bit_identity_only_where_every_fingerprint_field_is_known_and_equal(fingerprint):
    assert same_rounding(dict(fingerprint), fingerprint)
    for key in fingerprint:
        assert not same_rounding({**fingerprint, key: None}, fingerprint), key
        assert not same_rounding({**fingerprint, key: "another"}, fingerprint), key
    assert not same_rounding(None, fingerprint)
