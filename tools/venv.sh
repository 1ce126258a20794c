#!/usr/bin/env bash
# Create or refresh the project's virtual environment; prints nothing on a warm cache.
# VPR_VENV overrides the location (default: .venv in the repository root).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VPR_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"
key="$( (cat "$repo/setup.py" "$repo/tools/venv.sh"; "$python" --version) | sha256sum | cut -c1-16)"
stamp="$venv/.vpr_ros-deps"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$key" ]; then
  echo "vpr_ros: installing dependencies into $venv (first run takes a few minutes)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
  # One torch wheel serves CPU and CUDA; torchvision must match it (timm needs it).
  "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -m pip install -q -e "$repo[cpu,ros,test,train]" 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
  "$venv/bin/python" -c 'import torch, timm, faiss, rclpy, rosbags, cv2' \
    || { echo "vpr_ros: dependency install failed" >&2; exit 1; }
  echo "$key" > "$stamp"
else
  # The venv may come from another checkout: point the editable install at this one.
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo" 2>&1 \
    | grep -v '^WARNING: Location' >&2 || true
fi
echo "$venv"
