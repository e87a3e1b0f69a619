# The native stack's own certificate authority, for the secured listeners (Kafka's TLS and
# SCRAM listener, mutual TLS). Sourced after lib.sh, never run. Everything lives under
# $RELAIS_STATE_DIR/pki and is made once: a CA, then server and client certificates it signs,
# each an EC P-256 key in PEM. A second, untrusted CA signs a "rogue" client certificate, so
# that tests can show a certificate from elsewhere is refused.

PKI_DIR="$RELAIS_STATE_DIR/pki"

pki_require_openssl() {
    command -v openssl >/dev/null || apt_install openssl
}

# pki_ca NAME: $PKI_DIR/NAME.pem and NAME.key, a self-signed CA.
pki_ca() {
    local name="$1"
    [ -f "$PKI_DIR/$name.pem" ] && return 0
    pki_require_openssl
    mkdir -p "$PKI_DIR"
    chmod 700 "$PKI_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
        -subj "/CN=Relais development CA ($name)" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.pem" 2>"$PKI_DIR/openssl.log" \
        || die "creating the CA $name failed (log: $PKI_DIR/openssl.log)"
}

# pki_issue CA NAME CN USAGE [SAN]: $PKI_DIR/NAME.pem and NAME.key signed by CA, for USAGE
# (serverAuth or clientAuth), with the subject alternative names SAN (servers).
pki_issue() {
    local ca="$1" name="$2" cn="$3" usage="$4" san="${5:-}"
    [ -f "$PKI_DIR/$name.pem" ] && return 0
    pki_ca "$ca"
    local extensions="$PKI_DIR/$name.ext"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        [ -z "$san" ] || echo "subjectAltName=$san"
    } >"$extensions"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$cn" \
        -keyout "$PKI_DIR/$name.key" -out "$PKI_DIR/$name.csr" 2>>"$PKI_DIR/openssl.log" \
        && openssl x509 -req -in "$PKI_DIR/$name.csr" -CA "$PKI_DIR/$ca.pem" \
            -CAkey "$PKI_DIR/$ca.key" -CAcreateserial -days 825 -extfile "$extensions" \
            -out "$PKI_DIR/$name.pem" 2>>"$PKI_DIR/openssl.log" \
        || die "issuing the certificate $name failed (log: $PKI_DIR/openssl.log)"
    chmod 600 "$PKI_DIR/$name.key"
    rm -f "$PKI_DIR/$name.csr" "$extensions"
}

# pki_secret NAME: a random password in $PKI_DIR/NAME.secret, made once.
pki_secret() {
    local file="$PKI_DIR/$1.secret"
    if [ ! -s "$file" ]; then
        mkdir -p "$PKI_DIR"
        (umask 077 && head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$file")
    fi
    cat "$file"
}
