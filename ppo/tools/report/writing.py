"""`write_report`: read a sweep folder's runs and write report.md, the figures and the W&B links
into the output folder (the run folders themselves are never written)."""

from __future__ import annotations

import os
from pathlib import Path

from ppo.io import atomic_write_text
from ppo.tools.report.figures import CURVES, HEATMAPS, compare_runs, curves, heatmap
from ppo.tools.report.loading import Run, kl_units, load_runs
from ppo.tools.report.markdown import _markdown
from ppo.tools.report.search import load_search, pareto_plot
from ppo.tools.report.stats import Verdict, configurations, verdict


REPORT_FILE = "report.md"


def link_wandb_runs(runs: list[Run], out_dir: Path) -> Path | None:
    """OUT_DIR/wandb/: a link to every run's offline W&B log, so `wandb leet OUT_DIR/wandb` browses
    the whole sweep side by side offline (each job keeps its own RUN_DIR/wandb). Only links are
    written (and stale ones replaced); the run folders are left alone."""
    logs = [log for r in runs if r.path != out_dir for log in sorted((r.path / "wandb").glob("offline-run-*"))]
    if not logs:
        return None
    folder = out_dir / "wandb"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    for log in logs:
        (folder / log.name).symlink_to(os.path.relpath(log, folder), target_is_directory=True)
    return folder


def write_report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[Path, list[Run], Verdict]:
    """Read the runs under `sweep_dir`; write report.md and the PNGs into `out_dir` (default sweep_dir)."""
    sweep_dir = Path(sweep_dir).resolve()
    runs = load_runs(sweep_dir)
    out_dir = Path(out_dir).resolve() if out_dir else sweep_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # multirun/EXPERIMENT/DATE_TIME -> "EXPERIMENT/DATE_TIME"; anything else: the folder name
    name = f"{sweep_dir.parent.name}/{sweep_dir.name}" if sweep_dir.parent.parent.name == "multirun" else sweep_dir.name
    images = []
    # Heatmaps need an epsilon x beta grid; runs of other loss types or advantages are not
    # averaged into it: the grid is drawn for the loss type and advantage of the best configuration.
    v = verdict(configurations(runs))
    groups = {(r.loss_type, r.advantage) for r in runs}
    grid_runs, grid_name = runs, name
    if len(groups) > 1:
        key = (v.best.first.loss_type, v.best.first.advantage) if v.best else sorted(groups, key=str)[0]
        grid_runs = [r for r in runs if (r.loss_type, r.advantage) == key]
        grid_name = f"{name}, loss_type={key[0]}, advantage={key[1]}"
    for path in [out_dir / f"{stem}.png" for stem in HEATMAPS]:
        if path.exists():
            path.unlink()  # a heatmap from an earlier report of this folder would mislead
    # A search samples continuous values (a cell per trial), so it gets pareto_front.png, not heatmaps.
    search = load_search(sweep_dir, runs)
    if len({(r.epsilon, r.beta) for r in grid_runs}) > 1 and search is None:
        for stem, (attr, title, spec, cmap) in HEATMAPS.items():
            made = heatmap(grid_runs, attr, title.format(kl_unit=kl_units(grid_runs)), spec, cmap, out_dir / f"{stem}.png",
                           grid_name, v.top_group)
            images += [made] if made else []
    made = pareto_plot(runs, search, out_dir / "pareto_front.png", name) if search else None
    images += [made] if made else []
    made = compare_runs(runs, out_dir / "compare_runs.png", name) if len(runs) > 1 else None
    images += [made] if made else []
    for stem, (key, title, ylabel) in CURVES.items():
        made = curves(runs, key, title, ylabel.format(kl_unit=kl_units(runs)), out_dir / f"{stem}.png", name)
        images += [made] if made else []
    wandb_folder = link_wandb_runs(runs, out_dir)
    report = out_dir / REPORT_FILE
    atomic_write_text(report, _markdown(runs, sweep_dir, images, out_dir, search, wandb_folder))
    return report, runs, v
