"""Ships the top-level Hydra configs inside the package (everything else is in pyproject.toml).

`conf/` and `experiments/` stay at the top of the repository, where researchers edit them;
the wheel needs them inside `ppo/` so an installed `ppo-train` finds them from any folder
(`ppo.resources.config_dir`). setuptools has no declarative way to put a directory outside
the package tree into it without turning every config group into a Python package, so
build_py copies them: `conf/` -> `ppo/conf/`, `experiments/` -> `ppo/conf/experiment/`.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        target = Path(self.build_lib) / "ppo" / "conf"
        if target.exists():
            shutil.rmtree(target)
        # conf/experiment is a symlink to ../experiments in the checkout: ignore it and copy
        # the real folder, so the wheel holds plain files whatever the sdist did with the link.
        shutil.copytree(HERE / "conf", target, ignore=shutil.ignore_patterns("experiment", "__pycache__"))
        shutil.copytree(HERE / "experiments", target / "experiment", ignore=shutil.ignore_patterns("__pycache__"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
