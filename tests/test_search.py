"""Optuna searches over epsilon x beta (the hparams_search group, hydra-optuna-sweeper) on the
tiny model: one objective and two, what they return, what ppo-report makes of them, and a
search whose every trial fails."""

import json

import pytest
import yaml

from conftest import compose, run_cli, small_run_overrides
from ppo.tools.report import main as report_main
from ppo.tools.sweep import SweepJobFailed, objective_values

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


def _trial_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())


def test_objectives_are_a_float_or_a_tuple_and_missing_ones_fail_the_trial():
    summary = {"eval": {"eval/win_rate": 0.75}, "final": {"kl": 0.2, "eval/win_rate": 0.5}}
    assert objective_values(summary, ["eval/win_rate"]) == 0.75  # the last evaluation wins over the last row
    assert objective_values(summary, ["eval/win_rate", "kl"]) == (0.75, 0.2)
    with pytest.raises(SweepJobFailed, match="'kl'"):
        objective_values({"eval": {"eval/win_rate": 0.75}, "final": {"kl": None}}, ["eval/win_rate", "kl"])


def test_search_configs_compose_as_multiruns_with_their_directions():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from ppo.resources import config_dir
    from ppo.train.config import register

    register()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        single = hydra_compose("train", overrides=["hparams_search=eps_beta_win_rate"], return_hydra_config=True)
        pareto = hydra_compose("train", overrides=["hparams_search=eps_beta_pareto"], return_hydra_config=True)
    assert single.hydra.mode.name == "MULTIRUN" and single.hydra.sweeper.direction == "maximize"
    assert list(single.objectives) == ["eval/win_rate"]
    assert list(pareto.hydra.sweeper.direction) == ["maximize", "minimize"] and list(pareto.objectives) == ["eval/win_rate", "kl"]
    assert set(pareto.hydra.sweeper.params) == {"loss.epsilon", "loss.beta"}
    assert compose([]).objectives == ["eval/win_rate"]  # a plain run still returns its win rate


def _hand_made_search(root, trials, seeds_per_trial):
    """Run folders as a two-objective search leaves them: TRIAL/seed=K with the sweeper in .hydra/hydra.yaml."""
    import json

    from test_report import make_run

    for number, (epsilon, beta, wins, kls) in enumerate(trials):
        for seed, (win, kl) in enumerate(zip(wins, kls)):
            name = f"loss.beta={beta},loss.epsilon={epsilon}" + (f"/seed={seed}" if seeds_per_trial > 1 else "")
            run = make_run(root, name, epsilon, beta, [0.5, win], [0.1] * 10, [kl] * 10, pairs=64, seed=seed)
            config = run / ".hydra" / "config.yaml"
            config.write_text(config.read_text() + f"objectives: [eval/win_rate, kl]\nseeds_per_trial: {seeds_per_trial}\n")
            (run / ".hydra" / "hydra.yaml").write_text(
                "hydra:\n  sweeper:\n    _target_: hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper\n"
                "    direction: [maximize, minimize]\n    study_name: s\n    n_trials: 2\n"
                "    sampler: {_target_: optuna.samplers.NSGAIISampler}\n"
                f"  job:\n    num: {number}\n")
            summary = json.loads((run / "summary.json").read_text())
            summary["final"] = {"kl": kl}
            (run / "summary.json").write_text(json.dumps(summary))


def test_pareto_plot_has_error_bars_and_a_trial_averages_its_seeds(tmp_path, capsys):
    import matplotlib.figure
    from matplotlib.container import ErrorbarContainer

    root = tmp_path / "search"
    _hand_made_search(root, [(0.1, 0.1, (0.6, 0.7, 0.8), (0.2, 0.3, 0.4)), (0.3, 0.5, (0.5, 0.5, 0.6), (0.05, 0.1, 0.15))], 3)
    saved = {}
    original = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        saved[str(path).rsplit("/", 1)[-1]] = fig
        return original(fig, path, *args, **kwargs)

    matplotlib.figure.Figure.savefig = keep
    try:
        assert report_main([str(root)]) == 0
    finally:
        matplotlib.figure.Figure.savefig = original
    out = capsys.readouterr().out
    assert "search: 2 trials, Pareto front of 2" in out  # 6 runs, 2 trials of 3 seeds each
    assert "eval/win_rate=0.7 (0.452-0.948), kl=0.3 (0.0516-0.548)" in out  # means with t-intervals (t=4.303)
    report = (root / "report.md").read_text()
    assert "3 seeds per trial, objectives averaged over them" in report
    row = next(line for line in report.splitlines() if line.startswith("| 0 |"))
    assert "| 0.7 (0.452-0.948) | 0.3 (0.0516-0.548) | 3 | yes | finished |" in row
    ax = saved["pareto_front.png"].axes[0]
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars and all(c.has_xerr and c.has_yerr for c in bars)
    spans = sorted(round(seg[1][1] - seg[0][1], 3) for seg in bars[0].lines[2][1].get_segments())
    # the win rates' 95% t-intervals (t = 4.303): 2 * 4.303 * 0.0577 / sqrt(3) and 2 * 4.303 * 0.1 / sqrt(3)
    assert spans == [0.287, 0.497]
    assert "95% t-intervals over 3 seeds per trial" in ax.get_title()


def _run_search(tmp_path, tiny_model_dir, prompts_file, name, *extra):
    sweep_dir = tmp_path / name
    args = [f"hparams_search={name}", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep_dir}",
            *small_run_overrides(tiny_model_dir, prompts_file, **{"train.iters": 2}), *extra]
    return sweep_dir, run_cli(args)


@pytest.mark.slow
def test_single_objective_search_maximizes_the_win_rate(tmp_path, tiny_model_dir, prompts_file, capsys):
    sweep_dir, result = _run_search(tmp_path, tiny_model_dir, prompts_file, "eps_beta_win_rate")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_trial_dirs(sweep_dir)) == 3  # no -m needed: the search config makes it a multirun
    answer = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(answer["best_params"]) == {"loss.epsilon", "loss.beta"} and 0.0 <= answer["best_value"] <= 1.0
    assert report_main([str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    assert "## Search (Optuna)" in report and "eval/win_rate (maximize)" in report and "**Best trial:**" in report
    assert sum(line.startswith("| 0 |") or line.startswith("| 1 |") or line.startswith("| 2 |")
               for line in report.splitlines()) == 3


@pytest.mark.slow
def test_two_objective_search_reports_a_pareto_front(tmp_path, tiny_model_dir, prompts_file, capsys):
    sweep_dir, result = _run_search(tmp_path, tiny_model_dir, prompts_file, "eps_beta_pareto")
    assert result.returncode == 0, result.stderr[-3000:]
    answer = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert answer["solutions"] and all(len(s["values"]) == 2 for s in answer["solutions"])  # the tuple reached Optuna
    assert report_main([str(sweep_dir)]) == 0
    out = capsys.readouterr().out
    front = int(out.split("Pareto front of ")[1].split()[0])
    assert front == len(answer["solutions"]) >= 1  # our front and Optuna's agree
    png = sweep_dir / "pareto_front.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "(pareto_front.png)" in (sweep_dir / "report.md").read_text()
    assert not (sweep_dir / "heatmap_win_rate.png").exists()  # continuous values: no grid to draw
    # the study is stored in the sweep folder; Optuna's log lines carry no colour codes off a terminal
    assert (sweep_dir / "optuna.db").is_file() and f"Storage: sqlite:///{sweep_dir}/optuna.db" in result.stdout + result.stderr
    assert "\x1b[" not in result.stdout + result.stderr
    # the folders and the closing lines carry no 17-digit floats
    assert all(len(part.split("=")[1]) <= 10 for d in _trial_dirs(sweep_dir) for part in d.name.split(","))
    assert "sweep folder: " in result.stdout and f"next: ppo-report {sweep_dir}" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eps_beta_win_rate", "eps_beta_pareto"])
def test_a_search_whose_every_trial_fails_exits_non_zero(tmp_path, tiny_model_dir, prompts_file, name):
    objectives = "[no_such_metric]" if name == "eps_beta_win_rate" else "[eval/win_rate,no_such_metric]"
    sweep_dir, result = _run_search(tmp_path, tiny_model_dir, prompts_file, name, f"objectives={objectives}",
                                    "hydra.sweeper.n_trials=2", "train.iters=1")
    assert result.returncode == 1  # Optuna alone: a traceback (one objective) or exit 0 (two)
    # the first trial's failure as Optuna logs it; the last one's on the closing error line
    assert result.stdout.count("Failed experiment: objective 'no_such_metric' is missing") == 1
    assert "error: every trial of the search" in result.stderr and "Traceback" not in result.stderr
    assert "the last one: objective 'no_such_metric' is missing" in result.stderr


@pytest.mark.slow
def test_a_search_resumes_from_its_stored_study_and_averages_seeds_per_trial(tmp_path, tiny_model_dir, prompts_file,
                                                                            capsys):
    import optuna

    sweep_dir, first = _run_search(tmp_path, tiny_model_dir, prompts_file, "eps_beta_win_rate", "hydra.sweeper.n_trials=1",
                                   "seeds_per_trial=2")
    assert first.returncode == 0, first.stderr[-3000:]
    (trial,) = [p for p in sweep_dir.iterdir() if p.is_dir()]  # the trial, its seeds in seed=K below
    wins = [json.loads((trial / f"seed={k}" / "summary.json").read_text())["eval"]["eval/win_rate"] for k in (0, 1)]
    answer = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert answer["best_value"] == pytest.approx(sum(wins) / 2)  # the trial returned its seeds' mean
    lines = first.stdout.splitlines()
    assert sum(line.startswith("  #0 ") and "/seed=" in line and "eval win rate" in line for line in lines) == 2
    # The same command into the same folder: the stored study goes on, with new settings.
    _, again = _run_search(tmp_path, tiny_model_dir, prompts_file, "eps_beta_win_rate", "hydra.sweeper.n_trials=1",
                           "seeds_per_trial=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "search: resuming the study 'eps_beta_win_rate'" in again.stdout and "(1 trials so far" in again.stdout
    study = optuna.load_study(study_name="eps_beta_win_rate", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [t.number for t in study.trials] == [0, 1] and study.trials[0].params != study.trials[1].params
    assert len([p for p in sweep_dir.iterdir() if p.is_dir() and p.name.startswith("loss.")]) == 2
    assert report_main([str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    assert "Study: `optuna.db` in this folder (2 complete)" in report and "2 seeds per trial" in report
    assert [line.split(" | ")[0] for line in report.splitlines() if line.startswith(("| 0 |", "| 1 |"))] == ["| 0", "| 1"]


def test_seeds_per_trial_outside_a_search_is_one_line(tmp_path, tiny_model_dir, prompts_file):
    result = run_cli([*small_run_overrides(tiny_model_dir, prompts_file), "seeds_per_trial=2",
                      f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: seeds_per_trial=2 averages the seeds of an Optuna trial")
    assert "Traceback" not in result.stderr and "seed=0,1,2" in result.stderr
