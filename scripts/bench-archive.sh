#!/usr/bin/env bash
# Archive ingest on SQLite and on PostgreSQL, side by side: for each backend an archiver
# (release build) starts on a fresh CHAT_PREFIX and a fresh archive, then `chat-bench
# archive` publishes events straight to the exchange at a fixed rate and follows the
# archive's count over HTTP (bench/src/archive.rs). A private RabbitMQ node on 5673+ keeps
# tests that restart the machine's broker out of the measurement. Prints chat-bench's
# results and the CPU that PostgreSQL's processes used during each PostgreSQL run.
#
#   scripts/bench-archive.sh                       # 5000 events/s for 10 s, once each
#   scripts/bench-archive.sh --rate 8000 --duration 10s --runs 3
#
# Environment: TEST_POSTGRES_URL (server without database, default
# postgres://postgres@127.0.0.1:5432), KEEP_WORK=1 (keep the temp dir with the logs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RATE=5000 DURATION=10s RUNS=1
while (($#)); do
  case $1 in
    --rate) RATE=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --runs) RUNS=$2; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PG_SERVER=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
ARCHIVER_PORT=4300
WORK=$(mktemp -d /tmp/bench-archive.XXXXXX)
chmod 755 "$WORK" # the broker runs as the rabbitmq user
ARCHIVER_PID="" BROKER_PID=""
cleanup() {
  [[ -n $ARCHIVER_PID ]] && kill "$ARCHIVER_PID" 2>/dev/null && wait "$ARCHIVER_PID" 2>/dev/null
  [[ -n $BROKER_PID ]] && kill "$BROKER_PID" 2>/dev/null
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

ensure_rabbitmq
ensure_postgres
if port_open "$ARCHIVER_PORT"; then
  echo "port $ARCHIVER_PORT is in use; stop what listens there and try again" >&2
  exit 1
fi

step "building (cargo build --release --locked -p chat-bench -p archiver)"
cargo build --release --locked -p chat-bench -p archiver
BIN=$(pwd)/target/release

port=5673
while port_open "$port"; do port=$((port + 1)); done
dir=$WORK/rabbitmq
step "starting a private RabbitMQ node on 127.0.0.1:$port"
start_rabbitmq_node "benchar$$@localhost" "$port" "$dir"
BROKER_PID=$(cat "$dir/pid")
export AMQP_URL="amqp://127.0.0.1:$port/%2f"

# CPU ticks used so far by every process of the postgres user.
postgres_ticks() {
  local pid total=0
  for pid in $(pgrep -u postgres); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

for ((run = 1; run <= RUNS; run++)); do
  for backend in sqlite postgres; do
    prefix="bench-archive-$backend-$(date +%s)-$RANDOM"
    database=${prefix//-/_}
    if [[ $backend == sqlite ]]; then
      url="sqlite://$WORK/$prefix.db"
    else
      url="$PG_SERVER/$database"
    fi
    step "run $run: archive ingest on $backend at $RATE events/s for $DURATION ($url)"
    env CHAT_PREFIX="$prefix" RUST_LOG=warn ARCHIVER_LISTEN="127.0.0.1:$ARCHIVER_PORT" \
      DATABASE_URL="$url" "$BIN/archiver" >>"$WORK/archiver.log" 2>&1 &
    ARCHIVER_PID=$!
    for _ in $(seq 150); do
      curl -fs "http://127.0.0.1:$ARCHIVER_PORT/healthz" >/dev/null && break
      sleep 0.2
    done
    before=$(postgres_ticks)
    "$BIN/chat-bench" archive --archiver "http://127.0.0.1:$ARCHIVER_PORT" --prefix "$prefix" \
      --rate "$RATE" --duration "$DURATION" --pids "archiver=$ARCHIVER_PID" \
      --broker-pid "$BROKER_PID" --label "archive-$backend-$RATE"
    after=$(postgres_ticks)
    if [[ $backend == postgres ]]; then
      echo "PostgreSQL processes used $(( (after - before) * 1000 / $(getconf CLK_TCK) )) ms of CPU during the run"
    fi
    kill "$ARCHIVER_PID"
    wait "$ARCHIVER_PID" || true
    ARCHIVER_PID=""
    "$BIN/chat-bench" cleanup --prefix "$prefix" >>"$WORK/cleanup.log" 2>&1 || true
    if [[ $backend == postgres ]]; then
      psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)"
    fi
  done
done
