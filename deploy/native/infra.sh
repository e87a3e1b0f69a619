#!/usr/bin/env bash
# The native infrastructure: Kafka, Ceph RGW and Prometheus as plain processes.
#
#   infra.sh up [component...]     install what is missing, start, wait until each really serves
#   infra.sh down [component...]   stop in reverse order
#   infra.sh status                one line per process, and where the logs are
#   infra.sh clean                 stop everything and delete all state (tools included)
#   infra.sh clean component...    stop those and delete only their data (a fresh RGW, say)
#
# Components: kafka, ceph, prometheus (default: all). State lives under $RELAIS_STATE_DIR.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$HERE/lib.sh"

ALL=(kafka ceph prometheus)

component_script() {
    case "$1" in
    kafka) echo "$HERE/kafka.sh" ;;
    ceph) echo "$HERE/ceph.sh" ;;
    prometheus) echo "$HERE/prometheus.sh" ;;
    *) die "unknown component '$1' (expected: ${ALL[*]})" ;;
    esac
}

up() {
    local started=$SECONDS component
    warn_if_disk_low
    for component in "$@"; do
        "$(component_script "$component")" start
    done
    log "infrastructure up in $((SECONDS - started))s (state: $RELAIS_STATE_DIR)"
}

down() {
    local index component
    for ((index = $# ; index > 0; index--)); do
        component="${!index}"
        "$(component_script "$component")" stop
    done
}

command="${1:-}"
shift || true
components=("$@")
[ "${#components[@]}" -gt 0 ] || components=("${ALL[@]}")

case "$command" in
up) up "${components[@]}" ;;
down) down "${components[@]}" ;;
status)
    for component in "${ALL[@]}"; do "$(component_script "$component")" status; done
    echo "state and logs: $RELAIS_STATE_DIR"
    ;;
clean)
    if [ "$#" -eq 0 ]; then
        down "${ALL[@]}"
        log "deleting $RELAIS_STATE_DIR"
        rm -rf "$RELAIS_STATE_DIR"
    else
        down "${components[@]}"
        for component in "${components[@]}"; do
            component_script "$component" >/dev/null
            log "deleting $RELAIS_STATE_DIR/$component"
            rm -rf "${RELAIS_STATE_DIR:?}/$component"
        done
    fi
    ;;
*)
    echo "usage: $0 up|down|status|clean [kafka|ceph|prometheus...]" >&2
    exit 64
    ;;
esac
