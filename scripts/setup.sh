#!/usr/bin/env bash
# One-time, idempotent set-up: .venv with the project, a fast BLAS on Linux, the demo model (copied).
#   bash scripts/setup.sh            (PYTHON=python3.12 bash scripts/setup.sh to pick Python)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"

# The mlx Linux CPU wheel ships a reference BLAS (~30x slower matmul). Our entry points
# preload OpenBLAS when they find it (ppo/platform/blas.py); here we make sure it is there.
if [ "$(uname -s)" = "Linux" ] && ! .venv/bin/python -c "import sys; from ppo.platform.blas import find_fast_blas; sys.exit(find_fast_blas() is None)"; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"
    if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
      echo "setup: installing OpenBLAS (libopenblas0-pthread) for MLX on the CPU"
      $SUDO apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas0-pthread >/dev/null
    fi
  fi
  .venv/bin/python -c "import sys; from ppo.platform.blas import find_fast_blas; sys.exit(find_fast_blas() is None)" \
    || echo "setup: warning: no OpenBLAS found; MLX will use its slow reference BLAS. Install libopenblas0-pthread (or your distribution's OpenBLAS) or set PPO_BLAS_LIBRARY=/path/to/libopenblas.so"
fi

# The demo model into the cache: a copy of the weights shipped in the package (about a second;
# `python -m ppo.demo_model --rebuild` pre-trains them here instead). Skipped when already there.
.venv/bin/python -m ppo.demo.model --if-missing
echo "setup: done. Train: .venv/bin/ppo-train   Tests: .venv/bin/python -m pytest"
