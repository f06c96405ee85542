# syntax=docker/dockerfile:1
#
# streamfit container image.
#
#   docker build -t streamfit:0.1.0 .
#   docker run --rm -p 8000:8000 -e STREAMFIT_KAFKA_BOOTSTRAP=broker:9092 streamfit:0.1.0
#
# Two stages: "build" installs the project and its runtime dependencies into a
# virtualenv at /opt/venv; "runtime" copies only that virtualenv onto a fresh
# slim base, so no pip cache, build tooling or source tree ends up in the image.
# The image runs as the unprivileged uid/gid 10001 (the same ids the Kubernetes
# manifests in deploy/k8s pin with runAsUser/runAsGroup/fsGroup).

############################################################################
# build: resolve and install the runtime dependencies and the package
############################################################################
FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv "$VIRTUAL_ENV"

WORKDIR /src

# `pip install .` installs the package and its runtime dependencies only (no
# test/dev extras). Bytecode is compiled here, at build time: the runtime image
# never writes it (read-only root filesystem), and importing TensorFlow from
# source alone takes more than twice as long.
COPY pyproject.toml README.md ./
COPY service/ ./service/
RUN pip install . \
    && streamfit --help > /dev/null

############################################################################
# runtime: the virtualenv on a clean slim base, unprivileged
############################################################################
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="streamfit" \
      org.opencontainers.image.description="Online learning from Kafka into a Keras model, served over HTTP" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KERAS_HOME=/tmp/.keras \
    TF_CPP_MIN_LOG_LEVEL=1 \
    STREAMFIT_HTTP_HOST=0.0.0.0 \
    STREAMFIT_HTTP_PORT=8000 \
    STREAMFIT_CHECKPOINT_DIR=/var/lib/streamfit/checkpoints

RUN groupadd --system --gid 10001 streamfit \
    && useradd --system --uid 10001 --gid streamfit \
        --home-dir /var/lib/streamfit --no-create-home --shell /usr/sbin/nologin streamfit \
    && mkdir -p /var/lib/streamfit/checkpoints \
    && chown -R streamfit:streamfit /var/lib/streamfit

COPY --from=build /opt/venv /opt/venv

WORKDIR /var/lib/streamfit
VOLUME ["/var/lib/streamfit/checkpoints"]
EXPOSE 8000

# Numeric user, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001

# Liveness: the process and its event loop answer. slim has no curl, so use the
# interpreter that is already there; urlopen raises (exit 1) on any non-2xx.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMFIT_HTTP_PORT', '8000'), timeout=4)"]

# uvicorn handles SIGTERM itself: the service drains, writes a final checkpoint
# and exits within 30 s (compose stop_grace_period / k8s grace period are longer).
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamfit"]
CMD ["serve"]
