#!/usr/bin/env bash
# A single-node Ceph cluster (one mon, one OSD, one radosgw) for S3, without systemd or cephadm.
#
#   ceph-single-node.sh start    create the cluster on first use, start the daemons, wait for S3
#   ceph-single-node.sh stop     stop radosgw, then the OSD, then the mon (the only safe order)
#   ceph-single-node.sh status   one line per daemon
#   ceph-single-node.sh run      start, then stay in the foreground until SIGTERM (containers)
#
# Used by the native stack (deploy/native/infra.sh) and by the Ceph container image alike.
#
# Settings (environment):
#   RELAIS_CEPH_DIR            all state: config, mon store, OSD, logs (default $RELAIS_STATE_DIR/ceph)
#   RELAIS_CEPH_OBJECTSTORE    memstore (default; fast, in memory, dumped to disk on a clean stop)
#                              or bluestore (on a sparse file; survives kill -9)
#   RELAIS_CEPH_MEMSTORE_BYTES memstore capacity (default 4 GiB)
#   RELAIS_CEPH_BLUESTORE_SIZE bluestore file size (default 10G, sparse)
#   RELAIS_RGW_PORT, RELAIS_CEPH_MON_PORT, RELAIS_BIND_HOST (the daemons' address)
#   RELAIS_RGW_TLS_PORT (unset: none): radosgw also serves HTTPS there, with a certificate of
#     the native CA (deploy/native/pki.sh; the native stack sets 7443)
#   RELAIS_RGW_LISTEN          address radosgw listens on (default RELAIS_BIND_HOST; a container
#                              sets 0.0.0.0 so other containers reach S3 while mon and OSD stay
#                              on loopback)
#   RELAIS_S3_ACCESS_KEY, RELAIS_S3_SECRET_KEY, RELAIS_S3_BUCKET, RELAIS_S3_REGION
set -euo pipefail

# shellcheck source=../native/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../native/lib.sh"
COMPONENT=ceph

CEPH_DIR="${RELAIS_CEPH_DIR:-$RELAIS_STATE_DIR/ceph}"
OBJECTSTORE="${RELAIS_CEPH_OBJECTSTORE:-memstore}"
MEMSTORE_BYTES="${RELAIS_CEPH_MEMSTORE_BYTES:-4294967296}"
BLUESTORE_SIZE="${RELAIS_CEPH_BLUESTORE_SIZE:-10G}"
CONF="$CEPH_DIR/ceph.conf"
RGW_NAME="client.rgw.relais"
HOST="$RELAIS_BIND_HOST"
RGW_LISTEN="${RELAIS_RGW_LISTEN:-$HOST}"
RGW_TLS_PORT="${RELAIS_RGW_TLS_PORT:-}"
# Written by `run` once the S3 user and the bucket exist (read by the container's health check).
S3_READY="$CEPH_DIR/s3-ready"
# Every `ceph` CLI call is bounded: without a mgr some commands wait forever.
CEPH=(timeout 30 ceph -c "$CONF")

case "$OBJECTSTORE" in
memstore | bluestore) ;;
*) die "RELAIS_CEPH_OBJECTSTORE must be memstore or bluestore, not '$OBJECTSTORE'" ;;
esac

ensure_packages() {
    local missing=()
    command -v ceph-mon >/dev/null || missing+=(ceph-mon)
    command -v ceph-osd >/dev/null || missing+=(ceph-osd)
    command -v radosgw >/dev/null || missing+=(radosgw)
    command -v ceph >/dev/null || missing+=(ceph-common)
    command -v curl >/dev/null || missing+=(curl)
    command -v uuidgen >/dev/null || missing+=(uuid-runtime)
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

write_config() {
    local fsid="$1"
    mkdir -p "$CEPH_DIR"/{run,log,mon/a,osd/0,rgw}
    # The settings below are what makes a one-OSD cluster start in seconds and stay healthy;
    # each is explained where it is not obvious.
    cat >"$CONF" <<CONF
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:$HOST:$RELAIS_CEPH_MON_PORT]
public addr = $HOST
# Loopback only and development credentials: cephx adds nothing here.
auth cluster required = none
auth service required = none
auth client required = none
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$name.asok
log file = $CEPH_DIR/log/\$name.log
pid file = $CEPH_DIR/run/\$name.pid
keyring = $CEPH_DIR/keyring
# One OSD: every pool has one replica, placement may not try to spread across hosts.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
# The default 5 % free-space floor stops the mon on a busy shared disk, and so did 1 % on a
# large one (1 % of 250 GB is room enough): only a full disk stops it.
mon data avail warn = 1
mon data avail crit = 0
# Paxos defaults are tuned for multi-node quorums; these take start-up from ~18 s to ~3 s.
paxos propose interval = 0.1
paxos min wait = 0.01
mon osd down out interval = 0

[mon.a]
mon data = $CEPH_DIR/mon/a

[osd.0]
osd data = $CEPH_DIR/osd/0
osd objectstore = $OBJECTSTORE
# memstore: keep the store on a clean stop (dumped to osd data, reloaded on start); with the
# default fast shutdown every placement group is lost and S3 requests hang afterwards.
osd fast shutdown = false
memstore device bytes = $MEMSTORE_BYTES
bluestore block create = true
bluestore block size = $BLUESTORE_SIZE

[$RGW_NAME]
rgw frontends = beast endpoint=$RGW_LISTEN:$RELAIS_RGW_PORT
rgw data = $CEPH_DIR/rgw
rgw init timeout = 60
# With auth none, radosgw still needs this or it loops on "get_initial_auth_request -13".
ms mon client mode = crc secure
CONF
}

daemon_pidfile() { echo "$CEPH_DIR/run/$1.daemon.pid"; }

start_mon() {
    if running_pid "$(daemon_pidfile mon)" >/dev/null; then return 0; fi
    require_free_port "$RELAIS_CEPH_MON_PORT" "the Ceph monitor"
    # A monitor that has not answered in time is stopped and started once more before giving
    # up: the rest of the cluster waits on it, and a second start costs seconds.
    local attempt
    for attempt in 1 2; do
        spawn "$(daemon_pidfile mon)" "$CEPH_DIR/log/mon.out" ceph-mon -f -c "$CONF" -i a
        if wait_for_spawned 45 "the Ceph monitor" "$(daemon_pidfile mon)" "$CEPH_DIR/log/mon.out" \
            "$CEPH_DIR/log/mon.a.log" "${CEPH[@]}" --connect-timeout 5 mon stat; then
            return 0
        fi
        stop_pidfile "$(daemon_pidfile mon)" "the Ceph monitor" 10
        [ "$attempt" = 2 ] || log "starting the Ceph monitor once more"
    done
    die "the Ceph monitor did not start (logs in $CEPH_DIR/log)"
}

start_osd() {
    if running_pid "$(daemon_pidfile osd)" >/dev/null; then return 0; fi
    spawn "$(daemon_pidfile osd)" "$CEPH_DIR/log/osd.out" ceph-osd -f -c "$CONF" -i 0
    wait_for_spawned 60 "the OSD to be up" "$(daemon_pidfile osd)" "$CEPH_DIR/log/osd.out" \
        "$CEPH_DIR/log/osd.0.log" osd_up \
        || die "the OSD did not come up (logs in $CEPH_DIR/log)"
}

osd_up() { "${CEPH[@]}" osd dump 2>/dev/null | grep -q '^osd.0 up'; }

# The frontends line, rewritten at every start so that an existing cluster gains (or loses)
# the HTTPS endpoint with the setting.
rgw_frontends() {
    local line="beast endpoint=$RGW_LISTEN:$RELAIS_RGW_PORT"
    if [ -n "$RGW_TLS_PORT" ]; then
        # shellcheck source=../native/pki.sh
        . "$(dirname "${BASH_SOURCE[0]}")/../native/pki.sh"
        pki_issue relais-ca rgw-server localhost serverAuth "IP:$HOST,IP:127.0.0.1,DNS:localhost"
        line+=" ssl_endpoint=$RGW_LISTEN:$RGW_TLS_PORT"
        line+=" ssl_certificate=$PKI_DIR/rgw-server.pem ssl_private_key=$PKI_DIR/rgw-server.key"
    fi
    sed -i "s|^rgw frontends = .*|rgw frontends = $line|" "$CONF"
}

start_rgw() {
    if running_pid "$(daemon_pidfile rgw)" >/dev/null; then return 0; fi
    require_free_port "$RELAIS_RGW_PORT" "radosgw"
    [ -z "$RGW_TLS_PORT" ] || require_free_port "$RGW_TLS_PORT" "radosgw (HTTPS)"
    rgw_frontends
    spawn "$(daemon_pidfile rgw)" "$CEPH_DIR/log/rgw.out" radosgw -f -c "$CONF" -n "$RGW_NAME"
    wait_for_spawned 90 "radosgw to answer HTTP on $RELAIS_RGW_PORT" "$(daemon_pidfile rgw)" \
        "$CEPH_DIR/log/rgw.out" "$CEPH_DIR/log/$RGW_NAME.log" curl -fsS -o /dev/null "http://$HOST:$RELAIS_RGW_PORT/" \
        || die "radosgw did not start (logs in $CEPH_DIR/log)"
    if [ -n "$RGW_TLS_PORT" ]; then
        wait_until 30 "radosgw to answer HTTPS on $RGW_TLS_PORT" "$CEPH_DIR/log/$RGW_NAME.log" \
            curl -fsS -o /dev/null --cacert "$PKI_DIR/relais-ca.pem" "https://$HOST:$RGW_TLS_PORT/" \
            || die "radosgw does not serve HTTPS on $RGW_TLS_PORT (logs in $CEPH_DIR/log)"
    fi
}

# First start only: monitor store, OSD store.
bootstrap() {
    local fsid osd_uuid
    fsid="$(uuidgen)"
    log "creating a new single-node cluster ($OBJECTSTORE) in $CEPH_DIR"
    write_config "$fsid"
    echo "$OBJECTSTORE" >"$CEPH_DIR/objectstore"
    ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
    monmaptool --create --fsid "$fsid" --addv a "[v2:$HOST:$RELAIS_CEPH_MON_PORT]" \
        "$CEPH_DIR/monmap" >/dev/null
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" >"$CEPH_DIR/log/mkfs-mon.out" 2>&1 \
        || die "ceph-mon --mkfs failed: $(tail -n 5 "$CEPH_DIR/log/mkfs-mon.out")"
    start_mon
    osd_uuid="$(uuidgen)"
    "${CEPH[@]}" osd new "$osd_uuid" >/dev/null || die "ceph osd new failed"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$CEPH_DIR/log/mkfs-osd.out" 2>&1 \
        || die "ceph-osd --mkfs failed: $(tail -n 5 "$CEPH_DIR/log/mkfs-osd.out")"
    touch "$CEPH_DIR/bootstrapped"
}

s3() {
    # curl signs S3 requests itself (SigV4). RGW insists on x-amz-content-sha256, which curl 7.88
    # does not send on its own; these requests have no body worth hashing.
    curl -fsS --max-time 15 --aws-sigv4 "aws:amz:$RELAIS_S3_REGION:s3" \
        --user "$RELAIS_S3_ACCESS_KEY:$RELAIS_S3_SECRET_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@"
}

ensure_user_and_bucket() {
    if ! timeout 30 radosgw-admin -c "$CONF" user info --uid relais-dev >/dev/null 2>&1; then
        log "creating the S3 user"
        timeout 60 radosgw-admin -c "$CONF" user create --uid relais-dev --display-name "Relais development" \
            --access-key "$RELAIS_S3_ACCESS_KEY" --secret-key "$RELAIS_S3_SECRET_KEY" >/dev/null \
            || die "radosgw-admin user create failed"
    fi
    local url="http://$HOST:$RELAIS_RGW_PORT/$RELAIS_S3_BUCKET"
    if ! s3 -o /dev/null -I "$url" 2>/dev/null; then
        log "creating bucket $RELAIS_S3_BUCKET"
        s3 -o /dev/null -X PUT "$url" || die "cannot create bucket $RELAIS_S3_BUCKET at $url"
    fi
    # Ready means a signed S3 request really works, not merely that the port is open.
    s3 -o /dev/null "$url?list-type=2&max-keys=1" \
        || die "RGW answers but a signed LIST of $RELAIS_S3_BUCKET fails (credentials?)"
}

cmd_start() {
    ensure_packages
    if [ -f "$CEPH_DIR/bootstrapped" ]; then
        local existing
        existing="$(cat "$CEPH_DIR/objectstore" 2>/dev/null || echo unknown)"
        [ "$existing" = "$OBJECTSTORE" ] || die "$CEPH_DIR holds a $existing cluster but $OBJECTSTORE was asked for; run 'make infra-clean' first to start over"
        start_mon
    else
        rm -rf "$CEPH_DIR"
        bootstrap
    fi
    start_osd
    start_rgw
    ensure_user_and_bucket
    log "RGW ready on http://$HOST:$RELAIS_RGW_PORT${RGW_TLS_PORT:+ and https://$HOST:$RGW_TLS_PORT} (bucket $RELAIS_S3_BUCKET, $OBJECTSTORE)"
}

cmd_stop() {
    # radosgw first (its clean stop needs the others), then the OSD (memstore dumps its data
    # here, which can take a while), then the monitor.
    stop_pidfile "$(daemon_pidfile rgw)" radosgw 15
    stop_pidfile "$(daemon_pidfile osd)" ceph-osd 60
    stop_pidfile "$(daemon_pidfile mon)" ceph-mon 15
}

cmd_status() {
    local name pid
    for name in mon osd rgw; do
        if pid="$(running_pid "$(daemon_pidfile "$name")")"; then
            printf 'ceph-%-4s running (pid %s)\n' "$name" "$pid"
        else
            printf 'ceph-%-4s stopped\n' "$name"
        fi
    done
}

cmd_run() {
    trap 'cmd_stop; exit 0' TERM INT
    # The container's health check wants this marker as well as an answer on the S3 port:
    # radosgw answers before the S3 user exists, and a client let in then is refused (403).
    rm -f "$S3_READY"
    cmd_start
    touch "$S3_READY"
    # Stay alive while all three daemons are; exit non-zero if one dies, so the container
    # runtime restarts the whole set.
    while running_pid "$(daemon_pidfile mon)" >/dev/null &&
        running_pid "$(daemon_pidfile osd)" >/dev/null &&
        running_pid "$(daemon_pidfile rgw)" >/dev/null; do
        sleep 2 &
        wait $! || true
    done
    log "a Ceph daemon exited; stopping the others"
    cmd_stop
    exit 1
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
run) cmd_run ;;
*)
    echo "usage: $0 start|stop|status|run" >&2
    exit 64
    ;;
esac
