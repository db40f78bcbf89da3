# syntax=docker/dockerfile:1
# The API image (also runs `difflane controller`): no torch, no GPU libraries.
# Build from the repository root:  docker build -f deploy/docker/api.Dockerfile -t difflane-api .
# Pinned base: a patch-level tag here; release builds pin the digest (see docs/howto/deploy-aks.md).

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m pip install --no-cache-dir --disable-pip-version-check build==1.2.2 \
    && python -m build --wheel --outdir /wheels .

FROM python:3.11.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# azure: Blob Storage and Service Bus; k8s: the Kubernetes dispatcher and the controller.
RUN python -m pip install "$(echo /wheels/difflane-*.whl)[azure,k8s]" \
    && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin difflane
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT []
CMD ["difflane", "serve", "--workers", "0"]
