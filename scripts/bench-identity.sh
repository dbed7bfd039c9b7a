#!/usr/bin/env bash
# Identity's costs (issue 9), on fresh release processes each run:
#  1. open mode against token mode, back to back and alternating: the fanout scenario (500
#     receivers in one room, 4 senders, 100 msg/s for 10 s; the connect-and-join rate of its
#     504 clients and the CPU per delivery) and a connect scenario (2000 idle clients joining
#     100 rooms: the connect-and-join rate). In token mode each client signs in with a token
#     of its own (`auth`, `authenticated`, then `join`); the gateways and the archiver run
#     with AUTH_MODE=token.
#  2. the access projection's rebuild: 100 000 membership events (1 000 private rooms of
#     100) published to a fresh archiver, then a token-mode gateway started --rebuilds times,
#     each timed from its start until its projection is rebuilt (chat-bench access).
# Ports 4311-4315; all traffic stays on 127.0.0.1. The load average is printed beside each
# run: the machine may be shared.
#
#   scripts/bench-identity.sh                   # 2 rounds of open + token, then 3 rebuilds
#   scripts/bench-identity.sh --rounds 3 --events 100000 --rebuilds 3
#   scripts/bench-identity.sh --only rebuild     # or: --only modes
#   scripts/bench-identity.sh --private-broker   # a throwaway RabbitMQ node of our own
#   BIN=/some/dir scripts/bench-identity.sh     # binaries built elsewhere, no build
#
# Results: one JSON per run and results.txt in the work directory printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
source scripts/bench-lib.sh

ROUNDS=2
EVENTS=100000
REBUILDS=3
ONLY=""
PRIVATE_BROKER=0
while (($#)); do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --events) EVENTS=$2; shift ;;
    --rebuilds) REBUILDS=$2; shift ;;
    --only) ONLY=$2; shift ;;
    --private-broker) PRIVATE_BROKER=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

GATEWAYS=(4311 4312)
ARCHIVER_PORT=4313
LOGGER_PORT=4314
REBUILD_PORT=4315
SECRET="bench-identity-secret-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
RATE_LIMIT=1000000
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_begin bench-identity
bench_broker chatidentity
ports_free "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT" "$REBUILD_PORT"
bench_build

# Starts an archiver, a logger and two gateways in mode $1 (open|token); sets PIDS, PREFIX,
# SYSTEM (the pids to stop).
start_system() {
  local mode=$1
  PREFIX="identity-$(date +%s)-$RANDOM"
  local data=$WORK/data-$PREFIX
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$PREFIX" AMQP_URL="$AMQP_URL" RUST_LOG=warn AUTH_MODE="$mode")
  [[ $mode == token ]] && common+=(AUTH_SECRET="$SECRET")
  start_subscribers "$PREFIX" common "$data"
  local archiver=$ARCHIVER_PID logger=$LOGGER_PID
  SYSTEM=("$archiver" "$logger")
  local gws=() i=1 port
  for port in "${GATEWAYS[@]}"; do
    start "gateway-$i-$PREFIX" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" \
      RATE_LIMIT=$RATE_LIMIT RATE_BURST=$RATE_LIMIT "$BIN/gateway"
    gws+=("gw$i=$LAST_PID")
    SYSTEM+=("$LAST_PID")
    i=$((i + 1))
  done
  for port in "${GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT"; do wait_port "$port" 60; done
  PIDS="$(IFS=,; echo "${gws[*]}"),logger=$logger,archiver=$archiver"
}

stop_system() {
  stop_pids "${SYSTEM[@]}"
  bench_cleanup "$PREFIX"
}

bench() { # name, then chat-bench's arguments
  local name=$1
  shift
  printf 'chat-bench %s\n' "$*" >>"$WORK/commands.txt"
  echo "load average before: $(loadavg)" | tee -a "$WORK/results.txt"
  "$BIN/chat-bench" "$@" --label "$name" --json-out "$WORK/$name.json" | tee -a "$WORK/results.txt"
  echo "load average after: $(loadavg)" | tee -a "$WORK/results.txt"
}

# One round of one mode: the fanout scenario, then the connect scenario, each on fresh processes.
modes_round() {
  local mode=$1 round=$2 auth=()
  [[ $mode == token ]] && auth=(--auth-secret "$SECRET")
  local urls=(--url "ws://127.0.0.1:${GATEWAYS[0]}" --url "ws://127.0.0.1:${GATEWAYS[1]}")
  step "round $round, $mode mode: fanout (500 receivers in one room, 4 senders, 100 msg/s, 10 s)"
  start_system "$mode"
  bench "fanout-$mode-$round" load "${urls[@]}" "${auth[@]}" --receivers 500 --senders 4 --rooms 1 \
    --rate 100 --duration 10s --pids "$PIDS" "${BROKER_ARGS[@]}"
  stop_system
  step "round $round, $mode mode: connect (2000 idle clients joining 100 rooms)"
  start_system "$mode"
  bench "connect-$mode-$round" idle "${urls[@]}" "${auth[@]}" --connections 2000 --rooms 100 \
    --settle 1s --connect-concurrency 64 --pids "$PIDS"
  stop_system
}

if [[ $ONLY != rebuild ]]; then
  for ((round = 1; round <= ROUNDS; round++)); do
    modes_round open "$round"
    modes_round token "$round"
  done
fi

if [[ $ONLY != modes ]]; then
  step "the access projection's rebuild from $EVENTS membership events ($REBUILDS gateway starts)"
  PREFIX="identity-rebuild-$(date +%s)-$RANDOM"
  data=$WORK/data-$PREFIX
  mkdir -p "$data"
  start "archiver-$PREFIX" env CHAT_PREFIX="$PREFIX" AMQP_URL="$AMQP_URL" RUST_LOG=warn \
    ARCHIVER_LISTEN=127.0.0.1:$ARCHIVER_PORT DATABASE_URL="sqlite://$data/archive.db" "$BIN/archiver"
  SYSTEM=("$LAST_PID")
  wait_port "$ARCHIVER_PORT" 60
  bench "rebuild-$EVENTS" access --archiver "http://127.0.0.1:$ARCHIVER_PORT" --prefix "$PREFIX" \
    --events "$EVENTS" --room-size 100 --gateway "$BIN/gateway" --listen "127.0.0.1:$REBUILD_PORT" \
    --runs "$REBUILDS" --archiver-pid "${SYSTEM[0]}"
  stop_system
fi

step "summary (also in $WORK/results.txt)"
python3 - "$WORK" <<'PY'
import json, pathlib, sys
work = pathlib.Path(sys.argv[1])
rows = []
for path in sorted(work.glob("*.json")):
    r = json.loads(path.read_text())
    name = path.stem
    if name.startswith("fanout") or name.startswith("connect"):
        rows.append((name, r.get("auth"), r.get("connect_per_s"), r.get("handshake_p50_ms"),
                     r.get("cpu_us_per_delivery"), r.get("other_cpu_s"), r.get("errors", r.get("connect_errors"))))
    elif name.startswith("rebuild"):
        print(f"{name}: seeded={r['seeded']} start_to_rebuilt_s={r['start_to_rebuilt_s']} "
              f"replay_s={r['replay_s']} events_replayed={r['events_replayed']} "
              f"gateway_cpu_s={r['gateway_cpu_s']} archiver_cpu_s={r['archiver_cpu_s']}")
print("| run | auth | connect rate (clients/s) | handshake p50 (ms) | CPU per delivery (µs) | other programs' CPU (s) | errors |")
print("|---|---|---:|---:|---:|---:|---:|")
for row in rows:
    print("| " + " | ".join("–" if v is None else str(v) for v in row) + " |")
PY
