#!/usr/bin/env bash
# The main job on the embedded default: render the sample route, build a map, localize, report.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$repo/tools/venv.sh")"
cd "$repo"
exec "$venv/bin/vpr-demo" "$@"
