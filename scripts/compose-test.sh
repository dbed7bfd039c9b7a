#!/usr/bin/env bash
# Runs docker-compose.yml for real and chats through it: the README's `docker compose up`,
# tested end to end under a Docker engine.
#
#   1. Setup (each step only when missing; needs root): Debian's docker.io and debootstrap,
#      a running dockerd, the compose v2 plugin (taken from Debian 13's docker-compose
#      package with apt, using its own sources file and lists directory so the machine's
#      apt state is untouched), Python's `websockets` for the test client.
#   2. Images: Docker Hub cannot be reached from our machines, so the images the compose
#      file and the Dockerfile name (debian:bookworm-slim, rust:1-bookworm,
#      rabbitmq:4-management, nginx:1.27-alpine, prom/prometheus) are local stand-ins built
#      from Debian packages (deploy/standins/). An image under one of those names that is
#      not a stand-in (a real pull) is used as it is; a stand-in is rebuilt only when its
#      definition changed. Only those images differ from a user's run: the compose file,
#      the Dockerfile and deploy/ are used unchanged.
#   3. promtool checks the alert rules and runs their unit tests (deploy/prometheus/).
#   4. The run, under its own project name with a free HTTP port and a generated env file:
#      `docker compose up -d --build --wait`, then scripts/compose_chat.py chats through
#      the proxy across both gateways, checks the chat log, the archive (CLI and /api/
#      through the proxy), Prometheus' targets, a gateway restart with resume on the other
#      gateway, and `down` + `up` keeping the archive and the durable queues.
#   5. `docker compose down -v`, also when a step failed: no container, network or volume
#      of the run is left (the images stay, as a build cache).
#
# With --cluster the same for docker-compose.cluster.yml (three RabbitMQ nodes, PostgreSQL,
# two archivers; one more stand-in, postgres:15-bookworm): `scripts/compose_chat.py
# --cluster` checks the cluster and the quorum queues' members, chats, finds the messages
# in both archivers and in PostgreSQL, then SIGKILLs the node leading chat.archiver while
# two clients keep chatting, starts it again, and checks that every acked message reached
# both clients, the archive and the chat log exactly once.
#
# Usage: scripts/compose-test.sh [--cluster] [--keep]   (--keep: leave the system up at the end)
# Environment: COMPOSE_TEST_PROJECT (default chat-compose-test, with --cluster
# chat-cluster-test), COMPOSE_TEST_CACHE (default /var/cache/chat-compose: debootstrap and
# apt downloads).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/lib.sh
ROOT=$(pwd)

KEEP=false
CLUSTER=false
for arg in "$@"; do
  case $arg in
    --keep) KEEP=true ;;
    --cluster) CLUSTER=true ;;
    *) echo "usage: $0 [--cluster] [--keep]" >&2; exit 2 ;;
  esac
done
if $CLUSTER; then
  COMPOSE_FILE=docker-compose.cluster.yml
  PROJECT=${COMPOSE_TEST_PROJECT:-chat-cluster-test}
else
  COMPOSE_FILE=docker-compose.yml
  PROJECT=${COMPOSE_TEST_PROJECT:-chat-compose-test}
fi
CACHE=${COMPOSE_TEST_CACHE:-/var/cache/chat-compose}
STANDIN_LABEL=org.fanout-chat.standin

started=$(date +%s)
elapsed() { echo "$(($(date +%s) - started))s"; }

need_root() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "compose-test: $1 needs root; run as root or install it first" >&2
    exit 1
  fi
}

# --- 1. setup -----------------------------------------------------------------------------

apt_updated=false
apt_install() {
  need_root "installing $*"
  if ! $apt_updated; then
    apt-get update -qq
    apt_updated=true
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The Docker client to use. A machine may have a newer client elsewhere on PATH (this one has
# /usr/local/bin/docker 28.x); Debian's client is the daemon's own release, so prefer it.
DOCKER=
ensure_docker() {
  if ! command -v dockerd >/dev/null 2>&1 && [[ ! -x /usr/sbin/dockerd ]]; then
    step "installing Docker (Debian package docker.io)"
    apt_install docker.io
  fi
  if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi
  if ! "$DOCKER" info >/dev/null 2>&1; then
    need_root "starting dockerd"
    step "starting dockerd (log: /var/log/chat-dockerd.log)"
    PATH="$PATH:/usr/sbin" setsid dockerd >/var/log/chat-dockerd.log 2>&1 </dev/null &
    local waited=0
    until "$DOCKER" info >/dev/null 2>&1; do
      if ((waited >= 60)); then
        tail -20 /var/log/chat-dockerd.log >&2
        echo "dockerd did not come up in 60 s" >&2
        exit 1
      fi
      sleep 1
      waited=$((waited + 1))
    done
  fi
  export DOCKER
}

# Compose v2 is not packaged for Debian 12; Debian 13 (trixie) packages 2.26. Fetch that
# package with apt from the same mirror, with a sources file, lists and cache of its own
# under $CACHE, and put its one binary where the Docker CLI looks for plugins.
ensure_compose() {
  if "$DOCKER" compose version >/dev/null 2>&1; then
    return 0
  fi
  need_root "installing the compose plugin"
  step "installing the compose v2 plugin (Debian 13's docker-compose package)"
  local dir=$CACHE/apt-trixie
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/deb"
  local mirror
  mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)\/* *$/\1/p' /etc/apt/sources.list.d/debian.sources \
    2>/dev/null | grep -v security | head -1)
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: %s\n' \
    "${mirror:-http://deb.debian.org/debian}" /usr/share/keyrings/debian-archive-keyring.gpg \
    >"$dir/trixie.sources"
  local opts=(-o "Dir::Etc::SourceList=$dir/trixie.sources" -o Dir::Etc::SourceParts=/nonexistent
    -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" -o Debug::NoLocking=1
    -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -qq
  rm -f "$dir/deb/"*.deb
  (cd "$dir/deb" && apt-get "${opts[@]}" download -qq docker-compose)
  rm -rf "$dir/x"
  dpkg-deb -x "$dir/deb/"docker-compose_*.deb "$dir/x"
  install -D -m 0755 "$dir/x/usr/libexec/docker/cli-plugins/docker-compose" \
    /usr/libexec/docker/cli-plugins/docker-compose
  "$DOCKER" compose version
}

# --- 2. stand-in images -------------------------------------------------------------------

# Whether image $1 must be (re)built as a stand-in whose definition hashes to $2: it is
# missing, or it is a stand-in of another definition. A real image is left alone.
standin_needed() {
  local have
  if ! have=$("$DOCKER" image inspect -f "{{ index .Config.Labels \"$STANDIN_LABEL\" }}" "$1" 2>/dev/null); then
    return 0
  fi
  if [[ -z $have || $have == "<no value>" ]]; then
    echo "  $1: a real image, used as it is"
    return 1
  fi
  if [[ $have == "$2" ]]; then
    echo "  $1: stand-in up to date"
    return 1
  fi
  return 0
}

# The hash of a stand-in's definition: its folder, and the image it builds on.
definition_hash() { # folder, extra words
  local dir=$1
  shift
  { (cd "$dir" && find . -type f | LC_ALL=C sort | xargs sha256sum); echo "$@"; } |
    sha256sum | cut -c1-16
}

image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1"; }

build_standin() { # tag, folder, context, extra hash words
  local tag=$1 dir=$2 context=$3
  shift 3
  local hash
  hash=$(definition_hash "$dir" "$@")
  standin_needed "$tag" "$hash" || return 0
  step "building stand-in $tag ($dir)"
  "$DOCKER" build -q --label "$STANDIN_LABEL=$hash" -t "$tag" -f "$dir/Dockerfile" "$context" >/dev/null
}

ensure_standins() {
  step "stand-in images for the names the compose file and the Dockerfile use"
  local dir=deploy/standins

  local hash
  hash=$(definition_hash $dir/debian)
  if standin_needed debian:bookworm-slim "$hash"; then
    if ! command -v debootstrap >/dev/null 2>&1 && [[ ! -x /usr/sbin/debootstrap ]]; then
      apt_install debootstrap
    fi
    step "building stand-in debian:bookworm-slim (debootstrap --variant=minbase bookworm)"
    PATH="$PATH:/usr/sbin" $dir/debian/build.sh debian:bookworm-slim "$STANDIN_LABEL=$hash"
  fi
  local base
  base=$(image_id debian:bookworm-slim)

  build_standin rabbitmq:4-management $dir/rabbitmq $dir/rabbitmq "$base"
  build_standin nginx:1.27-alpine $dir/nginx $dir/nginx "$base"
  build_standin "$PROMETHEUS_IMAGE" $dir/prometheus $dir/prometheus "$base"
  if $CLUSTER; then
    build_standin "$POSTGRES_IMAGE" $dir/postgres $dir/postgres "$base"
  fi

  # The Rust builder carries this machine's toolchain (rustup cannot download one here) and
  # its CA bundle, hard-linked into a build context outside the repository.
  local sysroot version
  sysroot=$(rustc --print sysroot)
  version=$(rustc --version)
  hash=$(definition_hash $dir/rust "$base" "$version" "$(sha256sum /etc/ssl/certs/ca-certificates.crt)")
  if standin_needed rust:1-bookworm "$hash"; then
    step "building stand-in rust:1-bookworm ($version, from $sysroot)"
    local ctx=$CACHE/rust-context
    rm -rf "$ctx"
    mkdir -p "$ctx/toolchain"
    # Everything but the documentation (share/doc is most of a toolchain's size).
    # Hard links when the toolchain is on the same file system, copies otherwise.
    for part in bin lib libexec etc; do
      if [[ -e $sysroot/$part ]]; then
        cp -al "$sysroot/$part" "$ctx/toolchain/" 2>/dev/null || cp -a "$sysroot/$part" "$ctx/toolchain/"
      fi
    done
    cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
    cp $dir/rust/Dockerfile "$ctx/"
    "$DOCKER" build -q --label "$STANDIN_LABEL=$hash" -t rust:1-bookworm "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
}

# --- 3. alert rules -------------------------------------------------------------------------

check_rules() {
  step "promtool check rules / test rules (deploy/prometheus/)"
  "$DOCKER" run --rm --network none -v "$ROOT/deploy/prometheus:/rules:ro" -w /rules \
    --entrypoint /bin/promtool "$PROMETHEUS_IMAGE" check rules alerts.yml
  "$DOCKER" run --rm --network none -v "$ROOT/deploy/prometheus:/rules:ro" -w /rules \
    --entrypoint /bin/promtool "$PROMETHEUS_IMAGE" test rules alerts.test.yml
  "$DOCKER" run --rm --network none -v "$ROOT/deploy/prometheus:/etc/prometheus:ro" \
    --entrypoint /bin/promtool "$PROMETHEUS_IMAGE" check config /etc/prometheus/prometheus.yml
  if $CLUSTER; then
    "$DOCKER" run --rm --network none -v "$ROOT/deploy/prometheus:/etc/prometheus:ro" \
      --entrypoint /bin/promtool "$PROMETHEUS_IMAGE" check config \
      /etc/prometheus/prometheus-cluster.yml
  fi
}

# --- 4. the run -----------------------------------------------------------------------------

free_port() {
  "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

compose() { "$DOCKER" compose -p "$PROJECT" --env-file "$ENV_FILE" -f "$COMPOSE_FILE" "$@"; }

# Leaves nothing of the run behind: containers, the project's network and its volumes.
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if $KEEP && ((rc == 0)); then
    echo "left running (--keep): $DOCKER compose -p $PROJECT --env-file $ENV_FILE -f $COMPOSE_FILE down -v"
    return
  fi
  if ((rc != 0)); then
    step "FAILED (exit $rc) after $(elapsed): service logs (last lines)"
    compose ps -a 2>/dev/null || true
    compose logs --no-color --tail 40 2>/dev/null || true
  fi
  step "docker compose down -v"
  compose down -v --remove-orphans --timeout 10 >/dev/null 2>&1 || true
  local left
  left=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT"
    "$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT"
    "$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
  if [[ -n $left ]]; then
    echo "compose-test: left behind by the project: $left" >&2
    rc=1
  else
    echo "no container, network or volume of project $PROJECT is left"
  fi
  rm -rf "$TMP"
  exit "$rc"
}

ensure_docker
ensure_compose
ensure_websockets "$CACHE/venv"
PY=$WS_PYTHON
mkdir -p "$CACHE"
PROMETHEUS_IMAGE=$(sed -n 's/^ *image: *\(prom\/prometheus:[^ ]*\).*/\1/p' docker-compose.yml)
POSTGRES_IMAGE=$(sed -n 's/^ *image: *\(postgres:[^ ]*\).*/\1/p' docker-compose.cluster.yml)
ensure_standins
check_rules

TMP=$(mktemp -d)
ENV_FILE=$TMP/test.env
HTTP_PORT=$(free_port)
RABBITMQ_UI_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
# What .env.example asks for, with a generated password and ports free on this machine.
cat >"$ENV_FILE" <<ENV
RABBITMQ_USER=chat
RABBITMQ_PASSWORD=test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
CHAT_PREFIX=chat
HTTP_PORT=$HTTP_PORT
RABBITMQ_UI_PORT=$RABBITMQ_UI_PORT
PROMETHEUS_PORT=$PROMETHEUS_PORT
LOG_FORMAT=human
RABBITMQ_ERLANG_COOKIE=test-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
POSTGRES_PASSWORD=test-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
ENV
trap cleanup EXIT
trap 'exit 130' INT TERM

step "a previous run's left-overs, if any (project $PROJECT)"
compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

step "docker compose config"
compose config -q

step "docker compose -f $COMPOSE_FILE up -d --build --wait (HTTP port $HTTP_PORT)"
t0=$(date +%s)
compose up -d --build --wait --quiet-pull
echo "up and healthy in $(($(date +%s) - t0))s"
compose ps --format 'table {{.Service}}\t{{.Status}}'

export DOCKER PROJECT ENV_FILE HTTP_PORT PROMETHEUS_PORT COMPOSE_FILE
if $CLUSTER; then
  step "chatting through the proxy while a RabbitMQ node is killed (scripts/compose_chat.py --cluster)"
  "$PY" scripts/compose_chat.py --cluster
else
  step "chatting through the proxy (scripts/compose_chat.py)"
  "$PY" scripts/compose_chat.py
fi

echo "compose-test: done in $(elapsed)"
