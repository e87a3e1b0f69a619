#!/usr/bin/env bash
# The tools the test suite drives besides the native stack, installed once into
# $RELAIS_STATE_DIR/tools:
#   - Debian's chromium and playwright-core from npm: the dashboard's headless-browser test;
#   - schemathesis and openapi-spec-validator from PyPI: the REST API's OpenAPI conformance;
#   - Debian's docker-compose: validates compose/ without a Docker engine (`config`);
#   - kustomize and kubeconform from the Go module proxy, with the Kubernetes and CRD schemas it checks
#     deploy/k8s against (see k8s-schemas.sh);
#   - Jaeger from the Go module proxy: the trace backend of the tracing test (jaeger.sh).
# Versions are pinned here; rerunning is cheap when everything is present.
set -euo pipefail
COMPONENT=tools
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PLAYWRIGHT_CORE_VERSION=1.65.1
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0

TOOLS="$RELAIS_STATE_DIR/tools"
mkdir -p "$TOOLS"

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

node_dir="$TOOLS/node"
if [ "$(cat "$node_dir/.version" 2>/dev/null)" != "$PLAYWRIGHT_CORE_VERSION" ] ||
    [ ! -f "$node_dir/node_modules/playwright-core/package.json" ]; then
    command -v npm >/dev/null || apt_install npm
    log "installing playwright-core $PLAYWRIGHT_CORE_VERSION"
    mkdir -p "$node_dir"
    # No lock file: the version is pinned here, and lock files record download addresses.
    npm install --prefix "$node_dir" --no-save --no-package-lock --no-audit --no-fund \
        "playwright-core@$PLAYWRIGHT_CORE_VERSION" >/dev/null || die "npm install playwright-core failed"
    echo "$PLAYWRIGHT_CORE_VERSION" >"$node_dir/.version"
fi

venv="$TOOLS/venv"
wanted="schemathesis==$SCHEMATHESIS_VERSION openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION"
if [ "$(cat "$venv/.versions" 2>/dev/null)" != "$wanted" ]; then
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    log "installing $wanted"
    python3 -m venv "$venv" || die "cannot create a Python virtual environment"
    # shellcheck disable=SC2086 # one word per requirement
    "$venv/bin/pip" install -q --disable-pip-version-check $wanted || die "pip install failed"
    echo "$wanted" >"$venv/.versions"
fi
# Go programs: name, version, package.
go_tool() {
    local name="$1" version="$2" package="$3" binary="$TOOLS/go/bin/$1"
    if [ "$(cat "$binary.version" 2>/dev/null)" != "$version" ] || [ ! -x "$binary" ]; then
        command -v go >/dev/null || die "Go is needed to build $name (this machine kind provides it)"
        log "building $name $version"
        GOBIN="$TOOLS/go/bin" go install "$package@$version" || die "building $name failed"
        echo "$version" >"$binary.version"
    fi
}
go_tool kubeconform v0.8.0 github.com/yannh/kubeconform/cmd/kubeconform
go_tool kustomize v5.8.0 sigs.k8s.io/kustomize/kustomize/v5
"$(dirname "${BASH_SOURCE[0]}")/k8s-schemas.sh"
"$(dirname "${BASH_SOURCE[0]}")/jaeger.sh" build

log "ready: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_CORE_VERSION, schemathesis $SCHEMATHESIS_VERSION"
