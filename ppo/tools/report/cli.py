"""`ppo-report SWEEP_DIR`: one table, heatmaps and training curves for a sweep (no network).

The command line of `write_report` (ppo.tools.report describes what it reads and writes): the
report's path, the verdict and the plain lines on top printed on stdout; exit code 2 with one
line for a folder it cannot report on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ppo.errors import ReportError
from ppo.tools.report.markdown import _seeds_markdown
from ppo.tools.report.search import load_search, pareto_front, trials
from ppo.tools.report.stats import VERDICT_RULE, _fmt, configurations, settings_without_effect, verdict_text
from ppo.tools.report.writing import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ppo-report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun sweep folder (or any folder holding run folders)")
    parser.add_argument("--out", type=Path, default=None, help="where report.md and the PNGs go (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        report, runs, v = write_report(args.sweep_dir, args.out)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a read-only or full folder: nothing of the runs themselves is touched
        where = err.filename or (args.out or args.sweep_dir)
        print(f"error: cannot write the report: {where} ({err.strerror or err}); give a writable folder with "
              f"--out DIR (ppo-report {args.sweep_dir} --out DIR)", file=sys.stderr)
        return 2
    finished = sum(r.status == "finished" for r in runs)
    print(f"{len(runs)} runs ({finished} finished) in {len(configurations(runs))} configurations; report: {report}")
    print(f"best configuration: {verdict_text(v)}")
    if v.best is not None:
        used = sorted(v.best.used or v.best.runs, key=lambda r: r.name)
        print(f"  {'run' if len(used) == 1 else 'runs'}: " + ", ".join(str(r.path) for r in used))
    print(f"  test: {VERDICT_RULE}")
    cells = configurations(runs)
    for sentence in settings_without_effect(cells):
        print(f"no effect: {sentence}")
    for line in _seeds_markdown(cells)[:1]:
        print(line.replace("**Too few seeds:**", "too few seeds:"))
    search = load_search(Path(args.sweep_dir).resolve(), runs)
    if search is not None and len(search.objectives) > 1:
        front = pareto_front(runs, search)
        print(f"search: {len(trials(runs, search))} trials, Pareto front of {len(front)} on "
              + " x ".join(f"{k} ({d})" for k, d in zip(search.objectives, search.directions))
              + (f"; plot: {Path(report).parent / 'pareto_front.png'}" if front else ""))
        for t in sorted(front, key=lambda t: t.values[1]):
            print("  " + ", ".join(f"{k}={t.text(i)}" for i, k in enumerate(search.objectives))
                  + f": epsilon={_fmt(t.epsilon)} beta={_fmt(t.beta)} (trial {_fmt(t.number)})")
    return 0
