"""One run per run folder: the lock, the earlier run moved aside, the checks made before
anything in the folder is written.

Under `mlx.launch` only rank 0 claims the folder and writes into it (the other ranks only
read the checkpoint they resume from). `claim(cfg, run_dir)` is taken by `ppo-train` before Hydra's `.hydra/` files are written
(conf/hydra/default.yaml sets `hydra.output_subdir: null`; `save_hydra_files` writes them
under the lock) and again by `ppo.train.loop.train` for callers that skip the CLI; a
process that already holds a folder's claim re-enters it.

The lock is `fcntl.flock` on RUN_DIR/.lock, held for as long as the process trains: the
kernel drops it when the process dies however it dies, so a crash never leaves a folder
stuck, and the pid/host written into the file only serve the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from ppo.errors import CheckpointError, RunFolderBusy, RunFolderWriteError
from ppo.io import (HYDRA_DIR, LOCK_FILE, PREVIOUS_PREFIX, RUN_OUTPUTS, STATE_FILE, atomic_write_text,
                    write_error_reason)

log = logging.getLogger(__name__)

# Folders this process holds (resolved path -> lock file descriptor).
_held: dict[str, int] = {}


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def lock(run_dir: Path):
    """Hold RUN_DIR's lock, or raise RunFolderBusy naming the holder (the folder untouched)."""
    from ppo.platform.cores import ENV_LAUNCH_ID, launch_rank

    run_dir = Path(run_dir)
    key = str(run_dir.resolve())
    if key in _held or launch_rank() > 0:  # under mlx.launch rank 0 holds the folder for every rank
        yield False
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunFolderWriteError(f"cannot use run folder {run_dir} ({write_error_reason(err)}); "
                                  "choose a writable hydra.run.dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunFolderBusy(f"run folder {run_dir} is in use by {_holder(run_dir / LOCK_FILE)}; wait for that run "
                            "to end (or stop it), or give this run another hydra.run.dir") from None
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": " ".join(sys.argv),
                # which ppo-launch holds it (None outside one): a launch whose ranks failed marks only its own run failed
                "launch": os.environ.get(ENV_LAUNCH_ID)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
    except OSError:
        pass  # the lock holds without its note; only a busy message would be vaguer
    _held[key] = fd
    try:
        yield True
    finally:
        del _held[key]
        os.close(fd)  # closing the descriptor releases the flock


def earlier_outputs(run_dir: Path) -> list[Path]:
    """The outputs of an earlier run in `run_dir` (RUN_OUTPUTS), sorted."""
    run_dir = Path(run_dir)
    return sorted({p for pattern in RUN_OUTPUTS for p in run_dir.glob(pattern)})


def set_aside(run_dir: Path) -> Path | None:
    """Move an earlier run's outputs into RUN_DIR/previous-<UTC time>/; return that folder."""
    run_dir = Path(run_dir)
    found = earlier_outputs(run_dir)
    if not found:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target, n = run_dir / f"{PREVIOUS_PREFIX}{stamp}", 1
    while target.exists():
        n += 1
        target = run_dir / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    try:
        target.mkdir()
        for path in found:
            os.replace(path, target / path.name)  # a rename within the folder: never a copy
    except OSError as err:
        raise RunFolderWriteError(f"could not move the earlier run in {run_dir} aside into {target.name} "
                                  f"({write_error_reason(err)}); move or delete it yourself, or use another hydra.run.dir") from None
    log.warning("train.resume=never: the earlier run's outputs in %s were moved into %s", run_dir, target.name)
    return target


def resume_point(cfg, run_dir: Path) -> Path | None:
    """The checkpoint train.resume names: none (never), the folder's newest (auto) or a path."""
    from ppo.train import checkpoint

    resume = cfg.train.resume
    if resume == "never":
        return None
    return checkpoint.latest(run_dir) if resume == "auto" else Path(resume)


def check_resume(cfg, run_dir: Path) -> None:
    """Refuse, before anything is written, a resume that cannot work: a named checkpoint
    that is not there, a checkpoint with another config, one beyond train.iters (the folder
    holds a longer run, which would be reported as this one), or inputs whose content changed."""
    from ppo.train import checkpoint, inputs

    resume = cfg.train.resume
    if resume == "never":
        return
    if resume != "auto":
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            what = "does not exist" if not path.exists() else f"has no {STATE_FILE}"
            raise CheckpointError(f"train.resume={resume}: that checkpoint {what}; name a checkpoint folder "
                                  "(RUN_DIR/checkpoints/step-NNNNNNN), or use train.resume=auto or train.resume=never")
    newest = resume_point(cfg, run_dir)
    if newest is None:
        return
    state = checkpoint.read_state(newest)
    if resume == "auto":
        checkpoint.check_fingerprint(state.config_fingerprint, checkpoint.config_fingerprint(cfg), newest)
    check_not_beyond(state.step, cfg, run_dir, newest)
    inputs.check_unchanged(state.inputs, inputs.input_fingerprint(cfg), newest, cfg.train.resume_with_changed_inputs)


def check_not_beyond(step: int, cfg, run_dir: Path, path: Path) -> None:
    """A checkpoint past train.iters: resuming would train nothing and report the longer run as this one."""
    iters = cfg.train.iters
    if step <= iters:
        return
    if cfg.train.resume == "auto":
        raise CheckpointError(f"run folder {run_dir} holds a longer run (checkpoint {path.name} is at step {step}, "
                              f"beyond train.iters={iters}); use a new hydra.run.dir, or train.resume=never to move "
                              f"that run aside and start fresh (or set train.iters={step} or more to continue it)")
    raise CheckpointError(f"train.resume={path} is at step {step}, beyond train.iters={iters}; name an earlier "
                          "checkpoint, raise train.iters, or use train.resume=never")


@contextlib.contextmanager
def claim(cfg, run_dir: Path):
    """Lock `run_dir`, check the resume, and with train.resume=never move an earlier run aside."""
    with lock(run_dir) as fresh:
        if fresh:
            check_resume(cfg, run_dir)
            if cfg.train.resume == "never":
                set_aside(run_dir)
        yield


def save_hydra_files(run_dir: Path, cfg) -> None:
    """What Hydra writes into RUN_DIR/.hydra/ (config, hydra, overrides), written under the lock."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from ppo.platform.cores import launch_rank

    if launch_rank() > 0:  # only rank 0 writes the run folder
        return
    hydra_cfg = HydraConfig.instance().cfg
    out = Path(run_dir) / HYDRA_DIR
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
        atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
        atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
    except OSError as err:
        raise RunFolderWriteError(f"could not write {out} ({write_error_reason(err, out.parent)}); "
                                  "free space or choose a writable hydra.run.dir") from None


def continue_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir` from its newest checkpoint, the one every
    message that tells how to continue a stopped run names (a signal, a write error, a judge that
    stopped): the `ppo-train` command that started it, with the run folder named
    (`hydra.run.dir=RUN_DIR`, or in a sweep `hydra.sweep.dir=SWEEP_DIR`: without it Hydra opens a
    new time-stamped folder) and without any `train.resume=` (the default, auto, resumes; never
    would set the run aside and start over); the `ppo-reproduce` command with `--out RUN_DIR`
    (which continues its own stopped reproduction). Under a distributed launcher, in a sweep
    job's worker process (hydra/launcher=joblib) or from another program (a script), the advice
    in words."""
    import shlex

    from ppo.train.distributed import launched

    program = _program()
    run_dir = Path(run_dir)
    if not launched() and program in ("ppo-reproduce", "reproduce.py"):  # reproduce.py: python -m ppo.tools.reproduce
        return shlex.join(["ppo-reproduce", *_without_out(sys.argv[1:]), "--out", str(run_dir.resolve())])
    if launched() or program not in ("ppo-train", "cli.py"):  # cli.py: python -m ppo.tools.cli
        if _multirun():
            return (f"the same sweep command with hydra.sweep.dir={shlex.quote(str(_sweep_dir(run_dir)))} (finished "
                    "jobs are skipped, this one resumes: train.resume=auto, the default)")
        return f"the same command with hydra.run.dir={shlex.quote(str(run_dir))} (train.resume=auto, the default)"
    named = ("hydra.run.dir=", "hydra.sweep.dir=", "train.resume=", "+train.resume=", "++train.resume=")
    args = [a for a in sys.argv[1:] if not a.startswith(named)]
    if _multirun():
        folder = f"hydra.sweep.dir={_sweep_dir(run_dir)}"
    else:
        folder = f"hydra.run.dir={run_dir.resolve()}"
    return shlex.join(["ppo-train", *args, folder])


def _without_out(args: list[str]) -> list[str]:
    """ppo-reproduce's arguments less the output folder it was given (--out DIR, --out=DIR, hydra.run.dir=DIR)."""
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith(("--out=", "hydra.run.dir=")):
            kept.append(arg)
    return kept


def _multirun() -> bool:
    """Whether this process runs a sweep: Hydra's mode in a Hydra job; outside one (a Ctrl-C
    while Hydra composes, a script), whether a `ppo-train` command line asks for one."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # noqa: BLE001 - no Hydra job
        return _program() in ("ppo-train", "cli.py") and any(a in ("-m", "--multirun") for a in sys.argv[1:])


def _program() -> str:
    """The running program's name: a console script's (ppo-train), or the file `python -m` runs (cli.py)."""
    return Path(sys.argv[0]).name if sys.argv else ""


def _sweep_dir(run_dir: Path) -> Path:
    """The sweep folder of a sweep job's run folder (Hydra's sweep.dir; outside Hydra, its parent)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().sweep.dir).resolve()
    except Exception:  # noqa: BLE001 - no Hydra job: the job folder's parent
        return Path(run_dir).resolve().parent
