#!/usr/bin/env bash
# Set up everything the tests need (venv, Debian chromium, orthanc and dicom3tools) and run them all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
bash scripts/setup_airflow.sh
# Debian tools the tests drive: chromium (browser tests), orthanc (the real PACS of tests/node),
# dicom3tools (dciodvfy checks the SR and Secondary Capture the node writes).
apt_needed=()
command -v chromium >/dev/null 2>&1 || apt_needed+=(chromium)
command -v Orthanc >/dev/null 2>&1 || apt_needed+=(orthanc)
command -v dciodvfy >/dev/null 2>&1 || apt_needed+=(dicom3tools)
if ((${#apt_needed[@]})); then
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_needed[@]}" >/dev/null
fi
.venv/bin/ruff check .
export PATH="$PWD/.venv/bin:$PATH"
# Two workers, whole files each (module fixtures train once): most of the suite waits on subprocesses
# (Airflow tasks, browsers, CLI runs), so two overlap well on two cores. CXR_TEST_WORKERS=0 runs serially.
# --no-loadscope-reorder: xdist would otherwise hand out files by test count, the one-test minute-long
# files last (tests/conftest.py puts them first).
exec .venv/bin/python -m pytest -n "${CXR_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder "$@"
