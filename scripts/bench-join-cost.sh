#!/usr/bin/env bash
# What a join costs, process by process (issue 14 item 3), with history reuse off and on,
# alternating: N idle clients connect and join R rooms through two fresh release gateways
# (a logger and an archiver beside them), and the CPU seconds of each process (and of the
# broker) are read from /proc before and after `chat-bench idle`. Prints per run the
# connect-and-join rate, handshake p50/p99, the CPU per join of each process, and how the
# gateways got their histories (chat_history_asks_total by role). Ports 4321-4324.
#
#   scripts/bench-join-cost.sh                    # 2 rounds of off + on, 4000 clients, 100 rooms
#   scripts/bench-join-cost.sh --rounds 3 --clients 8000 --rooms 100
#   scripts/bench-join-cost.sh --private-broker   # a throwaway RabbitMQ node of our own
#   BIN=/some/dir scripts/bench-join-cost.sh      # binaries built elsewhere, no build
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/bench-lib.sh

ROUNDS=2
CLIENTS=4000
ROOMS=100
PRIVATE_BROKER=0
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --clients) CLIENTS=$2; shift ;;
    --rooms) ROOMS=$2; shift ;;
    --private-broker) PRIVATE_BROKER=1 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

GATEWAYS=(4321 4322)
ARCHIVER_PORT=4323
LOGGER_PORT=4324
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin bench-join-cost
bench_broker chatjoin
ports_free "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"
bench_build
BROKER_PID=${BROKER_ARGS[1]:-}

# CPU seconds (user + system) of a process.
cpu_of() {
  local pid=$1 hz
  hz=$(getconf CLK_TCK)
  awk -v hz="$hz" '{ print ($14 + $15) / hz }' "/proc/$pid/stat" 2>/dev/null || echo 0
}

# The sum over both gateways of chat_history_asks_total{role="$1"}.
asks() {
  local role=$1 port total=0 value
  for port in "${GATEWAYS[@]}"; do
    value=$(curl -s "http://127.0.0.1:$port/metrics" |
      awk -v key="chat_history_asks_total{role=\"$role\"}" '$1 == key { print int($2) }')
    total=$((total + ${value:-0}))
  done
  echo "$total"
}

run() {
  local reuse=$1 label="reuse=$1ms"
  PREFIX="join-$(date +%s)-$RANDOM"
  local data=$WORK/data-$PREFIX
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$PREFIX" AMQP_URL="$AMQP_URL" RUST_LOG=warn HISTORY_REUSE_MS="$reuse")
  start_subscribers "$PREFIX" common "$data"
  local -A pid=([archiver]=$ARCHIVER_PID [logger]=$LOGGER_PID)
  local system=("$ARCHIVER_PID" "$LOGGER_PID") i=1 port urls=()
  for port in "${GATEWAYS[@]}"; do
    start "gateway-$i-$PREFIX" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" "$BIN/gateway"
    pid[gw$i]=$LAST_PID
    system+=("$LAST_PID")
    urls+=(--url "ws://127.0.0.1:$port")
    i=$((i + 1))
  done
  for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do wait_port "$port" 60; done
  sleep 1
  local -A before=()
  local name
  for name in "${!pid[@]}"; do before[$name]=$(cpu_of "${pid[$name]}"); done
  [[ -n $BROKER_PID ]] && before[broker]=$(cpu_of "$BROKER_PID")
  local load
  load=$(loadavg)
  "$BIN/chat-bench" idle "${urls[@]}" --connections "$CLIENTS" --rooms "$ROOMS" --settle 1s \
    >"$WORK/idle-$PREFIX.txt" 2>>"$WORK/idle-$PREFIX.log"
  local line="$label load=$load→$(loadavg)"
  local field
  for field in connect_per_s handshake_p50_ms handshake_p99_ms connected; do
    line+=" $(grep -o "$field=[^ ]*" "$WORK/idle-$PREFIX.txt" | head -1)"
  done
  local total=0 used
  for name in gw1 gw2 archiver logger broker; do
    [[ -n ${before[$name]:-} ]] || continue
    if [[ $name == broker ]]; then used=$(cpu_of "$BROKER_PID"); else used=$(cpu_of "${pid[$name]}"); fi
    used=$(awk -v a="$used" -v b="${before[$name]}" -v n="$CLIENTS" 'BEGIN { printf "%.0f", (a - b) * 1e6 / n }')
    total=$((total + used))
    line+=" ${name}_us_per_join=$used"
  done
  line+=" all_us_per_join=$total asked=$(asks asked) shared=$(asks shared) reused=$(asks reused) again=$(asks again)"
  echo "$line" | tee -a "$WORK/results.txt"
  stop_pids "${system[@]}"
  bench_cleanup "$PREFIX"
}

for round in $(seq 1 "$ROUNDS"); do
  step "round $round of $ROUNDS: $CLIENTS clients joining $ROOMS rooms, history reuse off then on"
  run 0
  run 1000
done
echo
cat "$WORK/results.txt"
