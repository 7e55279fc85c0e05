"""ppo-report on hand-made run folders (fast) and on a real tiny sweep (tests/test_sweep.py)."""

import json

import pytest

from ppo.tools.report import health_verdict, load_runs, main


def make_run(root, name, epsilon, beta, win_rates, clips, kls, status="finished", loss_type="ppo_clip"):
    """A run folder as ppo-train leaves it: .hydra/config.yaml, metrics.jsonl, summary.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"loss:\n  type: {loss_type}\n  epsilon: {epsilon}\n  beta: {beta}\n  advantage: judge\n"
        "seed: 0\ntrain:\n  iters: 10\nmodel:\n  path: ${ppo_cache:}/models/demo\n")
    rows = []
    for step in range(1, 11):
        row = {"step": step, "clip_fraction": clips[step - 1], "kl": kls[step - 1], "timing/step_seconds": 0.1}
        if step % 5 == 0:
            row["eval/win_rate"] = win_rates[step // 5 - 1]
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        summary = {"status": status, "step": 10, "eval": {"eval/win_rate": win_rates[-1]},
                   "best_eval_win_rate": max(win_rates), "wall_seconds": 12.5}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "beta=0.1,epsilon=0.1", 0.1, 0.1, [0.55, 0.60], [0.1] * 10, [0.01 * i for i in range(10)])
    make_run(root, "beta=0.5,epsilon=0.1", 0.1, 0.5, [0.50, 0.52], [0.0] * 10, [0.0] * 10)
    make_run(root, "beta=0.1,epsilon=0.3", 0.3, 0.1, [0.70, 0.65], [0.2] * 8 + [0.5, 0.5], [0.5] * 10)
    # killed mid-run: no summary.json and a torn last line
    killed = make_run(root, "beta=0.5,epsilon=0.3", 0.3, 0.5, [0.40, 0.45], [0.05] * 10, [0.1] * 10, status=None)
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "kl')
    return root


def test_report_rows_figures_and_best(sweep, capsys):
    assert main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "best configuration: epsilon=0.3 beta=0.1" in out  # final win rate 0.65 beats 0.60 and 0.52
    report = (sweep / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| `")]
    assert len(rows) == 4
    by_name = {line.split("`")[1]: line for line in rows}
    assert "| healthy |" in by_name["beta=0.1,epsilon=0.1"]
    assert "| not moving |" in by_name["beta=0.5,epsilon=0.1"]
    assert "| moving too far |" in by_name["beta=0.1,epsilon=0.3"]  # last 20% of steps: 0.5, 0.5
    assert "running-or-killed" in by_name["beta=0.5,epsilon=0.3"]
    assert "| 0.650 | 0.700 |" in by_name["beta=0.1,epsilon=0.3"]  # final, best
    for stem in ("heatmap_win_rate", "heatmap_clip_fraction", "heatmap_kl", "curves_win_rate", "curves_kl", "curves_clip_fraction"):
        png = sweep / f"{stem}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000, stem
        assert f"({stem}.png)" in report


def test_report_values_from_metrics(sweep):
    runs = {r.name: r for r in load_runs(sweep)}
    healthy = runs["beta=0.1,epsilon=0.1"]
    assert healthy.final_kl == pytest.approx(0.09) and healthy.clip_fraction == pytest.approx(0.1)
    killed = runs["beta=0.5,epsilon=0.3"]
    assert killed.status == "running-or-killed" and killed.steps == 10 and killed.final_win_rate == 0.45
    assert health_verdict(None) == "n/a" and health_verdict(0.0) == "not moving" and health_verdict(0.31) == "moving too far"


def test_report_on_folder_without_runs_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no run folders" in err
    assert not (tmp_path / "empty" / "report.md").exists()
    assert main([str(tmp_path / "missing")]) == 2


def test_half_written_run_is_a_row_marked_incomplete(tmp_path, capsys):
    root = tmp_path / "sweep"
    make_run(root, "a", 0.2, 0.1, [0.5, 0.6], [0.1] * 10, [0.0] * 10)
    (root / "b" / ".hydra").mkdir(parents=True)
    (root / "b" / ".hydra" / "config.yaml").write_text("loss: {epsilon: 0.2, beta: [unclosed\n")  # torn write
    assert main([str(root)]) == 0
    report = (root / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| `b`"))
    assert "not-started" in row and "unreadable config" in row
