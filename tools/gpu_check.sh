#!/usr/bin/env bash
# The prepared GPU check (a few minutes): CUDA / fp16 parity of the encoder, the pair scorer and
# the FAISS GPU index against the CPU results, then the extraction and re-ranking benchmarks.
# Exits 0 with one SKIP line where no CUDA device is present. Usage: bash tools/gpu_check.sh [OUT]
# OUT (default gpu_check_output/) receives the log and the figures, naming the card.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$repo/gpu_check_output}"
python="${VPR_PYTHON:-}"
if [ -z "$python" ]; then
  python="$(bash "$repo/tools/venv.sh")/bin/python" || exit 1
fi
cd "$repo"
if ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: SKIP no CUDA device (torch.cuda.is_available() is False); nothing was run"
  exit 0
fi
mkdir -p "$out"
log="$out/gpu_check.log"
status=0
run() {  # run one step, keep going, remember a failure
  echo "== $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || { echo "gpu_check: FAILED ($rc): $*" | tee -a "$log"; status=1; }
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$log"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
                                  torch.cuda.get_device_name(0))' | tee -a "$log"
# Parity: fp16 / bf16 descriptors, CUDA graphs and torch.compile, shared scorer, FAISS GPU index,
# onnxruntime CUDA provider, each against the CPU float32 result (test/test_gpu_runtime.py).
run timeout 300 "$python" -m pytest -m gpu test/test_gpu_runtime.py -q -rs
run timeout 120 "$python" -m vpr_ros.models.parity --model pairvpr_lite --backend onnx \
  --device cuda
run timeout 120 "$python" benchmarks/benchmark_extraction.py --rounds 3
run timeout 120 "$python" benchmarks/benchmark_rerank.py --rounds 3
echo "gpu_check: done (status $status); log in $log"
exit "$status"
