"""Console entry points. Each one makes sure MLX runs on a fast BLAS before importing it."""

from __future__ import annotations

import sys

from ppo.platform.blas import ensure_fast_blas


def _fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def kl_text(kl: float | None) -> str:
    """The final KL, with a word when the k1 estimate came out negative (a true KL never is)."""
    if kl is None or kl != kl:
        return "n/a"
    if kl >= 0:
        return f"{kl:.3g}"
    return (f"{kl:.3g} (the k1 estimate, mean of logp - ref over one batch's samples: unbiased but noisy, and "
            "negative here because these samples happen to be likelier under the reference; the KL itself is >= 0 "
            "and near 0. ppo_form=textbook logs the per-token k3 estimate, which is never negative)")


def print_outcome(summary: dict, run_dir: str) -> None:
    """The end of a single run: eval win rate against the reference, EOS, KL, and the plots."""
    from pathlib import Path

    from ppo.metrics import held_out_names, wilson_interval
    from ppo.tools.report import write_report

    ev, final = summary.get("eval") or {}, summary.get("final") or {}

    def num(value, fmt: str) -> str:  # metrics.jsonl stores NaN as null
        return format(value, fmt) if isinstance(value, (int, float)) else "n/a"

    if ev:
        win_rate, pairs = ev.get("eval/win_rate"), ev.get("eval/pairs")
        interval = wilson_interval(win_rate, pairs) if isinstance(win_rate, (int, float)) and pairs else None
        interval_text = f"95% interval {interval[0]:.2f}-{interval[1]:.2f}, " if interval else ""
        print(f"eval win rate against the reference: {num(win_rate, '.3f')} ({interval_text}{pairs} pairs); "
              f"completions ending by themselves: {num(ev.get('eval/eos_rate'), '.2f')} "
              f"(reference {num(ev.get('eval/ref_eos_rate'), '.2f')}); KL to the reference: {kl_text(final.get('kl'))}; "
              f"judge/invalid_rate: {num(final.get('judge/invalid_rate'), '.2f')}")
        for name in held_out_names(ev):
            rate, low, high = (ev.get(f"eval/{name}/win_rate{s}") for s in ("", "_low", "_high"))
            print(f"eval win rate under the held-out judge {name} (never trained against): {num(rate, '.3f')} "
                  f"(95% interval {num(low, '.2f')}-{num(high, '.2f')}, {ev.get(f'eval/{name}/pairs')} pairs)")
        controlled = ev.get("eval/win_rate_lc")
        if isinstance(controlled, (int, float)):
            print(f"length-controlled win rate: {num(controlled, '.3f')} (95% interval "
                  f"{num(ev.get('eval/win_rate_lc_low'), '.2f')}-{num(ev.get('eval/win_rate_lc_high'), '.2f')}), "
                  f"the win rate at equal lengths; policy/reference length: {num(ev.get('eval/length_ratio'), '.2f')}")
    try:
        write_report(Path(run_dir))
    except OSError as err:  # the run itself is complete; only its plots are missing
        _fail(f"training finished, but the plots could not be written into {run_dir} ({err.strerror or err}); "
              f"free space and run `ppo-report {run_dir}`", 1)
    print(f"run folder: {run_dir} (metrics.jsonl, summary.json, adapters); plots: {run_dir}/curves_*.png")


# The run folders this process was given (a sweep's jobs one after the other), for the
# message of a SIGINT outside the training loop.
_run_folders: list[str] = []


def _interrupt_once(signum, frame) -> None:
    """SIGINT outside the training loop: a KeyboardInterrupt the first time, and every later
    SIGINT ignored, so that Ctrl-C pressed twice (or one re-sent by a library that chains its
    own handler) cannot interrupt the unwinding, the one line, or the interpreter's exit (a
    second SIGINT after Python restores the default action would kill the process silently)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _interrupt_once_from_now():
    """`_interrupt_once` as the SIGINT handler where it is Python's default (not where SIGINT is
    ignored: ranks, background jobs); returns the handler it replaced."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt_once)
    return previous


def train_main() -> None:
    """`ppo-train [overrides]`: a Hydra app over conf/train.yaml."""
    import signal

    from ppo.errors import SweepStopped

    previous_handler = _interrupt_once_from_now()
    code, interrupted = 1, False
    try:
        _train_main()
        code = 0
    except SweepStopped as stopped:  # a multirun that Ctrl-C / SIGTERM stopped: its one line
        code = stopped.exit_code
        _fail(stopped.line, code)
    except KeyboardInterrupt:
        # SIGINT outside the training loop (which saves and stops by itself): while Python,
        # Hydra or the models load, or between sweep jobs. Nothing half-written is left.
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as _interrupt_once does, whoever raised this one
        code, interrupted = 130, True
        if _run_folders:  # Hydra chose the run folder: the command names it (a time-stamped one would not recur)
            from ppo.train.run_folder import continue_command

            advice = f"to continue, run: {continue_command(_run_folders[-1])}"
        else:
            advice = "run the same command again"
        if _launch_speaks_for_this_rank():
            raise SystemExit(130)
        _fail("interrupted (SIGINT) before training could save anything new; the run folder's newest checkpoint, "
              f"if any, is intact; {advice}", 130)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        raise
    finally:
        # Stopped by a signal: one more Ctrl-C while Python exits must not turn the exit code into a
        # silent death by SIGINT (Python restores SIG_DFL as it finalizes). Otherwise, as it was.
        if code > 128:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        elif previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        _launch_status(code)
        if interrupted:
            _exit_interrupted(code)


def _exit_interrupted(code: int) -> None:
    """End a run that a KeyboardInterrupt stopped with its exit code (130), after the atexit
    handlers (logging, W&B) and with stdout and stderr flushed.

    CPython (3.10-3.13 at least) remembers a KeyboardInterrupt that left code run by exec() of a
    string, which dataclasses and namedtuples use to build their methods while a module imports,
    and kills itself with SIGINT at exit even when the program caught that KeyboardInterrupt
    and chose its exit code (pythonrun.c, run_eval_code_obj). A Ctrl-C while Hydra or the model
    loads landed there about one time in ten: exit -2 instead of 130. Leaving before the
    interpreter's finalization is what makes the code the one chosen. (Only here: a sweep under
    hydra/launcher=joblib2 stops without a KeyboardInterrupt, and must let the interpreter shut
    joblib's workers down before the atexit handlers wait for them.)"""
    import atexit
    import os

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said there
            pass
    os._exit(code)


def _launch_speaks_for_this_rank() -> bool:
    """Under ppo-launch, a Ctrl-C reaches every rank at once and rank 0's line says it for all:
    the others, which may not yet know the run folder, would add a second, different line."""
    import os

    from ppo.platform.cores import launch_rank
    from ppo.tools.launch import ENV

    return bool(os.environ.get(ENV)) and launch_rank() > 0


def _launch_status(code: int) -> None:
    """Under ppo-launch (ppo.tools.launch): this rank's exit code, the last line on stderr."""
    import os

    from ppo.tools.launch import ENV, write_status_line

    if not os.environ.get(ENV):
        return
    from ppo.train.distributed import launch_rank

    run_dir = next((a.split("=", 1)[1] for a in reversed(sys.argv[1:]) if a.startswith("hydra.run.dir=")), "")
    write_status_line(launch_rank(), code, os.path.abspath(run_dir) if run_dir else "")


def version_text() -> str:
    """`ppo-train --version`: this package's version, then what runs it (Hydra, MLX, Python)."""
    from importlib import metadata

    from ppo import resources

    def installed(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    ours = resources.version() or "(not installed: a source checkout)"
    return (f"ppo-mlx {ours} (hydra-core {installed('hydra-core')}, mlx {installed('mlx')}, "
            f"python {sys.version.split()[0]})")


def _group_options(group: str) -> list[str]:
    from ppo.resources import config_dir

    folder = config_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def compose_error_line(err: BaseException, args: list[str]) -> str:
    """One line for an error Hydra raises while composing the config from `args` (its own message
    is several lines and ends with "Set the environment variable HYDRA_FULL_ERROR=1")."""
    import re

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    from ppo.train.validation import OPEN_MAPPINGS, schema_paths, unknown_key_message

    cause, text = err.__cause__, str(err)
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        mapping = next((m for m in OPEN_MAPPINGS if key.startswith(f"{m}.") and m.startswith("data.")), None)
        if mapping:  # any key is welcome there, but Hydra adds a new one only with a +
            value = next((a.split("=", 1)[1] for a in args if a.split("=", 1)[0] == key and "=" in a), "VALUE")
            return (f"{key} is not set yet: add it with +{key}={value} ({mapping} takes any key the chat "
                    "template reads)")
        if key.split(".")[0] in ("judge", "eval_judge"):
            group = key.split(".")[0]
            return (f"unknown key {key}: the chosen {group} has no such setting; `ppo-train {group}=NAME --cfg job` "
                    f"lists its settings (+{key}=VALUE adds one for a judge class that takes it)")
        return unknown_key_message(key)
    if cause is not None and key:
        reason = str(cause).strip().splitlines()[0]
        override = next((a for a in args if a.lstrip("+~").split("=", 1)[0] == key), key)
        return f"invalid {override}: {reason}"
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
    if missing:
        group, option = missing.groups()
        listed = re.search(r"Available options in '[^']+':\n((?:\t[^\n]*\n?)+)", text)
        options = [o.strip() for o in listed.group(1).splitlines() if o.strip()] if listed else _group_options(group)
        hint = f"choose one of {', '.join(options)}" if options else "`ppo-train --help` lists the groups and options"
        return f"no {group}={option}: the {group} group has no option {option!r}; {hint}"
    ambiguous = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if ambiguous:
        return (f"ambiguous value in {ambiguous.group(1)}: write [a,b] for a list, quote it ('a,b') for a string, "
                "or add -m to sweep over the values")
    if type(err).__name__ == "OverrideParseException":
        return f"could not parse the overrides ({text.strip().splitlines()[0]}); the syntax: key=value, group=option, +key=value"
    if text.startswith("Config group override must be"):  # `epsilon=0.2`: a number given to a group
        paths = schema_paths()
        for arg in args:
            name, sep, value = arg.partition("=")
            if sep and name in _config_groups() and value not in _group_options(name):
                keys = [p for p in paths if p.rpartition(".")[2] == name]
                number = f"; a value of its own goes to {keys[0]}={value}" if len(keys) == 1 else ""
                return f"{name} is a config group: choose one of {', '.join(_group_options(name))}{number}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    return "; ".join(lines[:3]) or type(err).__name__


def run_folder_error_line(err: BaseException) -> str | None:
    """One line for an OSError raised while Hydra sets up the run folder (its mkdir, the
    train.log handler, which logging wraps in a ValueError), or None for any other error."""
    cause = err
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if cause is None:
        return None
    where = cause.filename or "the run folder"
    if isinstance(cause, (FileExistsError, NotADirectoryError)):
        what = "is a file" if isinstance(cause, FileExistsError) else "lies under a file"
        return (f"cannot make the run folder: {where} {what}, not a folder; choose another hydra.run.dir "
                "(hydra.sweep.dir in a sweep)")
    return (f"cannot write the run folder: {where} ({cause.strerror or cause}); choose a writable hydra.run.dir "
            "(hydra.sweep.dir in a sweep)")


def _config_groups() -> list[str]:
    from ppo.resources import config_dir

    return sorted(p.name for p in config_dir().iterdir() if p.is_dir())


def _train_main() -> None:
    from ppo.platform.cores import share_cores_env

    share_cores_env()  # a launched rank's BLAS threads: its share of the cores (before OpenBLAS loads)
    ensure_fast_blas()
    if "--version" in sys.argv[1:]:  # Hydra's own flag would print "Hydra 1.3.x"
        print(version_text())
        return
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
    def _train(cfg) -> float | tuple[float, ...] | None:
        from ppo.tools.sweep import is_search, over_seeds  # a search trial over seeds_per_trial seeds

        hydra_cfg = HydraConfig.get()
        searching = hydra_cfg.mode.name == "MULTIRUN" and is_search(hydra_cfg.sweeper.get("_target_"))
        return over_seeds(cfg, hydra_cfg.runtime.output_dir, _run, searching)

    def _run(cfg, run_dir: str) -> float | tuple[float, ...] | None:
        from hydra.types import RunMode

        from ppo.errors import (CheckpointError, ConfigError, RankTimeout, RunFolderBusy, RunFolderWriteError,
                                SweepJobFailed, SweepStopped, TrainingAborted, TrainingDiverged,
                                TrainingInterrupted, TrainingStopped)
        from ppo.tools.sweep import is_search, objective_values, record_failure, stopped_line
        from ppo.train.distributed import launch_rank
        from ppo.train.loop import train
        from ppo.train.run_folder import claim, save_hydra_files

        in_task.append(True)
        _run_folders.append(run_dir)
        hydra_cfg = HydraConfig.get()
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        one_line = (ConfigError, CheckpointError, RunFolderBusy, RunFolderWriteError, TrainingDiverged,
                    TrainingInterrupted, TrainingAborted, TrainingStopped)
        searching = multirun and is_search(hydra_cfg.sweeper.get("_target_"))
        try:
            # Claimed before .hydra/ is written (hydra.output_subdir is null): a second process
            # into a live run's folder, or a refused resume, leaves the folder as it was.
            with claim(cfg, run_dir):
                try:
                    save_hydra_files(run_dir, cfg)
                    summary = train(cfg, run_dir)
                except Exception as err:
                    if multirun:  # under the lock: so that ppo-report lists the failed job
                        record_failure(run_dir, err)
                    raise
                # The report (report.md, plots) is part of the run: written under the lock, so a
                # second run (train.resume=never) cannot take the folder before it is.
                if not multirun and launch_rank() == 0:  # one outcome per run, from the rank that wrote it
                    print_outcome(summary, run_dir)
        except RankTimeout as err:
            if not err.reported:
                print(f"error: {err}", file=sys.stderr)
            sys.exit(err.exit_code)
        except (TrainingInterrupted, TrainingAborted) as err:
            if multirun:  # Ctrl-C / SIGTERM stops the whole sweep or search, never only its running job
                # A SystemExit: Hydra's launchers and sweepers catch only Exception. Under
                # hydra/launcher=joblib2 the launching process gathers the jobs' and prints one line.
                # err.continue_with: the command itself (ppo.train.run_folder.continue_command).
                job = f"{run_dir} {err.stopped}"
                line = f"{stopped_line(searching, hydra_cfg.sweep.dir, [job])}: {err.continue_with}"
                raise SweepStopped(line, err.exit_code, [job])
            _fail(str(err), err.exit_code)
        except one_line as err:
            if multirun:  # one line now; the other jobs run; ppo.tools.sweep.SweepOutcome exits 1 at the end
                print(f"error: sweep job {run_dir} failed: {err}", file=sys.stderr)
                if searching:  # the Optuna sweeper must see the trial fail, not score it
                    raise SweepJobFailed(f"{run_dir}: {err}") from None
                return None
            _fail(str(err), getattr(err, "exit_code", 2))
        # The sweeper's objective(s) (`objectives` in the config): a float, or a tuple for a
        # multi-objective search. In a search a missing value fails the trial (never scored);
        # elsewhere nothing reads the return value.
        try:
            return objective_values(summary, list(cfg.objectives))
        except SweepJobFailed:
            if searching:
                raise
            return None

    # Hydra raises its composition errors (an unknown key, a bad value, a missing option) instead
    # of printing its own multi-line message: they become one line here. Errors from inside a run
    # are the run's own (one line each, above); anything else keeps its traceback.
    import os

    user_full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    in_task: list[bool] = []
    try:
        _train()
    except Exception as err:  # noqa: BLE001 - only composition errors are turned into a line
        from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

        composing = not in_task or isinstance(err, (ConfigCompositionException, MissingConfigException,
                                                    OverrideParseException))  # a later sweep job's config
        if not composing or user_full_error == "1":
            raise
        # A composition error may carry an OSError in its context (Hydra's search path probing files):
        # it is about the config, not the run folder.
        folder = None if isinstance(err, (ConfigCompositionException, MissingConfigException,
                                          OverrideParseException)) else run_folder_error_line(err)
        _fail(folder or compose_error_line(err, sys.argv[1:]))


def _prepare_ranks() -> None:
    """Under mlx.launch every rank runs this same command: they must agree on one run folder
    (rank 0's clock names it when hydra.run.dir is not given), and only rank 0 may write
    Hydra's files there (.hydra/, train.log); the other ranks log to the console."""
    from ppo.errors import ConfigError
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

        try:
            world = World.current()
        except ConfigError as err:  # ranks of two launches paired up
            _fail(str(err))
        stamp = world.all_sum(mx.array(int(time.time()) if world.is_main else 0, dtype=mx.int64)).item()
        extra.append(f"hydra.run.dir={time.strftime('outputs/%Y-%m-%d/%H-%M-%S', time.localtime(stamp))}")
    if launch_rank() > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    sys.argv += extra


def _tool_main(module: str, interrupted_line: str) -> None:
    """Run a console tool's `main()` (imported from `module`) and exit with its code; a Ctrl-C
    outside what the tool handles itself is `interrupted_line` and exit 130, as in ppo-train."""
    import importlib
    import signal

    _interrupt_once_from_now()
    try:
        code = importlib.import_module(module).main()
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(f"error: interrupted (SIGINT) {interrupted_line}", file=sys.stderr)
        _exit_interrupted(130)
    if isinstance(code, int) and code > 128:  # stopped by a signal: a Ctrl-C while Python exits must not
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # turn the exit code into a death by SIGINT (as ppo-train)
    sys.exit(code)


def report_main() -> None:
    """`ppo-report SWEEP_DIR`: report.md and PNGs of a sweep (no MLX needed)."""
    _tool_main("ppo.tools.report", "while writing the report; the runs are untouched; run the same command again")


def reproduce_main() -> None:
    """`ppo-reproduce RUN_DIR [overrides]`: re-run a run from its saved config."""
    ensure_fast_blas()
    _tool_main("ppo.tools.reproduce", "before the reproduction could save anything new; a checkpoint it saved, "
               "if any, is intact; to continue it, run the same command with --out set to its folder")


def compare_main() -> None:
    """`ppo-compare RUN_A RUN_B`: two runs' final policies judged head to head."""
    _tool_main("ppo.tools.compare", "before the comparison finished; the runs are untouched; run the same "
               "command again (it writes its pairs file anew)")


def doctor_main() -> None:
    """`ppo-doctor`: one JSON object about the install, MLX, its BLAS and matmul speed."""
    ensure_fast_blas()
    _tool_main("ppo.tools.doctor", "before the check finished; run ppo-doctor again")


def fetch_main() -> None:
    """`ppo-fetch smollm2 | --gguf FILE`: a GGUF model imported into an mlx-lm folder in the cache."""
    ensure_fast_blas()
    from ppo.models.fetch import main

    sys.exit(main())


if __name__ == "__main__":
    train_main()
