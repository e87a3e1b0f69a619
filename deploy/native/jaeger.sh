#!/usr/bin/env bash
# Jaeger (all-in-one: OTLP receiver on 4317/4318, in-memory storage, UI on 16686), built from
# the Go module proxy into $RELAIS_STATE_DIR/tools/go/bin/jaeger.
#
#   jaeger.sh build    build it unless it is there (a few minutes the first time)
#   jaeger.sh built    exits 0 when the pinned version is built
#
# Jaeger's go.mod has replace directives, so `go install pkg@version` refuses it; it is built
# as a tool dependency of a throwaway module instead, which honours the pinned version.
set -euo pipefail
COMPONENT=jaeger
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

JAEGER_VERSION=v1.76.0
TOOLS="$RELAIS_STATE_DIR/tools"
BIN="$TOOLS/go/bin/jaeger"

# True when the pinned version is built.
cmd_built() {
    [ -x "$BIN" ] && [ "$(cat "$BIN.version" 2>/dev/null)" = "$JAEGER_VERSION" ]
}

cmd_build() {
    if cmd_built; then
        return 0
    fi
    command -v go >/dev/null || die "Go is needed to build Jaeger (this machine kind provides it)"
    local module="$TOOLS/go/jaeger-module"
    rm -rf "$module"
    mkdir -p "$module" "$(dirname "$BIN")"
    printf 'module relais.local/jaeger\n\ngo 1.26\n' >"$module/go.mod"
    local build_log="$TOOLS/go/jaeger-build.log"
    rm -f "$build_log"
    with_progress "building Jaeger $JAEGER_VERSION from the Go module proxy (first time only: a few minutes)" \
        "$build_log" bash -c 'cd "$1" && go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$2" \
            && go build -o "$3" github.com/jaegertracing/jaeger/cmd/jaeger' _ "$module" "$JAEGER_VERSION" "$BIN" \
        || die "building Jaeger failed (log: $build_log)"
    echo "$JAEGER_VERSION" >"$BIN.version"
    log "built $BIN"
}

case "${1:-}" in
build) cmd_build ;;
built) cmd_built ;;
*)
    echo "usage: $0 build|built" >&2
    exit 64
    ;;
esac
