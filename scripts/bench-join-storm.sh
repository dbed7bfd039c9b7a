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
source scripts/bench-lib.sh

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

bench_begin join-storm
bench_broker chatstorm
ports_free "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"
bench_build

# One run: starts the system, connects the clients into $1 rooms, stops the system.
run() {
  local label=$1 rooms=$2
  local prefix="storm-$(date +%s)-$RANDOM"
  local data=$WORK/data-$prefix
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$prefix" AMQP_URL="$AMQP_URL" RUST_LOG=warn)
  start_subscribers "$label" common "$data"
  local pids=("$ARCHIVER_PID" "$LOGGER_PID") labels=() i=1 port
  for port in "${GATEWAYS[@]}"; do
    start "gateway-$i-$label" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" \
      "$BIN/gateway"
    pids+=("$LAST_PID")
    labels+=("gw$i=$LAST_PID")
    i=$((i + 1))
  done
  for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do wait_port "$port" 60; done
  step "$label: $CLIENTS clients into $rooms room(s), $CONCURRENCY handshakes at once; load average $(loadavg)"
  "$BIN/chat-bench" idle --url "ws://127.0.0.1:${GATEWAYS[0]}" --url "ws://127.0.0.1:${GATEWAYS[1]}" \
    --connections "$CLIENTS" --rooms "$rooms" --settle 5s --connect-timeout 120s --connect-concurrency "$CONCURRENCY" \
    --pids "$(IFS=,; echo "${labels[*]}")" --label "$label" --json-out "$WORK/$label.json" |
    tee -a "$WORK/results.txt"
  echo "load average after: $(loadavg)" | tee -a "$WORK/results.txt"
  stop_pids "${pids[@]}"
  bench_cleanup "$prefix"
}

[[ $ONLY == own ]] || run "join-storm-one-room-$CLIENTS" 1
[[ $ONLY == big ]] || run "join-storm-own-rooms-$CLIENTS" "$CLIENTS"
