"""The golden runs: the same command gives the same metrics and adapters as recorded.

Recorded by tests/golden/record.py before the package-and-layout move (issue 11); a
refactor that changes what a run computes fails here. On the machine kind they were
recorded on, adapters must be bit-identical; elsewhere (another CPU or BLAS) the float
values are compared to a tolerance instead.
"""

import hashlib
import json
import platform
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
from record import GOLDEN_RUNS, HERE, build_inputs, comparable_rows, run_golden  # noqa: E402


@pytest.fixture(scope="module")
def golden_inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("golden"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOLDEN_RUNS))
def test_golden_run_unchanged(name, golden_inputs, tmp_path):
    expected = json.loads((HERE / name / "golden.json").read_text())
    model, prompts = golden_inputs
    result = run_golden(name, model, prompts, tmp_path / "run")
    assert result.returncode == 0, result.stderr[-3000:]

    rows = comparable_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in expected["metrics"]]
    same_machine = platform.machine() == expected["machine"]
    for got, want in zip(rows, expected["metrics"]):
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            if same_machine:
                assert got[key] == value or (value != value and got[key] != got[key]), (want["step"], key)
            else:
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6, nan_ok=True), key

    adapters = (tmp_path / "run" / "adapters.safetensors").read_bytes()
    if same_machine:
        assert hashlib.sha256(adapters).hexdigest() == expected["adapters_sha256"]
    else:
        import mlx.core as mx

        got, want = mx.load(str(tmp_path / "run" / "adapters.safetensors")), mx.load(str(HERE / name / "adapters.safetensors"))
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_allclose(np.array(got[key]), np.array(want[key]), rtol=1e-3, atol=1e-6)
