#!/usr/bin/env bash
# Create .venv and install the pinned dependencies (runtime, or runtime + dev with --dev).
# Re-running is cheap: pip is skipped while the requirement files are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
want=requirements.txt
[[ "${1:-}" == "--dev" ]] && want=requirements-dev.txt
python3 -m venv .venv 2>/dev/null || { echo "python3 -m venv failed: install python3-venv" >&2; exit 1; }
stamp=".venv/.installed-$(cat requirements.txt requirements-dev.txt constraints.txt "$want" | sha256sum | cut -c1-16)-$(basename "$want" .txt)"
if [[ ! -f "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$want" -c constraints.txt
  touch "$stamp"
fi
