"""ppo-report on real run folders: runs made by different versions of the code (a config key one
run's config lacks) pool when they ran the same settings, and k (generation.samples_per_prompt)
is shown in the tables and labels when the runs differ in it or it is not 2."""

import shutil
from pathlib import Path

import pytest
from conftest import run_cli, small_run_overrides

from ppo.tools.report import configurations, load_runs, main as report_main


@pytest.fixture(scope="module")
def k_sweep(tmp_path_factory, tiny_model_dir, prompts_file) -> Path:
    """A real sweep: k = 2 and 3, two seeds each, one step."""
    sweep_dir = tmp_path_factory.mktemp("k_sweep") / "sweep"
    overrides = small_run_overrides(tiny_model_dir, prompts_file, **{
        "train.iters": 1, "train.steps_per_eval": 1, "generation.max_completion_length": 6, "data.max_eval_prompts": 2})
    result = run_cli(["-m", *overrides, "generation.samples_per_prompt=2,3", "seed=0,1", f"hydra.sweep.dir={sweep_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir


def _runs_of(k_sweep: Path, root: Path, k: int) -> dict[int, Path]:
    """Copies of the sweep's runs of this k under `root`, by seed."""
    out = {}
    for config in sorted(k_sweep.glob("*/.hydra/config.yaml")):
        text = config.read_text()
        if f"  samples_per_prompt: {k}\n" in text:
            seed = int(next(line for line in text.splitlines() if line.startswith("seed: ")).split()[1])
            out[seed] = root / f"run-{k}-{seed}"
            shutil.copytree(config.parent.parent, out[seed])
    assert sorted(out) == [0, 1]
    return out


def _edit(run: Path, old: str, new: str) -> None:
    config = run / ".hydra" / "config.yaml"
    text = config.read_text()
    assert text.count(old) == 1, old
    config.write_text(text.replace(old, new))


def _rows(report: str, start: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith(start)]


def test_a_run_from_an_older_version_pools_with_its_seeds(tmp_path, k_sweep, capsys):
    root = tmp_path / "sweep"
    runs = _runs_of(k_sweep, root, 2)
    # seed 1 as an older version left it: two settings added since, both at their defaults now
    _edit(runs[1], "  samples_per_prompt: 2\n", "")
    _edit(runs[1], "  compile_decode: false\n", "")
    (root / "torn" / ".hydra").mkdir(parents=True)  # and a run whose config cannot be read: a row of its own
    (root / "torn" / ".hydra" / "config.yaml").write_text("loss: {epsilon: 0.2, beta: [unclosed\n")
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 runs (2 finished) in 2 configurations" in out
    (cell,) = [c for c in configurations(load_runs(root)) if len(c.runs) > 1]
    assert len(cell.runs) == 2 and cell.win.n == 2
    assert cell.label == "run-2-0"  # nothing differs: the label is the first run's name
    assert "compile_decode" not in out and "samples_per_prompt" not in out
    report = (root / "report.md").read_text()
    assert "| k |" not in report  # k = 2 for both (the older run's by default): no column for it


def test_a_setting_that_really_differs_still_splits(tmp_path, k_sweep, capsys):
    root = tmp_path / "sweep"
    runs = _runs_of(k_sweep, root, 2)
    # seed 1 from before train.compile_decode existed (it decoded eagerly); seed 0 set it on
    _edit(runs[1], "  compile_decode: false\n", "")
    _edit(runs[0], "  compile_decode: false\n", "  compile_decode: true\n")
    assert report_main([str(root)]) == 0
    assert "2 runs (2 finished) in 2 configurations" in capsys.readouterr().out
    cells = configurations(load_runs(root))
    assert sorted(c.label for c in cells) == ["train.compile_decode=False", "train.compile_decode=True"]


def test_a_sweep_over_k_shows_k(tmp_path, k_sweep, capsys):
    root = tmp_path / "sweep"
    _runs_of(k_sweep, root, 2)
    _runs_of(k_sweep, root, 3)
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "4 runs (4 finished) in 2 configurations" in out
    assert "generation.samples_per_prompt=" in out.split("best configuration: ", 1)[1].split(":")[0]
    report = (root / "report.md").read_text()
    configs = _rows(report, "| k=")
    assert [line.split(" | ")[0] for line in sorted(configs)] == ["| k=2", "| k=3"]
    assert all("(2 seeds: too few)" in line for line in configs)
    (header,) = _rows(report, "| run | epsilon |")
    assert "| advantage | k | seed |" in header
    runs = {line.split("`")[1]: line for line in _rows(report, "| `run-")[:4]}
    assert sorted(runs) == ["run-2-0", "run-2-1", "run-3-0", "run-3-1"]
    assert all(f"| judge | {name[4]} | {name[6]} |" in line for name, line in runs.items())  # k, then the seed
    assert "judged in k(k-1)/2 pairs per prompt" in report


def test_k_other_than_2_is_shown_even_when_every_run_has_it(tmp_path, k_sweep, capsys):
    root = tmp_path / "sweep"
    _runs_of(k_sweep, root, 3)
    assert report_main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "best configuration: epsilon=0.2 beta=0.1 loss_type=ppo_clip advantage=judge generation.samples_per_prompt=3:" in out
    report = (root / "report.md").read_text()
    assert len(_rows(report, "| k=3 |")) == 1
    assert "| advantage | k | seed |" in report
