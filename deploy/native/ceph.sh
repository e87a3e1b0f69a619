#!/usr/bin/env bash
# The native stack's Ceph: the shared single-node script, with radosgw also serving HTTPS on
# RELAIS_RGW_TLS_PORT (7443; empty for none) so that the S3 client's TLS is tested for real.
set -euo pipefail
export RELAIS_RGW_TLS_PORT="${RELAIS_RGW_TLS_PORT-7443}"
exec "$(dirname "${BASH_SOURCE[0]}")/../ceph/ceph-single-node.sh" "$@"
