#!/usr/bin/env bash
# Runs every test: unit and integration tests of all crates against a real RabbitMQ (which
# is installed and started if needed) and real SQLite files, then the browser end-to-end
# test in headless Chromium against the real services; between them the unit tests of the page's
# modules that do not touch the DOM (node --test).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rabbitmq
ensure_postgres
ensure_pika
# Tests that run services as child processes (kills, file limits) take these binaries.
step "cargo build --bins (the services that tests run as child processes)"
cargo build --locked --bins
export CHAT_BIN_DIR="$(target_dir)/debug"
leftovers_before=$(broker_test_objects)
step "cargo test (unit, integration and fault tests against a real RabbitMQ and SQLite)"
# Fault tests append their counts here; printed below so every run shows them.
report="$(target_dir)/tmp/reliability-report.txt"
rm -f "$report"
cargo test --workspace --locked
if [[ -f "$report" ]]; then
  step "reliability counts (fault tests)"
  cat "$report"
fi
step "page unit tests (node --test: the connection, the outbox, the normaliser, UUIDv7, identity)"
node --test static/test/
scripts/e2e.sh
step "the broker holds no test objects the tests left behind"
left=$(comm -13 <(printf '%s\n' "$leftovers_before") <(broker_test_objects) | sed '/^$/d')
if [[ -n "$left" ]]; then
  printf 'left on the broker by this run:\n%s\n' "$left" >&2
  exit 1
fi
echo "none"
