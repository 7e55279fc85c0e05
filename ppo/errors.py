"""Every error type a user can see. Each message is one line that names the problem and the fix;
the console entry points print it without a traceback and exit non-zero (`ppo.tools.cli`)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value a user must change; the message names the key and the fix."""


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read; the message says which and what to do."""


# Where a message cannot name the command that continues the run (no run folder known yet).
SAME_COMMAND = "the same command (train.resume=auto, the default, continues from the newest checkpoint)"


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was saved. `stopped` says what happened, `continue_with`
    the command that continues the run (`ppo.train.run_folder.continue_command`)."""

    def __init__(self, signum: int, step: int, continue_with: str = SAME_COMMAND):
        self.stopped = f"stopped by signal {signum} after step {step}; checkpoint saved"
        self.continue_with = continue_with
        super().__init__(f"{self.stopped}; to continue from it, run: {continue_with}")
        self.exit_code = 128 + signum


class TrainingAborted(BaseException):
    """A second SIGINT or SIGTERM: the run stopped at once, without saving the running step;
    the newest complete checkpoint is the resume point.

    A BaseException, as KeyboardInterrupt is: it is raised wherever the main thread is, and
    the `except Exception` of code that must not fail (tracking, a judge's retries, scoring's
    fallback) must not swallow it."""

    def __init__(self, signum: int, stopped: str | None = None, continue_with: str = SAME_COMMAND):
        self.stopped = stopped or f"stopped at once by a second signal {signum}"
        self.continue_with = continue_with
        super().__init__(f"{self.stopped}; to continue, run: {continue_with}")
        self.signum = signum
        self.exit_code = 128 + signum

    def during(self, step: int, newest_checkpoint: str | None, continue_with: str) -> "TrainingAborted":
        """The one-line message, once the loop knows the step, the newest checkpoint and the
        command that continues the run (`ppo.train.run_folder.continue_command`)."""
        resume = (f"the newest checkpoint, {newest_checkpoint}, is the resume point"
                  if newest_checkpoint else "no checkpoint had been saved, so the run starts again from step 0")
        return TrainingAborted(self.signum, f"stopped at once by a second signal {self.signum} during step {step}, "
                                            f"which was not saved; {resume}", continue_with)


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


class RunFolderBusy(RuntimeError):
    """Another live process holds the run folder's lock; nothing in the folder was touched."""


class RunFolderWriteError(RuntimeError):
    """A write into the run folder failed (a full disk, a read-only or vanished folder).

    The message names the file and the reason; the newest complete checkpoint is intact,
    so the run resumes once the cause is fixed.
    """


class TrainingDiverged(Exception):
    """A loss, gradient or weight became NaN or infinite: the run stopped at that step,
    before the update was kept, and the last finite checkpoint stays the newest."""

    exit_code = 5

    def __init__(self, metric: str, value: float, step: int | None = None):
        self.metric, self.value, self.step = metric, value, step
        super().__init__(self._message())

    def at(self, step: int, kept: str) -> "TrainingDiverged":
        self.step = step
        self.args = (self._message(kept),)
        return self

    def _message(self, kept: str = "") -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        tail = f"; {kept}" if kept else ""
        return (f"training diverged{where}: {self.metric} is {self.value} (not finite){tail}; lower train.learning_rate "
                "or fix the value that made it non-finite (e.g. finetune.scale) and start again with train.resume=never")


class SweepJobFailed(RuntimeError):
    """A trial of an Optuna search failed (or has no objective value); raised (not sys.exit)
    so the sweeper records the trial as failed and runs the others."""


class SweepStopped(SystemExit):
    """Ctrl-C or SIGTERM stopped a multirun (a sweep or a search): its running jobs saved and
    stopped, no further job starts. A SystemExit, with the signal's exit code (130 for SIGINT):
    Hydra's launchers and sweepers catch only Exception, so it ends the whole multirun, and the
    Optuna sweeper never reports a "best". `line` is the one line `ppo-train` prints; `jobs` what
    a job in a worker process (hydra/launcher=joblib2) returns to the launcher, which prints one
    line for them all (ppo.tools.joblib_sweep)."""

    def __init__(self, line: str, exit_code: int, jobs: list[str] = ()):
        super().__init__(exit_code)
        self.line = line
        self.exit_code = exit_code
        self.jobs = list(jobs)  # "RUN_DIR why" of each job it stopped


class ReportError(Exception):
    """A sweep folder the report cannot use; the message says why."""


class CompareError(ValueError):
    """ppo-compare: two runs that cannot be compared, or a bad option; the message names the fix."""


class ReproduceError(Exception):
    """SOURCE is not a run, or an override does not fit; the message says which."""


class RankTimeout(RuntimeError):
    """With several processes: another rank died or stopped answering; the last complete
    checkpoint is intact and the command the message names continues the run."""

    exit_code = 4

    def __init__(self, message: str, reported: bool = False):
        super().__init__(message)
        self.reported = reported  # already printed when it happened
