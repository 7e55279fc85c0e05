"""Where the installed package finds its own files, and where it keeps caches.

The Hydra configs live top-level in the repository (`conf/`, `experiments/`), as the
design card asks, and ship inside the wheel as `ppo/conf/` (with `experiments/` as its
`experiment` group): `setup.py` copies them at build time. So there are exactly two
places a config directory can be: inside the installed package (a wheel or sdist
install), or beside the package (a source checkout, editable or not installed at all).
Nothing is ever looked up relative to the current working directory.

Caches (the demo model) go to a per-user folder: `$PPO_CACHE` when set, else
`$XDG_CACHE_HOME/ppo-mlx`, else `~/.cache/ppo-mlx`; never into site-packages or the
working directory.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
DISTRIBUTION = "ppo-mlx"
ENV_CACHE = "PPO_CACHE"


def config_dir() -> Path:
    """The packaged Hydra config directory (`train.yaml` and its groups)."""
    installed = PACKAGE_DIR / "conf"
    return installed if installed.is_dir() else PACKAGE_DIR.parent / "conf"


def asset(name: str) -> Path:
    """A file shipped with the package (e.g. the demo prompts)."""
    return PACKAGE_DIR / "demo" / "assets" / name


def word_list(kind: str) -> list[str]:
    """The demo's `positive` or `negative` words (`${ppo_words:KIND}` in conf/judge/rule.yaml)."""
    from ppo.demo.corpus import lexicon

    return lexicon(kind)


def cache_dir() -> Path:
    """The per-user cache folder (see the module docstring)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ppo-mlx"


def version() -> str | None:
    """The installed distribution's version (None when run from an uninstalled checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def checkout_root() -> Path | None:
    """The git checkout the package is imported from, or None for an installed copy."""
    root = PACKAGE_DIR.parent
    return root if (root / ".git").exists() and (root / "pyproject.toml").is_file() else None


def install_problems() -> list[str]:
    """What is missing from this installation, each with its fix (for ppo-doctor)."""
    fix = f"reinstall: pip install --force-reinstall {DISTRIBUTION} (or pip install -e . in a checkout)"
    problems = []
    conf = config_dir()
    if not (conf / "train.yaml").is_file():
        problems.append(f"configs not found (looked for {conf}/train.yaml): {fix}")
    elif not (conf / "experiment").is_dir() or not any((conf / "experiment").glob("*.yaml")):
        problems.append(f"experiment files not found (looked in {conf}/experiment): {fix}")
    for name in ("demo_prompts.jsonl", "instruction_prompts.jsonl"):
        if not asset(name).is_file():
            problems.append(f"prompts {name} not found (looked for {asset(name)}): {fix}")
    if not (asset("demo_model") / "model.safetensors").is_file():
        problems.append(f"the shipped demo model not found (looked for {asset('demo_model')}/model.safetensors): {fix}")
    return problems
