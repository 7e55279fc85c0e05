"""The report's figures: heatmaps over epsilon x beta, training curves with seed or Wilson bands,
and one bar per run or configuration (matplotlib, Agg backend, imported when a figure is drawn)."""

from __future__ import annotations

import math
from pathlib import Path

from ppo.health import CLIP_FRACTION_HIGH
from ppo.metrics import t_half_width, wilson_interval
from ppo.tools.report.loading import Run, _finite, kl_units
from ppo.tools.report.stats import Cell, _fmt, configurations, valid_range


HEATMAPS = {  # file stem -> (run attribute, title, number format, colour map)
    "heatmap_win_rate": ("final_win_rate", "Final eval win rate against the reference", "{:.2f}", "viridis"),
    "heatmap_win_rate_lc": ("final_win_rate_lc", "Final length-controlled win rate (the win rate at equal lengths)",
                            "{:.2f}", "viridis"),
    "heatmap_clip_fraction": ("clip_fraction", "Mean clip_fraction, last 20% of steps", "{:.2f}", "magma"),
    "heatmap_kl": ("final_kl", "Final KL to the reference ({kl_unit})", "{:.3f}", "cividis"),
}
CURVES = {  # file stem -> (metrics key, title, y label); {kl_unit}: `kl_units`, from the runs' configs
    "curves_win_rate": ("eval/win_rate", "Eval win rate against the reference", "win rate"),
    "curves_kl": ("kl", "KL to the reference", "kl ({kl_unit})"),
    "curves_clip_fraction": ("clip_fraction", "clip_fraction (share of ratios outside 1 ± epsilon)", "clip_fraction"),
}


def _labels(runs: list[Run]) -> dict[str, str]:
    """Short legend labels: the settings that differ between runs (else the folder name)."""
    keys = [("epsilon", "eps"), ("beta", "beta"), ("loss_type", "loss"), ("advantage", "adv"), ("seed", "seed")]
    varying = [(k, short) for k, short in keys if len({getattr(r, k) for r in runs}) > 1]
    labels = {}
    for r in runs:
        label = " ".join(f"{short}={_fmt(getattr(r, k))}" for k, short in varying)
        labels[r.name] = label or r.name
    if len(set(labels.values())) < len(labels):  # duplicates (e.g. a re-run): fall back to folder names
        labels = {r.name: r.name for r in runs}
    return labels


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap(runs: list[Run], attr: str, title: str, spec: str, cmap: str, out: Path, sweep_name: str,
            top: list[Cell] | None = None) -> Path | None:
    """epsilon (rows) x beta (columns); each cell reads `mean ± half-width (n seeds)` over the
    runs there (Cell's statistics; the win rate's ± as in report.md's table, its pooled Wilson
    interval of every pair below). The win-rate map boxes every cell of the verdict's top group
    (`top`): one box when the best beats the rest beyond noise, several when it cannot be told
    apart from them, so the boxes, report.md and stdout say the same."""
    import numpy as np

    positions: dict[tuple[float, float], list[Run]] = {}
    for r in runs:
        if r.epsilon is not None and r.beta is not None:
            positions.setdefault((r.epsilon, r.beta), []).append(r)
    if not positions:
        return None
    stats = {pos: Cell.of((), members) for pos, members in positions.items()}
    epsilons = sorted({e for e, _ in positions})
    betas = sorted({b for _, b in positions})
    stat_of = {"final_win_rate": lambda c: c.win, "final_win_rate_lc": lambda c: c.win_lc, "clip_fraction": lambda c: c.clip,
               "final_kl": lambda c: c.kl}[attr]
    grid = np.full((len(epsilons), len(betas)), np.nan)
    for (e, b), cell in stats.items():
        if stat_of(cell).mean is not None:
            grid[epsilons.index(e), betas.index(b)] = stat_of(cell).mean
    if attr == "final_win_rate_lc" and not np.isfinite(grid).any():
        return None  # runs from before the length-controlled win rate was logged

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(2.3 * len(betas) + 3.2, 1.5 * len(epsilons) + 2.2), dpi=120)
    colormap = plt.get_cmap(cmap).with_extremes(bad="#d9d9d9")
    finite = grid[np.isfinite(grid)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if attr in ("clip_fraction", "final_win_rate", "final_win_rate_lc"):  # rates: the same colours in every report
        vmin, vmax = 0.0, 1.0
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=colormap, vmin=vmin, vmax=vmax, origin="lower", aspect="auto")
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    cbar.ax.tick_params(labelsize=9)

    boxed = set()
    if attr == "final_win_rate" and top:
        top_runs = {id(r) for c in top for r in c.runs}
        boxed = {pos for pos, members in positions.items() if any(id(r) in top_runs for r in members)}
    for i, e in enumerate(epsilons):
        for j, b in enumerate(betas):
            if (e, b) not in positions:
                text, colour = "no run", "#555555"
            elif math.isnan(grid[i, j]):
                text, colour = "n/a", "#555555"
            else:
                cell, stat = stats[(e, b)], stat_of(stats[(e, b)])
                if attr == "final_win_rate":
                    value, seeds = cell.win_text().split(" (", 1)
                    text = f"{value}\n({seeds}" + (f"\npairs {cell.pooled[0]:.2f}-{cell.pooled[1]:.2f}" if cell.pooled else "")
                else:
                    text = f"{stat.value_text(spec)}\n{stat.seeds_text()}"
                kinds = len({r.configuration for r in positions[(e, b)]})
                if kinds > 1:  # other settings vary too: the runs here are not seeds of one configuration
                    text = (text.replace("seeds: too few)", "seeds)").replace("seeds)", f"runs of {kinds} configurations)")
                            .replace("seed)", "run)"))
                shade = (grid[i, j] - vmin) / (vmax - vmin)
                colour = "black" if shade > 0.55 else "white"
            ax.text(j, i, text, ha="center", va="center", color=colour, fontsize=10, fontweight="bold")
    for e, b in sorted(boxed):
        i, j = epsilons.index(e), betas.index(b)
        # inset, so that neighbouring boxes of a top group stay two boxes
        ax.add_patch(plt.Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="#e41a1c", linewidth=3))
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas], fontsize=10)
    ax.set_yticks(range(len(epsilons)), [f"{e:g}" for e in epsilons], fontsize=10)
    ax.set_xlabel("KL weight beta (loss.beta)", fontsize=11)
    ax.set_ylabel("clip range epsilon (loss.epsilon)", fontsize=11)
    note = "; ± 95% t-interval over seeds (1 seed: Wilson, pairs; [low, high]: cut to the valid range)"
    if boxed:
        note += ("\nred box: the best, ahead of the rest beyond noise" if len(boxed) == 1 else
                 f"\nred boxes: the top group, {len(boxed)} cells the report cannot tell apart (95% intervals overlap)")
    ax.set_title(f"{title}\n{sweep_name}: {len(runs)} runs{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def curves(runs: list[Run], key: str, title: str, ylabel: str, out: Path, sweep_name: str) -> Path | None:
    """One line per run; when a configuration has several seeds, one line per configuration
    instead: the mean over its seeds at each step, with the 95% t-interval over seeds as its band
    (the seed band). A single-seed win-rate line keeps its Wilson band over the pairs."""
    from matplotlib.ticker import MaxNLocator

    series = []
    bands = {}  # label -> (steps, low, high)
    cells = configurations(runs)
    seeded = any(len(c.runs) > 1 for c in cells)
    if not seeded:
        labels = _labels(runs)
        for r in runs:
            points = [(row.get("step"), _finite(row.get(key))) for row in r.rows]
            points = [(s, v) for s, v in points if s is not None and v is not None]
            if points:
                series.append((labels[r.name], r.status, points))
            if key == "eval/win_rate":
                intervals = [(row["step"], i) for row in r.rows if row.get("step") is not None
                             and (i := wilson_interval(_finite(row.get(key)), _finite(row.get("eval/pairs"))))]
                if intervals:
                    bands[labels[r.name]] = ([s for s, _ in intervals], [i[0] for _, i in intervals], [i[1] for _, i in intervals])
    else:
        for cell in cells:
            members = cell.used or cell.runs
            by_step: dict[int, list[float]] = {}
            for r in members:
                for row in r.rows:
                    if row.get("step") is not None and (v := _finite(row.get(key))) is not None:
                        by_step.setdefault(int(row["step"]), []).append(v)
            if not by_step:
                continue
            label = f"{cell.label} ({len(members)} seed{'s' if len(members) != 1 else ''})"
            status = "finished" if all(r.status == "finished" for r in members) else "not all finished"
            series.append((label, status, [(st, sum(v) / len(v)) for st, v in sorted(by_step.items())]))
            spread = [(st, sum(v) / len(v), h) for st, v in sorted(by_step.items()) if (h := t_half_width(v)) is not None]
            if spread:  # cut to the metric's range: a win-rate band stays in [0, 1], a KL band above 0
                low, high = valid_range(key)
                bands[label] = ([st for st, _, _ in spread], [max(low, m - h) for _, m, h in spread],
                                [min(high, m + h) for _, m, h in spread])
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 5.2), dpi=120)
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20").colors
    sparse = key.startswith("eval/")
    smoothed = False
    for n, (label, status, points) in enumerate(sorted(series)):
        steps, values = zip(*points)
        style = "-" if status == "finished" else "--"
        colour = colours[n % len(colours)]
        band = bands.get(label)
        label = label + ("" if status == "finished" else f" ({status})")
        window = 1 if sparse else max(1, len(values) // 20)
        if window > 1:  # noisy per-step values: faint raw line, bold moving average
            smoothed = True
            ax.plot(steps, values, "-", color=colour, linewidth=0.7, alpha=0.25)
            values = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                      for i in range(len(values))]
        ax.plot(steps, values, style, color=colour, linewidth=1.8,
                marker="o" if sparse or len(points) < 15 else None, markersize=4, label=label)
        if band is not None:
            band_steps, low, high = band
            ax.fill_between(band_steps, low, high, color=colour, alpha=0.15, linewidth=0)
            if sparse:
                ax.vlines(band_steps, low, high, color=colour, alpha=0.5, linewidth=1.0)  # visible for a lone point too
    note = f"; bold: moving average over {max(len(p) for _, _, p in series) // 20} steps" if smoothed else ""
    if seeded and key == "kl" and bands:
        note += "; bands: 95% t-intervals over seeds, cut at 0"
    if key == "clip_fraction":
        ax.axhline(CLIP_FRACTION_HIGH, color="#e41a1c", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[0], CLIP_FRACTION_HIGH, " above 0.3: moving too far per step", color="#e41a1c", va="bottom", fontsize=9)
        ax.set_ylim(-0.03, 1.03)
    if key == "eval/win_rate":
        ax.set_ylim(0.0, 1.0)  # a rate: the whole range, so 0.42 -> 0.45 does not look like a rise
        note += "; bands: 95% t-intervals over seeds" if seeded else "; bands: 95% Wilson intervals"
        ax.axhline(0.5, color="grey", linestyle=":", linewidth=1.2)
        ax.text(ax.get_xlim()[0], 0.5, " 0.5: no better than the reference", color="grey", va="bottom", fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # steps are whole numbers
    ax.set_xlabel("step", fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    who = (f"run {sweep_name}" if len(runs) == 1 else
           f"{sweep_name}: {len(series)} configurations, {len(runs)} runs" if seeded else f"{sweep_name}: {len(series)} runs")
    ax.set_title(f"{title}\n{who}{note}", fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def _whiskers(mean: float | None, interval: tuple[float, float] | None) -> tuple[float, float]:
    """(below, above) the mean for an error bar of `interval` (already cut to the metric's range);
    never negative (a k1 KL's mean can lie below its interval's cut at 0)."""
    if mean is None or interval is None:
        return (0.0, 0.0)
    return (max(0.0, mean - interval[0]), max(0.0, interval[1] - mean))


def compare_runs(runs: list[Run], out: Path, sweep_name: str) -> Path | None:
    """One horizontal bar per run: final win rate, clip_fraction (last 20%), final kl. When a
    configuration has several seeds, one bar per configuration instead: the mean over its seeds,
    with the verdict's 95% interval on the win rate and the t-interval over seeds on the others."""
    plt = _pyplot()
    cells = configurations(runs)
    if any(len(c.runs) > 1 for c in cells):
        ordered_cells = sorted(cells, key=lambda c: c.label)
        names = [f"{c.label} ({c.win.n or len(c.runs)} seeds)" + ("" if c.finished else " (not finished)")
                 for c in ordered_cells]
        rows = []
        for c in ordered_cells:
            interval = c.interval if c.win.mean is not None else None
            win_err = _whiskers(c.win.mean, interval)
            rows.append({"final_win_rate": (c.win.mean, win_err), "clip_fraction": (c.clip.mean, _whiskers(c.clip.mean, c.clip.interval)),
                         "final_kl": (c.kl.mean, _whiskers(c.kl.mean, c.kl.interval)), "finished": c.finished})
        what = f"{len(cells)} configurations, {len(runs)} runs; bars: mean over seeds, whiskers: 95% intervals"
    else:
        labels = _labels(runs)
        ordered = sorted(runs, key=lambda r: labels[r.name])
        names = [labels[r.name] + ("" if r.status == "finished" else f" ({r.status})") for r in ordered]
        rows = [{"final_win_rate": (r.final_win_rate, None), "clip_fraction": (r.clip_fraction, None),
                 "final_kl": (r.final_kl, None), "finished": r.status == "finished"} for r in ordered]
        what = f"{len(runs)} runs"
    panels = [("final_win_rate", "final eval win rate", "{:.2f}"), ("clip_fraction", "clip_fraction (last 20%)", "{:.2f}"),
              ("final_kl", f"final kl ({kl_units(runs)})", "{:.3g}")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.42 * len(rows) + 1.8), dpi=120, sharey=True)
    for ax, (attr, title, spec) in zip(axes, panels):
        values = [row[attr][0] for row in rows]
        heights = [v if v is not None else 0.0 for v in values]
        colours = ["#4c72b0" if row["finished"] else "#bbbbbb" for row in rows]
        errors = [row[attr][1] for row in rows]
        xerr = None
        if all(e is not None for e in errors):
            xerr = [[e[0] for e in errors], [e[1] for e in errors]]
        ax.barh(range(len(rows)), heights, color=colours, xerr=xerr, ecolor="#333333", capsize=3)
        for i, v in enumerate(values):
            right = heights[i] + (xerr[1][i] if xerr else 0.0)
            ax.text(right, i, " " + (spec.format(v) if v is not None else "n/a"), va="center", fontsize=9)
        if attr == "final_win_rate":
            ax.axvline(0.5, color="grey", linestyle=":", linewidth=1.2)
        if attr == "clip_fraction":
            ax.axvline(CLIP_FRACTION_HIGH, color="#e41a1c", linestyle=":", linewidth=1.2)
            ax.set_xlim(0, 1.15)
        ax.set_title(title, fontsize=11)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.25)
    axes[0].set_yticks(range(len(rows)), names, fontsize=9)
    axes[0].invert_yaxis()
    fig.suptitle(f"Runs compared: {sweep_name} ({what}; grey = not finished)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
