#!/usr/bin/env bash
# A sweep on a local Ray cluster that listens on 127.0.0.1 only (not on every interface,
# Ray's default). Needs `pip install hydra-ray-launcher` (brings ray, about +500 MB).
#   bash scripts/ray_local_sweep.sh                       # a 2 x 2 epsilon x beta smoke sweep on the demo model
#   bash scripts/ray_local_sweep.sh experiment=eps_beta_grid
# Run here on 2026-11-23 (hydra-core 1.3.8, ray 2.60.0, hydra-ray-launcher 1.2.2): the 4-job
# smoke sweep finished and the report was written; with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 every
# Ray server listened on 127.0.0.1 only (checked with `ss -ltnp`). hydra-ray-launcher pins
# cloudpickle 2.2.1, below what joblib 1.6 asks for: use a separate venv if you also need
# hydra/launcher=joblib. The cluster is stopped on exit, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RAY=.venv/bin/ray

if ! $PY -c "import hydra_plugins.hydra_ray_launcher, ray" 2>/dev/null; then
  echo "ray_local_sweep: install the launcher first: .venv/bin/pip install hydra-ray-launcher" >&2
  exit 2
fi

export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # with this, ray 2.60's servers bound to 127.0.0.1
export RAY_USAGE_STATS_ENABLED=0
export WANDB_MODE=${WANDB_MODE:-offline}
PORT=${RAY_PORT:-6379}
SWEEP_DIR=${SWEEP_DIR:-multirun/ray_local/$(date +%Y-%m-%d_%H-%M-%S)}

$RAY start --head --node-ip-address=127.0.0.1 --port="$PORT" --include-dashboard=false \
  --num-cpus="${RAY_NUM_CPUS:-2}" --disable-usage-stats >/dev/null
trap '$RAY stop --force >/dev/null 2>&1 || true' EXIT
export RAY_ADDRESS=127.0.0.1:$PORT

if [ "$#" -eq 0 ]; then  # a smoke sweep: 4 short jobs
  set -- epsilon=tight,loose beta=tiny,stronger train.iters=4 train.batch_size=2 \
    generation.max_completion_length=16 train.steps_per_eval=2 data.max_eval_prompts=8
fi
status=0
$PY -m ppo.tools.cli -m hydra/launcher=ray_local hydra.launcher.ray.init.address="$RAY_ADDRESS" \
  hydra.sweep.dir="$SWEEP_DIR" train.progress=false "$@" || status=$?
$PY -m ppo.tools.report "$SWEEP_DIR" || true
echo "ray_local_sweep: sweep exit status $status; runs and report in $SWEEP_DIR"
exit $status
