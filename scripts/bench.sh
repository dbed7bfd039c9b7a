#!/usr/bin/env bash
# Runs the standard benchmark scenarios against both systems, back to back on this machine,
# and writes BENCHMARKS.md: our gateways (2) + logger + archiver, then the Node.js
# Socket.IO peer (2 processes, /work/shared/peers/seed-socketio), then the broker alone;
# beside our fanout, the same load against the floor (`chat-bench floor`, no broker).
# Every service is started here (release binaries, a fresh CHAT_PREFIX and data directory
# per start) and stopped again; all traffic stays on 127.0.0.1.
#
#   scripts/bench.sh                    # full run (about 20 minutes on 2 cores)
#   scripts/bench.sh --quick            # shorter windows and fewer capacity steps
#   scripts/bench.sh --private-broker   # a throwaway RabbitMQ node of our own on 5673+,
#                                       # so nothing else using the machine's broker
#                                       # (tests that restart it) disturbs the run
#   scripts/bench.sh --out FILE         # write elsewhere than BENCHMARKS.md
#   scripts/bench.sh --cluster          # a three-node cluster of our own (scripts/cluster.sh
#                                       # on 5741-5743) instead of one node: the quorum
#                                       # queues replicated on three; broker CPU is the
#                                       # sum (ours only: implies --no-peer)
#   scripts/bench.sh --only fanout,active --no-peer --out /tmp/B.md
#                                       # some scenarios only (archive, fanout, active,
#                                       # floor, ingest, rooms, idle, broker), ours only
#
# Environment: PEER_DIR (the peer's sources, default ../shared/peers/seed-socketio),
# AMQP_URL (a broker to use instead of the local one), KEEP_WORK=1 (keep the temp dir),
# FLOOR_BURST_DELAY (the floor's write delay per burst, default 5ms), CAPACITY_FACTOR (the
# fanout capacity searches' step, default 1.25; 1.1 tells closer figures apart),
# CAPACITY_STEP (how long each capacity step is measured, default 5s, 3s quick: longer steps
# are less easily tipped by a few joins or a scheduler hiccup),
# ACTIVE_TYPISTS and ACTIVE_CHURNERS (the 'active' scenario's, default 25 and 10), BIN (the
# binaries' directory, built elsewhere: no build then).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

QUICK=0
PRIVATE_BROKER=0
CLUSTER=0
ONLY=""
PEER=1
OUT=BENCHMARKS.md
while (($#)); do
  case $1 in
    --quick) QUICK=1 ;;
    --private-broker) PRIVATE_BROKER=1 ;;
    --cluster) CLUSTER=1 PEER=0 ;; # the peer takes one broker URL
    --out) OUT=$2; shift ;;
    --only) ONLY=",$2,"; shift ;;
    --no-peer) PEER=0 ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if ((QUICK)); then
  WINDOW=5s STEP=3s MAX_STEPS=6 ARCHIVE_WINDOW=5s MODE="quick run (--quick)"
else
  WINDOW=10s STEP=5s MAX_STEPS=12 ARCHIVE_WINDOW=10s MODE="full run"
fi
if [[ -n ${CAPACITY_STEP:-} ]]; then
  STEP=$CAPACITY_STEP
  MODE="$MODE, capacity steps of $STEP"
fi
if [[ -n $ONLY ]]; then MODE="$MODE of some scenarios only (--only ${ONLY//,/ })"; fi
((PEER)) || MODE="$MODE, without the peer (--no-peer)"
# Ports of the systems under test (not the run.sh ones, so a running dev system is left alone).
OUR_GATEWAYS=(4101 4102)
ARCHIVER_PORT=4100
LOGGER_PORT=4200
PEER_PORTS=(4201 4202)
CAPACITY_FACTOR=${CAPACITY_FACTOR:-1.25}
# Our gateways' rate limit (20/s, burst 40 by default) would refuse the senders' load.
BENCH_RATE_LIMIT=1000000

started=()     # pids of everything this script started
WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-bench.XXXXXX")
chmod 755 "$WORK" # the private broker runs as the rabbitmq user
RESULTS=$WORK/results
LOGS=$WORK/logs
mkdir -p "$RESULTS" "$LOGS"
COMMANDS=$WORK/commands.txt
: >"$COMMANDS"

private_node=""
finish() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${started[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${started[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n $private_node ]] && broker_alive; then
    PATH="$PATH:/usr/sbin" rabbitmqctl -q -n "$private_node" stop >/dev/null 2>&1 || true
  fi
  if ((CLUSTER)); then scripts/cluster.sh stop >/dev/null 2>&1 || true; fi
  if [[ ${KEEP_WORK:-0} == 1 || $code -ne 0 ]]; then
    echo "work directory (logs, results): $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- machine and broker -------------------------------------------------------------------

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 12000)); then
  echo "warning: only $(ulimit -n) open files allowed; 10 000 idle clients need more" >&2
fi

# The broker. Something else on the machine may kill or restart it during the run (tests
# that SIGKILL every RabbitMQ VM, for example): each scenario checks it is still the same
# broker afterwards, and runs again once on a fresh one if not.
PRIVATE_PORT=""
private_broker_start() {
  local port=${PRIVATE_PORT:-5673}
  if [[ -z $PRIVATE_PORT ]]; then
    while port_open "$port"; do port=$((port + 1)); done
    PRIVATE_PORT=$port
  fi
  private_node="chatbench$$-$RANDOM@localhost"
  local dir=$WORK/rabbitmq-$RANDOM
  step "starting a private RabbitMQ node ($private_node on 127.0.0.1:$port)"
  start_rabbitmq_node "$private_node" "$port" "$dir"
  BROKER_PID=$(cat "$dir/pid")
  export AMQP_URL="amqp://127.0.0.1:$port/%2f"
  BROKER_NOTE="a private RabbitMQ node started for this run on 127.0.0.1:$port (\`--private-broker\`)"
}

# --cluster: three nodes of our own, with their data under $WORK; BROKER_PID lists all three.
export CLUSTER_DIR=$WORK/cluster CLUSTER_PORT_BASE=${CLUSTER_PORT_BASE:-5740}
cluster_start() {
  scripts/cluster.sh stop >/dev/null 2>&1 || true
  scripts/cluster.sh start
  AMQP_URL=$(scripts/cluster.sh url)
  export AMQP_URL
  BROKER_PID=$(for n in 1 2 3; do scripts/cluster.sh pid "$n"; echo; done | paste -sd,)
  BROKER_NOTE="a three-node cluster started for this run on 127.0.0.1:$((CLUSTER_PORT_BASE + 1))-$((CLUSTER_PORT_BASE + 3)) (\`--cluster\`, scripts/cluster.sh): the logger's and archiver's quorum queues and the event log stream have a replica on each node; the broker's CPU is the three nodes' sum; every service is given the three URLs and connects to one at random"
}

broker_alive() {
  [[ -n ${BROKER_PID:-} ]] || return 1
  local pid
  for pid in ${BROKER_PID//,/ }; do kill -0 "$pid" 2>/dev/null || return 1; done
}

# Makes sure a broker runs and sets BROKER_PID and BROKER_ARGS.
ensure_broker() {
  if ((CLUSTER)); then
    broker_alive || cluster_start
  elif ((PRIVATE_BROKER)); then
    broker_alive || private_broker_start
  else
    ensure_rabbitmq
    export AMQP_URL=${AMQP_URL:-amqp://127.0.0.1:5672/%2f}
    BROKER_PID=$(ss -ltnpH 'sport = :5672' 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)
    BROKER_PID=${BROKER_PID:-$(pgrep -o -x beam.smp || true)}
    BROKER_NOTE="the machine's RabbitMQ on 127.0.0.1:5672, shared with anything else using it"
  fi
  BROKER_ARGS=()
  if [[ -n ${BROKER_PID:-} ]]; then BROKER_ARGS=(--broker-pid "$BROKER_PID"); fi
}

ensure_rabbitmq
ensure_broker

for port in "${OUR_GATEWAYS[@]}" "$ARCHIVER_PORT" "$LOGGER_PORT" "${PEER_PORTS[@]}"; do
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
BENCH=$BIN/chat-bench

PEER_DIR=${PEER_DIR:-../shared/peers/seed-socketio}
[[ -d $PEER_DIR ]] || PEER_DIR=/work/shared/peers/seed-socketio
if ((PEER)); then
  step "installing the Socket.IO peer from $PEER_DIR (npm install in a temp copy)"
  mkdir -p "$WORK/peer"
  cp "$PEER_DIR"/package.json "$PEER_DIR"/*.js "$WORK/peer/"
  chmod -R u+w "$WORK/peer"
  (cd "$WORK/peer" && npm install --no-audit --no-fund --loglevel=error >"$LOGS/npm.log" 2>&1)
fi

# --- starting and stopping the systems ----------------------------------------------------

# Answers whether GET $2 on 127.0.0.1:$1 returns 200.
http_ok() {
  local reply
  reply=$({ exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3 && head -1 <&3; } 2>/dev/null) || return 1
  [[ $reply == *" 200 "* ]]
}

wait_healthy() { # port path
  local i
  for ((i = 0; i < 150; i++)); do
    http_ok "$1" "$2" && return 0
    sleep 0.2
  done
  echo "127.0.0.1:$1$2 is not healthy after 30s" >&2
  return 1
}

start() { # name, then the command; sets LAST_PID
  local name=$1
  shift
  "$@" >>"$LOGS/$name.log" 2>&1 &
  LAST_PID=$!
  started+=("$LAST_PID")
}

stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  local keep=()
  for pid in "${started[@]}"; do
    [[ " $* " == *" $pid "* ]] || keep+=("$pid")
  done
  started=("${keep[@]}")
}

SYSTEM_PIDS=()
PREFIX=""
start_ours() {
  PREFIX="bench-$(date +%s)-$RANDOM"
  local data=$WORK/data-$PREFIX
  mkdir -p "$data"
  local common=(env CHAT_PREFIX="$PREFIX" AMQP_URL="$AMQP_URL" RUST_LOG=warn)
  start archiver "${common[@]}" ARCHIVER_LISTEN=127.0.0.1:$ARCHIVER_PORT \
    DATABASE_URL="sqlite://$data/archive.db" "$BIN/archiver"
  local archiver=$LAST_PID
  start logger "${common[@]}" LOG_FILE="$data/chat.log" LOGGER_STDOUT=false \
    LOGGER_LISTEN=127.0.0.1:$LOGGER_PORT "$BIN/logger"
  local logger=$LAST_PID
  local gws=() i=1 port
  for port in "${OUR_GATEWAYS[@]}"; do
    start "gateway-$i" "${common[@]}" GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_ID="gw-$i" \
      RATE_LIMIT=$BENCH_RATE_LIMIT RATE_BURST=$BENCH_RATE_LIMIT \
      PING_INTERVAL_MS="${PING_MS:-25000}" PING_TIMEOUT_MS="${PING_MS:-20000}" "$BIN/gateway"
    gws+=("gw$i=$LAST_PID")
    SYSTEM_PIDS+=("$LAST_PID")
    i=$((i + 1))
  done
  SYSTEM_PIDS+=("$archiver" "$logger")
  for port in "${OUR_GATEWAYS[@]}"; do wait_healthy "$port" /healthz; done
  wait_healthy "$ARCHIVER_PORT" /healthz
  wait_healthy "$LOGGER_PORT" /healthz
  GATEWAY_PIDS=$(IFS=,; echo "${gws[*]}")
  PIDS="$GATEWAY_PIDS,logger=$logger,archiver=$archiver"
}

stop_ours() {
  stop_pids "${SYSTEM_PIDS[@]}"
  SYSTEM_PIDS=()
  "$BENCH" cleanup --prefix "$PREFIX" >>"$LOGS/cleanup.log" 2>&1 || true
}

start_peer() {
  local labels=() i=1 port
  for port in "${PEER_PORTS[@]}"; do
    start "node-$i" env NODE_PORT="$port" AMQP_URL="${AMQP_URL%/%2f}" node "$WORK/peer/server.js"
    labels+=("node$i=$LAST_PID")
    SYSTEM_PIDS+=("$LAST_PID")
    i=$((i + 1))
  done
  for port in "${PEER_PORTS[@]}"; do wait_healthy "$port" /; done
  PIDS=$(IFS=,; echo "${labels[*]}")
  GATEWAY_PIDS=$PIDS
}

stop_peer() {
  stop_pids "${SYSTEM_PIDS[@]}"
  SYSTEM_PIDS=()
}

# Runs chat-bench, logs the command, keeps the JSON as $RESULTS/$1.json.
bench() {
  local name=$1
  shift
  printf 'chat-bench %s\n' "$*" >>"$COMMANDS"
  echo "+ chat-bench $*"
  if ! "$BENCH" "$@" --json-out "$RESULTS/$name.json" | tee -a "$LOGS/results.txt"; then
    echo "warning: $name failed; see $LOGS" >&2
  fi
}

# Runs one scenario (a function and its arguments); if the broker died meanwhile, runs it
# once more on a fresh broker, since its figures would be those of an outage.
RERUNS=()
guarded() {
  local try
  for try in 1 2; do
    ensure_broker
    local pid=$BROKER_PID
    "$@" || echo "warning: '$*' failed; see $LOGS" >&2
    if broker_alive && [[ $BROKER_PID == "$pid" ]]; then
      return 0
    fi
    echo "warning: the broker went away during '$*' (something else killed or restarted it)" >&2
    RERUNS+=("$* (try $try)")
  done
}

# The scenarios; each starts the system on fresh processes and stops it again.
# Arguments: system name (chat|socketio), then the start and stop functions.
urls_of() {
  local port ports=("${OUR_GATEWAYS[@]}")
  [[ $1 == socketio ]] && ports=("${PEER_PORTS[@]}")
  URLS=(--dialect "$1")
  for port in "${ports[@]}"; do URLS+=(--url "ws://127.0.0.1:$port"); done
}

fanout() {
  local system=$1
  urls_of "$system"
  step "$system: fanout (500 receivers in one room, 4 senders, 100 msg/s)"
  $2
  bench "$system-fanout" load "${URLS[@]}" --receivers 500 --senders 4 --rooms 1 \
    --rate 100 --duration "$WINDOW" --pids "$PIDS" "${BROKER_ARGS[@]}" --label fanout
  bench "$system-fanout-capacity" capacity "${URLS[@]}" --receivers 500 --senders 4 \
    --rooms 1 --rate 100 --duration "$STEP" --drain 3s --max-steps "$MAX_STEPS" \
    --factor "$CAPACITY_FACTOR" --pids "$PIDS" "${BROKER_ARGS[@]}" --label fanout-capacity
  $3
}

# Issue 10: the fanout again with presence and typing going on in the room (ours only: the
# peer has neither): 25 of the 500 members type (5 %) and 10 leave and come back, so the
# room is as big as the quiet one's; their deliveries count in the CPU per delivery.
active() {
  urls_of chat
  local typists=${ACTIVE_TYPISTS:-25} churners=${ACTIVE_CHURNERS:-10}
  local receivers=$((500 - typists - churners))
  local ambient=(--typists "$typists" --typing-every 3s --churners "$churners" --churn-every 8s)
  [[ -n ${CHURN_ELSEWHERE:-} ]] && ambient+=(--churn-elsewhere)
  step "chat: fanout with presence and typing active ($receivers receivers, 4 senders, 100 msg/s; ${ambient[*]})"
  start_ours
  bench chat-fanout-active load "${URLS[@]}" --receivers "$receivers" --senders 4 --rooms 1 \
    --rate 100 --duration "$WINDOW" "${ambient[@]}" --pids "$PIDS" "${BROKER_ARGS[@]}" \
    --label fanout-active
  bench chat-fanout-capacity-active capacity "${URLS[@]}" --receivers "$receivers" --senders 4 \
    --rooms 1 --rate 100 --duration "$STEP" --drain 3s --max-steps "$MAX_STEPS" \
    --factor "$CAPACITY_FACTOR" "${ambient[@]}" --pids "$PIDS" "${BROKER_ARGS[@]}" \
    --label fanout-capacity-active
  stop_ours
}

ingest() {
  local system=$1
  urls_of "$system"
  step "$system: ingest (10 receivers, 20 senders, 2000 msg/s)"
  $2
  bench "$system-ingest" load "${URLS[@]}" --receivers 10 --senders 20 --rooms 1 \
    --rate 2000 --duration "$WINDOW" --pids "$PIDS" "${BROKER_ARGS[@]}" --label ingest
  $3
  $2
  bench "$system-ingest-capacity" capacity "${URLS[@]}" --receivers 10 --senders 20 \
    --rooms 1 --rate 2000 --duration "$STEP" --drain 3s --max-steps "$MAX_STEPS" \
    --min-rate 100 --pids "$PIDS" "${BROKER_ARGS[@]}" --label ingest-capacity
  $3
}

# The floor (issue 14): the fanout load against `chat-bench floor`, a minimal server on our
# gateways' ports that only fans pre-encoded frames out, no broker: the least work that
# delivers the same frames. Arguments: result name, mode (delivery|burst), write delay.
FLOOR_BURST_DELAY=${FLOOR_BURST_DELAY:-5ms}
floor() {
  local name=$1 mode=$2 delay=$3 label=fanout port listen=()
  [[ $mode == burst ]] && label="fanout-burst-$delay"
  step "floor, one write per $mode (write delay $delay): fanout (500 receivers in one room, 4 senders, 100 msg/s)"
  for port in "${OUR_GATEWAYS[@]}"; do listen+=(--listen "127.0.0.1:$port"); done
  printf 'chat-bench floor %s &\n' "${listen[*]} --mode $mode --write-delay $delay" >>"$COMMANDS"
  start "$name" "$BENCH" floor "${listen[@]}" --mode "$mode" --write-delay "$delay"
  local pid=$LAST_PID
  for port in "${OUR_GATEWAYS[@]}"; do wait_port "$port" 30; done
  urls_of chat
  bench "$name-fanout" load "${URLS[@]}" --receivers 500 --senders 4 --rooms 1 \
    --rate 100 --duration "$WINDOW" --pids "floor=$pid" --label "$label"
  stop_pids "$pid"
}

rooms() {
  local system=$1
  urls_of "$system"
  step "$system: many rooms (2000 clients in 200 rooms, 1000 msg/s)"
  $2
  bench "$system-rooms" load "${URLS[@]}" --receivers 1800 --senders 200 --rooms 200 \
    --rate 1000 --duration "$WINDOW" --pids "$PIDS" "${BROKER_ARGS[@]}" --label rooms
  $3
}

# Idle clients are silent, so our gateways ping them: every 2 s here (25 s by default), and
# the memory is read after 10 s of that, so the figure includes the heartbeat's cost.
IDLE_PING_MS=2000
idle() {
  local system=$1 n=$4 PING_MS=$IDLE_PING_MS
  urls_of "$system"
  step "$system: $n idle connections"
  $2
  bench "$system-idle-$n" idle "${URLS[@]}" --connections "$n" --rooms 100 --settle 10s \
    --pids "$GATEWAY_PIDS" --label "idle-$n"
  $3
}

archive() {
  local rate=$1 duration=$2
  step "our system: archiver ingest at $rate events/s"
  start_ours
  bench "chat-archive-$rate" archive --archiver "http://127.0.0.1:$ARCHIVER_PORT" \
    --prefix "$PREFIX" --rate "$rate" --duration "$duration" --pids "$PIDS" \
    "${BROKER_ARGS[@]}" --label "archive-$rate"
  stop_ours
}

# The issue's "one gateway holds 10 000 connections": all idle clients on our first gateway.
idle_one() {
  local PING_MS=$IDLE_PING_MS
  step "our system: 10000 idle connections on one gateway"
  start_ours
  bench chat-idle-one-10000 idle --dialect chat --url "ws://127.0.0.1:${OUR_GATEWAYS[0]}" \
    --connections 10000 --rooms 100 --settle 10s --pids "${GATEWAY_PIDS%%,*}" --label idle-one-10000
  stop_ours
}

broker_alone() {
  step "the broker alone"
  bench broker-baseline baseline --rate 2000 --duration "$WINDOW" "${BROKER_ARGS[@]}" \
    --label broker-baseline
  bench broker-capacity baseline --capacity --rate 2000 --duration "$STEP" --drain 3s \
    --max-steps "$MAX_STEPS" --min-rate 100 "${BROKER_ARGS[@]}" --label broker-capacity
}

# --- the run ------------------------------------------------------------------------------

STARTED_AT=$(date -u +%Y-%m-%dT%H:%MZ)
SECONDS=0

# Whether scenario $1 is to run (all of them unless --only names some).
wanted() { [[ -z $ONLY || $ONLY == *",$1,"* ]]; }
systems=(chat)
((PEER)) && systems+=(socketio)

if wanted archive; then
  guarded archive 1000 "$ARCHIVE_WINDOW"
  guarded archive 5000 5s
fi
for system in "${systems[@]}"; do
  if [[ $system == chat ]]; then up=start_ours down=stop_ours; else up=start_peer down=stop_peer; fi
  wanted fanout && guarded fanout "$system" "$up" "$down"
  if [[ $system == chat ]]; then
    wanted active && guarded active
    if wanted floor; then
      guarded floor floor delivery 0ms
      guarded floor floor-burst burst "$FLOOR_BURST_DELAY"
    fi
  fi
  wanted ingest && guarded ingest "$system" "$up" "$down"
  wanted rooms && guarded rooms "$system" "$up" "$down"
  if wanted idle; then
    guarded idle "$system" "$up" "$down" 8000
    guarded idle "$system" "$up" "$down" 10000
    if [[ $system == chat ]]; then guarded idle_one; fi
  fi
done
wanted broker && guarded broker_alone

ELAPSED=$SECONDS

# --- the report ---------------------------------------------------------------------------

step "writing $OUT"
rabbit_version=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
erlang_version=$(dpkg-query -W -f='${Version}' erlang-base 2>/dev/null || echo unknown)
socketio_version=$(node -p "require('$WORK/peer/node_modules/socket.io/package.json').version" 2>/dev/null || echo unknown)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=""
git diff --quiet HEAD 2>/dev/null || dirty=" with uncommitted changes in the work tree"
{
  cat <<EOF
# Benchmarks

Our system (2 gateways, logger, archiver; Rust) against the classic Node.js + Socket.IO +
RabbitMQ design (2 processes of the peer in \`shared/peers/seed-socketio\`), measured by the
same tool (\`chat-bench\`, crate \`bench/\`) in the same run, on the same 2-core machine, with
real websocket clients over loopback. Written by \`scripts/bench.sh\`; this is a **$MODE**,
started $STARTED_AT, which took $((ELAPSED / 60)) min $((ELAPSED % 60)) s (not counting the build).

$(if ((${#RERUNS[@]})); then
  echo "**Scenarios run again** because the broker was killed or restarted by something else"
  echo "on the machine while they ran (the second run's figures are shown):"
  printf -- '- %s\n' "${RERUNS[@]}"
  echo
fi)
## The machine

| | |
|---|---|
| CPUs | $(nproc) × $(lscpu | sed -n 's/^Model name: *//p' | head -1) |
| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo) |
| kernel | $(uname -r) |
| Rust | $(rustc --version) |
| Node.js | $(node --version), socket.io $socketio_version |
| RabbitMQ | $rabbit_version (Erlang $erlang_version), $BROKER_NOTE |
| code | commit $commit$dirty |

## How to read this

- Everything shares the 2 cores: both systems' processes, RabbitMQ, and the load generator
  itself (its CPU is the "bench tool CPU" row). Latency and capacity therefore measure this
  whole machine under load, and they move from run to run by tens of percent. **CPU time per
  delivery or per message is the steadier figure**: it is the CPU time (utime + stime, all
  threads, from \`/proc/<pid>/stat\`) of the system's own processes over the measured window,
  divided by what they delivered. Ours counts both gateways, the logger and the archiver
  (they do work the peer does not do: persistence, confirms, history); the peer counts its two
  node processes. The broker's CPU is reported apart, as both systems use it.
- "… of which in the kernel" is the share of that CPU time spent in system calls, TCP and
  scheduling (stime). Over loopback, part of the receiving side's TCP work runs in the
  sender's context, so a server's kernel time includes some of its clients' receive path;
  this holds for both systems alike.
- "Other programs' CPU" is the machine's busy time during the window minus everything
  watched: other work on the machine at the same time (noise). Compare it across rows before
  trusting a difference.
- A delivery is one message reaching one receiver in the message's room. Senders receive
  the room's messages too (both systems send them), uncounted.
- Latency is receive time minus the send time carried inside the message, on one clock.
  A capacity step passes with no loss, p99 ≤ 50 ms and the senders on schedule (p99 send lag
  ≤ 50 ms); a step fails only if it fails twice. If the start rate fails, the search steps
  down by the same factor, so the capacity may be below the start rate.
- Our gateways were started with \`RATE_LIMIT=$BENCH_RATE_LIMIT RATE_BURST=$BENCH_RATE_LIMIT\`: the
  default per-connection limit (20 frames/s, burst 40) would refuse the senders' load. All
  other settings are defaults. Each scenario starts on fresh processes (a fresh
  \`CHAT_PREFIX\` and archive for ours), so no backlog carries over.
- Idle memory: RSS (\`VmRSS\`) of the gateway processes (ours: the two gateways; the peer: its
  two node processes) before and after connecting the idle clients, divided by the clients; VmData shows what was allocated whether or not it was
  touched. Our idle clients each join one of 100 rooms (joining one room for all would make
  every join an event for every other member); Socket.IO clients only connect (\`40\`).
  Memory is read 10 s after the last client connected; during the idle scenarios our
  gateways ping silent clients every 2 s (\`PING_INTERVAL_MS\`/\`PING_TIMEOUT_MS\` 2000,
  25 s/20 s by default and in the other scenarios), so the figure includes the heartbeat.
- Handshake time runs from opening the TCP connection to the end of the handshake: for ours
  that includes the \`join\` (its event confirmed by the broker, then the room's history
  fetched from the archiver over the broker), for the peer only the Socket.IO connect. The
  tool keeps 64 handshakes in flight (256 for the idle scenarios), so the connect rate is
  bounded by handshake latency.
- Ratios are ours / peer; "(ours better)" takes into account whether lower or higher is better.

## Results

EOF
  "$BENCH" report --dir "$RESULTS"
  cat <<EOF
$(if [[ -f bench/REBUILD.md ]]; then cat bench/REBUILD.md; echo; fi)
$(if [[ -f bench/ARCHIVE-POSTGRES.md ]]; then cat bench/ARCHIVE-POSTGRES.md; echo; fi)
$(if [[ -f bench/CLUSTER.md ]]; then cat bench/CLUSTER.md; echo; fi)
$(if [[ -f bench/JOIN-STORM.md ]]; then cat bench/JOIN-STORM.md; echo; fi)
$(if [[ -f bench/PRESENCE-LOAD.md ]]; then cat bench/PRESENCE-LOAD.md; echo; fi)
$(if [[ -f bench/LOG-STREAM.md ]]; then cat bench/LOG-STREAM.md; echo; fi)
$(if [[ -f bench/IDENTITY.md ]]; then cat bench/IDENTITY.md; echo; fi)
$(if [[ -f bench/ROUTING.md ]]; then cat bench/ROUTING.md; echo; fi)
$(if [[ -f bench/ANALYSIS.md ]]; then cat bench/ANALYSIS.md; echo; fi)
## The commands

\`scripts/bench.sh$( ((QUICK)) && printf ' --quick')$( ((PRIVATE_BROKER)) && printf ' --private-broker')\` ran, in this order (pids and
prefixes are those of this run; each scenario started the system anew):

\`\`\`
EOF
  cat "$COMMANDS"
  echo '```'
} >"$OUT"
echo "wrote $OUT in $((ELAPSED / 60)) min $((ELAPSED % 60)) s"
