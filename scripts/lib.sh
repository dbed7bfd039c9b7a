# Shared shell helpers for the run, test and CI scripts. Source it; do not run it.

# Prints a step heading.
step() { printf '\n==> %s\n' "$*"; }

# Whether something listens on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to $2 seconds for 127.0.0.1:$1 to accept connections.
wait_port() {
  local port=$1 limit=${2:-60} waited=0
  until port_open "$port"; do
    if (( waited >= limit * 5 )); then
      echo "nothing listens on 127.0.0.1:$port after ${limit}s" >&2
      return 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
}

# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: installs Debian's rabbitmq-server
# when it is missing and we are root, starts it when it is not running. When AMQP_URL points
# at another host, that broker is the caller's business and nothing is done here.
ensure_rabbitmq() {
  if [[ -n "${AMQP_URL:-}" && "${AMQP_URL}" != *"127.0.0.1"* && "${AMQP_URL}" != *"localhost"* ]]; then
    return 0
  fi
  if port_open 5672; then
    return 0
  fi
  if ! command -v rabbitmq-server >/dev/null 2>&1 && [[ ! -x /usr/sbin/rabbitmq-server ]]; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "RabbitMQ is not installed: run 'sudo apt-get install rabbitmq-server' and try again" >&2
      return 1
    fi
    step "installing RabbitMQ (Debian package rabbitmq-server)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  fi
  step "starting RabbitMQ"
  PATH="$PATH:/usr/sbin" rabbitmq-server -detached
  wait_port 5672 120
}

# Makes sure PostgreSQL answers on 127.0.0.1:5432 for the archiver's tests, which run every
# test on PostgreSQL too (user postgres, trust authentication from 127.0.0.1, one database
# per test): installs Debian's postgresql when it is missing and we are root, letting the
# postgres user in from 127.0.0.1 without a password on that fresh, test-only cluster, and
# starts the cluster when it is not running. With TEST_POSTGRES_URL set, that server is the
# caller's business.
ensure_postgres() {
  if [[ -n "${TEST_POSTGRES_URL:-}" ]] || port_open 5432; then
    return 0
  fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
      echo "PostgreSQL is not installed: run 'sudo apt-get install postgresql' and try again" >&2
      return 1
    fi
    step "installing PostgreSQL (Debian package postgresql)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local hba
    hba=$(ls /etc/postgresql/*/main/pg_hba.conf | sort -V | tail -1)
    sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  if port_open 5432; then
    # The package may have started the cluster before pg_hba.conf was edited.
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  else
    step "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  wait_port 5432 60
}

# The Python example's client library for its test (archive::replay): the machine's python3
# if it has pika, otherwise a venv under the target directory with pika from PyPI
# (examples/python-subscriber/requirements.txt). Exports CHAT_PYTHON for the test.
ensure_pika() {
  # The Python examples' tests need pika (examples/python-subscriber) and PyJWT with its
  # crypto extra (examples/mint-token).
  local imports='import pika, jwt, cryptography'
  if python3 -c "$imports" 2>/dev/null; then
    export CHAT_PYTHON=python3
    return 0
  fi
  local venv
  venv="$(target_dir)/python-example-venv"
  if ! "$venv/bin/python" -c "$imports" 2>/dev/null; then
    step "installing pika and PyJWT (PyPI) for the Python examples' tests"
    python3 -m venv "$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet \
      -r examples/python-subscriber/requirements.txt -r examples/mint-token/requirements.txt
  fi
  export CHAT_PYTHON="$venv/bin/python"
}

# Sets WS_PYTHON to a Python 3 with `websockets` (13 or later, for the scripts' test
# clients): python3 if it has it, else a venv ($1, default under the target directory),
# made and filled from PyPI the first time.
ensure_websockets() {
  local check='import websockets.asyncio.client'
  if python3 -c "$check" 2>/dev/null; then
    WS_PYTHON=python3
    return 0
  fi
  local venv=${1:-$(target_dir)/websockets-venv}
  if ! "$venv/bin/python" -c "$check" 2>/dev/null; then
    step "installing websockets (PyPI) for the test client"
    [[ -x $venv/bin/python ]] || python3 -m venv "$venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet 'websockets>=13'
  fi
  WS_PYTHON=$venv/bin/python
}

# Starts a throwaway node of Debian's RabbitMQ beside the machine's own, as the rabbitmq
# user: node name $1, AMQP port $2 on 127.0.0.1 (Erlang distribution on $2 + 20000), data,
# logs and config under $3 (kept if present, so a stopped node can start again), extra
# Erlang arguments in $4 (e.g. "-setcookie X"). No plugins. Returns once the port accepts
# connections and the node's OS pid is in $3/pid.
start_rabbitmq_node() {
  local node=$1 port=$2 dir=$3 erl_args=${4:-}
  mkdir -p "$dir/mnesia" "$dir/log"
  [[ -f $dir/rabbitmq.conf ]] || echo "listeners.tcp.local = 127.0.0.1:$port" >"$dir/rabbitmq.conf"
  [[ -f $dir/enabled_plugins ]] || echo "[]." >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
  env RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_PID_FILE="$dir/pid" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$erl_args" \
    PATH="$PATH:/usr/sbin" rabbitmq-server -detached
  wait_port "$port" 120
  local _
  for _ in $(seq 50); do [[ -s $dir/pid ]] && break; sleep 0.2; done
}

# Builds the three binaries in release mode and sets BIN to their directory.
# Where cargo puts what it builds (CARGO_TARGET_DIR, if set, else ./target).
target_dir() { echo "${CARGO_TARGET_DIR:-$(pwd)/target}"; }

build_release() {
  step "building (cargo build --release)"
  cargo build --release --locked -p gateway -p logger -p archiver
  BIN="$(target_dir)/release"
}

# The test objects (queues and exchanges named `t-*`) on the default broker, one per line.
broker_test_objects() {
  { rabbitmqctl list_queues -q name; rabbitmqctl list_exchanges -q name; } 2>/dev/null |
    grep '^t-' | sort || true
}
