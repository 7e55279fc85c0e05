#!/usr/bin/env bash
# The whole demo, about 15 minutes on a 2-core CPU: the headline run, then the headline side
# by side with the seed's own PPO formula and with the seed-literal log-prob-gap advantage.
#   bash scripts/demo.sh [OUT_DIR]        (default outputs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-outputs/demo}
bash scripts/setup.sh
.venv/bin/ppo-train experiment=demo hydra.run.dir="$out/headline"
.venv/bin/ppo-train -m experiment=demo_compare hydra/launcher=joblib2 hydra.sweep.dir="$out/compare" train.progress=false
.venv/bin/ppo-report "$out/compare"
echo
echo "side by side (ppo_form=textbook is the headline; seed = the seed's own formula):"
grep -E '^\| (run|---|`)' "$out/compare/report.md" | cut -d'|' -f2,6,8,10,11,12,13
