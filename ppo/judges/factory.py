"""Build the configured judge: instantiate ``judge._target_`` and wrap it in the pipeline.

The judge config node is an untyped dict, so the wrapper's own keys (``order``,
``tie_threshold``, ``on_order_disagreement``, ``include_reasoning``, ``reasoning_markers``;
defaults: JudgePipeline's) are popped here before ``_target_`` is instantiated, and validated with
one-line errors. When ``judge.model`` is the policy's base model, an LLM judge is handed
the policy itself (read with its adapters switched off) instead of loading a second copy.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

import inspect

from ppo.errors import ConfigError
from ppo.io import JUDGMENTS_FILE
from ppo.judges.pipeline import JudgePipeline, check_wrapper_options
from ppo.judges.record import GatheredJudgmentLog, JudgmentLog

# The pipeline's own keys of a judge config, with JudgePipeline's defaults (one source;
# conf/judge_pipeline.yaml declares the same keys for Hydra, checked by tests/test_configs.py).
WRAPPER_DEFAULTS = {k: p.default for k, p in inspect.signature(JudgePipeline).parameters.items()
                    if k in ("order", "tie_threshold", "on_order_disagreement", "include_reasoning", "reasoning_markers")}
LLM_TARGET = "ppo.judges.llm.LLMJudge"
HUMAN_TARGET = "ppo.judges.human.HumanJudge"


def same_model(a: str | None, b: str | None) -> bool:
    """Whether two model ids / paths name the same model (local folders compared resolved)."""
    if not a or not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return a == b


def build_judge(judge_cfg, *, run_dir=None, seed: int = 0, base=None, base_path: str | None = None,
                tokenizer=None, world=None, dtype: str | None = None, log_file: str = JUDGMENTS_FILE) -> JudgePipeline:
    """The judge the trainer calls: ``judge(pairs, step=None, phase="train") -> Verdicts``.

    Records go to ``run_dir/log_file`` (judgments.jsonl; none when run_dir is None); records already
    there (a resumed run) pre-fill the cache. ``base``: a loaded model that computes
    ``base_path`` unchanged with its adapters off (``ppo.train.models.frozen_base``); an LLM judge
    of that same model shares its weights instead of loading a copy. ``dtype``: the run's
    ``model.dtype``, which an LLM judge loading its own model is cast to as well.
    """
    from hydra.utils import get_class, instantiate

    cfg = OmegaConf.to_container(judge_cfg, resolve=True) if OmegaConf.is_config(judge_cfg) else dict(judge_cfg)
    if "_target_" not in cfg:
        raise ConfigError("invalid judge: a judge config names its class with _target_, e.g. judge=rule")
    wrapper = {k: cfg.pop(k, default) for k, default in WRAPPER_DEFAULTS.items()}
    order, tie_threshold, on_order_disagreement = check_wrapper_options(
        wrapper["order"], wrapper["tie_threshold"], wrapper["on_order_disagreement"])
    target = cfg["_target_"]
    if dtype is not None and target == LLM_TARGET:
        cfg.setdefault("dtype", dtype)  # a judge config's own judge.dtype wins
    distributed = world is not None and world.size > 1
    if distributed and target == HUMAN_TARGET:
        raise ConfigError(f"judge=human cannot run on {world.size} processes (one person, one terminal): "
                          "launch ppo-train without mlx.launch, or pick another judge")
    if base is not None and target == LLM_TARGET and same_model(cfg.get("model", "Qwen/Qwen3-0.6B"), base_path):
        from ppo.train.models import adapters_disabled

        kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")}
        inner = get_class(target)(**kwargs, preloaded=(base, tokenizer), model_context=adapters_disabled)
    else:
        try:
            inner = instantiate(cfg, _convert_="all")
        except Exception as err:  # Hydra wraps the judge's own one-line ConfigError
            cause = err
            while cause.__cause__ is not None:
                cause = cause.__cause__
            if isinstance(cause, ConfigError):
                raise cause from None
            raise
    if run_dir is None:
        log = None
    elif distributed:  # every rank's records, written by rank 0 only
        log = GatheredJudgmentLog(Path(run_dir) / log_file, world)
    else:
        log = JudgmentLog(Path(run_dir) / log_file)
    return JudgePipeline(inner, order=order, tie_threshold=tie_threshold, on_order_disagreement=on_order_disagreement,
                         include_reasoning=wrapper["include_reasoning"], reasoning_markers=wrapper["reasoning_markers"],
                         seed=seed, log=log)
