#!/usr/bin/env bash
# The browser end-to-end test: starts an archiver, a logger and two gateways on free ports
# with a prefix of their own, then runs e2e/chat.mjs (Playwright's playwright-core, Debian's
# chromium): two pages chat across the gateways, and (on two more gateways in token mode) a
# private room is seen by a member and refused to a non-member; then the /metrics of all four services must
# show that traffic; last, gateway 1 is stopped with SIGTERM (the script gets its pid in
# E2E_GW1_PID) and a page that was on it must fail over to gateway 2 by itself and miss
# nothing. Installs chromium and the npm package when missing. Screenshots land in
# e2e/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

if [[ ! -x /usr/bin/chromium ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "chromium is missing: run 'sudo apt-get install chromium'" >&2
    exit 1
  fi
  step "installing chromium (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [[ ! -d e2e/node_modules/playwright-core ]]; then
  step "installing playwright-core (npm)"
  (cd e2e && npm ci --no-audit --no-fund --loglevel=error)
fi

step "building the services"
cargo build --locked --bins
BIN="$(target_dir)/debug"

work=$(mktemp -d)
# A fixed prefix: the run deletes its queues at the end, so nothing piles up on the broker.
export CHAT_PREFIX="e2e"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${pids[@]}" 2>/dev/null || true
  # Remove the run's durable queues and exchanges so the broker is left as found.
  if command -v rabbitmqctl >/dev/null 2>&1; then
    for q in logger archiver dead history log; do rabbitmqctl -q delete_queue "$CHAT_PREFIX.$q" >/dev/null 2>&1 || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# Each service listens on port 0 and the port the kernel gave it is read from its start-up
# line (`listen=` for gateways, `http=` for the archiver and the logger): no free-port
# guess that another process could take in between.
bound_port() { # log file, field
  local i found
  for ((i = 0; i < 150; i++)); do
    found=$(grep -o -m1 " $2=127\.0\.0\.1:[0-9]*" "$1" 2>/dev/null || true)
    if [[ -n $found ]]; then
      echo "${found##*:}"
      return 0
    fi
    sleep 0.2
  done
  echo "no '$2=' address in $1 after 30 s" >&2
  tail -n 20 "$1" >&2
  return 1
}
# The start-up lines are at info level, whatever RUST_LOG asks for otherwise.
export RUST_LOG="${RUST_LOG:+$RUST_LOG,}gateway=info,archiver=info,logger=info"
# Two more gateways in token mode on the same broker, for the private-room phase.
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')

step "starting the services (prefix $CHAT_PREFIX)"
ARCHIVER_LISTEN=127.0.0.1:0 DATABASE_URL="sqlite://$work/archive.db" "$BIN/archiver" >"$work/archiver.log" 2>&1 & pids+=($!)
LOGGER_LISTEN=127.0.0.1:0 LOG_FILE="$work/chat.log" LOGGER_STDOUT=false "$BIN/logger" >"$work/logger.log" 2>&1 & pids+=($!)
GATEWAY_LISTEN=127.0.0.1:0 GATEWAY_ID=gw-e2e-1 "$BIN/gateway" >"$work/gw1.log" 2>&1 & pids+=($!)
gw1_pid=$!
GATEWAY_LISTEN=127.0.0.1:0 GATEWAY_ID=gw-e2e-2 "$BIN/gateway" >"$work/gw2.log" 2>&1 & pids+=($!)
AUTH_MODE=token AUTH_SECRET=$secret GATEWAY_LISTEN=127.0.0.1:0 GATEWAY_ID=gw-e2e-t1 "$BIN/gateway" >"$work/tgw1.log" 2>&1 & pids+=($!)
AUTH_MODE=token AUTH_SECRET=$secret GATEWAY_LISTEN=127.0.0.1:0 GATEWAY_ID=gw-e2e-t2 "$BIN/gateway" >"$work/tgw2.log" 2>&1 & pids+=($!)
archiver_port=$(bound_port "$work/archiver.log" http)
logger_port=$(bound_port "$work/logger.log" http)
gw1=$(bound_port "$work/gw1.log" listen)
gw2=$(bound_port "$work/gw2.log" listen)
tgw1=$(bound_port "$work/tgw1.log" listen)
tgw2=$(bound_port "$work/tgw2.log" listen)
for port in $archiver_port $logger_port $gw1 $gw2 $tgw1 $tgw2; do wait_port "$port" 30; done
mint() { AUTH_SECRET=$secret "$BIN/gateway" token --sub "$1" --name "$2" --ttl 15m; }

step "browser end-to-end test (headless Chromium): chat, metrics, failover"
status=0
E2E_ARCHIVER_URL="http://127.0.0.1:$archiver_port" E2E_LOGGER_URL="http://127.0.0.1:$logger_port" \
  E2E_GW1_PID=$gw1_pid E2E_GW1_ID=gw-e2e-1 E2E_GW2_ID=gw-e2e-2 \
  E2E_TOKEN_GW1="http://127.0.0.1:$tgw1" E2E_TOKEN_GW2="http://127.0.0.1:$tgw2" \
  E2E_TOKEN_ALICE=$(mint alice Alice) E2E_TOKEN_BOB=$(mint bob Bob) E2E_TOKEN_MALLORY=$(mint mallory Mallory) \
  node e2e/chat.mjs "http://127.0.0.1:$gw1" "http://127.0.0.1:$gw2" || status=$?

# The failover stopped gateway 1 with SIGTERM (if the run got that far; otherwise this does).
# A clean shutdown exits 0.
kill -TERM "$gw1_pid" 2>/dev/null || true
gw1_status=0
wait "$gw1_pid" || gw1_status=$?
if (( gw1_status == 0 )); then
  echo "# gateway 1 exited with status 0 after SIGTERM"
else
  echo "FAIL: gateway 1 exited with status $gw1_status after SIGTERM" >&2
  status=1
fi

if (( status != 0 )); then
  echo "--- service logs ---" >&2
  tail -n 30 "$work"/*.log >&2
  exit 1
fi
