"""Console entry points. Each one makes sure MLX runs on a fast BLAS before importing it."""

from __future__ import annotations

import sys

from ppo.platform.blas import ensure_fast_blas


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def print_outcome(summary: dict, run_dir: str) -> None:
    """The end of a single run: eval win rate against the reference, EOS, KL, and the plots."""
    from pathlib import Path

    from ppo.tools.report import write_report

    ev, final = summary.get("eval") or {}, summary.get("final") or {}
    if ev:
        print(f"eval win rate against the reference: {ev['eval/win_rate']:.3f} "
              f"(95% interval {ev['eval/win_rate_low']:.2f}-{ev['eval/win_rate_high']:.2f}, {ev['eval/pairs']} pairs); "
              f"completions ending by themselves: {ev['eval/eos_rate']:.2f} (reference {ev['eval/ref_eos_rate']:.2f}); "
              f"KL to the reference: {final.get('kl', float('nan')):.3g}")
    write_report(Path(run_dir))
    print(f"run folder: {run_dir} (metrics.jsonl, summary.json, adapters); plots: {run_dir}/curves_*.png")


def train_main() -> None:
    """`ppo-train [overrides]`: a Hydra app over conf/train.yaml."""
    ensure_fast_blas()
    if any(arg.startswith("+experiment=") for arg in sys.argv[1:]):
        _fail("write experiment=NAME without the +: `experiment` is already in the defaults list (conf/train.yaml)")
    _prepare_ranks()
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from ppo.resources import config_dir
    from ppo.train.config import register

    register()

    # The packaged configs; a user's --config-dir DIR adds groups and experiments on top.
    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
    def _train(cfg) -> float | None:
        from hydra.types import RunMode

        from ppo.errors import (CheckpointError, ConfigError, RankTimeout, SweepJobFailed, TrainingInterrupted,
                                TrainingStopped)
        from ppo.tools.sweep import record_failure
        from ppo.train.loop import train

        hydra_cfg = HydraConfig.get()
        run_dir, multirun = hydra_cfg.runtime.output_dir, hydra_cfg.mode == RunMode.MULTIRUN
        try:
            summary = train(cfg, run_dir)
        except (ConfigError, CheckpointError) as err:
            if multirun:  # Hydra records the job as failed, runs the others, and exits 1
                record_failure(run_dir, err)
                raise SweepJobFailed(f"{run_dir}: {err}") from None
            _fail(str(err))
        except RankTimeout as err:
            if not err.reported:
                print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except (TrainingInterrupted, TrainingStopped) as err:
            _fail(str(err), err.exit_code)
        except Exception as err:
            if multirun:
                record_failure(run_dir, err)
            raise
        from ppo.train.distributed import launch_rank

        if not multirun and launch_rank() == 0:  # one outcome per run, from the rank that wrote it
            print_outcome(summary, run_dir)
        return (summary.get("eval") or {}).get("eval/win_rate")

    _train()


def _prepare_ranks() -> None:
    """Under mlx.launch every rank runs this same command: they must agree on one run folder
    (rank 0's clock names it when hydra.run.dir is not given), and only rank 0 may write
    Hydra's files there (.hydra/, train.log); the other ranks log to the console."""
    from ppo.train.distributed import World, launch_rank, launched

    if not launched():
        return
    args = sys.argv[1:]
    if any(a in ("-m", "--multirun") for a in args):
        _fail("a sweep (-m) cannot run under mlx.launch: launch each job of the sweep with its own mlx.launch command")
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in args):
        import time

        import mlx.core as mx

        world = World.current()
        stamp = world.all_sum(mx.array(int(time.time()) if world.is_main else 0, dtype=mx.int64)).item()
        extra.append(f"hydra.run.dir={time.strftime('outputs/%Y-%m-%d/%H-%M-%S', time.localtime(stamp))}")
    if launch_rank() > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    sys.argv += extra


def report_main() -> None:
    """`ppo-report SWEEP_DIR`: report.md and PNGs of a sweep (no MLX needed)."""
    from ppo.tools.report import main

    sys.exit(main())


def reproduce_main() -> None:
    """`ppo-reproduce RUN_DIR [overrides]`: re-run a run from its saved config."""
    ensure_fast_blas()
    from ppo.tools.reproduce import main

    sys.exit(main())


def doctor_main() -> None:
    """`ppo-doctor`: one JSON object about the install, MLX, its BLAS and matmul speed."""
    ensure_fast_blas()
    from ppo.tools.doctor import main

    sys.exit(main())


if __name__ == "__main__":
    train_main()
