#!/usr/bin/env bash
# A real PACS beside the screening node, for development, tests and demos:
#   bash scripts/pacs.sh up       install Debian's orthanc if missing, start Orthanc (127.0.0.1, DICOM 4242,
#                                 REST 8042) and the node (DICOM 11112); Orthanc forwards every CR/DX
#                                 instance to the node, the node stores its SR + Secondary Capture back.
#                                 Returns when both answer.
#   bash scripts/pacs.sh down     stop both
#   bash scripts/pacs.sh status   are they running; the node's queue counts
# Orthanc's REST API needs a login: it is generated once and kept in work/pacs/rest-credentials (user:password).
# Overrides (tests run a second PACS beside yours this way): CXR_PACS_DIR, PACS_DICOM_PORT, PACS_HTTP_PORT,
# NODE_PORT, CXR_NODE_DIR, NODE_ARGS (more `python -m cxr_core node` options, e.g. "--set node.batch_size=8").
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PACS_DIR=$(realpath -m "${CXR_PACS_DIR:-work/pacs}")
DICOM_PORT=${PACS_DICOM_PORT:-4242}
HTTP_PORT=${PACS_HTTP_PORT:-8042}
NODE_PORT=${NODE_PORT:-11112}
NODE_DIR=$(realpath -m "${CXR_NODE_DIR:-work/node}")  # node.state_dir: where the dashboard looks
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
export PATH="$PATH:/usr/sbin"  # Debian puts Orthanc there, outside a normal user's PATH

install_orthanc() {
  command -v Orthanc >/dev/null 2>&1 && return 0
  echo "installing Debian's orthanc..."
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq orthanc >/dev/null
  # the package's own service is not wanted: this script runs Orthanc with the repo's configuration
  if command -v service >/dev/null 2>&1; then $sudo service orthanc stop >/dev/null 2>&1 || true; fi
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # stop the process recorded in a pid file (TERM, then KILL after 20 s)
  local file=$1 name=$2
  if alive "$file"; then
    local pid
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    echo "$name stopped"
  fi
  rm -f "$file"
}

credentials() {
  local file=$PACS_DIR/rest-credentials
  if [[ ! -s $file ]]; then
    (umask 077; printf 'cxr:%s\n' "$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(18))')" >"$file")
  fi
  cat "$file"
}

write_config() {  # the repo's config with this run's folders, ports and login
  CRED=$1 "$PYTHON" - "$ROOT/config/orthanc/orthanc.json" "$PACS_DIR/orthanc.json" <<'EOF'
import json, os, sys
config = json.load(open(sys.argv[1]))
pacs, root = os.environ["PACS_DIR"], os.environ["ROOT"]
user, password = os.environ["CRED"].strip().split(":", 1)
config["StorageDirectory"] = config["IndexDirectory"] = os.path.join(pacs, "db")
config["LuaScripts"] = [os.path.join(root, path) for path in config["LuaScripts"]]
config["DicomPort"], config["HttpPort"] = int(os.environ["DICOM_PORT"]), int(os.environ["HTTP_PORT"])
config["DicomModalities"]["cxrnode"]["Port"] = int(os.environ["NODE_PORT"])
config["RegisteredUsers"] = {user: password}
with open(sys.argv[2], "w") as handle:
    json.dump(config, handle, indent=2)
EOF
}

rest() { curl -fsS -u "$(cat "$PACS_DIR/rest-credentials")" "$@"; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq 1 $((seconds * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "error: $what did not answer within ${seconds}s" >&2
  return 1
}

up() {
  install_orthanc
  mkdir -p "$PACS_DIR/db" "$NODE_DIR"
  export PACS_DIR ROOT DICOM_PORT HTTP_PORT NODE_PORT
  local cred
  cred=$(credentials)
  write_config "$cred"
  if ! alive "$PACS_DIR/orthanc.pid"; then
    setsid Orthanc "$PACS_DIR/orthanc.json" >"$PACS_DIR/orthanc.log" 2>&1 </dev/null &
    echo $! >"$PACS_DIR/orthanc.pid"
  fi
  if ! wait_for 60 "Orthanc (REST on 127.0.0.1:$HTTP_PORT)" rest "http://127.0.0.1:$HTTP_PORT/system"; then
    tail -20 "$PACS_DIR/orthanc.log" >&2
    exit 1
  fi
  if ! alive "$PACS_DIR/node.pid"; then
    # shellcheck disable=SC2086  # NODE_ARGS is a list of options on purpose
    CXR_NODE_DIR=$NODE_DIR setsid "$PYTHON" -m cxr_core node --port "$NODE_PORT" \
      --destination-port "$DICOM_PORT" ${NODE_ARGS:-} >>"$PACS_DIR/node.log" 2>&1 </dev/null &
    echo $! >"$PACS_DIR/node.pid"
  fi
  # Orthanc's C-ECHO to the node: the node is up and Orthanc can reach it (the model loads first: allow time)
  if ! wait_for 180 "the screening node (DICOM on 127.0.0.1:$NODE_PORT)" \
    rest -X POST -d '{}' "http://127.0.0.1:$HTTP_PORT/modalities/cxrnode/echo"; then
    alive "$PACS_DIR/node.pid" || echo "the node exited:" >&2
    tail -20 "$PACS_DIR/node.log" >&2
    exit 1
  fi
  resend_failed_forwards
  echo "Orthanc: DICOM ORTHANC@127.0.0.1:$DICOM_PORT, REST http://127.0.0.1:$HTTP_PORT (login in $PACS_DIR/rest-credentials)"
  echo "node:    DICOM CXRTB@127.0.0.1:$NODE_PORT, queue in $NODE_DIR, log $PACS_DIR/node.log"
}

resend_failed_forwards() {  # films Orthanc could not forward while the node was down: send them now
  local ids
  ids=$(rest "http://127.0.0.1:$HTTP_PORT/jobs?expand" | "$PYTHON" -c '
import json, sys
for job in json.load(sys.stdin):
    if job.get("State") == "Failure" and job.get("Type") == "DicomModalityStore" \
            and (job.get("Content") or {}).get("RemoteAet", "CXRTB") == "CXRTB":
        print(job["ID"])')
  for id in $ids; do
    rest -X POST -d '{}' "http://127.0.0.1:$HTTP_PORT/jobs/$id/resubmit" >/dev/null && echo "resent the films of failed forward job $id"
  done
}

down() {
  stop_pid "$PACS_DIR/node.pid" "node"
  stop_pid "$PACS_DIR/orthanc.pid" "Orthanc"
}

status() {
  alive "$PACS_DIR/orthanc.pid" && echo "Orthanc running (pid $(cat "$PACS_DIR/orthanc.pid"))" || echo "Orthanc not running"
  alive "$PACS_DIR/node.pid" && echo "node running (pid $(cat "$PACS_DIR/node.pid"))" || echo "node not running"
  CXR_NODE_DIR=$NODE_DIR "$PYTHON" -m cxr_core node --status
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash scripts/pacs.sh up|down|status" >&2; exit 2 ;;
esac
