#!/usr/bin/env bash
# Runs every test: unit and integration tests of all crates against a real RabbitMQ (which
# is installed and started if needed) and real SQLite files, then the browser end-to-end
# test in headless Chromium against the real services.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_rabbitmq
step "cargo test (unit and integration tests, real RabbitMQ and SQLite)"
cargo test --workspace --locked
scripts/e2e.sh
