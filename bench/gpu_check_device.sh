#!/usr/bin/env bash
# The GPU check on a lent device machine (docs/operations.md#the-gpu-check): installs the
# carried wheels (bench/gpu_check_wheels.sh made them, here) and runs bench/gpu_check.py
# with a timeout that leaves the call time to send the report back.
#
#   device run: command "bash bench/gpu_check_device.sh", carry [".whl"], timeout_s 600
#   extra arguments go to gpu_check.py (a rerun: --only packing,serve_walk)
set -uo pipefail
WHEELS="${WHEELS:-.whl}"
OUT="${OUT:-gpu-check-report}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
  "$WHEELS"/*.whl || exit 3
export PYTHONPATH="/tmp/site:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv \
  | tee "$OUT/nvidia-smi.txt"
timeout "${GPU_CHECK_TIMEOUT:-540}" python3 bench/gpu_check.py --out "$OUT" "$@" 2>&1 \
  | tee "$OUT/log"
status=$?
cat "$OUT/gpu_check.txt" 2>/dev/null
exit $status
