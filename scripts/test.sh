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
step "cargo test (unit, integration and fault tests against a real RabbitMQ and SQLite)"
# Fault tests append their counts here; printed below so every run shows them.
report=target/tmp/reliability-report.txt
rm -f "$report"
cargo test --workspace --locked
if [[ -f "$report" ]]; then
  step "reliability counts (fault tests)"
  cat "$report"
fi
step "page unit tests (node --test: the connection, the outbox, the normaliser, UUIDv7)"
node --test static/test/
scripts/e2e.sh
