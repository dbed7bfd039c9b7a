#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for the cluster tests and for trying the
# system on a cluster by hand. The nodes are the machine's Debian RabbitMQ, run as the
# rabbitmq user with their own node names, ports, data directories and Erlang cookie, so
# the machine's default node (rabbit@localhost on 5672) is never touched.
#
#   scripts/cluster.sh start          # chat-c1..3@localhost on 127.0.0.1:5701..5703, clustered
#   scripts/cluster.sh url            # the AMQP_URL list for the services
#   scripts/cluster.sh status         # nodes running, and the cluster as node 1 sees it
#   scripts/cluster.sh kill N         # SIGKILL node N (1..3)
#   scripts/cluster.sh stop-node N    # stop node N gracefully
#   scripts/cluster.sh start-node N   # start node N again; it rejoins the cluster
#   scripts/cluster.sh pid N          # the OS pid of node N
#   scripts/cluster.sh node-of NAME   # the node (1..3) serving the connection named NAME
#                                     # (e.g. 'gateway gw-1'; services name their connections)
#   scripts/cluster.sh ctl N ARGS...  # rabbitmqctl against node N
#   scripts/cluster.sh stop           # stop every node and delete the data
#
# Environment: CLUSTER_DIR (default /tmp/chat-cluster), CLUSTER_PORT_BASE (default 5700:
# node N listens on BASE+N, its Erlang distribution on BASE+20000+N).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DIR=${CLUSTER_DIR:-/tmp/chat-cluster}
BASE=${CLUSTER_PORT_BASE:-5700}
COOKIE=chat-cluster-cookie
export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

node() { echo "chat-c$1@localhost"; }
port() { echo $((BASE + $1)); }
ctl() {
  local n=$1
  shift
  rabbitmqctl -q -n "$(node "$n")" --erlang-cookie "$COOKIE" "$@"
}

start_node() {
  local n=$1
  chmod 755 "$DIR"
  start_rabbitmq_node "$(node "$n")" "$(port "$n")" "$DIR/node$n" "-setcookie $COOKIE"
  ctl "$n" await_startup >/dev/null
}

node_pid() { cat "$DIR/node$1/pid" 2>/dev/null; }

require_node() {
  [[ ${1:-} =~ ^[123]$ ]] || { echo "usage: $0 $2 N (N = 1, 2 or 3)" >&2; exit 2; }
}

case ${1:-} in
  start)
    if port_open "$(port 1)"; then
      echo "node 1 already listens on $(port 1); 'scripts/cluster.sh stop' first" >&2
      exit 1
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    step "starting $(node 1) on 127.0.0.1:$(port 1)"
    start_node 1
    for n in 2 3; do
      step "starting $(node "$n") on 127.0.0.1:$(port "$n") and joining it to $(node 1)"
      start_node "$n"
      ctl "$n" stop_app >/dev/null
      ctl "$n" join_cluster "$(node 1)" >/dev/null
      ctl "$n" start_app >/dev/null
    done
    ctl 1 await_online_nodes 3 >/dev/null 2>&1 || true
    step "cluster up: AMQP_URL=$("$0" url)"
    ;;
  url)
    echo "amqp://guest:guest@127.0.0.1:$(port 1)/%2f,amqp://guest:guest@127.0.0.1:$(port 2)/%2f,amqp://guest:guest@127.0.0.1:$(port 3)/%2f"
    ;;
  status)
    for n in 1 2 3; do
      if port_open "$(port "$n")"; then echo "$(node "$n"): up (pid $(node_pid "$n"))"; else echo "$(node "$n"): down"; fi
    done
    for n in 1 2 3; do
      if port_open "$(port "$n")"; then ctl "$n" cluster_status; break; fi
    done
    ;;
  kill)
    require_node "${2:-}" kill
    pid=$(node_pid "$2")
    kill -KILL "$pid"
    while port_open "$(port "$2")"; do sleep 0.1; done
    echo "killed $(node "$2") (pid $pid)"
    ;;
  stop-node)
    require_node "${2:-}" stop-node
    ctl "$2" stop >/dev/null
    while port_open "$(port "$2")"; do sleep 0.1; done
    echo "stopped $(node "$2")"
    ;;
  start-node)
    require_node "${2:-}" start-node
    start_node "$2"
    echo "started $(node "$2")"
    ;;
  pid)
    require_node "${2:-}" pid
    node_pid "$2"
    ;;
  node-of)
    [[ -n ${2:-} ]] || { echo "usage: $0 node-of CONNECTION_NAME" >&2; exit 2; }
    for n in 1 2 3; do
      port_open "$(port "$n")" || continue
      listing=$(ctl "$n" list_connections port client_properties) || continue
      found=$(grep -F "\"$2\"" <<<"$listing" | head -1 | cut -f1)
      [[ -n $found ]] || { echo "no connection named '$2'" >&2; exit 1; }
      echo $((found - BASE))
      exit 0
    done
    echo "no node answers" >&2
    exit 1
    ;;
  ctl)
    require_node "${2:-}" ctl
    n=$2
    shift 2
    ctl "$n" "$@"
    ;;
  stop)
    for n in 3 2 1; do
      if port_open "$(port "$n")"; then ctl "$n" stop >/dev/null 2>&1 || kill -KILL "$(node_pid "$n")" 2>/dev/null || true; fi
    done
    for n in 1 2 3; do
      pid=$(node_pid "$n" || true)
      [[ -n $pid ]] && kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$DIR"
    echo "cluster stopped"
    ;;
  *)
    sed -n '2,21p' "$0"
    exit 2
    ;;
esac
