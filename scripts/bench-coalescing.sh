#!/usr/bin/env bash
# The write-coalescing curve (issue 14, BENCHMARKS.md "Write coalescing"): the fanout
# scenario (500 receivers in one room, 4 senders) at each rate with each WRITE_DELAY_MS on
# our two gateways (+ logger and archiver, fresh processes and prefix per delay), then the
# same load against the floor (`chat-bench floor`), one write per delivery and one write per
# burst at the same delays. Prints a Markdown table; the JSON results stay in the work
# directory. CPU per delivery (utime + stime from /proc) is the figure to compare; latency
# on a shared machine is noise, so the load average is printed beside every run.
#
#   scripts/bench-coalescing.sh                       # delays 0 1 5 20 ms, rates 100 400
#   scripts/bench-coalescing.sh --delays "0 5" --rates 100 --duration 5s --no-floor
#   scripts/bench-coalescing.sh --shared-broker       # the machine's RabbitMQ, not a private node
#   scripts/bench-coalescing.sh --no-build            # use target/release as it is
#
# Release binaries are built first. Ports 4401, 4402 (gateways or floor), 4400 (archiver),
# 4403 (logger); a private RabbitMQ node on 5683+ unless --shared-broker.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

DELAYS="0 1 5 20"
RATES="100 400"
DURATION=10s
FLOOR=1
PRIVATE_BROKER=1
BUILD=1
while (($#)); do
  case $1 in
    --delays) DELAYS=$2; shift ;;
    --rates) RATES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --no-floor) FLOOR=0 ;;
    --shared-broker) PRIVATE_BROKER=0 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

GATEWAYS=(4401 4402)
ARCHIVER_PORT=4400
LOGGER_PORT=4403
for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do
  if port_open "$port"; then echo "port $port is in use" >&2; exit 1; fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-coalescing.XXXXXX")
chmod 755 "$WORK"
mkdir -p "$WORK/results" "$WORK/logs"
started=()
node=""
finish() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n $node ]]; then PATH="$PATH:/usr/sbin" rabbitmqctl -q -n "$node" stop >/dev/null 2>&1 || true; fi
  echo "work directory (logs, JSON results): $WORK"
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

if ((BUILD)); then
  step "building (cargo build --release -p chat-bench -p gateway -p logger -p archiver)"
  cargo build --release --locked -p chat-bench -p gateway -p logger -p archiver
fi
BIN=$(pwd)/target/release

if ((PRIVATE_BROKER)); then
  port=5683
  while port_open "$port"; do port=$((port + 1)); done
  node="chatcoalesce$$@localhost"
  step "starting a private RabbitMQ node ($node on 127.0.0.1:$port)"
  start_rabbitmq_node "$node" "$port" "$WORK/rabbitmq"
  BROKER_PID=$(cat "$WORK/rabbitmq/pid")
  export AMQP_URL="amqp://127.0.0.1:$port/%2f"
else
  ensure_rabbitmq
  export AMQP_URL=${AMQP_URL:-amqp://127.0.0.1:5672/%2f}
  BROKER_PID=$(pgrep -o -x beam.smp || true)
fi
BROKER_ARGS=()
[[ -n ${BROKER_PID:-} ]] && BROKER_ARGS=(--broker-pid "$BROKER_PID")

start() { # name, then the command; sets LAST_PID
  local name=$1
  shift
  "$@" >>"$WORK/logs/$name.log" 2>&1 &
  LAST_PID=$!
  started+=("$LAST_PID")
}

stop_all() {
  local pid
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  started=()
}

URLS=()
for port in "${GATEWAYS[@]}"; do URLS+=(--url "ws://127.0.0.1:$port"); done

# One window at each rate against what runs now; $1 names the runs, $2 the pids.
measure() {
  local name=$1 pids=$2 rate
  for rate in $RATES; do
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "+ [$name, $rate msg/s, load average $load] chat-bench load ${URLS[*]} --receivers 500 --senders 4 --rooms 1 --rate $rate --duration $DURATION --pids $pids ${BROKER_ARGS[*]}"
    "$BIN/chat-bench" load "${URLS[@]}" --receivers 500 --senders 4 --rooms 1 --rate "$rate" \
      --duration "$DURATION" --pids "$pids" "${BROKER_ARGS[@]}" --label "$name-$rate" \
      --json-out "$WORK/results/$name-$rate.json" >>"$WORK/logs/results.txt" 2>>"$WORK/logs/bench.log" || true
    jq --arg load "$load" '. + {load_average: $load}' "$WORK/results/$name-$rate.json" \
      >"$WORK/results/$name-$rate.tmp" && mv "$WORK/results/$name-$rate.tmp" "$WORK/results/$name-$rate.json"
  done
}

for delay in $DELAYS; do
  step "ours with WRITE_DELAY_MS=$delay"
  prefix="coalesce-$(date +%s)-$RANDOM"
  data=$WORK/data-$prefix
  mkdir -p "$data"
  common=(env CHAT_PREFIX="$prefix" AMQP_URL="$AMQP_URL" RUST_LOG=warn)
  start archiver "${common[@]}" ARCHIVER_LISTEN=127.0.0.1:$ARCHIVER_PORT \
    DATABASE_URL="sqlite://$data/archive.db" "$BIN/archiver"
  archiver=$LAST_PID
  start logger "${common[@]}" LOG_FILE="$data/chat.log" LOGGER_STDOUT=false \
    LOGGER_LISTEN=127.0.0.1:$LOGGER_PORT "$BIN/logger"
  logger=$LAST_PID
  gws=()
  i=1
  for port in "${GATEWAYS[@]}"; do
    start "gateway-$i" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" \
      RATE_LIMIT=1000000 RATE_BURST=1000000 WRITE_DELAY_MS="$delay" "$BIN/gateway"
    gws+=("gw$i=$LAST_PID")
    i=$((i + 1))
  done
  for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do wait_port "$port" 30; done
  measure "ours-$delay" "$(IFS=,; echo "${gws[*]}"),logger=$logger,archiver=$archiver"
  stop_all
  "$BIN/chat-bench" cleanup --prefix "$prefix" >>"$WORK/logs/cleanup.log" 2>&1 || true

  if ((FLOOR)); then
    mode=burst
    ((delay == 0)) && mode=delivery
    step "the floor, one write per $mode, write delay ${delay} ms"
    listen=()
    for port in "${GATEWAYS[@]}"; do listen+=(--listen "127.0.0.1:$port"); done
    start floor "$BIN/chat-bench" floor "${listen[@]}" --mode "$mode" --write-delay "${delay}ms"
    floor=$LAST_PID
    for port in "${GATEWAYS[@]}"; do wait_port "$port" 30; done
    measure "floor-$delay" "floor=$floor"
    stop_all
  fi
done

step "results"
echo "| WRITE_DELAY_MS | rate (msg/s) | ours: CPU per delivery (µs) | … in the kernel (%) | ours: p50 / p99 (ms) | floor: CPU per delivery (µs) | floor: p50 / p99 (ms) | ours / floor | received / expected (ours) | load average |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for delay in $DELAYS; do
  for rate in $RATES; do
    o=$WORK/results/ours-$delay-$rate.json
    f=$WORK/results/floor-$delay-$rate.json
    [[ -f $o ]] || continue
    [[ -f $f ]] || f=/dev/null
    jq -nr --slurpfile o "$o" --slurpfile f "$f" \
      --arg delay "$delay" --arg rate "$rate" '
      def r(x): if x == null then "–" else (x * 100 | round / 100 | tostring) end;
      ($o[0]) as $o | ($f[0] // {}) as $f |
      "| \($delay) | \($rate) | \(r($o.cpu_us_per_delivery)) | \(r($o.cpu_kernel_pct)) | \(r($o.p50_ms)) / \(r($o.p99_ms)) | \(r($f.cpu_us_per_delivery)) | \(r($f.p50_ms)) / \(r($f.p99_ms)) | \(if $f.cpu_us_per_delivery then r($o.cpu_us_per_delivery / $f.cpu_us_per_delivery) else "–" end) | \($o.received) / \($o.expected) | \($o.load_average) |"'
  done
done
