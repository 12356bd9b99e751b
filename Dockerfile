# syntax=docker/dockerfile:1.7
# qsim, CPU image. GPU image: docker/Dockerfile.gpu (or `docker compose --profile gpu`).
ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU wheel of torch (the default one on PyPI carries gigabytes of CUDA libraries).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==2.13.0" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
# Install qsim's dependencies (with the Milvus client: QSIM_INDEX_BACKEND=milvus, the compose profile
# milvus), then drop qsim itself: the code runs from /opt/qsim (next to its models, data and
# migrations), not from site-packages.
RUN pip install ".[milvus]" && pip uninstall -y qsim

FROM python:${PYTHON_VERSION}-slim-bookworm
RUN groupadd --system --gid 10001 qsim \
 && useradd --system --uid 10001 --gid qsim --home-dir /var/lib/qsim --create-home qsim
COPY --from=build /opt/venv /opt/venv
WORKDIR /opt/qsim
COPY alembic.ini ./
COPY migrations ./migrations
COPY app ./app
COPY models ./models
COPY data ./data
COPY docker/entrypoint.sh ./docker/entrypoint.sh
RUN mkdir -p /var/lib/qsim/index && chown -R qsim:qsim /var/lib/qsim /opt/qsim/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/qsim \
    PYTHONUNBUFFERED=1 \
    QSIM_HOST=0.0.0.0 \
    QSIM_PORT=8000 \
    QSIM_DATABASE_URL=sqlite:////var/lib/qsim/qsim.db \
    QSIM_INDEX_DIR=/var/lib/qsim/index \
    QSIM_METRICS_DIR=/var/lib/qsim/metrics \
    QSIM_MODELS_ROOT=/opt/qsim/models \
    QSIM_MODEL_DIR=/opt/qsim/models/default
USER qsim
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["/opt/qsim/docker/entrypoint.sh"]
