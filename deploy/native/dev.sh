#!/usr/bin/env bash
# `make dev`: the Compose topology as plain processes on a host without Docker.
#
#   dev.sh up       native infrastructure (Kafka, Ceph RGW, Prometheus), then upstream-sim,
#                   audit-service, realtime-gateway and $WORKERS ingest-workers (default 1),
#                   Jaeger when it can be built from the Go module proxy; prints the URLs
#   dev.sh down     stops all of it, the infrastructure last
#   dev.sh status   what runs, where, and its logs
#
# Processes run from target/release (the Makefile builds them first); state, pids and logs
# are in $RELAIS_STATE_DIR/dev. Ports are those of the Compose stack, so `make urls`,
# `make load` and `make chaos` work the same against either.
set -euo pipefail
COMPONENT=dev
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"

DEV="$RELAIS_STATE_DIR/dev"
BIN="$RELAIS_ROOT/target/release"
WORKERS="${WORKERS:-1}"
JAEGER_BIN="$RELAIS_STATE_DIR/tools/go/bin/jaeger"
HOST="$RELAIS_BIND_HOST"

# Worker n (0-based) has its admin endpoint on 9101 + 10n: 9101, 9111, 9121, ...
worker_admin_port() { echo $((9101 + 10 * $1)); }

service_env() {
    local exporting=()
    # Jaeger runs, or is being built and starts when it is: spans go to its OTLP port (the
    # exporter drops them quietly until something listens there).
    if running_pid "$DEV/jaeger.pid" >/dev/null || running_pid "$DEV/jaeger-build.pid" >/dev/null; then
        exporting=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$HOST:4317" OTEL_EXPORTER_OTLP_PROTOCOL=grpc)
    fi
    echo RELAIS_KAFKA_BOOTSTRAP="$HOST:$RELAIS_KAFKA_PORT" RUST_LOG=info "${exporting[@]}"
}

start_service() {
    local name="$1" admin_port="$2"
    shift 2
    if running_pid "$DEV/$name.pid" >/dev/null; then
        log "$name already running"
        return 0
    fi
    require_free_port "$admin_port" "$name"
    # shellcheck disable=SC2046 # one word per variable
    spawn "$DEV/$name.pid" "$DEV/logs/$name.log" env $(service_env) "$@"
    wait_for_spawned 60 "$name to be ready" "$DEV/$name.pid" "$DEV/logs/$name.log" "$DEV/logs/$name.log" \
        curl -fsS --max-time 2 "http://$HOST:$admin_port/readyz" \
        || die "$name did not become ready (log: $DEV/logs/$name.log)"
    log "$name ready (admin http://$HOST:$admin_port)"
}

# Jaeger is the only part of `make dev` built on first use besides the services, and its build
# takes minutes: rather than hold the first delivery back that long, a first run builds it in
# the background and starts it when it is ready.
start_jaeger() {
    if running_pid "$DEV/jaeger.pid" >/dev/null || running_pid "$DEV/jaeger-build.pid" >/dev/null; then
        return 0
    fi
    if "$HERE/jaeger.sh" built; then
        run_jaeger
        return 0
    fi
    if ! command -v go >/dev/null; then
        log "Go is not installed, so Jaeger cannot be built: the services run without collecting traces"
        return 0
    fi
    spawn "$DEV/jaeger-build.pid" "$DEV/logs/jaeger-build.log" "$HERE/dev.sh" jaeger-in-background
    log "Jaeger is not built yet: building it in the background (a few minutes; log: $DEV/logs/jaeger-build.log); traces are collected once it runs"
}

# The background half of start_jaeger: build, then start.
jaeger_in_background() {
    "$HERE/jaeger.sh" build || die "Jaeger could not be built: the services run without collecting traces"
    run_jaeger
    rm -f "$DEV/jaeger-build.pid"
}

run_jaeger() {
    require_free_port 16686 "Jaeger"
    # OTEL_TRACES_EXPORTER=none: Jaeger does not trace itself into itself.
    spawn "$DEV/jaeger.pid" "$DEV/logs/jaeger.log" env OTEL_TRACES_EXPORTER=none "$JAEGER_BIN" --config "$HERE/jaeger.yaml"
    wait_for_spawned 60 "Jaeger" "$DEV/jaeger.pid" "$DEV/logs/jaeger.log" "$DEV/logs/jaeger.log" curl -fsS --max-time 2 "http://$HOST:16686/" \
        || die "Jaeger did not start (log: $DEV/logs/jaeger.log)"
    log "Jaeger ready: http://$HOST:16686 (OTLP on $HOST:4317)"
}

write_prometheus_targets() {
    # The default-ports file already covers one worker on 9101; the others are added here.
    local targets="" n
    for ((n = 1; n < WORKERS; n++)); do
        targets+="${targets:+, }\"$HOST:$(worker_admin_port "$n")\""
    done
    mkdir -p "$RELAIS_STATE_DIR/prometheus/targets"
    if [ -n "$targets" ]; then
        printf '[{"targets": [%s], "labels": {"job": "ingest-worker"}}]\n' "$targets" \
            >"$RELAIS_STATE_DIR/prometheus/targets/dev-workers.json"
    else
        rm -f "$RELAIS_STATE_DIR/prometheus/targets/dev-workers.json"
    fi
}

ensure_tokens() {
    mkdir -p "$DEV"
    [ -s "$DEV/viewer-token" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DEV/viewer-token"
    [ -s "$DEV/admin-token" ] || od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$DEV/admin-token"
    chmod 600 "$DEV/viewer-token" "$DEV/admin-token"
}

cmd_up() {
    for binary in upstream-sim audit-service realtime-gateway ingest-worker loadgen; do
        [ -x "$BIN/$binary" ] || die "$BIN/$binary is missing: run 'make release' (make dev does)"
    done
    mkdir -p "$DEV/logs"
    "$HERE/infra.sh" up
    start_jaeger
    ensure_tokens
    write_prometheus_targets
    start_service upstream-sim 9104 \
        RELAIS_ADMIN_ADDR="$HOST:9104" RELAIS_SIM_LISTEN="$HOST:8090" "$BIN/upstream-sim"
    start_service audit-service 9102 \
        RELAIS_ADMIN_ADDR="$HOST:9102" RELAIS_GRPC_ADDR="$HOST:50051" \
        RELAIS_S3_ENDPOINT="http://$HOST:$RELAIS_RGW_PORT" RELAIS_S3_BUCKET="$RELAIS_S3_BUCKET" \
        RELAIS_S3_ACCESS_KEY="$RELAIS_S3_ACCESS_KEY" RELAIS_S3_SECRET_KEY="$RELAIS_S3_SECRET_KEY" \
        "$BIN/audit-service"
    start_service realtime-gateway 9103 \
        RELAIS_ADMIN_ADDR="$HOST:9103" RELAIS_HTTP_ADDR="$HOST:8080" RELAIS_GRPC_ADDR="$HOST:50052" \
        RELAIS_AUDIT_URL="http://$HOST:50051" \
        RELAIS_TOKENS="viewer:dashboard:$(cat "$DEV/viewer-token"),admin:ops:$(cat "$DEV/admin-token")" \
        "$BIN/realtime-gateway"
    local n port
    for ((n = 0; n < WORKERS; n++)); do
        port="$(worker_admin_port "$n")"
        start_service "ingest-worker-$n" "$port" \
            RELAIS_ADMIN_ADDR="$HOST:$port" RELAIS_WORKER_ID="dev-worker-$n" \
            RELAIS_UPSTREAM_URL="http://$HOST:8090" RELAIS_GATEWAY_GRPC="http://$HOST:50052" \
            "$BIN/ingest-worker"
    done
    date -Is >"$DEV/running"
    log "Grafana is not started natively: it is not in Debian's archive. Use 'make up' (Compose) for the dashboards, or point a Grafana of your own at http://$HOST:$RELAIS_PROMETHEUS_PORT with dashboards/."
    "$RELAIS_ROOT/deploy/urls.sh"
}

cmd_down() {
    local pidfile
    # Workers first (they commit what they handled), then the services they talk to.
    for pidfile in "$DEV"/ingest-worker-*.pid; do
        [ -e "$pidfile" ] || continue
        stop_pidfile "$pidfile" "$(basename "$pidfile" .pid)" 60
    done
    stop_pidfile "$DEV/realtime-gateway.pid" realtime-gateway 30
    stop_pidfile "$DEV/audit-service.pid" audit-service 60
    stop_pidfile "$DEV/upstream-sim.pid" upstream-sim 15
    # The background Jaeger build leads its own process group (spawn uses setsid): stop the
    # compiler with it.
    if pid="$(running_pid "$DEV/jaeger-build.pid")"; then
        log "stopping the Jaeger build (pid $pid)"
        kill -TERM -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$DEV/jaeger-build.pid"
    stop_pidfile "$DEV/jaeger.pid" jaeger 15
    rm -f "$DEV/running" "$RELAIS_STATE_DIR/prometheus/targets/dev-workers.json"
    "$HERE/infra.sh" down
}

cmd_status() {
    local pidfile name pid
    for pidfile in "$DEV"/*.pid; do
        [ -e "$pidfile" ] || continue
        name="$(basename "$pidfile" .pid)"
        if pid="$(running_pid "$pidfile")"; then
            printf '%-20s running (pid %s), log %s\n' "$name" "$pid" "$DEV/logs/$name.log"
        else
            printf '%-20s stopped\n' "$name"
        fi
    done
    "$HERE/infra.sh" status
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
jaeger-in-background) jaeger_in_background ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 64
    ;;
esac
