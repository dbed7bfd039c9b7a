#!/usr/bin/env bash
# Routing by room (issue 14 item 4): does a gateway's cost follow its own clients? G
# gateways, R rooms, one receiver and one sender per room, every member of a room on the
# same gateway (`--spread by-room`), so each gateway serves R/G rooms; the senders together
# send RATE messages/s for the window. Each configuration runs twice on fresh processes:
# `ROUTE_BY_ROOM=false` (today's design: every gateway consumes every event) and `true`.
# Per gateway: rooms served, messages sent in them, deliveries it consumed
# (`chat_events_consumed_total`), their ratio, and its CPU seconds per second. Release
# binaries, fresh CHAT_PREFIX and SQLite archive per run, ports 4401-4410, all on 127.0.0.1.
#
#   scripts/bench-routing.sh                         # G = 2..8, 2000 rooms, 500 msg/s, 20 s
#   scripts/bench-routing.sh --gateways "8"          # only 8 gateways
#   scripts/bench-routing.sh --rooms 2000 --rate 500 --duration 20s
#   scripts/bench-routing.sh --private-broker        # a throwaway RabbitMQ node of our own
#   BIN=/some/dir scripts/bench-routing.sh           # binaries built elsewhere, no build
#
# Prints one result line per run (the load average before and after beside it) and a
# summary table; the JSON results stay in the work directory it names.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/bench-lib.sh

GATEWAY_COUNTS="2 3 4 5 6 7 8"
ROOMS=2000
RATE=500
DURATION=20s
PRIVATE_BROKER=0
while (($#)); do
  case $1 in
    --gateways) GATEWAY_COUNTS=$2; shift ;;
    --rooms) ROOMS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --private-broker) PRIVATE_BROKER=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

FIRST_PORT=4401
ARCHIVER_PORT=4409
LOGGER_PORT=4410
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin routing
bench_broker chatrouting
ports_free $(seq "$FIRST_PORT" "$LOGGER_PORT")
bench_build

# One run: $1 gateways, ROUTE_BY_ROOM=$2.
run() {
  local gateways=$1 routed=$2
  local label="routing-g$gateways-$([[ $routed == true ]] && echo routed || echo fanout)"
  local prefix="routing-$(date +%s)-$RANDOM"
  local data=$WORK/data-$prefix
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$prefix" AMQP_URL="$AMQP_URL" RUST_LOG=warn)
  start_subscribers "$label" common "$data"
  local pids=("$ARCHIVER_PID" "$LOGGER_PID") labels=("archiver=$ARCHIVER_PID" "logger=$LOGGER_PID")
  local urls=() g port
  wait_port "$ARCHIVER_PORT" 60
  wait_port "$LOGGER_PORT" 60
  for ((g = 0; g < gateways; g++)); do
    port=$((FIRST_PORT + g))
    start "gateway-$g-$label" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$g" \
      ROUTE_BY_ROOM="$routed" RATE_LIMIT=1000000 RATE_BURST=1000000 "$BIN/gateway"
    pids+=("$LAST_PID")
    labels+=("gw$g=$LAST_PID")
    urls+=(--url "ws://127.0.0.1:$port")
  done
  for ((g = 0; g < gateways; g++)); do wait_port $((FIRST_PORT + g)) 60; done
  step "$label: $gateways gateways, $ROOMS rooms, $RATE msg/s for $DURATION, ROUTE_BY_ROOM=$routed; load average $(loadavg)"
  "$BIN/chat-bench" load "${urls[@]}" --spread by-room --consumed \
    --rooms "$ROOMS" --receivers "$ROOMS" --senders "$ROOMS" --rate "$RATE" --duration "$DURATION" \
    --connect-concurrency 128 --pids "$(IFS=,; echo "${labels[*]}")" "${BROKER_ARGS[@]}" \
    --label "$label" --json-out "$WORK/$label.json" | tee -a "$WORK/results.txt"
  echo "load average after: $(loadavg)" | tee -a "$WORK/results.txt"
  stop_pids "${pids[@]}"
  bench_cleanup "$prefix"
}

for gateways in $GATEWAY_COUNTS; do
  run "$gateways" false
  run "$gateways" true
done

step "summary (per gateway: mean consumed/s and CPU s/s; worst |consumed / own rooms' messages - 1|)"
python3 - "$WORK" <<'EOF'
import glob, json, sys
rows = [json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/routing-*.json"))]
rows.sort(key=lambda r: (r["gateways"], r["scenario"]))
print("| gateways | design | msgs sent | loss | consumed/s per gateway (mean) | consumed / own rooms' msgs (range) | gateway CPU s/s (mean) | broker CPU s | p99 ms |")
print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
for r in rows:
    per = r["per_gateway"]
    ratios = [g["consumed_over_own"] for g in per] or [0]
    design = "routed by room" if r["scenario"].endswith("routed") else "fanout (today)"
    print(f"| {len(per)} | {design} | {r['sent']} | {r['lost']} | {r['consumed_per_s_mean']:.0f} | "
          f"{min(ratios):.3f}–{max(ratios):.3f} | {r['gateway_cpu_s_per_s_mean']:.4f} | "
          f"{r['broker_cpu_s'] or 0:.1f} | {r['p99_ms']:.1f} |")
EOF
