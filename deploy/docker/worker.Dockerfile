# syntax=docker/dockerfile:1
# The GPU worker image: CUDA runtime base, Python from uv's standalone builds, torch (CUDA 12.4
# wheels) and diffusers. Runs `difflane worker --lane NAME` (Service Bus) or `difflane run-job ID`
# (a Kubernetes Job); models come from the mounted Hugging Face cache, never from the image.
# Build from the repository root:  docker build -f deploy/docker/worker.Dockerfile -t difflane-worker .

FROM ghcr.io/astral-sh/uv:0.5.11 AS uv

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --disable-pip-version-check build==1.2.2 \
    && python -m build --wheel --outdir /wheels .

FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
ARG TORCH_VERSION=2.5.1
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_NO_CACHE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1
COPY --from=uv /uv /usr/local/bin/uv
COPY --from=build /wheels /wheels
# A standalone CPython (no apt packages to pin), then torch built for CUDA 12.4, then difflane.
RUN uv python install 3.11.11 \
    && uv venv --python 3.11.11 /opt/venv \
    && uv pip install --python /opt/venv/bin/python "torch==${TORCH_VERSION}" \
       --index-url https://download.pytorch.org/whl/cu124 \
    && uv pip install --python /opt/venv/bin/python "$(echo /wheels/difflane-*.whl)[worker,azure]" \
    && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin difflane
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT []
CMD ["difflane", "worker"]
