# One image for the API, the worker and the inference server (docker-compose.yml runs it as
# each of them: `tunery api`, `tunery worker`, `tunery inference`, `tunery db upgrade`).
#
#   docker build -t tunery .                      CUDA build of torch, for GPU hosts
#   docker build -t tunery:cpu \
#     --build-arg TORCH_SPEC="torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu" .
#                                                 CPU-only image (about 1 GB smaller)
FROM python:3.11-slim

# pip arguments for torch; installed before the project so that `torch>=2.4` in
# pyproject.toml is already satisfied and pip never swaps the build chosen here
ARG TORCH_SPEC="torch==2.13.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TUNERY_DATA_DIR=/data \
    TUNERY_MODELS_DIR=/models \
    HF_HOME=/data/cache/huggingface

RUN pip install --upgrade pip \
 && pip install ${TORCH_SPEC} \
 && python -c "import torch; print('torch', torch.__version__)"

WORKDIR /opt/tunery
COPY pyproject.toml README.md ./
COPY tunery_client ./tunery_client
COPY app ./app
COPY worker ./worker
COPY task_plugins ./task_plugins
COPY migrations ./migrations
# the client first in the same call: the server requires tunery-client, found in the folder
RUN pip install ./tunery_client ".[demo,s3]" \
 && python -c "import app.cli, app.broker, tunery_client.cli" \
 && tunery --help | grep -q serve

RUN useradd --create-home --uid 1000 --user-group tunery \
 && mkdir -p /data /models \
 && chown tunery:tunery /data /models
USER tunery
WORKDIR /home/tunery

EXPOSE 8000 8001
ENTRYPOINT ["tunery"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
