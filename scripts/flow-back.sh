#!/usr/bin/env bash
# How long after a broker crash messages flow between gateways again, over repeated runs:
# a private RabbitMQ node (never the machine's default one), an archiver, a logger and two
# gateways; each run kills the node with SIGKILL, starts it again and times, from the
# moment `rabbitmqctl await_startup` returns, until a `say` sent every 0.5 s on gateway 1
# is received live on gateway 2 (scripts/flow_back.py, Python 3 with `websockets`).
#
#   scripts/flow-back.sh              # 5 runs, with the binaries in target/release
#   scripts/flow-back.sh --runs 10
#
# Environment: BIN (the binaries' directory, default target/release), FLOW_PORT (the node's
# AMQP port, default 5710), PYTHON (default python3; needs `websockets`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUNS=5
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
BIN=${BIN:-$(pwd)/target/release}
PORT=${FLOW_PORT:-5710}
PYTHON=${PYTHON:-python3}
NODE="chatflow$$@localhost"
WORK=$(mktemp -d /tmp/flow-back.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -s $WORK/node/pid ]] && kill -KILL "$(cat "$WORK/node/pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

step "private broker $NODE on 127.0.0.1:$PORT"
start_rabbitmq_node "$NODE" "$PORT" "$WORK/node"
export AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/%2f" CHAT_PREFIX="flow" RUST_LOG=warn
env ARCHIVER_LISTEN=127.0.0.1:4410 DATABASE_URL="sqlite://$WORK/archive.db" "$BIN/archiver" 2>"$WORK/archiver.log" &
PIDS+=($!)
env LOGGER_LISTEN=127.0.0.1:4411 LOG_FILE="$WORK/chat.log" LOGGER_STDOUT=false "$BIN/logger" 2>"$WORK/logger.log" &
PIDS+=($!)
for port in 4412 4413; do
  env GATEWAY_LISTEN="127.0.0.1:$port" "$BIN/gateway" 2>"$WORK/gateway-$port.log" &
  PIDS+=($!)
done
for port in 4410 4411 4412 4413; do wait_port "$port" 60; done
sleep 1

ctl="PATH=\$PATH:/usr/sbin rabbitmqctl -q -n $NODE"
step "$RUNS runs"
"$PYTHON" scripts/flow_back.py 4412 4413 "$RUNS" \
  "kill -KILL \$(cat $WORK/node/pid); while (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.05; done" \
  "bash -c 'source scripts/lib.sh; start_rabbitmq_node $NODE $PORT $WORK/node'" \
  "$ctl await_startup"
