#!/usr/bin/env bash
# The certificates and secrets of the secured Compose stack (compose/secure.yaml), made once
# into a directory (default compose/secure, never committed):
#   relais-ca.pem/.key            the stack's CA; every client trusts it
#   kafka.pem/.key, kafka.keystore.pem   the broker (DNS kafka), key and chain in one PEM
#   rgw-server.pem/.key           radosgw's HTTPS (DNS ceph)
#   audit-service.pem/.key, realtime-gateway.pem/.key   the gRPC servers, also their clients
#   kafka-relais.secret           the SCRAM password of the Kafka user relais
#   audit-query.token, worker-report.token   the gRPC bearer tokens
# Every server certificate also names localhost and 127.0.0.1. A directory that already holds a
# CA (and a password) keeps them: the rest is issued by that CA.
# Usage: deploy/compose-secure.sh [DIR]
set -euo pipefail
COMPONENT=compose-secure
# shellcheck source=native/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/native/lib.sh"
# shellcheck source=native/pki.sh
. "$(dirname "${BASH_SOURCE[0]}")/native/pki.sh"
PKI_DIR="${1:-$RELAIS_ROOT/compose/secure}"
mkdir -p "$PKI_DIR"
PKI_DIR="$(cd "$PKI_DIR" && pwd)"

local_names="DNS:localhost,IP:127.0.0.1"
pki_ca relais-ca
pki_issue relais-ca kafka kafka serverAuth "DNS:kafka,$local_names"
pki_issue relais-ca rgw-server ceph serverAuth "DNS:ceph,$local_names"
for service in audit-service realtime-gateway; do
    pki_issue relais-ca "$service" "$service" serverAuth,clientAuth "DNS:$service,$local_names"
done
# Kafka reads a PEM keystore as the private key (PKCS#8) followed by its certificate chain.
if [ ! -s "$PKI_DIR/kafka.keystore.pem" ]; then
    (umask 077 && openssl pkcs8 -topk8 -nocrypt -in "$PKI_DIR/kafka.key" \
        && cat "$PKI_DIR/kafka.pem" "$PKI_DIR/relais-ca.pem") >"$PKI_DIR/kafka.keystore.pem"
fi
pki_secret kafka-relais >/dev/null
for token in audit-query worker-report; do
    file="$PKI_DIR/$token.token"
    [ -s "$file" ] || (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
done
# The containers run as an unprivileged user and read these through a read-only mount
# (development secrets on the developer's machine); the CA key stays private.
chmod 755 "$PKI_DIR"
chmod 644 "$PKI_DIR"/*.pem "$PKI_DIR"/*.key "$PKI_DIR"/*.secret "$PKI_DIR"/*.token
chmod 600 "$PKI_DIR/relais-ca.key"
log "certificates and secrets ready in $PKI_DIR"
