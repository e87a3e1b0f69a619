#!/usr/bin/env bash
# Waits until every service of the Compose stack is healthy (or, for one-shot jobs, exited 0),
# printing progress; fails with the unhealthy services' last log lines after a timeout.
# Usage: compose-wait.sh <compose command...>     (the Makefile passes its `docker compose ...`)
set -euo pipefail
timeout_s="${RELAIS_UP_TIMEOUT:-600}"
started=$SECONDS
last=""
while :; do
    # One line per container: service, state, health ("" when it has no healthcheck).
    states="$("$@" ps --all --format '{{.Service}} {{.State}} {{.Health}}' 2>/dev/null || true)"
    pending="$(awk '
        $1 ~ /^init-/ { if ($2 != "exited") print $1; next }
        $2 != "running" { print $1; next }
        NF >= 3 && $3 != "healthy" { print $1 }
    ' <<<"$states" | sort -u | tr '\n' ' ')"
    failed="$("$@" ps --all --format '{{.Service}} {{.ExitCode}}' 2>/dev/null | awk '$1 ~ /^init-/ && $2 != 0 {print $1}')"
    if [ -n "$failed" ]; then
        echo "one-shot job failed: $failed" >&2
        "$@" logs --tail=30 $failed >&2
        exit 1
    fi
    if [ -z "$pending" ] && [ -n "$states" ]; then
        printf '\rall services healthy after %ss%*s\n' "$((SECONDS - started))" 40 ''
        exit 0
    fi
    if [ "$pending" != "$last" ]; then
        printf '\r[%3ss] waiting for: %s%*s' "$((SECONDS - started))" "$pending" 10 ''
        last="$pending"
    fi
    if ((SECONDS - started > timeout_s)); then
        echo >&2
        echo "not healthy within ${timeout_s}s: $pending" >&2
        # shellcheck disable=SC2086 # one word per service
        "$@" logs --tail=30 $pending >&2 || true
        exit 1
    fi
    sleep 2
done
