#!/usr/bin/env bash
# Builds every image of the project with podman, from the project's own Dockerfiles, unchanged:
#
#   relais/ingest-worker, relais/audit-service, relais/realtime-gateway, relais/upstream-sim,
#   relais/loadgen (deploy/docker/Dockerfile, one target each) and relais/ceph-rgw
#   (deploy/ceph/Dockerfile), all tagged $RELAIS_VERSION (dev), as Compose tags them.
#
# No image registry is reachable here, so the two images the Dockerfiles start FROM are made
# locally first and tagged with the names the Dockerfiles use:
#   debian:<release>-slim     a minimal Debian from Debian's archive (mmdebstrap, through the
#                             host's own apt sources), cached as a tarball in the state directory;
#   rust:<version>-<release>  that base plus this machine's Rust toolchain (rustup's active
#                             toolchain, without its documentation), what the official Rust
#                             image brings that the build relies on (a C compiler, CA
#                             certificates) and this machine's own CA bundle, which may trust a
#                             TLS-inspecting proxy between it and the crate registry.
#
# Usage: images.sh [build|list|clean]     (make images)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
COMPONENT=images

SERVICES=(ingest-worker audit-service realtime-gateway upstream-sim loadgen)

# One image build, tried a second time when it fails: podman's layer commit streams each layer
# through a pipe into its storage, and a CI run has lost that pipe once ("read/write on closed
# pipe") while committing the builder's toolchain layer. The retry resumes from the build cache
# at the failed step. The free disk is logged with each failure: a full disk looks the same.
# Usage: build_image DESCRIPTION PODMAN-BUILD-ARGS...
build_image() {
    local what="$1" attempt
    shift
    for attempt in 1 2; do
        with_progress "$what" "$PODMAN_DIR/build.log" pm build "$@" && return 0
        show_disk_space
        [ "$attempt" = 1 ] && log "building it again from the cache"
    done
    return 1
}

build_base() {
    image_exists "$BASE_IMAGE" && return 0
    local tarball="$PODMAN_DIR/debian-$DEBIAN_RELEASE-minbase.tar" sources
    if [ ! -s "$tarball" ]; then
        # The host's apt sources name the archive this machine can reach.
        sources="$(ls /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo /etc/apt/sources.list)"
        [ -s "$sources" ] || die "no apt sources on this host to build the Debian base image from"
        with_progress "building a minimal Debian $DEBIAN_RELEASE from the archive" "$PODMAN_DIR/build.log" \
            mmdebstrap --variant=minbase --mode=root --format=tar "$DEBIAN_RELEASE" "$tarball.partial" "$sources"
        mv "$tarball.partial" "$tarball"
    fi
    with_progress "importing it as $BASE_IMAGE" "$PODMAN_DIR/build.log" \
        pm import --change 'CMD ["bash"]' "$tarball" "$BASE_IMAGE"
}

# rustup's active toolchain directory (rustc, cargo, the standard library).
host_toolchain() {
    local rustc sysroot
    rustc="$(command -v rustc)" || die "rustc is missing: the builder image is made from this machine's Rust toolchain"
    sysroot="$("$rustc" --print sysroot)"
    [ -x "$sysroot/bin/cargo" ] || die "no cargo beside rustc in $sysroot"
    echo "$sysroot"
}

host_ca_bundle() {
    local bundle="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
    [ -s "$bundle" ] || die "no CA bundle at $bundle (install ca-certificates)"
    echo "$bundle"
}

build_builder() {
    image_exists "$BUILDER_IMAGE" && return 0
    local toolchain version
    toolchain="$(host_toolchain)"
    version="$("$toolchain/bin/rustc" --version | awk '{print $2}')"
    case "$version" in
    "$RUST_VERSION" | "$RUST_VERSION".*) ;;
    *) die "this machine's rustc is $version; the Dockerfile asks for $RUST_VERSION" ;;
    esac
    mkdir -p "$PODMAN_DIR/builder"
    cat >"$PODMAN_DIR/builder/Containerfile" <<CONTAINERFILE
FROM $BASE_IMAGE
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RUST_VERSION=$version
RUN apt-get update \\
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/* \\
    && cp /host-ca-bundle.crt /etc/ssl/certs/ca-certificates.crt
RUN mkdir -p /usr/local/rustup/toolchain /usr/local/cargo/bin \\
    && cp -a /host-toolchain/bin /host-toolchain/lib /host-toolchain/libexec /host-toolchain/etc /usr/local/rustup/toolchain/ \\
    && for tool in /usr/local/rustup/toolchain/bin/*; do ln -s "\$tool" /usr/local/cargo/bin/; done \\
    && cargo --version && rustc --version
CONTAINERFILE
    build_image "building $BUILDER_IMAGE from $BASE_IMAGE and Rust $version" \
        --pull=never --network host --volume "$toolchain:/host-toolchain:ro" \
        --volume "$(host_ca_bundle):/host-ca-bundle.crt:ro" \
        -t "$BUILDER_IMAGE" "$PODMAN_DIR/builder"
}

build_project_images() {
    local service
    for service in "${SERVICES[@]}"; do
        # The first target compiles the workspace; the others reuse that stage from the cache.
        build_image "building relais/$service:$RELAIS_VERSION (deploy/docker/Dockerfile)" \
            --pull=never --network host --format docker \
            --build-arg RUST_VERSION="$RUST_VERSION" --build-arg DEBIAN_RELEASE="$DEBIAN_RELEASE" \
            -f deploy/docker/Dockerfile --target "$service" -t "relais/$service:$RELAIS_VERSION" .
    done
    build_image "building relais/ceph-rgw:$RELAIS_VERSION (deploy/ceph/Dockerfile)" \
        --pull=never --network host --format docker \
        --build-arg DEBIAN_RELEASE="$DEBIAN_RELEASE" \
        -f deploy/ceph/Dockerfile -t "relais/ceph-rgw:$RELAIS_VERSION" .
}

cd "$RELAIS_ROOT"
case "${1:-build}" in
build)
    ensure_podman
    started=$SECONDS
    build_base
    build_builder
    build_project_images
    log "every image built in $((SECONDS - started))s"
    pm images --filter reference='relais/*'
    ;;
list)
    ensure_podman
    pm images
    ;;
clean)
    ensure_podman
    # Containers first: their layers are mounted while they exist.
    pm rm --all --force --time 0 >/dev/null 2>&1 || true
    pm system reset --force >/dev/null 2>&1 || true
    rm -rf "$PODMAN_DIR"
    log "removed every image and podman's state under $PODMAN_DIR"
    ;;
*) die "usage: $0 [build|list|clean]" ;;
esac
