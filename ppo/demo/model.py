"""Build the built-in demo model: a tiny qwen3 chat model, briefly pre-trained.

Why: the PPO demo needs a policy that writes word-like English and ENDS BY
ITSELF (emits ``<|im_end|>``), with positive and negative words about equally
likely, so a judge that prefers positive words starts near 50/50 and PPO has
something to learn. A random model from :mod:`ppo.demo.tiny` does neither; a few
minutes of :func:`ppo.demo.pretrain.pretrain` on :mod:`ppo.demo.corpus` does both.

The package ships that model (``ppo/demo/assets/demo_model/``, about 2 MB: weights, config,
tokenizer and marker), built by this module on the recording machine; by default the
command copies it into place in about a second instead of pre-training for minutes.
``--rebuild`` pre-trains from scratch (about 3-4 minutes on 2 CPU cores); on the recording
machine's rounding (``tests/golden/demo_model.json``) that gives the shipped weights bit for
bit, elsewhere to a tolerance (``tests/test_demo_model.py``). A recipe the shipped marker does
not match (other ``DEMO_SETTINGS``, ``--steps``) is pre-trained.

The model is built (or copied) in a temporary sibling folder and renamed into place at
the end, so an interrupted build never leaves a half model. The folder gets a
``demo_model.json`` marker with the recipe (``settings``) and the training
stats; ``--if-missing`` skips the build when the marker's settings equal the
current recipe, so changing the recipe (or ``--steps``) rebuilds.

CLI::

    python -m ppo.demo.model [--out DIR] [--if-missing] [--rebuild] [--steps N]

Default folder: ``models/demo`` in the per-user cache (``ppo.resources.cache_dir``:
``$PPO_CACHE``, else ``$XDG_CACHE_HOME/ppo-mlx``, else ``~/.cache/ppo-mlx``), which is
the ``model.path`` of ``conf/model/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

MARKER = "demo_model.json"

#: The recipe. Bump ``recipe`` when the code that builds the model changes in a
#: way these numbers do not show; any change here rebuilds with --if-missing.
#: Vocab 1024 makes (nearly) every corpus word one token, which halves the
#: sequence length and makes grammar far easier to learn than vocab 512.
DEMO_SETTINGS: dict = {
    "recipe": 1,
    "hidden": 128,
    "layers": 2,
    "vocab": 1024,
    "heads": 4,
    "intermediate": None,  # ppo.demo.tiny default: 3 * hidden
    "corpus_sentences": 4000,  # tokenizer training text
    "seed": 0,
    "steps": 1000,
    "batch_size": 32,
    "learning_rate": 3e-3,
}


#: The files of a demo model folder (what is shipped and what a copy must hold).
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", MARKER)
#: The command that puts the demo model into the cache (docs/getting-started/install.md, error messages).
COMMAND = "python -m ppo.demo_model"


def shipped_dir() -> Path:
    """The demo model inside the package (``ppo/demo/assets/demo_model``)."""
    from ppo.resources import asset

    return asset("demo_model")


def default_out_dir() -> Path:
    """``models/demo`` in the per-user cache (the ``${ppo_cache:}`` of ``conf/model/demo.yaml``)."""
    from ppo.resources import cache_dir

    return cache_dir() / "models" / "demo"


def demo_settings(steps: int | None = None) -> dict:
    settings = dict(DEMO_SETTINGS)
    if steps is not None:
        settings["steps"] = int(steps)
    return settings


def read_marker(out_dir) -> dict | None:
    """The folder's ``demo_model.json`` (None if absent or unreadable)."""
    try:
        return json.loads((Path(out_dir) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_current(out_dir, settings: dict) -> bool:
    """True if ``out_dir`` holds a complete demo model built with ``settings``."""
    out = Path(out_dir)
    marker = read_marker(out)
    return bool(
        marker
        and marker.get("settings") == settings
        and (out / "model.safetensors").is_file()
        and (out / "config.json").is_file()
    )


def state(out_dir=None) -> dict:
    """Where the demo model stands in `out_dir` (default: the cache): ``present``, ``missing``,
    ``incomplete`` or ``outdated`` (another recipe), with the command that fixes it (ppo-doctor)."""
    out = Path(out_dir) if out_dir is not None else default_out_dir()
    found = {"path": str(out)}
    if is_current(out, demo_settings()):
        marker = read_marker(out) or {}
        origin = "the weights shipped in the package" if marker.get("installed_from") == "package" else "built here"
        return found | {"state": "present", "origin": origin}
    if not out.exists():
        return found | {"state": "missing", "fix": f"run `{COMMAND}` (copies the shipped weights into the cache in about a second)"}
    marker = read_marker(out)
    if marker is None or not all((out / name).is_file() for name in FILES if name != MARKER):
        return found | {"state": "incomplete", "fix": f"run `{COMMAND}` (replaces the folder)"}
    return found | {"state": "outdated", "fix": f"run `{COMMAND}` (the folder holds another recipe: "
                                                   f"{marker.get('settings')}; it is replaced)"}


def _swap_into_place(tmp: Path, out: Path) -> None:
    """`tmp` becomes `out`: the old folder (if any) steps aside first, so `out` is always either the
    old complete model or the new complete one."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def install_shipped(out: Path, log: Callable[[str], None] = print) -> Path:
    """Copy the shipped demo model into `out` (atomically, as a build would)."""
    start = time.perf_counter()
    source = shipped_dir()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.copying-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name in FILES:
            if name != MARKER:
                shutil.copyfile(source / name, tmp / name)
        marker = read_marker(source) | {"installed_from": "package"}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"copied the shipped demo model to {out} in {time.perf_counter() - start:.1f}s "
        f"(`{COMMAND} --rebuild` pre-trains it from scratch instead, about 3-4 minutes)")
    return out


def build_demo_model(
    out_dir=None,
    *,
    steps: int | None = None,
    if_missing: bool = False,
    rebuild: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Put the demo model into `out_dir` (default: the cache) and return the folder: with
    ``if_missing`` nothing happens when it is there already; the shipped copy is used when its
    recipe is the one asked for, unless ``rebuild``; otherwise it is pre-trained here."""
    from ppo.demo.pretrain import pretrain
    from ppo.demo.tiny import build_tiny_model

    out = Path(out_dir) if out_dir is not None else default_out_dir()
    out = out.expanduser().resolve()
    settings = demo_settings(steps)
    if if_missing and is_current(out, settings):
        log(f"demo model up to date in {out} (marker {MARKER} matches); skipping")
        return out
    if not rebuild and is_current(shipped_dir(), settings):
        return install_shipped(out, log)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()
    try:
        log(
            f"building demo model: hidden {settings['hidden']}, layers {settings['layers']}, "
            f"vocab {settings['vocab']}, heads {settings['heads']}; "
            f"pre-training {settings['steps']} steps x {settings['batch_size']} documents"
        )
        build_tiny_model(
            tmp, hidden=settings["hidden"], layers=settings["layers"], vocab=settings["vocab"],
            heads=settings["heads"], intermediate=settings["intermediate"], seed=settings["seed"],
            corpus_sentences=settings["corpus_sentences"],
        )

        def progress(record: dict) -> None:
            log(
                f"  step {record['step']:>5}/{record['total_steps']}  loss {record['loss']:.4f}  "
                f"lr {record['learning_rate']:.2e}  {record['tokens_per_second']:.0f} tok/s  "
                f"{record['seconds']:.0f}s"
            )

        stats = pretrain(
            tmp, steps=settings["steps"], batch_size=settings["batch_size"],
            learning_rate=settings["learning_rate"], seed=settings["seed"],
            log_every=max(1, settings["steps"] // 10), log=progress,
        )
        seconds = time.perf_counter() - start
        marker = {
            "settings": settings,
            "stats": stats,
            "build_seconds": seconds,
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _swap_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(
        f"wrote demo model to {out} in {seconds:.0f}s "
        f"(loss {stats['initial_loss']:.3f} -> {stats['final_loss']:.3f})"
    )
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("mlx", "mlx-lm", "tokenizers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def main(argv: list[str] | None = None) -> None:
    from ppo.platform.blas import ensure_fast_blas

    ensure_fast_blas()
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None, help=f"model folder (default: {default_out_dir()})")
    parser.add_argument("--if-missing", action="store_true",
                        help="skip when the folder holds a demo model built with the current recipe")
    parser.add_argument("--rebuild", action="store_true",
                        help="pre-train from scratch (about 3-4 minutes) instead of copying the shipped weights")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"pre-training steps (default: {DEMO_SETTINGS['steps']}; another number pre-trains)")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        build_demo_model(args.out, steps=args.steps, if_missing=args.if_missing, rebuild=args.rebuild,
                         log=lambda line: print(line, flush=True))
    except OSError as err:
        print(f"error: could not write the demo model ({err.strerror or err}: {err.filename or args.out}); "
              "free space or pick a writable folder with --out DIR (or set PPO_CACHE)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
