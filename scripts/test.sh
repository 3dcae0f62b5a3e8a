#!/usr/bin/env bash
# Set up everything the tests need (venv, Debian chromium for the browser tests) and run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/setup_airflow.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi
.venv/bin/ruff check .
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
