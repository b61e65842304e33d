#!/usr/bin/env bash
# Wheels that bench/gpu_check.py needs on a lent device machine and its image lacks (run
# here, where PyPI answers; the device reaches nothing). docs/operations.md#the-gpu-check.
#
#   bench/gpu_check_wheels.sh [DIR]      (default .whl; add it to .git/info/exclude)
#
# The device image (an NVIDIA H200 machine; Python 3.12, torch 2.11 cu130, transformers
# 5.17) has torch and much of the scientific stack, but not the control plane (fastapi,
# pydantic, sqlalchemy, celery...) nor bitsandbytes. The ML libraries are carried at the
# versions this repository is tested with. bitsandbytes' wheel (43 MB) holds a CUDA library
# per CUDA version; only the CUDA 13 ones are kept, so everything fits the 64 MiB a device
# call may carry (about 30 MB).
#
# On the device: pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#                and PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
DIR="${1:-.whl}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$DIR"
# Pinned to what the tests ran with (the shared venv, November 2026); closure of the
# project's dependencies minus what the image already has.
WHEELS=(
  accelerate==1.14.0 alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 billiard==4.3.2
  celery==5.7.0 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1
  fastapi==0.165.0 httpcore2==2.16.2 httptools==0.9.0 httpx2==2.16.2 huggingface-hub==2.4.0
  kombu==5.7.0 mako==1.4.3 opentelemetry-api==1.45.2 peft==0.21.2 prompt-toolkit==3.0.53
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  python-multipart==0.0.34 redis==8.1.0 sqlalchemy==2.1.9 starlette==1.10.0
  transformers==5.24.0 truststore==0.10.5 typing-inspection==0.4.5 tzlocal==5.4.5
  uvicorn==0.54.0 vine==5.1.0 watchfiles==1.3.0 wcwidth==0.9.4 websockets==17.4
  psycopg==3.3.9 psycopg-binary==3.3.9 psycopg-pool==3.3.3
  bitsandbytes==0.50.2
)
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${WHEELS[@]}"
# bitsandbytes: drop the libraries of other CUDA versions and ROCm (pip does not check a
# wheel's RECORD against its files)
"$PYTHON" - "$DIR" <<'PY'
import sys, zipfile
from pathlib import Path

for wheel in Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            name = item.filename.rsplit("/", 1)[-1]
            other = name.startswith("libbitsandbytes_") and not name.startswith(
                ("libbitsandbytes_cuda13", "libbitsandbytes_cpu")
            )
            if not other:
                dst.writestr(item, src.read(item))
    slim.replace(wheel)
PY
du -sh "$DIR"
