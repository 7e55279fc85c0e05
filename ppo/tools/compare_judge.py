"""ppo-compare's judge: run A's judge config changed by `--judge` the way a ppo-train command line
changes the judge group (`judge_config`), built into a pipeline whose records stay in memory
(`build`, `Records`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ppo.errors import CompareError, ConfigError

if TYPE_CHECKING:
    from ppo.tools.compare import Run

# The judge pipeline's keys: present in every judge group file (conf/judge_pipeline.yaml), and
# settable with --judge KEY=VALUE even on a config saved before one of them existed.
PIPELINE_KEYS = ("order", "tie_threshold", "on_order_disagreement", "include_reasoning", "reasoning_markers")


def judge_choices() -> list[str]:
    from ppo.resources import config_dir

    return sorted(p.stem for p in (config_dir() / "judge").glob("*.yaml"))


def judge_config(base, overrides: list[str]) -> dict:
    """Run A's judge node (`base`) changed by `--judge` values, as on a ppo-train command line:

    - `NAME` or `judge=NAME`: the judge group option conf/judge/NAME.yaml replaces A's judge;
    - `KEY=VALUE` or `judge.KEY=VALUE`: one key of the judge (after the choice, whatever the
      order), the value read as YAML; `+KEY=VALUE` adds a key the config lacks.

    `order` is `both` unless a `--judge order=...` says otherwise."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    choices, keys = [], []
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.strip()
        if not sep:
            choices.append(key)
        elif key in ("judge", "+judge"):
            choices.append(value.strip())
        else:
            keys.append((key, value))
    if len(choices) > 1:
        raise CompareError(f"--judge names {len(choices)} judges ({', '.join(choices)}): choose one")
    if choices:
        choice = choices[0]
        if choice not in judge_choices():
            raise CompareError(f"--judge {choice}: no such judge; choose one of {', '.join(judge_choices())}, "
                               "or change run A's judge with KEY=VALUE")
        from ppo.train.config import compose_train

        base = compose_train([f"judge={choice}"]).judge
    node = OmegaConf.create(OmegaConf.to_container(base, resolve=False) if OmegaConf.is_config(base) else dict(base))
    node.order = "both"
    for key, value in keys:
        adding = key.startswith("+")
        name = key.lstrip("+")
        name = name[len("judge."):] if name.startswith("judge.") else name
        if not name or name.startswith("judge") or "/" in name:
            raise CompareError(f"--judge {key}={value}: give a judge key (order=fixed, judge.target_words=10) or a judge "
                               f"name ({', '.join(judge_choices())})")
        if not adding and name.split(".")[0] not in node and name not in PIPELINE_KEYS:
            raise CompareError(f"--judge {key}={value}: the judge ({node.get('_target_')}) has no key {name!r} "
                               f"(its keys: {', '.join(k for k in node if not str(k).startswith('_'))}); "
                               f"write +{name}={value} to add one")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        try:
            OmegaConf.update(node, name, parsed, merge=True, force_add=True)
        except OmegaConfBaseException as err:
            raise CompareError(f"--judge {key}={value}: {str(err).splitlines()[0]}") from None
    return node


def build(judge_node, run: Run, seed: int):
    """The judge pipeline (no judgments.jsonl: its records are kept in memory, `Records`)."""
    from ppo.judges import build_judge

    try:
        judge = build_judge(judge_node, run_dir=None, seed=seed, base_path=run.cfg.model.path, dtype=run.cfg.model.dtype)
    except ConfigError as err:
        raise CompareError(str(err)) from None
    except Exception as err:  # Hydra's instantiate: an unknown keyword, a missing class
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        raise CompareError(f"could not build the judge {judge_node.get('_target_')}: {reason}; check --judge") from None
    judge.log = Records()
    return judge


class Records:
    """Takes the place of the pipeline's JudgmentLog: keeps the records (orders, raw answers) in memory."""

    path = None

    def __init__(self):
        self.rows: list[dict] = []

    def write(self, records: list[dict]) -> None:
        self.rows.extend(records)

    def close(self) -> None:
        pass
