#!/usr/bin/env bash
# Static checks of the container deployment, only what a real run cannot show (the run is
# scripts/compose-test.sh): see scripts/check_compose.py for the list. Installs nothing;
# needs Python 3.11+. Usage: scripts/check-compose.sh   (from anywhere; exits 1 on failure)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 scripts/check_compose.py
