# syntax=docker/dockerfile:1
# Stages:
#   export     torch (CPU wheel) and the export tools; exports the default model to ONNX
#   stubs      the gRPC stubs, generated from the protocol definitions in the tritonclient wheel
#   base-cpu   Python 3.11 slim with the runtime packages, onnxruntime (CPU)
#   base-cuda  CUDA 12 + cuDNN 9 with the runtime packages, onnxruntime-gpu
#   runtime    the image to run (the default target): base-$FLAVOUR, app/ and the bundle, no torch
# Build:  docker build -t embed-service .
#         docker build --build-arg FLAVOUR=cuda -t embed-service:cuda .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG FLAVOUR=cpu

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
RUN python scripts/export_onnx.py --output-dir /src/models

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS stubs
WORKDIR /src
COPY requirements/build.txt requirements/runtime.txt requirements/
# grpcio and protobuf resolved to the runtime's pins
RUN pip install --no-cache-dir --disable-pip-version-check -r requirements/build.txt \
        -c requirements/runtime.txt
COPY scripts/grpc_stubs.py scripts/pinned_wheel.py scripts/
RUN python scripts/grpc_stubs.py app/v2/stubs

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base-cpu
WORKDIR /srv
COPY requirements/runtime.txt requirements/runtime.txt
COPY scripts/install-runtime.sh scripts/install-runtime.sh
RUN scripts/install-runtime.sh /opt/venv cpu
ENV EMBED_DEVICE=cpu

# ---------------------------------------------------------------------------------------------
# onnxruntime-gpu 1.31 needs CUDA 12 and cuDNN 9; Ubuntu 24.04 brings Python 3.12.
FROM ${CUDA_IMAGE} AS base-cuda
# Ubuntu's point releases of these move under a pin; the base image's tag fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /srv
COPY requirements/runtime.txt requirements/runtime.txt
COPY scripts/install-runtime.sh scripts/install-runtime.sh
RUN scripts/install-runtime.sh /opt/venv cuda
ENV EMBED_DEVICE=cuda

# ---------------------------------------------------------------------------------------------
# The default target (the last stage).
# base-cpu or base-cuda is a stage of this file, not an image to tag (hadolint cannot tell).
# hadolint ignore=DL3006
FROM base-${FLAVOUR} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    EMBED_HOST=0.0.0.0 \
    EMBED_PORT=8000 \
    EMBED_MODEL_DIR=/srv/models/all-MiniLM-L6-v2 \
    EMBED_LOG_FORMAT=json \
    EMBED_REPOSITORY=/srv/repository \
    HF_HUB_OFFLINE=1
# The model repository (the admin API's uploads and state) is the one place the server writes.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin embed \
    && mkdir /srv/repository && chown 10001:10001 /srv/repository
WORKDIR /srv
COPY app app
COPY --from=stubs /src/app/v2/stubs app/v2/stubs
COPY --from=export /src/models/all-MiniLM-L6-v2 models/all-MiniLM-L6-v2
USER 10001
# HTTP, and the Open Inference Protocol over gRPC (EMBED_GRPC_PORT)
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
CMD ["python", "-m", "app"]
