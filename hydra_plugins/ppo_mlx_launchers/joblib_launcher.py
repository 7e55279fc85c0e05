"""hydra/launcher=joblib2 (conf/hydra/launcher/joblib2.yaml): Hydra's joblib launcher that Ctrl-C
stops as it stops a multirun in one process (ppo.tools.joblib_sweep says how and why)."""

from typing import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher


class StoppableJoblibLauncher(JoblibLauncher):
    """Hydra's JoblibLauncher (its settings, n_jobs and the rest, unchanged) with Ctrl-C handled."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from ppo.tools.joblib_sweep import launch

        return launch(self, job_overrides, initial_job_idx)
