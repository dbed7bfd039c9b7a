#!/usr/bin/env bash
# Runs the whole chat system on this machine, mirroring docker-compose.yml: RabbitMQ
# (installed and started if needed), the archiver, the logger and two gateways on :3001 and
# :3002. Ctrl-C stops every service cleanly (SIGTERM, then waits for them to drain).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rabbitmq
build_release

export CHAT_PREFIX="${CHAT_PREFIX:-chat}"
export LOG_FILE="${LOG_FILE:-data/chat.log}"
export DATABASE_URL="${DATABASE_URL:-sqlite://data/archive.db}"
mkdir -p data logs

pids=()
stop_all() { # exit status
  local code=${1:-0}
  trap - INT TERM EXIT
  step "stopping"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  echo "stopped; logs are in logs/"
  exit "$code"
}
trap 'stop_all 0' INT TERM
trap 'stop_all $?' EXIT

start() { # name, then the command
  local name=$1; shift
  "$@" >"logs/$name.log" 2>&1 &
  pids+=($!)
}

step "starting the services (their logs go to logs/*.log)"
start archiver env ARCHIVER_LISTEN=127.0.0.1:3100 "$BIN/archiver"
start logger env LOGGER_STDOUT=false "$BIN/logger"
start gateway-1 env GATEWAY_LISTEN=127.0.0.1:3001 GATEWAY_ID=gw-1 "$BIN/gateway"
start gateway-2 env GATEWAY_LISTEN=127.0.0.1:3002 GATEWAY_ID=gw-2 "$BIN/gateway"
for port in 3001 3002 3100; do wait_port "$port" 30; done

cat <<INFO

The chat is running:
  chat (gateway 1)   http://127.0.0.1:3001/
  chat (gateway 2)   http://127.0.0.1:3002/
  archive API        http://127.0.0.1:3100/api/rooms
  chat log           tail -f $LOG_FILE
  history            $BIN/archiver history lobby --limit 20
  service logs       logs/*.log

Press Ctrl-C to stop.
INFO
wait -n "${pids[@]}" || true
# Only reached when a service exited by itself: Ctrl-C ends the script in stop_all.
echo "a service exited; see logs/" >&2
stop_all 1
