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
  log="$venv/install.log"
  {
    "$venv/bin/python" -m pip install --upgrade pip &&
    # One torch wheel serves CPU and CUDA; torchvision must match it (timm needs it).
    "$venv/bin/python" -m pip install torch==2.14.1 torchvision==0.29.1 &&
    "$venv/bin/python" -m pip install -e "$repo[cpu,ros,test,train]"
  } > "$log" 2>&1 || { tail -30 "$log" >&2; echo "vpr_ros: install failed, see $log" >&2; exit 1; }
  "$venv/bin/python" -c 'import torch, timm, faiss, rclpy, rosbags, cv2' \
    || { echo "vpr_ros: dependency install failed, see $log" >&2; exit 1; }
  echo "$key" > "$stamp"
else
  # The venv may come from another checkout: point the editable install at this one.
  "$venv/bin/python" -m pip install -q --no-deps -e "$repo" > "$venv/editable.log" 2>&1 \
    || { cat "$venv/editable.log" >&2; exit 1; }
fi
echo "$venv"
