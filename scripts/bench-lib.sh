# What the focused benchmark scripts (bench-join-storm, bench-routing, bench-identity) share:
# a work directory, a broker (the machine's or a throwaway node), the release binaries, the
# services they start on fixed ports, and stopping all of it on the way out, whatever way
# that is. Source it after scripts/lib.sh; do not run it.

# Sets WORK (a fresh directory named after $1) and the exit trap that stops everything
# `start` started and a private broker node, and says where the logs are.
bench_begin() {
  started=()
  private_node=""
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/chat-$1.XXXXXX")
  chmod 755 "$WORK" # a private broker runs as the rabbitmq user
  trap bench_finish EXIT
  trap 'exit 130' INT TERM
}

bench_finish() {
  local code=$?
  trap - EXIT INT TERM
  stop_pids "${started[@]}"
  if [[ -n $private_node ]]; then
    PATH="$PATH:/usr/sbin" rabbitmqctl -q -n "$private_node" stop >/dev/null 2>&1 || true
  fi
  echo "work directory (logs, results): $WORK"
  exit "$code"
}

# The broker: with PRIVATE_BROKER=1 a throwaway node named after $1 on the first free port
# from 5690, else the machine's (started if need be). Exports AMQP_URL; sets BROKER_ARGS to
# chat-bench's `--broker-pid` for the broker's CPU, when its process can be found.
bench_broker() {
  BROKER_ARGS=()
  if ((PRIVATE_BROKER)); then
    local port=5690
    while port_open "$port"; do port=$((port + 1)); done
    private_node="$1$$-$RANDOM@localhost"
    step "starting a private RabbitMQ node ($private_node on 127.0.0.1:$port)"
    start_rabbitmq_node "$private_node" "$port" "$WORK/rabbitmq"
    export AMQP_URL="amqp://127.0.0.1:$port/%2f"
    BROKER_ARGS=(--broker-pid "$(cat "$WORK/rabbitmq/pid")")
  else
    ensure_rabbitmq
    export AMQP_URL=${AMQP_URL:-amqp://127.0.0.1:5672/%2f}
    local pid
    pid=$(pgrep -o -x beam.smp || true)
    if [[ -n $pid ]]; then BROKER_ARGS=(--broker-pid "$pid"); fi
  fi
}

# Fails, saying which, if anything listens on one of these ports.
ports_free() {
  local port
  for port in "$@"; do
    if port_open "$port"; then
      echo "port $port is in use; stop what listens there and try again" >&2
      exit 1
    fi
  done
}

# Sets BIN: the binaries built elsewhere if BIN is already set (an older commit, for a
# before/after), else a release build of the services and chat-bench.
bench_build() {
  if [[ -z ${BIN:-} ]]; then
    step "building (cargo build --release -p chat-bench -p gateway -p logger -p archiver)"
    cargo build --release --locked -p chat-bench -p gateway -p logger -p archiver
    BIN=$(target_dir)/release
  fi
}

# Starts a command in the background with its output in $WORK/$1.log; sets LAST_PID.
start() {
  local name=$1
  shift
  "$@" >>"$WORK/$name.log" 2>&1 &
  LAST_PID=$!
  started+=("$LAST_PID")
}

# Stops these processes and waits for them.
stop_pids() {
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# Starts an archiver (SQLite in $3) and a logger for run $1 with the environment in the
# array named $2, on ARCHIVER_PORT and LOGGER_PORT; sets ARCHIVER_PID and LOGGER_PID.
start_subscribers() {
  local label=$1 data=$3
  local -n env_of=$2
  start "archiver-$label" "${env_of[@]}" ARCHIVER_LISTEN=127.0.0.1:$ARCHIVER_PORT \
    DATABASE_URL="sqlite://$data/archive.db" "$BIN/archiver"
  ARCHIVER_PID=$LAST_PID
  start "logger-$label" "${env_of[@]}" LOG_FILE="$data/chat.log" LOGGER_STDOUT=false \
    LOGGER_LISTEN=127.0.0.1:$LOGGER_PORT "$BIN/logger"
  LOGGER_PID=$LAST_PID
}

# Deletes the broker objects of a run's CHAT_PREFIX.
bench_cleanup() {
  "$BIN/chat-bench" cleanup --prefix "$1" >>"$WORK/cleanup.log" 2>&1 || true
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
