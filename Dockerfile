# syntax=docker/dockerfile:1
#
# FaceAnonyMixer sidecar image: `faceanonymixer serve` as the entrypoint, one image per device.
#
#   docker build --target cpu  -t faceanonymixer:cpu  .    # anywhere
#   docker build --target cuda -t faceanonymixer:cuda .    # NVIDIA GPU (driver for CUDA 13)
#
# Stages: `builder` makes the project's wheels (the server and the client SDK it requires); `venv-cpu` / `venv-cuda` install it with torch into
# /opt/venv; `runtime` is everything the final images share (user, volume, settings, health check,
# entrypoint); `cpu` and `cuda` are `runtime` plus their venv. deploy/README.md explains the
# settings, volumes and secrets; tests/artifacts/test_dockerfile.py checks this file.

ARG TORCH_VERSION=2.13.0
ARG GAN_FACE_GENERATE_VERSION=1.1.1
# PyPI's torch 2.13.0 for Linux x86_64 is the CUDA 13 build (its nvidia-*-cu13 dependencies bring
# the CUDA user-space libraries; the host gives only the driver, via the NVIDIA Container Toolkit).
# For a CUDA 12 driver, point this at a cu12x index of download.pytorch.org and use tensorrt-cu12.
ARG CUDA_TORCH_INDEX_URL=https://pypi.org/simple
ARG TENSORRT_PACKAGE=tensorrt-cu13
ARG TENSORRT_VERSION=11.4.0.106

# ---- the wheel -------------------------------------------------------------------------------
FROM python:3.11-slim AS builder
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server/ server/
COPY client_sdk/ client_sdk/
COPY export/ export/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . ./client_sdk

# ---- what the final images share -------------------------------------------------------------
FROM python:3.11-slim AS runtime
# a numeric, non-root user: Kubernetes' runAsNonRoot can check it without a runAsUser
RUN groupadd --gid 10001 faceanonymixer \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/faceanonymixer \
        --shell /usr/sbin/nologin faceanonymixer \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/faceanonymixer
# Everything written lives on the /var/lib/faceanonymixer volume (the SQLite key store, caches)
# or in /tmp (a tmpfs / emptyDir), so the root filesystem can be read-only. Listening beyond
# loopback needs bearer tokens (FACEANONYMIXER_TOKENS) or the server refuses to start; the
# key-encryption key comes from FACEANONYMIXER_KEK_FILE (a mounted secret) or FACEANONYMIXER_KEK.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/faceanonymixer \
    XDG_CACHE_HOME=/var/lib/faceanonymixer/cache \
    XDG_DATA_HOME=/var/lib/faceanonymixer/data \
    TMPDIR=/tmp \
    FACEANONYMIXER_LISTEN=0.0.0.0:50051 \
    FACEANONYMIXER_METRICS_LISTEN=0.0.0.0:9090 \
    FACEANONYMIXER_KEYSTORE=sqlite:////var/lib/faceanonymixer/keys.db
WORKDIR /var/lib/faceanonymixer
VOLUME ["/var/lib/faceanonymixer"]
# gRPC (ProtectionService, KeyService, grpc.health.v1) and Prometheus /metrics
EXPOSE 50051 9090
USER 10001:10001
# the probe imports no torch and makes one call; the start period covers loading the models
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["faceanonymixer", "health", "--server", "127.0.0.1:50051"]
# exec form: the server is PID 1 and gets SIGTERM itself (graceful shutdown, health NOT_SERVING)
ENTRYPOINT ["faceanonymixer", "serve"]
CMD []

# ---- the CPU venv ----------------------------------------------------------------------------
FROM python:3.11-slim AS venv-cpu
ARG TORCH_VERSION
ARG GAN_FACE_GENERATE_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
# torch first, from the CPU index: the project's torch==2.13.0 is then already met
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
COPY --from=builder /wheels /tmp/wheels
# gan-face-generate without its dependencies (torchvision, wandb), as README.md explains
RUN wheel="$(ls /tmp/wheels/faceanonymixer-*.whl)" \
    && /opt/venv/bin/pip install /tmp/wheels/faceanonymixer_client-*.whl "${wheel}" \
    && /opt/venv/bin/pip install --no-deps "gan-face-generate==${GAN_FACE_GENERATE_VERSION}"

# ---- the CUDA venv ---------------------------------------------------------------------------
FROM python:3.11-slim AS venv-cuda
ARG TORCH_VERSION
ARG GAN_FACE_GENERATE_VERSION
ARG CUDA_TORCH_INDEX_URL
ARG TENSORRT_PACKAGE
ARG TENSORRT_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
RUN /opt/venv/bin/pip install "torch==${TORCH_VERSION}" --index-url "${CUDA_TORCH_INDEX_URL}"
# TensorRT's Python wheels (for engines built by `faceanonymixer export`) are on NVIDIA's index
RUN /opt/venv/bin/pip install --extra-index-url https://pypi.nvidia.com \
        "${TENSORRT_PACKAGE}==${TENSORRT_VERSION}"
COPY --from=builder /wheels /tmp/wheels
RUN wheel="$(ls /tmp/wheels/faceanonymixer-*.whl)" \
    && /opt/venv/bin/pip install /tmp/wheels/faceanonymixer_client-*.whl "${wheel}" \
    && /opt/venv/bin/pip install --no-deps "gan-face-generate==${GAN_FACE_GENERATE_VERSION}"

# ---- the images ------------------------------------------------------------------------------
FROM runtime AS cuda
COPY --from=venv-cuda /opt/venv /opt/venv
# what the NVIDIA Container Toolkit reads to mount the driver into a non-CUDA base image
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# last, so that a plain `docker build .` makes the CPU image
FROM runtime AS cpu
COPY --from=venv-cpu /opt/venv /opt/venv
