"""`ppo-report SWEEP_DIR`: one table, heatmaps and training curves for a sweep (no network).

Every folder under SWEEP_DIR that holds `.hydra/config.yaml` is a run (a Hydra run or one
multirun job). From each run it reads the config, `metrics.jsonl` (the plain metrics file; no
wandb needed) and `summary.json` (status, final eval, wall time). Runs whose configs differ only
in the seed (and in logging, progress and checkpoint settings: NOT_CONFIGURATION) are seeds of
one configuration; a key some runs' configs lack (a setting added after they were made) counts
as its default there (`fill_introduced_defaults`), so runs of one setting made by different
versions pool. Labels name the settings that differ, and k (generation.samples_per_prompt) when
it differs or is not 2. Every number of a configuration reads `mean ± half-width (n seeds)`:

- the final eval win rate: the mean over seeds, ± the 95% t-interval over seeds (two seeds or
  more; one seed: the Wilson half-width of its pairs), and the pooled Wilson interval of every
  evaluation pair of every seed (never zero width);
- the final KL and clip_fraction (last 20% of steps): the mean, ± the t-interval over seeds;
- the final length-controlled win rate (`eval/win_rate_lc`, the win rate at equal lengths) and
  the policy/reference length ratio, the mean ± the t-interval over seeds.

An interval past its metric's range (VALID_RANGE: a rate in [0, 1], a KL never below 0) is cut
to it and written `mean [low, high]`; bands and error bars are cut alike. Two seeds (a t
multiplier of 12.7) are marked `too few` and said so on top, and so is a swept setting whose
values gave identical runs to the last digit (`settings_without_effect`). KL labels name the
runs' unit: per token (loss.logprob_reduction=mean) or per sequence (sum).

Judge reliability (the summary's `judge` part, `ppo.judges.pipeline.reliability`): per run, how
often the judge's two orders agree, how often the answer shown first wins (95% Wilson interval;
0.5 is no bias) and the tie rate; a judge whose orders agree on fewer than GUESSING_AGREEMENT of
the pairs is reported as guessing, on top of the report, since its win rates measure nothing.

It writes into SWEEP_DIR (or --out):

- `report.md`: the verdict, one row per configuration, one row per run, the runs that did not finish;
- `heatmap_win_rate.png`, `heatmap_win_rate_lc.png`, `heatmap_clip_fraction.png`, `heatmap_kl.png`: epsilon x beta, each
  cell `mean ± half-width (n seeds)` (drawn when the runs span more than one epsilon x beta cell);
- `compare_runs.png`: one bar per run for the same three numbers (loss types, advantages);
- `curves_win_rate.png`, `curves_kl.png`, `curves_clip_fraction.png`: one line per run, or per
  configuration with a seed band (the t-interval over seeds) when a configuration has several
  seeds; a single seed's win rates carry 95% Wilson bands; rates on [0, 1];
- for an Optuna search (hparams_search=...): a trial table (a trial's seeds averaged, with 95%
  intervals; trial numbers from the study stored in SWEEP_DIR/optuna.db) and, for two
  objectives, the Pareto front with error bars (`pareto_front.png`);
- `wandb/`: links to every run's offline W&B log, for `wandb leet SWEEP_DIR/wandb`.

The verdict: one rule (BEST_RULE, `rank`) names the best configuration, and it is said to beat
the runner-up only when their 95% intervals do not overlap (VERDICT_RULE: the interval is the
union of the across-seed t-interval and the pooled Wilson interval); otherwise the report says
"no clear winner" and lists the top group, every configuration it cannot tell apart from the
best. report.md, stdout and the heatmap's boxes (one per top-group cell) all use `verdict`.

The health verdict is the seed's rule on clip_fraction, taken over the last 20% of steps:
about 0 = the policy is not moving, above 0.3 = it moves too far per step, else healthy.
A run with no summary.json is `running-or-killed`; one with no metrics yet is
`not-started`. Nothing in a run folder is ever written.

The package, by what each module holds: `loading` (run folders into `Run`s), `stats` (configurations,
their intervals and the verdict), `figures`, `search` (the Optuna view), `markdown` (report.md's
text), `writing` (`write_report`) and `cli` (`ppo-report`, also `python -m ppo.tools.report`).
"""

from ppo.tools.report.cli import main
from ppo.tools.report.figures import CURVES, HEATMAPS, compare_runs, curves, heatmap
from ppo.tools.report.loading import (LAST_FRACTION, NOT_CONFIGURATION, SKIP_DIRS, Run, configuration_of,
                                      fill_introduced_defaults, find_run_dirs, health_verdict, kl_units, load_run,
                                      load_runs, result_line)
from ppo.tools.report.search import Search, Trial, load_search, pareto_front, pareto_plot, scored, trials
from ppo.tools.report.stats import (BEST_RULE, MIN_SEEDS, NON_NEGATIVE, RATE, UNBOUNDED, VALID_RANGE, VERDICT_RULE,
                                    Cell, Stat, Verdict, configurations, rank, settings_without_effect, valid_range,
                                    verdict, verdict_text)
from ppo.tools.report.writing import REPORT_FILE, link_wandb_runs, write_report

__all__ = [
    "BEST_RULE", "CURVES", "HEATMAPS", "LAST_FRACTION", "MIN_SEEDS", "NON_NEGATIVE", "NOT_CONFIGURATION", "RATE",
    "REPORT_FILE", "SKIP_DIRS", "UNBOUNDED", "VALID_RANGE", "VERDICT_RULE", "Cell", "Run", "Search", "Stat", "Trial",
    "Verdict", "compare_runs", "configuration_of", "configurations", "curves", "fill_introduced_defaults",
    "find_run_dirs", "health_verdict",
    "heatmap", "kl_units", "link_wandb_runs", "load_run", "load_runs", "load_search", "main", "pareto_front",
    "pareto_plot", "rank", "result_line", "scored", "settings_without_effect", "trials", "valid_range", "verdict",
    "verdict_text", "write_report",
]
