#!/usr/bin/env bash
# What building the workspace needs besides Rust: a C toolchain, make, zlib's and OpenSSL's
# headers (rdkafka compiles librdkafka from source, with TLS and SASL SCRAM), pkg-config, and curl and python3, which the
# stack's scripts use. Missing Debian packages are installed (root), anything else is named
# with how to get it. Every build target of the Makefile runs this first; when all is present
# it costs a few milliseconds.
set -euo pipefail
COMPONENT=prerequisites
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The oldest Rust the workspace builds with (README, Prerequisites).
RUST_MINIMUM=1.88

if ! command -v cargo >/dev/null; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        die "cargo is installed in $HOME/.cargo/bin but not on PATH: run '. \"$HOME/.cargo/env\"' and try again"
    fi
    die "Rust is missing: install it with rustup (stable, $RUST_MINIMUM or newer), then try again"
fi
rust_version="$(rustc --version | awk '{print $2}')"
if [ "$(printf '%s\n%s\n' "$RUST_MINIMUM" "$rust_version" | sort -V | head -n1)" != "$RUST_MINIMUM" ]; then
    die "Rust $rust_version is older than $RUST_MINIMUM: run 'rustup update stable'"
fi

missing=()
command -v cc >/dev/null || missing+=(build-essential)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
[ -f /usr/include/zlib.h ] || missing+=(zlib1g-dev)
[ -f /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing: ${missing[*]} (Debian package names); install them and try again"
    apt_install "${missing[@]}"
fi
