#!/usr/bin/env bash
# What the event log stream <prefix>.log costs the broker: archive ingest (`chat-bench
# archive`, events published straight to the exchange at a fixed rate, confirmed) with the
# stream bound, and with the same binaries after deleting the stream right after the
# archiver declared it (the system as it was before the stream). A private RabbitMQ node on
# 5691+ keeps other tests out of the broker's CPU figure. Runs alternate, twice each.
#
#   scripts/bench-log-stream.sh                    # 2000 events/s for 10 s
#   RATE=4000 RUNS=3 scripts/bench-log-stream.sh
#
# Needs python3 with pika (scripts/lib.sh ensure_pika) to delete the stream. Debug builds:
# the figure that matters is the broker's CPU per event, which does not depend on them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

RATE=${RATE:-2000} RUNS=${RUNS:-2}
ensure_rabbitmq
ensure_pika
step "building (cargo build --locked -p chat-bench -p archiver)"
cargo build --locked -p chat-bench -p archiver
BIN=$(target_dir)/debug
WORK=$(mktemp -d /tmp/bench-log-stream.XXXXXX)
chmod 755 "$WORK" # the broker runs as the rabbitmq user
port=5691
while port_open "$port"; do port=$((port + 1)); done
step "starting a private RabbitMQ node on 127.0.0.1:$port"
start_rabbitmq_node "benchlog$$@localhost" "$port" "$WORK/rabbitmq"
BROKER_PID=$(cat "$WORK/rabbitmq/pid") APID=""
cleanup() {
  [[ -n $APID ]] && kill "$APID" 2>/dev/null && wait "$APID" 2>/dev/null
  kill "$BROKER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export AMQP_URL="amqp://127.0.0.1:$port/%2f"
APORT=4391
for ((run = 1; run <= RUNS; run++)); do
  for mode in stream nostream; do
    prefix="bench-log-$mode-$run-$RANDOM"
    env CHAT_PREFIX="$prefix" RUST_LOG=warn ARCHIVER_LISTEN="127.0.0.1:$APORT" \
      DATABASE_URL="sqlite://$WORK/$prefix.db" "$BIN/archiver" >>"$WORK/archiver.log" 2>&1 &
    APID=$!
    for _ in $(seq 150); do curl -fs "http://127.0.0.1:$APORT/healthz" >/dev/null && break; sleep 0.2; done
    if [[ $mode == nostream ]]; then
      "$CHAT_PYTHON" -c "
import pika
c = pika.BlockingConnection(pika.URLParameters('amqp://guest:guest@127.0.0.1:$port/%2f'))
c.channel().queue_delete('$prefix.log')
c.close()"
    fi
    step "run $run, $mode, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BIN/chat-bench" archive --archiver "http://127.0.0.1:$APORT" --prefix "$prefix" \
      --rate "$RATE" --duration 10s --pids "archiver=$APID" --broker-pid "$BROKER_PID" \
      --label "archive-$mode-$RATE"
    kill "$APID"
    wait "$APID" || true
    APID=""
    "$BIN/chat-bench" cleanup --prefix "$prefix" >>"$WORK/cleanup.log" 2>&1 || true
  done
done
