"""ppo-report on hand-made run folders (fast) and on a real tiny sweep (tests/test_sweep.py)."""

import json
from pathlib import Path

import pytest

from ppo.tools.report import health_verdict, load_runs, main


def make_run(root, name, epsilon, beta, win_rates, clips, kls, status="finished", loss_type="ppo_clip", pairs=None,
             seed=0, logger="none", reduction="sum"):
    """A run folder as ppo-train leaves it: .hydra/config.yaml, metrics.jsonl, summary.json."""
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        f"loss:\n  type: {loss_type}\n  epsilon: {epsilon}\n  beta: {beta}\n  advantage: judge\n"
        f"  logprob_reduction: {reduction}\n"
        f"seed: {seed}\ntrain:\n  iters: 10\n  progress: false\nmodel:\n  path: ${{ppo_cache:}}/models/demo\n"
        f"logger:\n  kind: {logger}\n")
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
    assert "| 0.650 | - | - | - | 0.700 |" in by_name["beta=0.1,epsilon=0.3"]  # final, length-controlled, length ratio, held-out, best
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


def _boxed_betas(figure) -> set[str]:
    """The beta tick labels under the heatmap's boxes (one epsilon row in these sweeps)."""
    ax = figure.axes[0]
    betas = [t.get_text() for t in ax.get_xticklabels()]
    return {betas[round(box.get_x() + 0.5)] for box in ax.patches}


def test_one_tie_break_rule_for_the_box_the_text_and_stdout(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    # beta=0.01 and beta=0.5 end level (0.6 of 400 pairs); the rule prefers the higher best win
    # rate: beta=0.5 is named best, but cannot be told apart from beta=0.01; beta=0.1 (0.5 of
    # 400 pairs: Wilson 0.45-0.55 against 0.55-0.65) is beyond noise below them.
    make_run(root, "beta=0.01", 0.1, 0.01, [0.4, 0.6], [0.1] * 10, [2.0] * 10, pairs=400)
    make_run(root, "beta=0.5", 0.1, 0.5, [0.7, 0.6], [0.1] * 10, [0.1] * 10, pairs=400)
    make_run(root, "beta=0.1", 0.1, 0.1, [0.3, 0.5], [0.1] * 10, [0.1] * 10, pairs=400)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "best configuration: epsilon=0.1 beta=0.5 " in out and "No clear winner" in out
    assert "top group of 2, whose 95% intervals overlap the best's; it cannot be told apart from beta=0.01 (0.600 ± " in out
    report = (root / "report.md").read_text()
    assert "**Best configuration:** epsilon=0.1 beta=0.5 " in report
    verdict = next(line for line in report.splitlines() if line.startswith("**Best configuration:**"))
    assert "cannot be told apart from beta=0.01 " in verdict and "beta=0.1 " not in verdict
    assert _boxed_betas(figures["heatmap_win_rate"]) == {"0.5", "0.01"}  # the boxes sit where the text says


def _seeds(root, name, epsilon, beta, finals, kls=(0.1, 0.1, 0.1), pairs=256):
    for seed, (final, kl) in enumerate(zip(finals, kls)):
        make_run(root, f"{name},seed={seed}", epsilon, beta, [0.5, final], [0.0] * 9 + [0.01 * (seed + 1)], [kl] * 10,
                 pairs=pairs, seed=seed, logger=["none", "wandb"][seed % 2])  # the logger does not split a configuration


def test_statistics_of_two_seeds_by_hand(tmp_path):
    from ppo.tools.report import configurations, load_runs

    root = tmp_path / "sweep"
    make_run(root, "seed=0", 0.2, 0.1, [0.5, 0.6], [0.1] * 10, [0.2] * 10, pairs=100, seed=0)
    make_run(root, "seed=1", 0.2, 0.1, [0.5, 0.7], [0.1] * 10, [0.4] * 10, pairs=100, seed=1)
    (cell,) = configurations(load_runs(root))
    # mean 0.65; s = sqrt(((0.6-0.65)^2 + (0.7-0.65)^2) / 1) = 0.070711; t(0.975, 1 df) = 12.706;
    # half = 12.706 * 0.070711 / sqrt(2) = 0.63530
    assert cell.win.n == 2 and cell.win.mean == pytest.approx(0.65) and cell.win.half == pytest.approx(0.63530, abs=1e-5)
    # pooled: 130 wins of 200 pairs; Wilson (z = 1.96): centre (0.65 + z^2/400) / (1 + z^2/200) = 0.647173,
    # half 1.96 / (1 + z^2/200) * sqrt(0.65 * 0.35 / 200 + z^2 / 160000) = 0.065540
    assert cell.pairs == 200 and cell.pooled == pytest.approx((0.581633, 0.712713), abs=1e-6)
    # KL 0.2 and 0.4: mean 0.3, half 12.706 * 0.141421 / sqrt(2) = 1.2706
    assert cell.kl.mean == pytest.approx(0.3) and cell.kl.half == pytest.approx(1.2706, abs=1e-4)
    # 0.650 ± 0.635 would reach 1.285 and KL 0.30 ± 1.27 below 0: each is cut to its metric's range,
    # and two seeds (t multiplier 12.7) are marked too few
    assert cell.win_text() == "0.650 [0.015, 1.000] (2 seeds: too few)"
    assert cell.kl.text("{:.2f}") == "0.30 [0.00, 1.57] (2 seeds: too few)"
    # the verdict's interval: the union of the t-interval (0.0147-1.2853, clipped to 1) and the pooled Wilson
    assert cell.interval == pytest.approx((0.65 - 0.63530, 1.0), abs=1e-5)


def test_three_seeds_a_clear_winner(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    _seeds(root, "beta=0.1", 0.1, 0.1, [0.80, 0.82, 0.81])  # 0.81 ± 0.025, pooled 0.78-0.84
    _seeds(root, "beta=0.5", 0.1, 0.5, [0.60, 0.62, 0.61])  # 0.61 ± 0.025, pooled 0.58-0.64
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 runs (6 finished) in 2 configurations" in out
    assert "best configuration: epsilon=0.1 beta=0.1 loss_type=ppo_clip advantage=judge: final eval win rate " \
           "0.810 ± 0.025 (3 seeds), pooled pairs 0.78-0.84 (768 pairs). It beats the runner-up beyond noise: " \
           "epsilon=0.1 beta=0.5 loss_type=ppo_clip advantage=judge (0.610 ± 0.025 (3 seeds))" in out
    report = (root / "report.md").read_text()
    rows = {line.split(" | ")[0]: line for line in report.splitlines() if line.startswith("| beta=")}
    assert set(rows) == {"| beta=0.1", "| beta=0.5"}  # one row per configuration, seeds pooled
    assert "| 0.810 ± 0.025 (3 seeds) | 0.78-0.84 (768 pairs) | yes |" in rows["| beta=0.1"]
    assert "| 0.610 ± 0.025 (3 seeds) | 0.58-0.64 (768 pairs) |  |" in rows["| beta=0.5"]
    assert "0.100 ± 0.000 (3 seeds)" in rows["| beta=0.1"]  # final kl over the seeds
    assert sum(line.startswith("| `beta=") for line in report.splitlines()) == 6  # and one row per run
    assert _boxed_betas(figures["heatmap_win_rate"]) == {"0.1"}
    texts = [t.get_text() for t in figures["heatmap_win_rate"].axes[0].texts]
    assert "0.810 ± 0.025\n(3 seeds)\npairs 0.78-0.84" in texts
    assert any("± " in t and "(3 seeds)" in t for t in (x.get_text() for x in figures["heatmap_kl"].axes[0].texts))
    # the win-rate curves: one line per configuration with its seed band
    ax = figures["curves_win_rate"].axes[0]
    assert sorted(line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")) == [
        "beta=0.1 (3 seeds)", "beta=0.5 (3 seeds)"]
    assert "t-intervals over seeds" in ax.get_title()
    # the bar chart: one bar per configuration with its interval as whiskers
    bars = figures["compare_runs"].axes[0]
    from matplotlib.container import ErrorbarContainer

    assert [t.get_text() for t in bars.get_yticklabels()] == ["beta=0.1 (3 seeds)", "beta=0.5 (3 seeds)"]
    (whiskers,) = [c for c in bars.containers if isinstance(c, ErrorbarContainer)]
    first = whiskers.lines[2][0].get_segments()[0]
    # beta=0.1's verdict interval: the pooled Wilson 0.7807-0.8362 (wider than its t-interval 0.7852-0.8348)
    assert (first[0][0], first[1][0]) == pytest.approx((0.78074, 0.83618), abs=1e-5)


def test_three_seeds_that_cannot_be_told_apart(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    _seeds(root, "beta=0.01", 0.1, 0.01, [0.80, 0.70, 0.90])  # 0.80 ± 0.248: the seeds disagree
    _seeds(root, "beta=0.1", 0.1, 0.1, [0.78, 0.76, 0.74])  # 0.76 ± 0.050
    _seeds(root, "beta=0.5", 0.1, 0.5, [0.30, 0.31, 0.32])  # far below both
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "best configuration: epsilon=0.1 beta=0.01 " in out and "No clear winner" in out
    assert "top group of 2, whose 95% intervals overlap the best's; it cannot be told apart from beta=0.1 (0.760 ± 0.050 (3 seeds))" in out
    report = (root / "report.md").read_text()
    assert "**No clear winner**" in report and "top group of 2" in report
    verdict = next(line for line in report.splitlines() if line.startswith("**Best configuration:**"))
    assert "beta=0.5" not in verdict  # far below: not in the top group
    assert _boxed_betas(figures["heatmap_win_rate"]) == {"0.01", "0.1"}
    assert "top group" in figures["heatmap_win_rate"].axes[0].get_title()


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


def test_a_setting_beyond_epsilon_and_beta_splits_configurations(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    make_run(root, "a", 0.1, 0.1, [0.5, 0.6], [0.1] * 10, [0.1] * 10, pairs=64)
    fast = make_run(root, "b", 0.1, 0.1, [0.5, 0.7], [0.1] * 10, [0.1] * 10, pairs=64)
    config = fast / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("  iters: 10\n", "  iters: 10\n  learning_rate: 0.001\n"))
    make_run(root, "c", 0.1, 0.5, [0.5, 0.5], [0.1] * 10, [0.1] * 10, pairs=64)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 runs (3 finished) in 3 configurations" in out
    assert "best configuration: epsilon=0.1 beta=0.1 loss_type=ppo_clip advantage=judge train.learning_rate=0.001:" in out
    # the heatmap's cell at beta 0.1 holds two configurations: it says so rather than "2 seeds"
    texts = [t.get_text() for t in figures["heatmap_win_rate"].axes[0].texts]
    assert any("2 runs of 2 configurations" in t for t in texts) and not any("2 seeds" in t for t in texts)


def test_two_seeds_are_flagged_and_bands_stay_in_each_metrics_range(tmp_path, capsys, figures):
    root = tmp_path / "sweep"
    _seeds(root, "beta=0.1", 0.1, 0.1, [0.2, 0.9], kls=(0.05, 0.9))  # 0.55 ± 4.4: far past 0 and 1
    _seeds(root, "beta=0.5", 0.1, 0.5, [0.5, 0.6], kls=(0.1, 0.2))
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    report = (root / "report.md").read_text()
    assert "**Too few seeds:** every configuration has 2 seeds" in report and "by 12.7" in report
    assert "too few seeds: every configuration has 2 seeds" in out
    row = next(line for line in report.splitlines() if line.startswith("| beta=0.1"))
    assert "| 0.550 [0.000, 1.000] (2 seeds: too few) |" in row and "0.475 [0.000, " in row  # KL cut at 0
    for stem, (low, high) in (("curves_win_rate", (0.0, 1.0)), ("curves_kl", (0.0, float("inf")))):
        ax = figures[stem].axes[0]
        bands = [path.vertices[:, 1] for band in ax.collections for path in band.get_paths()]
        assert bands and all(low - 1e-12 <= v <= high for ys in bands for v in ys), stem
    from matplotlib.container import ErrorbarContainer

    (kl_bars,) = [c for c in figures["compare_runs"].axes[2].containers if isinstance(c, ErrorbarContainer)]
    assert all(segment[0][0] >= 0.0 for segment in kl_bars.lines[2][0].get_segments())  # from 0, not from -2.8
    # three seeds are enough: no flag
    _seeds(tmp_path / "three", "beta=0.1", 0.1, 0.1, [0.5, 0.6, 0.7])
    assert main([str(tmp_path / "three")]) == 0
    assert "Too few seeds" not in (tmp_path / "three" / "report.md").read_text()


def test_a_swept_setting_that_changed_nothing_is_named(tmp_path, capsys):
    root = tmp_path / "sweep"
    for beta, kls in ((0.1, [0.01] * 10), (0.5, [0.02] * 10)):
        for epsilon in (0.1, 0.3):  # the same numbers for both epsilons: the clip never acted
            make_run(root, f"beta={beta},epsilon={epsilon}", epsilon, beta, [0.5, 0.55], [0.0] * 10, kls, pairs=64)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    report = (root / "report.md").read_text()
    assert "**No effect:** epsilon 0.1 and 0.3 gave identical runs (every metric of every step, to the last digit, " \
           "at every setting of beta), so epsilon changed nothing here (clip_fraction is 0 throughout" in report
    assert "no effect: epsilon 0.1 and 0.3 gave identical runs" in out
    assert "beta 0.1 and 0.5" not in report  # beta did change the KL
    # one digit apart is an effect
    other = tmp_path / "other"
    make_run(other, "epsilon=0.1", 0.1, 0.1, [0.5, 0.55], [0.0] * 10, [0.01] * 10, pairs=64)
    make_run(other, "epsilon=0.3", 0.3, 0.1, [0.5, 0.55], [0.0] * 10, [0.01] * 9 + [0.010000001], pairs=64)
    assert main([str(other)]) == 0
    assert "No effect" not in (other / "report.md").read_text()


@pytest.mark.parametrize("reduction,unit", [("mean", "nats per token"), ("sum", "nats per sequence")])
def test_kl_labels_name_the_runs_unit(tmp_path, figures, reduction, unit):
    root = tmp_path / "sweep"
    for beta in (0.1, 0.5):
        make_run(root, f"beta={beta}", 0.2, beta, [0.5, 0.6], [0.1] * 10, [0.1] * 10, pairs=16, reduction=reduction)
    assert main([str(root)]) == 0
    assert figures["curves_kl"].axes[0].get_ylabel() == f"kl ({unit})"
    assert figures["heatmap_kl"].axes[0].get_title().startswith(f"Final KL to the reference ({unit})")
    assert figures["compare_runs"].axes[2].get_title() == f"final kl ({unit})"
    assert f"| final kl ({unit}) |" in (root / "report.md").read_text()
    other = "nats per sequence" if reduction == "mean" else "nats per token"
    assert other not in (root / "report.md").read_text()


def test_optuna_floats_are_rounded_in_labels(tmp_path, capsys):
    root = tmp_path / "search"
    make_run(root, "a", 0.24208472637456369, 0.22112721129989238, [0.5, 0.6], [0.1] * 10, [0.1] * 10, pairs=16)
    make_run(root, "b", 0.2609671816250754, 0.08969382657243252, [0.5, 0.7], [0.1] * 10, [0.1] * 10, pairs=16)
    assert main([str(root)]) == 0
    out = capsys.readouterr().out
    report = (root / "report.md").read_text()
    assert "eps=0.261 beta=0.08969" in report and "epsilon=0.261 beta=0.08969" in out
    assert "0.2609671816250754" not in report + out and "0.22112721129989238" not in report + out
