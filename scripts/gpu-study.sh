#!/usr/bin/env bash
# The study on a GPU (issue 19): `study --size full` for both user sets through the grid path, with the
# achieved TFLOP/s, timed. Prepared to run in one device call (see docs/usage.md, "The study's own setting"):
#   scripts/gpu-study.sh OUT_DIR [SIZE]        SIZE full (default) or tiny (a CPU check of this script)
set -uo pipefail
out=${1:?give an output folder}; size=${2:-full}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PREFLENS_CACHE=${PREFLENS_CACHE:-/tmp/preflens-cache}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
$py -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for users in four-one-hot two-opposed; do
  t0=$(date +%s)
  timeout "${STUDY_TIMEOUT_S:-285}" $py -m core.experiments study --size "$size" --users "$users" \
    --out "/tmp/study-$size-$users" 2>&1 | grep -v '^\[progress\]' | tee "$out/study-$users.log"
  echo "WALL $users $(( $(date +%s) - t0 )) s (exit ${PIPESTATUS[0]})" | tee -a "$out/study-$users.log"
  cp "/tmp/study-$size-$users/runs.csv" "$out/runs-$users.csv" 2>/dev/null || true
  $py - "$users" "/tmp/study-$size-$users" <<'PY' 2>&1 | tee -a "$out/study-$users.log"
import json, sys
from pathlib import Path
users, root = sys.argv[1], Path(sys.argv[2])
for run in sorted((root / "runs").glob("*")):
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []
    if not lines:
        print(run.name, "no metrics"); continue
    recs = [json.loads(x) for x in lines]
    last = recs[-1]
    curve = " ".join(f"{r['step']}:{r['accuracy']:.2f}" for r in recs)
    fresh = last.get("fresh_demos_user_accuracy") or {}
    print(f"{users} {run.name} step {last['step']} acc {last['accuracy']:.3f} users {last['user_accuracy']} "
          f"fresh {fresh} all_pairs {last.get('all_pairs_accuracy')} new {last.get('new_users_accuracy')} | {curve}")
PY
done
