"""realtime-gateway fan-out beside Centrifugo, and the three services through a long upstream
outage."""

import json
import os
import subprocess
import time

from audit import remove_buckets
from common import (
    AUDIT_ADMIN, BOOTSTRAP, create_topic, http_get, log, metric, peak_rss_bytes, process_cpu_seconds, RELEASE,
    SIM_ADMIN, SIM_API, start, status_bytes, stop, wait_http, WORKER_ADMIN)
from peers import build_centrifugo, CENTRIFUGO_HTTP
from rounds import alternate, compare, median_round, spread


def outage_benchmark(args, out, stamp):
    """Steady load through all three services while the upstream is down for `outage_seconds`:
    the peak RSS of each, sampled over time, and the worker catching up afterwards."""
    topics = {name: f"bench.{stamp}.outage.{name}" for name in ("ingress", "audit", "events", "dlq")}
    for name, topic in topics.items():
        create_topic(topic, 3 if name == "dlq" else 12)
    scenario = out / "outage-scenario.toml"
    scenario.write_text(
        f'name = "bench-outage"\ndescription = "upstream down for {args.outage_seconds} s"\nseed = 7\nkeys = 1000\n'
        '[mix]\nvalid = 1.0\n'
        f'[[phase]]\nname = "healthy"\nseconds = 20\nrate = {args.outage_rate}\nfaults = {{}}\n'
        f'[[phase]]\nname = "outage"\nseconds = {args.outage_seconds}\nrate = {args.outage_rate}\nfaults = {{ outage = true }}\n'
        f'[[phase]]\nname = "recovered"\nseconds = 40\nrate = {args.outage_rate}\nfaults = {{}}\n')
    worker_config = out / "outage-worker.toml"
    worker_config.write_text(f'[kafka]\ngroup_id = "bench-outage-{stamp}"\n'
                             + "".join(f'{name}_topic = "{topic}"\n' for name, topic in topics.items())
                             + f'[upstreams.default]\nurl = "http://{SIM_API}"\nretry_tiers = []\nallowed_networks = ["loopback"]\n')
    audit_config = out / "outage-audit.toml"
    audit_config.write_text(f'[kafka]\ngroup_id = "bench-outage-audit-{stamp}"\naudit_topic = "{topics["audit"]}"\n')
    gateway_config = out / "outage-gateway.toml"
    gateway_config.write_text(f'[kafka]\nevents_topic = "{topics["events"]}"\n')
    services = {}
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN}, out / "outage-sim.log")
    try:
        services["ingest-worker"] = start("ingest-worker", {
            "RELAIS_WORKER_CONFIG": str(worker_config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
            "RELAIS_WORKER_ID": f"bench-outage-{stamp}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}, out / "outage-worker.log")
        services["audit-service"] = start("audit-service", {
            "RELAIS_AUDIT_CONFIG": str(audit_config), "RELAIS_ADMIN_ADDR": AUDIT_ADMIN,
            "RELAIS_S3_BUCKET": f"bench-outage-{stamp}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}, out / "outage-audit.log")
        services["realtime-gateway"] = start("realtime-gateway", {
            "RELAIS_GATEWAY_CONFIG": str(gateway_config), "RELAIS_HTTP_ADDR": GATEWAY_HTTP,
            "RELAIS_GRPC_ADDR": GATEWAY_GRPC, "RELAIS_ADMIN_ADDR": GATEWAY_ADMIN, "RELAIS_TOKENS": f"viewer:bench:outage-{stamp}-viewer",
            "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}, out / "outage-gateway.log")
        wait_http(f"http://{SIM_ADMIN}/healthz")
        wait_http(f"http://{GATEWAY_HTTP}/readyz")
        log(f"outage: {args.outage_rate} msg/s, upstream down for {args.outage_seconds} s")
        load = subprocess.Popen(
            [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "ingress", "--scenario", str(scenario),
             "--topic", topics["ingress"], "--id-prefix", f"outage-{stamp}", "--sim-admin", f"http://{SIM_ADMIN}", "--admin-addr", "127.0.0.1:19105",
             "--summary", str(out / "outage-load.json")],
            stdout=subprocess.DEVNULL, stderr=open(out / "outage-loadgen.log", "ab"))
        samples, started = [], time.time()
        while load.poll() is None:
            sample = {"t": round(time.time() - started, 1)}
            for name, process in services.items():
                sample[name] = status_bytes(process.pid, "VmRSS")
            samples.append(sample)
            time.sleep(5)
        load_ended = time.time()
        produced = json.loads((out / "outage-load.json").read_text())
        # The backlog drains: every produced message gets its outcome committed.
        sent = produced.get("acknowledged", produced.get("sent", 0))
        deadline, committed = time.time() + 300, 0.0
        while time.time() < deadline:
            committed = metric(http_get(f"http://{WORKER_ADMIN}/metrics"), "relais_worker_committed_messages_total")
            if committed >= sent:
                break
            time.sleep(2)
        drained_after = round(time.time() - load_ended, 1)
        peaks = {name: peak_rss_bytes(process.pid) for name, process in services.items()}
    finally:
        for process in services.values():
            stop(process)
        stop(sim)
    remove_buckets(f"bench-outage-{stamp}")
    return {"outage_seconds": args.outage_seconds, "rate": args.outage_rate, "sent": sent,
            "committed": int(committed), "seconds_from_load_end_to_drained": drained_after,
            "peak_rss_bytes": peaks, "samples": samples}


# Below Linux's ephemeral port range (32768–60999): the thousands of client connections of a
# fan-out round take ports from it, and a listener started after them could find its port taken.
GATEWAY_HTTP, GATEWAY_GRPC, GATEWAY_ADMIN = "127.0.0.1:18080", "127.0.0.1:19152", "127.0.0.1:19103"


def fanout_runs(args, scale, topic, target, address, env, server_pid):
    """One loadgen run per rate against the server `server_pid`; each run also says what the
    server's CPU cost per frame it delivered (clients connecting and the last events draining
    included, alike for both servers)."""
    runs = []
    for rate in scale.rates:
        log(f"fan-out ({target}): {scale.clients} clients, {rate} events/s for {args.fanout_seconds} s")
        cpu_before = process_cpu_seconds(server_pid)
        result = subprocess.run(
            [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "ws-fanout", "--target", target,
             "--gateway", address, "--topic", topic, "--clients", str(scale.clients), "--rate", str(rate),
             "--seconds", str(args.fanout_seconds)],
            capture_output=True, text=True, check=True, env={**os.environ, **env})
        run = json.loads(result.stdout.strip().splitlines()[-1])
        run["rate"] = rate
        run["server_cpu_seconds"] = process_cpu_seconds(server_pid) - cpu_before
        if run.get("frames_received"):
            run["server_cpu_us_per_frame"] = run["server_cpu_seconds"] / run["frames_received"] * 1e6
        runs.append(run)
    return runs


class FanoutScale:
    """How many clients a fan-out round connects, and the event rates it produces in turn."""

    def __init__(self, name, clients, rates):
        self.name, self.clients, self.rates = name, clients, rates


def server_memory(pid, before, clients):
    """Peak RSS of a fan-out server, and what each connected client added to it: the peak during
    the round less the RSS once ready, before any client connected."""
    peak = peak_rss_bytes(pid)
    return {"peak_rss_bytes": peak, "rss_before_clients_bytes": before,
            "bytes_per_client": max(peak - before, 0) / max(clients, 1)}


def centrifugo_round(args, scale, out, stamp, index, binary):
    """The same clients and rates against Centrifugo consuming its own topic from the same broker."""
    topic = f"bench.{stamp}.centrifugo-{scale.name}-r{index}"
    create_topic(topic, 6)
    host, port = CENTRIFUGO_HTTP.rsplit(":", 1)
    config = out / f"centrifugo-{scale.name}-r{index}.json"
    config.write_text(json.dumps({
        "http_server": {"address": host, "port": int(port)},
        # Anonymous clients may subscribe: the gateway's token check has no counterpart here.
        "client": {"insecure": True, "allowed_origins": ["*"]},
        "health": {"enabled": True},
        "consumers": [{"name": "relais_events", "enabled": True, "type": "kafka", "kafka": {
            "brokers": [BOOTSTRAP], "topics": [topic], "consumer_group": f"centrifugo-{stamp}-r{index}",
            "publication_data_mode": {"enabled": True, "channels_header": "centrifugo-channels"}}}],
    }, indent=2))
    handle = open(out / f"centrifugo-{scale.name}-r{index}.log", "ab")
    process = subprocess.Popen([binary, "--config", str(config)], stdout=handle, stderr=handle,
                               stdin=subprocess.DEVNULL)
    try:
        wait_http(f"http://{CENTRIFUGO_HTTP}/health")
        before = status_bytes(process.pid, "VmRSS")
        runs = fanout_runs(args, scale, topic, "centrifugo", CENTRIFUGO_HTTP, {}, process.pid)
        memory = server_memory(process.pid, before, scale.clients)
    finally:
        stop(process)
    return {"runs": runs, **memory}


def gateway_round(args, scale, out, stamp, index):
    topic = f"bench.{stamp}.fanout-{scale.name}-r{index}"
    create_topic(topic, 6)
    token = f"bench-viewer-{stamp}"
    config = out / f"gateway-{scale.name}-r{index}.toml"
    # One token opens all the connections: its rate limit and connection cap must allow them.
    opens = float(max(5000, scale.clients))
    config.write_text(f'[kafka]\nevents_topic = "{topic}"\n[http]\nrate_limit_per_second = {opens}\n'
                      f'rate_limit_burst = {opens}\n[websocket]\nmax_connections_per_token = {scale.clients}\n')
    gateway = start("realtime-gateway", {"RELAIS_GATEWAY_CONFIG": str(config), "RELAIS_HTTP_ADDR": GATEWAY_HTTP,
                                         "RELAIS_GRPC_ADDR": GATEWAY_GRPC, "RELAIS_ADMIN_ADDR": GATEWAY_ADMIN,
                                         "RELAIS_TOKENS": f"viewer:bench:{token}",
                                         "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                    out / f"gateway-{scale.name}-r{index}.log")
    try:
        wait_http(f"http://{GATEWAY_HTTP}/readyz")
        before = status_bytes(gateway.pid, "VmRSS")
        runs = fanout_runs(args, scale, topic, "relais", GATEWAY_HTTP, {"RELAIS_TOKEN": token}, gateway.pid)
        memory = server_memory(gateway.pid, before, scale.clients)
    finally:
        stop(gateway)
    return {"runs": runs, **memory}


def fanout_benchmark(args, out, stamp):
    """The gateway and Centrifugo, in alternating rounds, each round all the rates; then, when
    asked, the same with many more clients at the lowest rate, for the memory per connection."""
    binary, why_not = (None, "skipped (--no-peers)") if args.no_peers else build_centrifugo()
    result = fanout_comparison(args, FanoutScale("main", args.fanout_clients, args.fanout_rates),
                               out, stamp, binary, why_not)
    if args.fanout_scale_clients:
        result["scale"] = fanout_comparison(
            args, FanoutScale("scale", args.fanout_scale_clients, [min(args.fanout_rates)]),
            out, stamp, binary, why_not)
    return result


def fanout_comparison(args, scale, out, stamp, binary, why_not):
    sides = alternate(args.rounds, [
        ("relais", lambda index: gateway_round(args, scale, out, stamp, index)),
        ("centrifugo", lambda index: {"skipped": why_not} if binary is None
         else centrifugo_round(args, scale, out, stamp, index, binary)),
    ], log)
    by_rate = {}
    for rate_index, rate in enumerate(scale.rates):
        per_side = {}
        for name, results in sides.items():
            rounds_at_rate = [result["runs"][rate_index] for result in results if "runs" in result]
            per_side[name] = {quantile: spread(rounds_at_rate, f"latency_{quantile}_ms") for quantile in ("p50", "p99")}
            per_side[name]["delivered_ratio"] = spread(rounds_at_rate, "delivered_ratio")
            per_side[name]["cpu_us_per_frame"] = spread(rounds_at_rate, "server_cpu_us_per_frame")
        per_side["p99_comparison"] = compare(per_side["relais"]["p99"], per_side["centrifugo"]["p99"],
                                             higher_is_better=False)
        per_side["cpu_comparison"] = compare(per_side["relais"]["cpu_us_per_frame"],
                                             per_side["centrifugo"]["cpu_us_per_frame"], higher_is_better=False)
        by_rate[rate] = per_side
    memory = {name: {key: spread([result for result in results if "runs" in result], key)
                     for key in ("peak_rss_bytes", "bytes_per_client")}
              for name, results in sides.items()}
    relais = median_round_by_p99(sides["relais"])
    centrifugo = median_round_by_p99(sides["centrifugo"]) or sides["centrifugo"][0]
    if "runs" in centrifugo:
        centrifugo = {**centrifugo, "version": "v6.9.1"}
    return {"clients": scale.clients, "seconds": args.fanout_seconds, "rounds": sides, "by_rate": by_rate,
            "memory": memory, "runs": relais["runs"], "gateway_peak_rss_bytes": relais["peak_rss_bytes"],
            "centrifugo": centrifugo}


def median_round_by_p99(results):
    """The round whose p99 at the highest rate is the median one (the lower middle for an even
    count); None when no round ran."""
    measured = sorted((result for result in results if "runs" in result),
                      key=lambda result: result["runs"][-1]["latency_p99_ms"])
    return measured[(len(measured) - 1) // 2] if measured else None
