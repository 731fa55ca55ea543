# syntax=docker/dockerfile:1.7
# One image for every component of Market Data Manager. The first argument picks the
# component (see deploy/entrypoint.sh):
#
#   docker run IMAGE ingest        # NATS -> MongoDB ingest service (metrics/health :9108)
#   docker run IMAGE api           # FastAPI read layer on :8000
#   docker run IMAGE code-server   # Dagster code location as a gRPC server on :4000
#   docker run IMAGE webserver     # dagster-webserver on :3000 (workspace: deploy/workspace.grpc.yaml)
#   docker run IMAGE daemon        # dagster-daemon (schedules, sensors, run queue, backfills)
#   docker run IMAGE migrate       # metadata schema (Alembic upgrade), run once per release
#   docker run IMAGE dagster ...   # anything else is executed as given (Helm chart commands, run pods)
#
# Read-only root filesystem: nothing is written under /app or /opt/venv at run time; the
# entry point puts DAGSTER_HOME under /tmp (mount a tmpfs / emptyDir there).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: resolve and install every dependency into a self-contained venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached layer while only our code changes): install the project's
# declared dependencies (and the k8s extra) from pyproject.toml, then the project itself.
COPY pyproject.toml README.md ./
RUN python - <<'PY' > /tmp/requirements.txt
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["k8s"]))
PY
RUN pip install --upgrade pip setuptools wheel && pip install -r /tmp/requirements.txt
COPY dm_resources ./dm_resources
COPY dm_assets ./dm_assets
COPY ingest_service ./ingest_service
COPY api ./api
RUN pip install --no-deps . && python -m compileall -q /opt/venv

# ---- runtime: the venv, the config files, a non-root user; no compilers, no pip cache -----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="market-data-manager" \
      org.opencontainers.image.description="Binance USD-M futures market data: ingest, Dagster code location, API"
RUN groupadd --system --gid 10001 dm \
    && useradd --system --uid 10001 --gid dm --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin dm
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY dagster.yaml workspace.yaml ./
COPY deploy/workspace.grpc.yaml deploy/entrypoint.sh ./deploy/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/tmp/dagster_home \
    DM_CODE_SERVER_HOST=code-server \
    DM_CODE_SERVER_PORT=4000 \
    DM_INGEST_METRICS_PORT=9108
USER 10001:10001
EXPOSE 8000 9108 4000 3000
ENTRYPOINT ["/app/deploy/entrypoint.sh"]
CMD ["api"]
