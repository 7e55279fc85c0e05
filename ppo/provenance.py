"""What a run directory records so it can be re-run: code version, packages, machine."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from importlib import metadata

from ppo.config import PROJECT_ROOT

PACKAGES = ("mlx", "mlx-lm", "hydra-core", "omegaconf", "wandb", "datasets", "numpy")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10)
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

    from ppo.blas import blas_in_use

    status = _git("status", "--porcelain")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(mx.default_device()),
        "blas": blas_in_use(),
        "command": " ".join(shlex.quote(a) for a in getattr(sys, "orig_argv", sys.argv)),
    }
