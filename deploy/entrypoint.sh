#!/bin/sh
# Entry point of the one image: the first argument names the component.
# Why a dispatcher: compose, Kubernetes manifests and the Dagster Helm chart all start the
# same image; they name a role here, or pass a full command (e.g. the chart's
# `dagster api grpc ...` or a run pod's `dagster api execute_run ...`), which is run as given.
set -eu

# Dagster's instance directory must be writable (compute logs, schedules' local state);
# the root filesystem is read-only, so it lives under /tmp and gets the image's dagster.yaml
# (PostgreSQL from DAGSTER_PG_URL) unless the deployment mounted its own. Roles that share the
# directory may start together: the copy lands under a name of its own and is renamed into place.
mkdir -p "${DAGSTER_HOME:=/tmp/dagster_home}"
app="${DM_APP_DIR:-/app}"
if [ ! -f "$DAGSTER_HOME/dagster.yaml" ]; then
  cp "$app/dagster.yaml" "$DAGSTER_HOME/.dagster.yaml.$$"
  mv -f "$DAGSTER_HOME/.dagster.yaml.$$" "$DAGSTER_HOME/dagster.yaml"
fi
export DAGSTER_HOME
# Listen on every interface in a container; tests running the script on a host bind loopback.
host="${DM_BIND_HOST:-0.0.0.0}"

role="${1:-api}"
[ "$#" -gt 0 ] && shift
case "$role" in
  ingest)
    exec python -m ingest_service "$@" ;;
  api)
    exec uvicorn api.app:app --host "$host" --port "${DM_API_PORT:-8000}" --proxy-headers \
      --forwarded-allow-ips '*' "$@" ;;
  code-server)
    exec dagster code-server start --host "$host" --port "${DM_CODE_SERVER_PORT:-4000}" \
      --module-name dm_assets.definitions --attribute defs --location-name market_data "$@" ;;
  webserver)
    exec dagster-webserver --host "$host" --port "${DAGSTER_WEBSERVER_PORT:-3000}" \
      --workspace "$app/deploy/workspace.grpc.yaml" "$@" ;;
  daemon)
    exec dagster-daemon run --workspace "$app/deploy/workspace.grpc.yaml" "$@" ;;
  migrate)
    exec python -m dm_resources.metadata upgrade "$@" ;;
  replay)
    exec python -m ingest_service.replay "$@" ;;
  *)
    exec "$role" "$@" ;;
esac
