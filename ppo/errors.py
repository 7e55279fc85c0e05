"""Every error type a user can see. Each message is one line that names the problem and the fix;
the console entry points print it without a traceback and exit non-zero (`ppo.tools.cli`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value a user must change; the message names the key and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message says which and what to do."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was saved; `train.resume=auto` continues."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"stopped by signal {signum} after step {step}; checkpoint saved, resume with train.resume=auto")
        self.exit_code = 128 + signum


class TrainingStopped(Exception):
    """The judge cannot go on (a person quit, a server is down); a checkpoint was saved."""

    exit_code = 3


class JudgeUnavailable(RuntimeError):
    """The judge cannot be reached (e.g. an HTTP server down after every retry).

    The trainer catches it, saves a checkpoint and exits non-zero: the run can resume
    once the judge is back. The message is one line and names what was unreachable.
    """


class JudgeQuit(RuntimeError):
    """The person judging asked to stop (key q, or closed stdin).

    Every decision made so far is already in judgments.jsonl; the trainer saves a
    checkpoint and exits, and a resumed run does not ask again for recorded pairs.
    """


class SweepJobFailed(RuntimeError):
    """One job of a multirun failed; raised (not sys.exit) so Hydra runs the other jobs."""


class ReportError(Exception):
    """A sweep folder the report cannot use; the message says why."""


class ReproduceError(Exception):
    """SOURCE is not a run, or an override does not fit; the message says which."""


class RankTimeout(RuntimeError):
    """With several processes: another rank died or stopped answering; the last complete
    checkpoint is intact and relaunching the same command resumes."""

    exit_code = 4

    def __init__(self, message: str, reported: bool = False):
        super().__init__(message)
        self.reported = reported  # already printed when it happened
