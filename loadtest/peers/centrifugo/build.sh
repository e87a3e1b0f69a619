#!/usr/bin/env bash
# Builds Centrifugo, the fan-out peer of `make bench`, from the Go module proxy into
# $RELAIS_STATE_DIR/tools/go/bin/centrifugo (about two minutes the first time).
#
# It is built as a tool dependency of a throwaway module, which pins the exact version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
RELAIS_STATE_DIR="${RELAIS_STATE_DIR:-$ROOT/.state}"
VERSION=v6.9.1
TOOLS="$RELAIS_STATE_DIR/tools/go"
BIN="$TOOLS/bin/centrifugo"

if [ -x "$BIN" ] && [ "$(cat "$BIN.version" 2>/dev/null)" = "$VERSION" ]; then
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { echo "Go is needed to build Centrifugo" >&2; exit 1; }
module="$TOOLS/centrifugo-module"
rm -rf "$module"
mkdir -p "$module" "$(dirname "$BIN")"
printf 'module relais.local/centrifugo\n\ngo 1.26\n' >"$module/go.mod"
echo "building Centrifugo $VERSION (first time: a few minutes)" >&2
(cd "$module" && go get -tool "github.com/centrifugal/centrifugo/v6@$VERSION" >&2 \
    && go build -o "$BIN" github.com/centrifugal/centrifugo/v6 >&2)
echo "$VERSION" >"$BIN.version"
echo "$BIN"
