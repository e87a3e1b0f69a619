# Podman as it runs on machines without a Docker engine and without a reachable image registry.
# Sourced by the image and container scripts, never run.
#
# Each setting below was needed here (see docs/containers.md): runc, because crun refuses a
# kernel with hybrid cgroups; cgroupfs, because there is no systemd session to place containers
# in; no default ulimits, because raising RLIMIT_NOFILE/NPROC is not permitted; the overlay
# storage driver where the kernel lets us mount an overlay on the state directory, else vfs,
# which works everywhere but copies every layer whole (several times the disk). All of podman's
# state (images, containers, build caches) stays under $RELAIS_STATE_DIR/podman, so deleting
# the state directory deletes it too and the host's own podman configuration is never touched.

# shellcheck source=../native/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../native/lib.sh"

PODMAN_DIR="$RELAIS_STATE_DIR/podman"
# The names the Dockerfiles build FROM; both are made here, never pulled.
DEBIAN_RELEASE="${DEBIAN_RELEASE:-bookworm}"
RUST_VERSION="${RUST_VERSION:-1.95}"
BASE_IMAGE="debian:${DEBIAN_RELEASE}-slim"
BUILDER_IMAGE="rust:${RUST_VERSION}-${DEBIAN_RELEASE}"
# The tag Compose gives the project's images (compose/.env: RELAIS_VERSION).
RELAIS_VERSION="${RELAIS_VERSION:-dev}"

ensure_podman() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    # Compose's `init: true` is podman's --init, which runs catatonit as PID 1.
    [ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null || missing+=(catatonit)
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
    mkdir -p "$PODMAN_DIR"/{storage,run,tmp}
    cat >"$PODMAN_DIR/containers.conf" <<CONF
[containers]
default_ulimits = []
pids_limit = 0

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
    cat >"$PODMAN_DIR/storage.conf" <<CONF
[storage]
driver = "$(storage_driver)"
graphroot = "$PODMAN_DIR/storage"
runroot = "$PODMAN_DIR/run"
CONF
}

# The storage driver, chosen once per state directory (images made with one driver cannot be
# read with another): RELAIS_PODMAN_STORAGE_DRIVER, else overlay if a test mount works.
storage_driver() {
    local chosen="$PODMAN_DIR/storage-driver" probe="$PODMAN_DIR/overlay-probe"
    if [ ! -s "$chosen" ]; then
        local driver="${RELAIS_PODMAN_STORAGE_DRIVER:-}"
        if [ -z "$driver" ]; then
            driver=vfs
            mkdir -p "$probe"/{lower,upper,work,merged}
            if mount -t overlay overlay \
                -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
                umount "$probe/merged"
                driver=overlay
            fi
            rm -rf "$probe"
        fi
        echo "$driver" >"$chosen"
    fi
    cat "$chosen"
}

# podman with the project's settings. Every caller goes through this.
pm() {
    CONTAINERS_CONF="$PODMAN_DIR/containers.conf" \
        CONTAINERS_STORAGE_CONF="$PODMAN_DIR/storage.conf" \
        TMPDIR="$PODMAN_DIR/tmp" \
        podman "$@"
}

image_exists() { pm image exists "$1"; }
