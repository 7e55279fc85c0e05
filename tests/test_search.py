"""Optuna searches over epsilon x beta (the hparams_search group, hydra-optuna-sweeper) on the
tiny model: one objective and two, what they return, what ppo-report makes of them, and a
search whose every trial fails."""

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
