#!/usr/bin/env bash
# The join storm of issue 10: N clients join ONE room through our two gateways, against the
# same N clients each joining a room of their own. Each client waits for `joined`; a join
# answered with an error first (`history_unavailable`: a `joined` without its history, or
# `unavailable`) counts as refused and the client tries again a second later. Every run
# starts the system on fresh processes (release binaries, a fresh CHAT_PREFIX and SQLite
# archive) on ports 4301-4304 and stops it again; all traffic stays on 127.0.0.1.
#
#   scripts/bench-join-storm.sh                 # 8000 clients
#   scripts/bench-join-storm.sh --clients 10000
#   scripts/bench-join-storm.sh --only big      # only the one-room run (or: own)
#   scripts/bench-join-storm.sh --concurrency 8000  # handshakes in flight at once (256):
#                                               # all at once is what a restart looks like
#   scripts/bench-join-storm.sh --private-broker  # a throwaway RabbitMQ node of our own
#                                               # on 5690+, so other users of the machine's
#                                               # broker (alarm tests) cannot disturb the run
#   BIN=/some/dir scripts/bench-join-storm.sh   # binaries built elsewhere (an older commit,
#                                               # for a before/after), no build
#
# Prints, per run: clients joined, joins refused (by error code), the time until all had
# joined, and the gateways' RSS growth per client; the load average is printed beside each
# run, as the machine may be shared.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CLIENTS=8000
ONLY=""
CONCURRENCY=256
PRIVATE_BROKER=0
while (($#)); do
  case $1 in
    --clients) CLIENTS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --concurrency) CONCURRENCY=$2; shift ;;
    --private-broker) PRIVATE_BROKER=1 ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

GATEWAYS=(4301 4302)
ARCHIVER_PORT=4303
LOGGER_PORT=4304
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

started=()
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-join-storm.XXXXXX")
chmod 755 "$WORK" # a private broker runs as the rabbitmq user
private_node=""
finish() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n $private_node ]]; then
    PATH="$PATH:/usr/sbin" rabbitmqctl -q -n "$private_node" stop >/dev/null 2>&1 || true
  fi
  echo "work directory (logs, results): $WORK"
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

if ((PRIVATE_BROKER)); then
  port=5690
  while port_open "$port"; do port=$((port + 1)); done
  private_node="chatstorm$$-$RANDOM@localhost"
  step "starting a private RabbitMQ node ($private_node on 127.0.0.1:$port)"
  start_rabbitmq_node "$private_node" "$port" "$WORK/rabbitmq"
  export AMQP_URL="amqp://127.0.0.1:$port/%2f"
else
  ensure_rabbitmq
  export AMQP_URL=${AMQP_URL:-amqp://127.0.0.1:5672/%2f}
fi
for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do
  if port_open "$port"; then
    echo "port $port is in use; stop what listens there and try again" >&2
    exit 1
  fi
done

if [[ -z ${BIN:-} ]]; then
  step "building (cargo build --release -p chat-bench -p gateway -p logger -p archiver)"
  cargo build --release -p chat-bench -p gateway -p logger -p archiver
  BIN=$(pwd)/target/release
fi

start() { # name, then the command; sets LAST_PID
  local name=$1
  shift
  "$@" >>"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  started+=("$LAST_PID")
}

# One run: starts the system, connects the clients into $1 rooms, stops the system.
run() {
  local label=$1 rooms=$2
  local prefix="storm-$(date +%s)-$RANDOM"
  local data=$WORK/data-$prefix
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$prefix" AMQP_URL="$AMQP_URL" RUST_LOG=warn)
  start "archiver-$label" "${common[@]}" ARCHIVER_LISTEN=127.0.0.1:$ARCHIVER_PORT \
    DATABASE_URL="sqlite://$data/archive.db" "$BIN/archiver"
  local pids=("$LAST_PID") labels=() i=1 port
  start "logger-$label" "${common[@]}" LOG_FILE="$data/chat.log" LOGGER_STDOUT=false \
    LOGGER_LISTEN=127.0.0.1:$LOGGER_PORT "$BIN/logger"
  pids+=("$LAST_PID")
  for port in "${GATEWAYS[@]}"; do
    start "gateway-$i-$label" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" \
      "$BIN/gateway"
    pids+=("$LAST_PID")
    labels+=("gw$i=$LAST_PID")
    i=$((i + 1))
  done
  for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do wait_port "$port" 60; done
  step "$label: $CLIENTS clients into $rooms room(s), $CONCURRENCY handshakes at once; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  "$BIN/chat-bench" idle --url "ws://127.0.0.1:${GATEWAYS[0]}" --url "ws://127.0.0.1:${GATEWAYS[1]}" \
    --connections "$CLIENTS" --rooms "$rooms" --settle 5s --connect-timeout 120s --connect-concurrency "$CONCURRENCY" \
    --pids "$(IFS=,; echo "${labels[*]}")" --label "$label" --json-out "$WORK/$label.json" |
    tee -a "$WORK/results.txt"
  echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$WORK/results.txt"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  "$BIN/chat-bench" cleanup --prefix "$prefix" >>"$WORK/cleanup.log" 2>&1 || true
}

[[ $ONLY == own ]] || run "join-storm-one-room-$CLIENTS" 1
[[ $ONLY == big ]] || run "join-storm-own-rooms-$CLIENTS" "$CLIENTS"
