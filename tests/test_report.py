"""ppo-report on hand-made run folders (fast) and on a real tiny sweep (tests/test_sweep.py)."""

import json
from pathlib import Path

import pytest

from ppo.tools.report import health_verdict, load_runs, main


def make_run(root, name, epsilon, beta, win_rates, clips, kls, status="finished", loss_type="ppo_clip", pairs=None):
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
            if pairs:
                row["eval/pairs"] = pairs
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if status is not None:
        summary = {"status": status, "step": 10, "eval": {"eval/win_rate": win_rates[-1], **({"eval/pairs": pairs} if pairs else {})},
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


@pytest.fixture
def figures(monkeypatch):
    """Every figure the report saves, by file name, so tests can read its axes."""
    import matplotlib.figure

    saved = {}
    original = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[Path(path).stem] = fig
        return original(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return saved


def test_one_tie_break_rule_for_the_box_the_text_and_stdout(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    # The same final win rate; the rule (best_run) prefers the higher best win rate: beta=0.5.
    make_run(root, "beta=0.01", 0.1, 0.01, [0.4, 0.6], [0.1] * 10, [2.0] * 10)
    make_run(root, "beta=0.5", 0.1, 0.5, [0.7, 0.6], [0.1] * 10, [0.1] * 10)
    make_run(root, "beta=0.1", 0.1, 0.1, [0.3, 0.5], [0.1] * 10, [0.1] * 10)
    assert main([str(root)]) == 0
    assert "best configuration: epsilon=0.1 beta=0.5 " in capsys.readouterr().out
    assert "**Best configuration:** epsilon=0.1 beta=0.5 " in (root / "report.md").read_text()
    (box,) = [p for p in figures["heatmap_win_rate"].axes[0].patches]
    betas = [t.get_text() for t in figures["heatmap_win_rate"].axes[0].get_xticklabels()]
    assert betas[round(box.get_x() + 0.5)] == "0.5"  # the box sits where the text says


def test_wilson_intervals_bands_fixed_rate_axes_integer_steps(tmp_path, figures):
    from matplotlib.ticker import MaxNLocator

    root = tmp_path / "sweep"
    make_run(root, "a", 0.1, 0.1, [1.0, 1.0], [0.1] * 10, [0.1] * 10, pairs=4)
    make_run(root, "b", 0.1, 0.5, [0.43, 0.45], [0.1] * 10, [0.1] * 10, pairs=4)
    assert main([str(root)]) == 0
    row = next(line for line in (root / "report.md").read_text().splitlines() if line.startswith("| `a`"))
    assert "| 1.000 (0.51-1.00) |" in row  # 4 wins in 4 pairs: not "1.00-1.00"
    ax = figures["curves_win_rate"].axes[0]
    assert ax.get_ylim() == (0.0, 1.0)  # 0.43 -> 0.45 is drawn on the whole range, not zoomed into a rise
    assert len(ax.collections) >= 2  # one Wilson band per run
    assert "Wilson" in ax.get_title()
    for stem in ("curves_win_rate", "curves_kl", "curves_clip_fraction"):
        locator = figures[stem].axes[0].xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and all(t == int(t) for t in figures[stem].axes[0].get_xticks())


def test_a_single_run_is_titled_as_a_run(tmp_path, figures):
    run = make_run(tmp_path, "run", 0.2, 0.1, [0.5, 0.6], [0.1] * 10, [0.0] * 10, pairs=8)
    assert main([str(run)]) == 0
    assert (run / "report.md").read_text().startswith("# Run report: run")
    assert "run run" in figures["curves_win_rate"].axes[0].get_title() and "1 runs" not in figures["curves_kl"].axes[0].get_title()


def test_final_line_explains_a_negative_k1_kl():
    from ppo.tools.cli import kl_text

    assert kl_text(0.15) == "0.15"
    assert "k1 estimate" in kl_text(-0.0088) and "never negative" in kl_text(-0.0088)
