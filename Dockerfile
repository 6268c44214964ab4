# syntax=docker/dockerfile:1
# Three stages:
#   export   torch (CPU wheel) and the export tools; exports the default model to ONNX
#   cuda     the service on onnxruntime-gpu, for NVIDIA GPUs (--target cuda)
#   runtime  the image to run (the default target): runtime packages and the bundle, no torch
# Build:  docker build -t embed-service .            docker build --target cuda -t embed-service:cuda .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS export
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    PYTHONPATH=/src
WORKDIR /src
# The CPU build of torch from PyTorch's own index: the default PyPI wheel drags in GBs of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements/export.txt requirements/export.txt
# --no-deps: the lock is complete, and nothing may resolve torch again.
RUN pip install --no-deps -r requirements/export.txt
COPY app app
COPY scripts scripts
RUN python scripts/export_onnx.py --optimize --output-dir /src/models

# ---------------------------------------------------------------------------------------------
# onnxruntime-gpu 1.31 needs CUDA 12 and cuDNN 9; Ubuntu 24.04 brings Python 3.12.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS cuda
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
# Ubuntu's point releases of these move under a pin; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY requirements/runtime.txt requirements/runtime.txt
COPY scripts/install-runtime.sh scripts/install-runtime.sh
RUN scripts/install-runtime.sh /opt/venv cuda \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin embed
COPY app app
COPY --from=export /src/models/all-MiniLM-L6-v2 models/all-MiniLM-L6-v2
ENV EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8000 \
    EMBED_MODEL_DIR=/srv/models/all-MiniLM-L6-v2 \
    EMBED_DEVICE=cuda \
    EMBED_LOG_FORMAT=json \
    HF_HUB_OFFLINE=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]

# ---------------------------------------------------------------------------------------------
# The default target (the last stage).
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /srv
COPY requirements/runtime.txt requirements/runtime.txt
COPY scripts/install-runtime.sh scripts/install-runtime.sh
RUN scripts/install-runtime.sh /opt/venv \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin embed
COPY app app
COPY --from=export /src/models/all-MiniLM-L6-v2 models/all-MiniLM-L6-v2
ENV EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8000 \
    EMBED_MODEL_DIR=/srv/models/all-MiniLM-L6-v2 \
    EMBED_LOG_FORMAT=json \
    HF_HUB_OFFLINE=1
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]
