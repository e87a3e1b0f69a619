# Shared helpers for the native stack scripts. Sourced, never run.
#
# Everything the native stack keeps lives under $RELAIS_STATE_DIR (default: .state at the
# repository root): one folder per component with its data, configuration, pid file and logs.

RELAIS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RELAIS_STATE_DIR="${RELAIS_STATE_DIR:-$RELAIS_ROOT/.state}"
mkdir -p "$RELAIS_STATE_DIR"
RELAIS_STATE_DIR="$(cd "$RELAIS_STATE_DIR" && pwd)"

# Ports (DESIGN.md defaults; every one can be overridden from the environment).
RELAIS_BIND_HOST="${RELAIS_BIND_HOST:-127.0.0.1}"
RELAIS_KAFKA_PORT="${RELAIS_KAFKA_PORT:-9092}"
RELAIS_KAFKA_CONTROLLER_PORT="${RELAIS_KAFKA_CONTROLLER_PORT:-9093}"
# The secured listeners: TLS with SASL (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN), and mutual TLS.
RELAIS_KAFKA_SASL_SSL_PORT="${RELAIS_KAFKA_SASL_SSL_PORT:-9094}"
RELAIS_KAFKA_MTLS_PORT="${RELAIS_KAFKA_MTLS_PORT:-9095}"
RELAIS_RGW_PORT="${RELAIS_RGW_PORT:-7480}"
RELAIS_CEPH_MON_PORT="${RELAIS_CEPH_MON_PORT:-3300}"
RELAIS_PROMETHEUS_PORT="${RELAIS_PROMETHEUS_PORT:-9090}"

# The development S3 user and the audit bucket (same defaults as the services and tests).
RELAIS_S3_ACCESS_KEY="${RELAIS_S3_ACCESS_KEY:-relais-dev}"
RELAIS_S3_SECRET_KEY="${RELAIS_S3_SECRET_KEY:-relais-dev-secret}"
RELAIS_S3_BUCKET="${RELAIS_S3_BUCKET:-relais-audit}"
RELAIS_S3_REGION="${RELAIS_S3_REGION:-default}"

log() { printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "${COMPONENT:-infra}" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

# Installs the given Debian packages, running apt-get update first unless one ran in the last
# hour (the marker is shared by the component scripts, which run as separate processes).
apt_install() {
    if [ "$(id -u)" != 0 ]; then
        die "missing packages ($*) and not root: install them with apt-get, or run as root"
    fi
    local marker="$RELAIS_STATE_DIR/.apt-updated"
    if [ -z "$(find "$marker" -mmin -60 2>/dev/null)" ]; then
        with_progress "updating Debian's package lists" "$RELAIS_STATE_DIR/apt.log" \
            env DEBIAN_FRONTEND=noninteractive apt-get update -q || die "apt-get update failed"
        touch "$marker"
    fi
    with_progress "installing $*" "$RELAIS_STATE_DIR/apt.log" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        || die "apt-get install $* failed (log: $RELAIS_STATE_DIR/apt.log)"
}

# Runs a long step whose own output goes to a log file, and says every 20 s that it is still
# at work, so that a first run's minutes of downloading or compiling never look like a hang.
# On failure the log's last lines are shown. Usage: with_progress DESCRIPTION LOGFILE CMD...
with_progress() {
    local what="$1" logfile="$2" started=$SECONDS pid status=0 next_note=20
    shift 2
    mkdir -p "$(dirname "$logfile")"
    log "$what"
    "$@" >>"$logfile" 2>&1 </dev/null &
    pid=$!
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if [ $((SECONDS - started)) -ge "$next_note" ]; then
            log "... still $what ($((SECONDS - started))s; log: $logfile)"
            next_note=$((next_note + 20))
        fi
    done
    wait "$pid" || status=$?
    if [ "$status" -ne 0 ]; then
        log "failed after $((SECONDS - started))s: $what; last lines of $logfile:"
        tail -n 25 "$logfile" >&2
        return "$status"
    fi
    log "done in $((SECONDS - started))s: $what"
}

# True when the pid names a live process. A killed daemon whose parent never reaped it stays a
# zombie that still passes `kill -0`, so the state in /proc is read too.
pid_alive() {
    local pid="$1" state
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    state="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [ "$state" != "Z" ] && [ "$state" != "X" ]
}

# Prints the pid stored in a pid file if that process is alive.
running_pid() {
    local pidfile="$1" pid
    [ -f "$pidfile" ] || return 1
    pid="$(cat "$pidfile")"
    pid_alive "$pid" && echo "$pid"
}

# Starts a command in its own session, detached from this shell, with stdout/stderr appended
# to a log file; records its pid. Usage: spawn PIDFILE LOGFILE CMD...
spawn() {
    local pidfile="$1" logfile="$2"
    shift 2
    mkdir -p "$(dirname "$pidfile")" "$(dirname "$logfile")"
    printf '\n=== started %s: %s\n' "$(date -Is)" "$*" >>"$logfile"
    setsid nohup "$@" >>"$logfile" 2>&1 </dev/null &
    echo $! >"$pidfile"
}

# Stops the process of a pid file: SIGTERM, wait up to SECONDS, then SIGKILL.
stop_pidfile() {
    local pidfile="$1" name="$2" seconds="${3:-20}" pid waited=0
    pid="$(running_pid "$pidfile")" || {
        rm -f "$pidfile"
        return 0
    }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do
        if [ "$waited" -ge $((seconds * 10)) ]; then
            log "$name did not stop within ${seconds}s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    rm -f "$pidfile"
}

# True when something accepts TCP connections on host:port.
port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# Waits until CHECK (a command) succeeds, up to SECONDS; on failure prints the log tail.
# Usage: wait_until SECONDS DESCRIPTION LOGFILE CHECK...
wait_until() {
    local seconds="$1" what="$2" logfile="$3"
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${seconds}s waiting for $what"
            show_tail "$logfile"
            return 1
        fi
        sleep 0.2
    done
}

# wait_until for a process started with `spawn`: it also stops waiting as soon as that process
# has exited, and on failure shows both the daemon's own log and the file its stdout and stderr
# went to (where a daemon that dies before opening its log says why), and how full the disk is.
# Usage: wait_for_spawned SECONDS DESCRIPTION PIDFILE OUTFILE LOGFILE CHECK...
wait_for_spawned() {
    local seconds="$1" what="$2" pidfile="$3" outfile="$4" logfile="$5"
    shift 5
    local deadline=$((SECONDS + seconds)) pid
    pid="$(cat "$pidfile" 2>/dev/null)"
    until "$@" >/dev/null 2>&1; do
        if ! pid_alive "$pid"; then
            log "$what: the process (pid ${pid:-none}) exited before it was ready"
        elif [ "$SECONDS" -ge "$deadline" ]; then
            log "timed out after ${seconds}s waiting for $what (pid $pid still runs)"
        else
            sleep 0.2
            continue
        fi
        show_tail "$outfile"
        [ "$logfile" = "$outfile" ] || show_tail "$logfile"
        show_disk_space
        return 1
    done
}

show_tail() {
    if [ -s "$1" ]; then
        log "last lines of $1:"
        tail -n 25 "$1" >&2
    else
        log "$1 is empty or missing"
    fi
}

# Kafka's logs, Ceph's store (memstore dumps itself to disk on a clean stop) and the services'
# logs need room; on a nearly full disk they fail later in ways that do not name the disk.
# Usage: warn_if_disk_low [MIN_GIB] (default 5)
warn_if_disk_low() {
    local min_gib="${1:-5}" free_kib
    free_kib="$(df -Pk "$RELAIS_STATE_DIR" 2>/dev/null | awk 'NR == 2 { print $4 }')"
    if [ -n "$free_kib" ] && [ "$free_kib" -lt $((min_gib * 1024 * 1024)) ]; then
        log "WARNING: only $((free_kib / 1024)) MiB free on the disk holding $RELAIS_STATE_DIR (${min_gib} GiB or more advised): Kafka and Ceph may fail to start or to write"
    fi
}

# Daemons that cannot write (or, like Ceph's monitor, refuse to start on a nearly full disk)
# fail in ways that do not name the disk: say how much room is left.
show_disk_space() {
    local free
    free="$(df -Ph "$RELAIS_STATE_DIR" 2>/dev/null | awk 'NR == 2 { print $4 " free of " $2 " (" $5 " used)" }')"
    log "disk holding $RELAIS_STATE_DIR: ${free:-unknown}"
}

# Fails early, with the holder's name, when a port the component needs is taken by a process
# that is not ours.
require_free_port() {
    local port="$1" what="$2"
    if port_open "$RELAIS_BIND_HOST" "$port"; then
        local holder
        holder="$(ss -ltnpH "sport = :$port" 2>/dev/null | sed -nE 's/.*users:\(\("([^"]+)".*/\1/p' | head -n1)"
        die "port $port (needed by $what) is already in use${holder:+ by $holder}; stop it or set another port (see deploy/native/README.md)"
    fi
}
