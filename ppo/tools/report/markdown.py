"""report.md's text: the plain lines on top (judge, judge gaming, no effect, too few seeds, the
verdict), the configurations and runs tables, judge reliability, adaptive KL, unfinished runs, figures."""

from __future__ import annotations

import os
from pathlib import Path

from ppo.health import CLIP_FRACTION_HIGH, CLIP_FRACTION_IDLE
from ppo.judges.pipeline import GUESSING_AGREEMENT
from ppo.metrics import t_quantile_975
from ppo.tools.report.loading import Run, _finite, _last, kl_units
from ppo.tools.report.search import Search, _search_markdown
from ppo.tools.report.stats import (BEST_RULE, MIN_SEEDS, VERDICT_RULE, Cell, _fmt, configurations, rank,
                                    settings_without_effect, shows_k, verdict, verdict_text)


def _win_rate_text(run: Run) -> str:
    """`0.625 (0.22-0.91)`: the final eval win rate and its 95% Wilson interval."""
    if run.final_win_rate is None:
        return "-"
    interval = run.interval
    return f"{run.final_win_rate:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


def _held_out_text(run: Run) -> str:
    """`length 0.512 (0.38-0.64)` per held-out judge, `judge gaming?` when beaten beyond both intervals."""
    if not run.held_out:
        return "-"
    gamed = set(run.gamed_judges)
    parts = []
    for name, (rate, low, high) in sorted(run.held_out.items()):
        text = f"{name} {_fmt(rate, '{:.3f}')}" + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")
        parts.append(text + (" **judge gaming?**" if name in gamed else ""))
    return "; ".join(parts)


def _seeds_markdown(cells: list[Cell]) -> list[str]:
    """The plain line on top when configurations have two seeds, too few for a t-interval to say much."""
    few = [c for c in cells if c.win.too_few or c.kl.too_few]
    if not few:
        return []
    n = min(max(c.win.n, c.kl.n) for c in few)
    which = "every configuration has" if len(few) == len(cells) else f"{len(few)} of {len(cells)} configurations have"
    return [f"**Too few seeds:** {which} {n} seeds. A 95% t-interval over {n} seeds multiplies their spread by "
            f"{t_quantile_975(n - 1):.1f} (4.3 with 3 seeds, 2.8 with 5), so its ± is wide and cut to each metric's "
            f"range; these cells cannot tell configurations apart. Run {MIN_SEEDS} or more seeds (seed=0,1,2).", ""]


def _gaming_markdown(runs: list[Run]) -> list[str]:
    """The plain line on top when a run won against its training judge beyond what a held-out judge gives it."""
    held = [r for r in runs if r.held_out]
    if not held:
        return []
    gamed = [r for r in held if r.gamed_judges]
    if not gamed:
        return [f"**Held-out judge:** no sign of judge gaming in {'the run' if len(held) == 1 else f'{len(held)} runs'} "
                "(the training judge's win rate does not beat the held-out judge's beyond both 95% intervals).", ""]
    which = "the run" if len(held) == 1 else f"{len(gamed)} of {len(held)} runs (" + ", ".join(f"`{r.name}`" for r in gamed) + ")"
    return [f"**Judge gaming?** in {which}: the win rate under the training judge beats the held-out judge's "
            "beyond both 95% intervals, so the policy pleases the judge it trained against more than one it never "
            "saw; read its samples before trusting the training judge's win rate.", ""]


def _win_rate_lc_text(run: Run) -> str:
    """`0.512 (0.38-0.64)`: the final length-controlled win rate and its 95% interval."""
    if run.final_win_rate_lc is None:
        return "-"
    interval = run.win_rate_lc_interval
    return f"{run.final_win_rate_lc:.3f}" + (f" ({interval[0]:.2f}-{interval[1]:.2f})" if interval else "")


def _judge_markdown(runs: list[Run]) -> tuple[list[str], list[str]]:
    """(the plain line on top, the "Judge reliability" section) from the runs' summaries."""
    judged = sorted((r for r in runs if r.judge), key=lambda r: r.name)
    if not judged:
        return [], []
    guessing = [r for r in judged if r.judge.get("judge/guessing") is True]
    measured = [r for r in judged if r.judge.get("judge/guessing") is not None]
    if guessing:
        which = "the run" if len(judged) == 1 else f"{len(guessing)} of {len(judged)} runs"
        top = [f"**Judge:** guessing in {which}: its two orders agree on fewer than {GUESSING_AGREEMENT:.0%} of the "
               "pairs, so its verdicts follow where an answer is shown, not what it says; the win rates of "
               + ("this run" if len(judged) == 1 else "those runs") + " measure nothing.", ""]
    elif measured:
        top = [f"**Judge:** consistent in {'the run' if len(judged) == 1 else f'all {len(measured)} measured runs'} "
               f"(its two orders agree on at least {GUESSING_AGREEMENT:.0%} of the pairs).", ""]
    else:
        top = []

    def rate(r: Run, key: str) -> str:
        return _fmt(_finite(r.judge.get(key)), "{:.2f}")

    def first(r: Run) -> str:
        low, high = _finite(r.judge.get("judge/first_position_win_rate_low")), _finite(r.judge.get("judge/first_position_win_rate_high"))
        return rate(r, "judge/first_position_win_rate") + (f" ({low:.2f}-{high:.2f})" if low is not None and high is not None else "")

    lines = ["", "## Judge reliability", "",
             "Per run, over the pairs its judge answered (train and evaluation). Order agreement: pairs shown in both orders "
             "whose two answers pick the same completion (two coins agree on half); disagreement: pairs whose orders pick "
             "different completions (a tie under `judge.on_order_disagreement=tie`); first-position win rate: answers that "
             "favour the completion shown first (0.5: no position bias; 95% Wilson interval). "
             f"Guessing: order agreement below {GUESSING_AGREEMENT:.0%}.", "",
             "| run | judge | order (on disagreement) | pairs | order agreement | order disagreement | first-position win rate (95%) "
             "| tie rate | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in judged:
        j = r.judge
        order = f"{j.get('judge/order', '-')}" + (f" ({j['judge/on_order_disagreement']})" if j.get("judge/order") == "both" else "")
        verdict = str(j.get("judge/verdict") or "-")
        verdict = f"**{verdict.split(':')[0]}**:{verdict.split(':', 1)[1]}" if ":" in verdict else verdict
        lines.append(f"| `{r.name}` | {j.get('judge/kind', '-')} | {order} | {_fmt(j.get('judge/pairs'))} "
                     f"| {rate(r, 'judge/order_agreement')} | {rate(r, 'judge/order_disagreement_rate')} | {first(r)} "
                     f"| {rate(r, 'judge/tie_rate')} | {verdict} |")
    return top, lines


def _adaptive_kl_markdown(runs: list[Run]) -> list[str]:
    """The "Adaptive KL" section: per run with loss.kl_control=adaptive (its rows log kl/beta), beta
    at the start and at the last logged step, and the KL aimed at and reached; [] without such a run."""
    adaptive = sorted((r for r in runs if _last(r.rows, "kl/beta") is not None), key=lambda r: r.name)
    if not adaptive:
        return []
    lines = ["", "## Adaptive KL", "",
             "Runs with `loss.kl_control=adaptive`: the KL weight beta, moved by the proportional controller from "
             "`loss.beta` towards `loss.target_kl` (docs/concepts/loss.md).", "",
             "| run | beta at start | final beta | target kl | final kl |", "|---|---|---|---|---|"]
    for r in adaptive:
        target = _finite(dict(r.configuration).get("loss.target_kl"))
        lines.append(f"| `{r.name}` | {_fmt(r.beta)} | {_fmt(_last(r.rows, 'kl/beta'))} | {_fmt(target)} "
                     f"| {_fmt(r.final_kl, '{:.4g}')} |")
    return lines


def _markdown(runs: list[Run], sweep_dir: Path, images: list[Path], out_dir: Path, search: Search | None = None,
              wandb_folder: Path | None = None) -> str:
    cells = configurations(runs)
    v = verdict(cells)
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    kind = "Run report" if len(runs) == 1 else "Search report" if search else "Sweep report"
    lines = [f"# {kind}: {sweep_dir.name}", "",
             f"Folder: `{sweep_dir}`  ",
             f"Runs: {len(runs)} (" + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + f"); "
             f"configurations: {len(cells)}", ""]
    judge_top, judge_section = _judge_markdown(runs)
    lines += judge_top
    lines += _gaming_markdown(runs)
    lines += [f"**No effect:** {sentence}." for sentence in settings_without_effect(cells)]
    lines += [""] if lines[-1] != "" else []
    lines += _seeds_markdown(cells)
    lines += [f"**Best configuration:** {verdict_text(v, markdown=True)}", ""]
    if v.best is not None:
        b = v.best
        lines += [f"Its clip_fraction {b.clip.text()}, final kl {b.kl.text()}, best win rate "
                  f"{b.best_win.text()}; runs " + ", ".join(f"`{r.name}`" for r in sorted(b.used or b.runs, key=lambda r: r.name)), ""]
    if wandb_folder is not None:
        lines += [f"W&B, offline and side by side: `wandb leet {wandb_folder}` (links to every run's log); "
                  f"online: `wandb sync {sweep_dir}/*/wandb/offline-run-*` (one group per sweep, one job type per "
                  "configuration: group by job type to see its seeds together).", ""]
    if search is not None:
        lines += _search_markdown(runs, search)
    top = {id(c) for c in v.top_group}
    lines += [
        f"Best: {BEST_RULE}. Verdict: {VERDICT_RULE}. `±`: half-width of the 95% t-interval over seeds "
        "(t with n-1 degrees of freedom times the seeds' standard deviation over sqrt(n)); with one seed, the half-width "
        "of the Wilson interval of its pairs, marked `pairs`. Pooled: the Wilson interval of every evaluation pair of "
        "every seed (never zero width). `[low, high]`: an interval that would reach past the metric's range (a rate "
        "past 0 or 1, a KL below 0), cut to it. `too few`: 2 seeds, whose t multiplier is 12.7. A configuration is "
        "every config key but the seed (and logging, progress and checkpoint settings); a key a run's config lacks "
        "(a setting added after that run was made) counts as its default." + (
            " k: completions per prompt (generation.samples_per_prompt), judged in k(k-1)/2 pairs per prompt "
            "(2: the classic pair)." if shows_k(runs) else ""), "",
        "Health: the seed's rule on clip_fraction averaged over the last 20% of steps "
        f"(< {CLIP_FRACTION_IDLE:g}: not moving; > {CLIP_FRACTION_HIGH:g}: moving too far; else healthy; "
        "n/a for losses without a clip).", "",
        "Length-controlled: the win rate the judge would give at equal lengths (a logistic fit of its verdicts on the "
        "length difference, read at zero: AlpacaEval 2's model; docs/concepts/evaluation.md); length ratio: the "
        "policy's mean completion length over the reference's. A win rate far above its length-controlled twin was won "
        "by length.", "",
        "## Configurations", "",
        "| configuration | final win rate (mean ± 95%, n seeds) | pooled pairs (95% Wilson) | top group | length-controlled "
        f"| length ratio | best win rate | clip_fraction (last 20%) | final kl ({kl_units(runs)}) | health | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ranked = rank(cells)
    for c in ranked + sorted((c for c in cells if c not in ranked), key=lambda c: c.label):
        health = ", ".join(sorted({r.health for r in (c.used or c.runs)}))
        unfinished = "" if c.finished or c.win.mean is None else " (unfinished)"
        lines.append(f"| {c.label} | {c.win_text()}{unfinished} | {c.pooled_text()} | {'yes' if id(c) in top else ''} "
                     f"| {c.win_lc.text()} | {c.length_ratio.text('{:.2f}')} | {c.best_win.text()} | {c.clip.text()} | {c.kl.text()} | {health} | {len(c.runs)} |")
    with_k = shows_k(runs)  # a column of its own only where k is not the classic pair's 2 for every run
    lines += [
        "", "## Runs", "",
        f"| run | epsilon | beta | loss_type | advantage{' | k' if with_k else ''} | seed | final win rate (95% interval) "
        "| length-controlled (95%) | length ratio | held-out judge win rate (95%) | best win rate | clip_fraction (last 20%) "
        f"| final kl ({kl_units(runs)}) | health "
        "| EOS rate (reference) | steps | wall time (s) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if with_k else ""),
    ]
    for r in sorted(runs, key=lambda r: r.name):
        steps = f"{r.steps}/{r.iters}" if r.iters else str(r.steps)
        status = r.status + (f": {r.error}" if r.error else "")
        k = f" | {_fmt(r.k)}" if with_k else ""
        lines.append(
            f"| `{r.name}` | {_fmt(r.epsilon)} | {_fmt(r.beta)} | {r.loss_type or '-'} | {r.advantage or '-'}{k} | {_fmt(r.seed)} "
            f"| {_win_rate_text(r)} | {_win_rate_lc_text(r)} | {_fmt(r.length_ratio, '{:.2f}')} | {_held_out_text(r)} "
            f"| {_fmt(r.best_win_rate, '{:.3f}')} | {_fmt(r.clip_fraction, '{:.3f}')} "
            f"| {_fmt(r.final_kl, '{:.4g}')} | {r.health} | {_fmt(r.eos_rate, '{:.2f}')} ({_fmt(r.ref_eos_rate, '{:.2f}')}) | {steps} | {_fmt(r.wall_seconds, '{:.1f}')} | {status} |")
    lines += judge_section
    lines += _adaptive_kl_markdown(runs)
    unfinished = [r for r in runs if r.status != "finished"]
    if unfinished:
        lines += ["", "## Runs that did not finish", ""]
        lines += [f"- `{r.name}`: {r.status}" + (f" ({r.error})" if r.error else "") + f", {r.steps} steps logged"
                  for r in unfinished]
        lines += ["", "Run the same sweep again with `hydra.sweep.dir=` this folder to finish them "
                  "(finished runs are skipped, killed ones resume from their last checkpoint)."]
    if images:
        lines += ["", "## Figures", ""]
        for image in images:
            rel = os.path.relpath(image, out_dir)
            lines += [f"![{image.stem}]({rel})", ""]
    return "\n".join(lines).rstrip() + "\n"
