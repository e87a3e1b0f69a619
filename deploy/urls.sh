#!/usr/bin/env bash
# Where to look, for `make up` and `make dev` alike (same ports).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The viewer token: the dev stack's, else the Compose stack's .env.
token="$(cat "${RELAIS_STATE_DIR:-$root/.state}/dev/viewer-token" 2>/dev/null ||
    sed -n 's/^RELAIS_VIEWER_TOKEN=//p' "$root/compose/.env")"
cat <<URLS

  Dashboard      http://127.0.0.1:8080/dashboard/#token=$token
  REST API       curl -H "Authorization: Bearer $token" http://127.0.0.1:8080/api/v1/stats
  OpenAPI        http://127.0.0.1:8080/api/v1/openapi.json (same token)
  Grafana        http://127.0.0.1:3000   (Compose; admin password in compose/.env)
  Jaeger         http://127.0.0.1:16686
  Prometheus     http://127.0.0.1:9090
  upstream-sim   faults: make chaos FAULTS='{"outage":true}'   (admin http://127.0.0.1:9104)

URLS
