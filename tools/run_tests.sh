#!/usr/bin/env bash
# The test command: bash tools/run_tests.sh [--slow] [pytest args...]
#   --slow   also run the tests marked slow (minutes on a 2-core CPU)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/tools/venv.sh")"
cd "$repo"
# DDS discovery stays on this machine; no traffic leaves loopback.
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( $$ % 100 + 101 ))}"
markers=(-m 'not slow and not gpu')
if [ "${1:-}" = "--slow" ]; then
  markers=(-m 'not gpu')
  shift
fi
# -rs: every skipped test says why (e.g. ../shared absent, no CUDA).
exec "$venv/bin/python" -m pytest -rs "${markers[@]}" "$@"
