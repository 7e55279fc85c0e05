"""`ppo-reproduce SOURCE [overrides...]`: re-run a run from its saved config.

SOURCE is one of:
- a run folder: its `.hydra/config.yaml` (the config Hydra composed for that run, saved
  before training started) is loaded as it is, so later edits to `conf/` change nothing;
- a run folder without `.hydra/` but with an offline wandb log, or the log itself
  (`RUN_DIR/wandb/offline-run-*/run-*.wandb`): the config wandb stored, read with wandb's
  own reader (`wandb leet inspect --summary --json FILE`);
- `wandb:ENTITY/PROJECT/RUN_ID`: the config of an online wandb run (`wandb.Api().run(...).config`).

Overrides are `key=value` on the typed schema (`loss.beta=0.05`, `train.iters=50`,
`judge.positive=[good,kind]`) or `group=option` (`logger=none`, `judge=length`, `epsilon=tight`:
the option's file replaces that part of the saved config, as a fresh run would compose it); a
misspelt key ("did you mean"), a wrong type or an unknown option is a one-line error.
`hydra.run.dir=DIR` (or `--out DIR`) picks the output folder; the default is `RUN_DIR-reproduce` (then `-reproduce-2`, ...):
an existing folder is never written into, except a stopped reproduction of the same source and
overrides (its `reproduce.json`), which the command with `--out DIR` continues from its newest
checkpoint (the command a stop prints: `ppo.train.run_folder.continue_command`). The new folder gets `.hydra/config.yaml` and
`.hydra/overrides.yaml` like any run, so `ppo-report` reads it and it can be reproduced
in turn, plus `reproduce.json` naming its source.

On the same machine (same packages, BLAS and device) the new `metrics.jsonl` equals the
original one except for measurements of the machine (timing/*, tokens_per_second,
memory/*, judge/seconds): the trainer re-seeds from (seed, step) at every step.
It checks so at the end: "reproduced exactly: N steps ...", or an error line naming the first
step and key that differ, exit 1 (unless the overrides change the run, which it then names).
It also compares the saved config with the one the original trained with (its newest
checkpoint's record): a `.hydra/config.yaml` edited after the run is named key by key, exit 1.
"""

from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

from ppo.errors import ReproduceError
from ppo.metrics import comparable  # noqa: F401 (re-exported: tests and tools compare rows)


def wandb_run_files(run_dir: Path) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(Path(run_dir) / "wandb" / "offline-run-*" / "run-*.wandb")))


def _strip_wandb_keys(config: dict) -> dict:
    """wandb adds `_wandb` (and older versions wrap values as {"value": ...})."""
    out = {}
    for k, v in config.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v:
            v = v["value"]
        out[k] = v
    return out


def config_from_wandb_file(path: Path) -> dict:
    """The config stored in an offline wandb log, read by wandb's own reader."""
    from ppo.train.wandb_offline import wandb_cli

    try:
        out = subprocess.run([*wandb_cli(), "leet", "inspect", "--summary", "--json", str(path)],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as err:
        raise ReproduceError(f"cannot run wandb to read {path} ({err})") from None
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise ReproduceError(f"wandb could not read {path}: {reason}")
    try:
        record = json.loads(out.stdout)
    except ValueError:
        raise ReproduceError(f"wandb leet inspect gave no JSON for {path}") from None
    config = record.get("config") or {}
    if not config:
        raise ReproduceError(f"the wandb log {path} holds no config")
    return _strip_wandb_keys(config)


def config_from_wandb_api(run_path: str) -> dict:
    """The config of an online wandb run, ENTITY/PROJECT/RUN_ID (needs a key and the network)."""
    try:
        import wandb

        config = dict(wandb.Api().run(run_path).config)
    except Exception as err:  # no key, no network, no such run
        raise ReproduceError(f"cannot fetch wandb run {run_path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return _strip_wandb_keys(config)


def load_source(source: str) -> tuple[dict, list[str], str, Path | None]:
    """(config as a plain dict, the original overrides, a description, the run folder or None)."""
    from omegaconf import OmegaConf

    if source.startswith("wandb:"):
        return config_from_wandb_api(source[len("wandb:"):]), [], f"wandb run {source[len('wandb:'):]}", None
    path = Path(source)
    if path.is_file() and path.suffix == ".wandb":
        run_dir = path.parent.parent.parent if path.parent.parent.name == "wandb" else None
        return config_from_wandb_file(path), [], f"wandb log {path}", run_dir
    if not path.is_dir():
        raise ReproduceError(f"{source} is not a run folder, a .wandb file or wandb:ENTITY/PROJECT/RUN_ID")
    saved = path / ".hydra" / "config.yaml"
    if saved.is_file():
        try:
            config = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
        except Exception as err:
            raise ReproduceError(f"{saved} is unreadable ({str(err).splitlines()[0]})") from None
        overrides_file = path / ".hydra" / "overrides.yaml"
        overrides = list(OmegaConf.load(overrides_file)) if overrides_file.is_file() else []
        return config, [str(o) for o in overrides], f"run folder {path}", path
    files = wandb_run_files(path)
    if len(files) == 1:
        return config_from_wandb_file(files[0]), [], f"wandb log {files[0]}", path
    if len(files) > 1:
        raise ReproduceError(f"{path} holds {len(files)} wandb logs; name one: {files[-1]}")
    raise ReproduceError(f"{path} is not a run folder (no .hydra/config.yaml and no wandb/offline-run-*/run-*.wandb)")


def build_config(config: dict, overrides: list[str]):
    """The saved config on the typed schema, with `key=value` overrides applied and checked."""
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ppo.train.config import PPOConfig, register

    register()
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(PPOConfig), config)
    except OmegaConfBaseException as err:
        raise ReproduceError(f"the saved config does not fit the schema: {str(err).splitlines()[0]}") from None
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+")
        if not sep or not key:
            raise ReproduceError(f"override {override!r} is not key=value")
        if key.split("/")[0] in NOT_REAPPLIED:
            raise ReproduceError(
                f"override {override!r}: ppo-reproduce re-runs a saved config, and {key} is chosen when a config is "
                f"composed; run `ppo-train {key}={value}` for a new run")
        if key in config_groups():  # logger=none, judge=length, epsilon=tight: the group's option replaces its part
            cfg = apply_group(cfg, key, value, override)
            continue
        if "/" in key or (OmegaConf.select(cfg, key, default=None) is None and "." not in key and key != "judge"):
            from ppo.train.validation import unknown_key_message

            raise ReproduceError(f"override {override!r}: {unknown_key_message(key)}")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            parsed = value
        # A list where the saved config has a node (judge.positive=[good,kind] over the word-list
        # node that older runs saved): the value replaces the node, as it would in a fresh run.
        current = OmegaConf.select(cfg, key, default=None)
        merge = not (OmegaConf.is_config(current) and OmegaConf.is_dict(current) != isinstance(parsed, dict))
        try:
            OmegaConf.update(cfg, key, parsed, merge=merge)
        except OmegaConfBaseException as err:
            reason = str(err).splitlines()[0]
            if "not in" in reason or "is not in struct" in reason:
                from ppo.train.validation import unknown_key_message

                reason = unknown_key_message(key)
            raise ReproduceError(f"override {override!r}: {reason}") from None
    return cfg


# Groups that choose how a run is composed or swept, not a part of the saved config.
NOT_REAPPLIED = ("experiment", "hparams_search", "hydra")
# Groups whose node is replaced whole (free-form: a judge's settings depend on its class).
REPLACED_WHOLE = ("judge", "eval_judge")


def config_groups() -> list[str]:
    """The packaged config groups an override can choose from (`judge`, `logger`, `epsilon`, ...)."""
    from ppo.resources import config_dir

    return sorted(p.name for p in config_dir().iterdir() if p.is_dir() and p.name not in NOT_REAPPLIED)


def apply_group(cfg, group: str, option: str, override: str):
    """`cfg` with the group's option applied as a fresh ppo-train would compose it: the option's
    file (with its own defaults) replaces the judge nodes whole, and sets its keys elsewhere
    (`logger=none` sets logger.kind, `epsilon=tight` loss.epsilon); every other saved setting stays."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ppo.resources import config_dir

    if group == "eval_judge" and option in ("null", "none", "None", ""):
        cfg.eval_judge = None
        return cfg
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            part = compose(overrides=[f"+{group}={option}"])
    except HydraException:
        folder = config_dir() / group
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ReproduceError(f"override {override!r}: the {group} group has no option {option!r}; choose one of {options}") from None
    try:
        for key in part:
            if key in REPLACED_WHOLE:
                cfg[key] = part[key]
            else:
                cfg = OmegaConf.merge(cfg, {key: part[key]})
    except OmegaConfBaseException as err:
        raise ReproduceError(f"override {override!r}: {str(err).splitlines()[0]}") from None
    return cfg


def default_output(run_dir: Path | None) -> Path:
    base = Path(f"{run_dir}-reproduce") if run_dir else Path("outputs") / "reproduce"
    candidate, n = base, 2
    while candidate.exists():
        candidate = Path(f"{base}-{n}")
        n += 1
    return candidate


def _flat_differences(original: dict, current: dict, keys: list[str], limit: int = 3) -> str:
    """`loss.beta (0.1 there, 0.5 here)` for the first `limit` keys, and how many more."""
    shown = ", ".join(f"{k} ({original.get(k)!r} there, {current.get(k)!r} here)" for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def original_fingerprint(run_dir: Path | None) -> tuple[dict, Path] | None:
    """(the config the source run trained with, as its newest checkpoint recorded it, that
    checkpoint), or None when the source has no checkpoint. The checkpoint is written by the
    trainer itself, so an edit of `.hydra/config.yaml` after the run does not change it."""
    from ppo.errors import CheckpointError
    from ppo.train import checkpoint

    path = checkpoint.latest(run_dir) if run_dir is not None else None
    if path is None:
        return None
    try:
        return checkpoint.read_state(path).config_fingerprint, path
    except CheckpointError:
        return None


def first_difference(original: list[dict], new: list[dict]) -> tuple[int, str, object, object] | None:
    """(step, key, original's value, new value) of the first metrics.jsonl row that differs,
    over the steps both runs reached; measurements of the machine (timing, memory) left out.
    Exact: the trainer re-seeds from (seed, step), so the same machine gives the same bits."""
    old_rows, new_rows = ({row.get("step"): comparable(row) for row in rows} for rows in (original, new))
    last = min(max(old_rows, default=0), max(new_rows, default=0))
    for step in range(1, last + 1):
        a, b = old_rows.get(step), new_rows.get(step)
        if a is None or b is None:
            return step, "(the row itself)", "present" if a else "missing", "present" if b else "missing"
        for key in sorted(set(a) | set(b)):
            if a.get(key, "absent") != b.get(key, "absent"):
                return step, key, a.get(key, "absent"), b.get(key, "absent")
    return None


def compared_steps(original: list[dict], new: list[dict]) -> int:
    return min(max((r.get("step", 0) for r in original), default=0), max((r.get("step", 0) for r in new), default=0))


def reproduce_and_compare(source: str, overrides: list[str] | None = None,
                          out: Path | None = None) -> tuple[Path, dict, list[str]]:
    """Re-run SOURCE (with overrides) into a new folder and compare it with the original:
    (folder, summary, verdict) where verdict is [] when the metrics and the config agree with
    the original's (or differ only as the overrides make them), else the lines saying how not."""
    from ppo.io import METRICS_FILE, read_jsonl
    from ppo.train.checkpoint import config_fingerprint, fingerprint_differences

    overrides = list(overrides or [])
    loaded = load_source(source)
    config, run_dir = loaded[0], loaded[3]
    refuse_a_multi_rank_source(run_dir, loaded[1])
    saved = config_fingerprint(build_config(config, []))
    recorded = original_fingerprint(run_dir)
    # Keys the saved config holds other than the original run trained with (a hand edit), and
    # keys the overrides change on purpose.
    edited = fingerprint_differences(recorded[0], saved) if recorded else []
    out, summary = rerun(loaded, overrides, out)
    wanted = fingerprint_differences(saved, config_fingerprint(build_config(config, [o for o in overrides
                                                                                      if not o.startswith("hydra.")])))
    verdict = []
    if edited:
        verdict.append(f"the saved config differs from the one the original run trained with (its checkpoint "
                       f"{recorded[1].name}): {_flat_differences(recorded[0], saved, edited)}; it was edited after the run")
    original_rows = read_jsonl(run_dir / METRICS_FILE) if run_dir is not None else []
    new_rows = read_jsonl(out / METRICS_FILE)
    if not original_rows:
        print(f"no metrics.jsonl in the source to compare with; the new run's is in {out}")
        return out, summary, verdict
    difference = first_difference(original_rows, new_rows)
    if difference is None:
        steps = compared_steps(original_rows, new_rows)
        if not verdict:
            print(f"reproduced exactly: {steps} steps of metrics.jsonl equal the original's "
                  "(measurements of the machine left out)")
        return out, summary, verdict
    step, key, was, now = difference
    line = f"the metrics differ from the original's from step {step} ({key}: {was!r} there, {now!r} here)"
    if wanted and not edited:
        print(f"{line}, as the overrides change {', '.join(wanted)}")
        return out, summary, verdict
    return out, summary, [line] + verdict


def refuse_a_multi_rank_source(run_dir: Path | None, original_overrides: list[str]) -> None:
    """A run trained on several ranks (summary.json's world_size) drew one random stream per rank:
    one process cannot repeat it, and would only report that the metrics differ. Refused before
    anything is written, naming the command that trains it again on as many ranks."""
    from ppo.io import SUMMARY_FILE, read_json

    ranks = (read_json(run_dir / SUMMARY_FILE) or {}).get("world_size", 1) if run_dir is not None else 1
    if not isinstance(ranks, int) or ranks < 2:
        return
    again = " ".join([*(o for o in original_overrides if not o.startswith("hydra.run.dir=")),
                      f"hydra.run.dir={run_dir}-ranks{ranks}"])
    raise ReproduceError(f"{run_dir} was trained on {ranks} ranks, each drawing its own random stream, which one "
                         f"process cannot repeat (nothing was written); train it again on {ranks} ranks: "
                         f"ppo-launch -n {ranks} --backend ring {again}")


def rerun(loaded: tuple, overrides: list[str], out: Path | None) -> tuple[Path, dict]:
    """Re-run a source `load_source` read (with overrides) into a new folder; return (folder, summary)."""
    from omegaconf import OmegaConf

    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    overrides = [o for o in overrides if not o.startswith("hydra.")]
    if run_dirs:
        out = Path(run_dirs[-1])
    config, original_overrides, description, run_dir = loaded
    cfg = build_config(config, overrides)
    out = Path(out) if out else default_output(run_dir)
    record = {"source": description, "source_overrides": original_overrides, "overrides": overrides}
    # The same reproduction, stopped (a signal, a full disk): this command continues it from its
    # newest checkpoint, as `ppo.train.run_folder.continue_command` advises. Anything else is never
    # written into.
    continuing = _read_json(out / "reproduce.json") == record
    if out.exists() and any(out.iterdir()) and not continuing:
        raise ReproduceError(f"{out} exists and is not empty; pick another with hydra.run.dir=DIR (nothing was written)")
    from ppo.train.validation import validate

    validate(cfg)  # a bad override fails here, before any folder is made
    from ppo.train.loop import train
    from ppo.train.run_folder import claim

    if continuing:
        cfg.train.resume = "auto"  # a source run's train.resume=never would move the stopped run aside
    # Claimed before these files are written: the trainer's own claim then finds them this
    # run's (a source run's train.resume=never would otherwise move them aside).
    with claim(cfg, out):
        if not continuing:
            (out / ".hydra").mkdir(parents=True, exist_ok=True)
            OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
            OmegaConf.save(OmegaConf.create(original_overrides + overrides), out / ".hydra" / "overrides.yaml")
            (out / "reproduce.json").write_text(json.dumps(record, indent=2) + "\n")
        return out, train(cfg, out)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: make sure MLX runs on a fast BLAS (may re-exec once)
        from ppo.platform.blas import ensure_fast_blas

        ensure_fast_blas()
    parser = argparse.ArgumentParser(prog="ppo-reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("source", help="a run folder, a run-*.wandb offline log, or wandb:ENTITY/PROJECT/RUN_ID")
    parser.add_argument("overrides", nargs="*", help="key=value changes, e.g. train.iters=50 hydra.run.dir=DIR")
    parser.add_argument("--out", type=Path, default=None, help="output folder (same as hydra.run.dir=DIR)")
    args = parser.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from ppo.errors import (CheckpointError, ConfigError, RunFolderBusy, RunFolderWriteError, TrainingAborted,
                            TrainingDiverged, TrainingInterrupted, TrainingStopped)

    try:
        out, summary, verdict = reproduce_and_compare(args.source, args.overrides, args.out)
    except (ReproduceError, ConfigError, CheckpointError, RunFolderBusy, RunFolderWriteError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (TrainingInterrupted, TrainingAborted, TrainingStopped, TrainingDiverged) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    win = (summary.get("eval") or {}).get("eval/win_rate")
    print(f"reproduced into {out}: status {summary.get('status')}, eval win rate {win}")
    if verdict:
        print(f"error: not reproduced: {'; '.join(verdict)}", file=sys.stderr)
        return 1
    return 0 if summary.get("status") == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
