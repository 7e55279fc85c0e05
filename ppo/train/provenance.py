"""What a run directory records so it can be re-run: code version, packages, machine."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata

from ppo import resources

PACKAGES = ("mlx", "mlx-lm", "hydra-core", "omegaconf", "wandb", "datasets", "numpy")


def _git(root, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance() -> dict:
    import mlx.core as mx

    from ppo.platform.blas import blas_in_use

    # The package version always; the git commit only when the code runs from a checkout
    # (an installed wheel has none, and the working directory's repository is not ours).
    root = resources.checkout_root()
    status = _git(root, "status", "--porcelain") if root else None
    return {
        "package_version": resources.version(),
        "git_commit": _git(root, "rev-parse", "HEAD") if root else None,
        "git_dirty": bool(status) if status is not None else None,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(mx.default_device()),
        "blas": blas_in_use(),
        "command": " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", sys.argv)),
    }
