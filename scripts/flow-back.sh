#!/usr/bin/env bash
# How long after a broker crash messages flow between gateways again, over repeated runs:
# a private RabbitMQ node (never the machine's default one), an archiver, a logger and two
# gateways; each run kills the node with SIGKILL, starts it again and times, from the
# moment `rabbitmqctl await_startup` returns, until a `say` sent every 0.5 s on gateway 1
# is received live on gateway 2 (scripts/flow_back.py, Python 3 with `websockets`).
#
# With --cluster, a three-node cluster of its own (scripts/cluster.sh on ports 5741-5743)
# instead: each run kills, with SIGKILL, the node gateway 1 is connected to, times from the
# kill until the flow is back (the other two nodes carry on), then starts the node again.
#
#   scripts/flow-back.sh              # 5 runs, with the binaries in target/release
#   scripts/flow-back.sh --runs 10
#   scripts/flow-back.sh --cluster --runs 20
#
# Environment: BIN (the binaries' directory, default target/release), FLOW_PORT (the node's
# AMQP port, default 5710), PYTHON (a Python 3 with `websockets`;
# by default python3 if it has it, else a venv under the target directory).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RUNS=5
CLUSTER=0
while (($#)); do
  case $1 in
    --runs) RUNS=$2; shift ;;
    --cluster) CLUSTER=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
BIN=${BIN:-$(pwd)/target/release}
PORT=${FLOW_PORT:-5710}
if [[ -n ${PYTHON:-} ]]; then WS_PYTHON=$PYTHON; else ensure_websockets; fi
NODE="chatflow$$@localhost"
WORK=$(mktemp -d /tmp/flow-back.XXXXXX)
chmod 755 "$WORK"
PIDS=()
export CLUSTER_DIR=$WORK/cluster CLUSTER_PORT_BASE=5740
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -s $WORK/node/pid ]] && kill -KILL "$(cat "$WORK/node/pid")" 2>/dev/null || true
  ((CLUSTER)) && scripts/cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

if ((CLUSTER)); then
  scripts/cluster.sh start
  AMQP_URL=$(scripts/cluster.sh url)
else
  step "private broker $NODE on 127.0.0.1:$PORT"
  start_rabbitmq_node "$NODE" "$PORT" "$WORK/node"
  AMQP_URL="amqp://guest:guest@127.0.0.1:$PORT/%2f"
fi
export AMQP_URL CHAT_PREFIX="flow" RUST_LOG=warn
env ARCHIVER_LISTEN=127.0.0.1:4410 DATABASE_URL="sqlite://$WORK/archive.db" "$BIN/archiver" 2>"$WORK/archiver.log" &
PIDS+=($!)
env LOGGER_LISTEN=127.0.0.1:4411 LOG_FILE="$WORK/chat.log" LOGGER_STDOUT=false "$BIN/logger" 2>"$WORK/logger.log" &
PIDS+=($!)
for port in 4412 4413; do
  env GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="flow-$port" "$BIN/gateway" 2>"$WORK/gateway-$port.log" &
  PIDS+=($!)
done
for port in 4410 4411 4412 4413; do wait_port "$port" 60; done
sleep 1

step "$RUNS runs"
if ((CLUSTER)); then
  "$WS_PYTHON" scripts/flow_back.py 4412 4413 "$RUNS" \
    "scripts/cluster.sh node-of 'gateway flow-4412'
scripts/cluster.sh kill {node}" \
    "scripts/cluster.sh start-node {node}" \
    "scripts/cluster.sh ctl 1 await_online_nodes 3 || scripts/cluster.sh ctl 2 await_online_nodes 3" \
    --cluster
  exit
fi
ctl="PATH=\$PATH:/usr/sbin rabbitmqctl -q -n $NODE"
"$WS_PYTHON" scripts/flow_back.py 4412 4413 "$RUNS" \
  "kill -KILL \$(cat $WORK/node/pid); while (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null; do sleep 0.05; done" \
  "bash -c 'source scripts/lib.sh; start_rabbitmq_node $NODE $PORT $WORK/node'" \
  "$ctl await_startup"
