"""Console entry points. Each one makes sure MLX runs on a fast BLAS before importing it."""

from __future__ import annotations

import sys

from ppo.blas import ensure_fast_blas


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def train_main() -> None:
    """`ppo-train [overrides]`: a Hydra app over conf/train.yaml."""
    ensure_fast_blas()
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from ppo.config import PROJECT_ROOT, ConfigError, register

    register()

    @hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="train")
    def _train(cfg) -> float | None:
        from ppo.checkpoint import CheckpointError
        from ppo.trainer import TrainingInterrupted, TrainingStopped, train

        try:
            summary = train(cfg, HydraConfig.get().runtime.output_dir)
        except (ConfigError, CheckpointError) as err:
            _fail(str(err))
        except (TrainingInterrupted, TrainingStopped) as err:
            _fail(str(err), err.exit_code)
        return (summary.get("eval") or {}).get("eval/win_rate")

    _train()


def doctor_main() -> None:
    """`ppo-doctor`: one JSON object about MLX, its BLAS and matmul speed."""
    ensure_fast_blas()
    from ppo.doctor import main

    main()


if __name__ == "__main__":
    train_main()
