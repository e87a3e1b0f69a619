#!/usr/bin/env bash
# The tools the test suite drives besides the native stack, installed once into
# $RELAIS_STATE_DIR/tools:
#   - Debian's chromium and playwright-core from npm: the dashboard's headless-browser test;
#   - schemathesis and openapi-spec-validator from PyPI: the REST API's OpenAPI conformance.
# Versions are pinned here; rerunning is cheap when everything is present.
set -euo pipefail
COMPONENT=tools
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PLAYWRIGHT_CORE_VERSION=1.65.1
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0

TOOLS="$RELAIS_STATE_DIR/tools"
mkdir -p "$TOOLS"

if ! command -v chromium >/dev/null; then
    apt_install chromium
fi

node_dir="$TOOLS/node"
if [ "$(cat "$node_dir/.version" 2>/dev/null)" != "$PLAYWRIGHT_CORE_VERSION" ]; then
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
log "ready: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_CORE_VERSION, schemathesis $SCHEMATHESIS_VERSION"
