#!/usr/bin/env bash
# podman with the project's settings (deploy/podman/lib.sh): `deploy/podman/podman.sh ps`,
# `deploy/podman/podman.sh logs <container>`. The container tests run podman through this.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_podman
pm "$@"
