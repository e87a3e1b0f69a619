"""The isolation run: how fast a worker delivers to a healthy upstream alone, and with a second
upstream refusing connections while a third of the ingress is routed to it.

Both sides run the same worker configuration (upstreams `a` and `b`, `billing.*` events to `b`,
the default retry tiers) over the same `a` messages; the second side's ingress also carries
`b`'s messages, interleaved on every partition, while nothing listens at `b`'s address. The
rate is what upstream-sim (upstream `a`) accepted, so it counts deliveries, not decisions."""

import json
import socket
import threading
import time

from common import (
    BOOTSTRAP, committed_lag, CpuMeter, create_topic, http_get, http_post, infra_pids, log, metric_sum,
    peak_rss_bytes, produce_sequenced, SIM_ADMIN, SIM_API, start, stop, sustained_rate, wait_http, WORKER_ADMIN)
from rounds import alternate, compare, median_round, spread

# The default schedule (docs/configuration.md); each distinct delay has a topic of its own.
RETRY_TIERS = ["5s", "5m", "30m", "2h", "5h", "10h", "10h"]

PARTITIONS = 12


def refusing_address():
    """A loopback port nothing listens on: bound, then released, and checked to refuse."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    with socket.socket() as check:
        if check.connect_ex((host, port)) == 0:
            raise RuntimeError(f"something listens on {host}:{port}")
    return f"{host}:{port}"


def produce(topic, count, event_type, id_prefix, keys, seconds, admin_port, out):
    return produce_sequenced(topic, count, keys, seconds, out / f"isolation-{id_prefix}.toml", event_type,
                             id_prefix, admin_port)


def produce_both(alone, mixed, healthy, sick, keys, out):
    """The `a` messages onto both topics (the same generator, so the same events, and about as
    many: loadgen paces by time), and onto `mixed` at the same time `b`'s, so the two kinds
    interleave on every partition. Returns what the broker acknowledged of each."""
    seconds = max(1, (healthy + sick) // 40_000)
    sent = {}

    def run(name, *arguments):
        sent[name] = produce(*arguments)

    threads = [threading.Thread(target=run, args=("mixed_a", mixed, healthy, "order.created", "iso-a", keys,
                                                  seconds, 19106, out)),
               threading.Thread(target=run, args=("mixed_b", mixed, sick, "billing.charged", "iso-b", keys,
                                                  seconds, 19107, out))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sent["alone_a"] = produce(alone, healthy, "order.created", "iso-a", keys, seconds, 19106, out)
    return sent


def worker_config(out, stamp, name, ingress, sick, in_flight):
    topics = {kind: f"bench.{stamp}.{name}.{kind}" for kind in ("audit", "events", "dlq")}
    retry_prefix = f"bench.{stamp}.{name}.retry"
    for kind, topic in topics.items():
        create_topic(topic, PARTITIONS if kind != "dlq" else 3)
    for delay in sorted(set(RETRY_TIERS)):
        create_topic(f"{retry_prefix}.{delay}", PARTITIONS)
    upstream = (lambda upstream, address: f'[upstreams.{upstream}]\nurl = "http://{address}"\n'
                f'allowed_networks = ["loopback"]\nretry_tiers = {json.dumps(RETRY_TIERS)}\n'
                f'max_in_flight = {in_flight}\nordering = "key"\n'
                f'[upstreams.{upstream}.policy.bulkhead]\nmax_concurrent = {in_flight}\n')
    config = out / f"{name}.toml"
    config.write_text(
        f'[kafka]\ngroup_id = "bench-{stamp}-{name}"\ningress_topic = "{ingress}"\n'
        + "".join(f'{kind}_topic = "{topic}"\n' for kind, topic in topics.items())
        + f'[retry]\ntopic_prefix = "{retry_prefix}"\n'
        + '[routing]\ndefault_upstream = "a"\nrules = [{ type_prefix = "billing.", upstream = "b" }]\n'
        + upstream("a", SIM_API) + upstream("b", sick))
    return config


def isolation_round(args, out, stamp, sim, name, ingress, sick, expected_a, latency):
    """One worker over `ingress` until upstream `a` has every one of its messages, then until the
    group has committed every ingress offset (with `b` down, its messages moved to a tier)."""
    http_post(f"http://{SIM_ADMIN}/admin/reset")
    http_post(f"http://{SIM_ADMIN}/admin/faults", json.dumps(latency).encode(), method="PUT")
    config = worker_config(out, stamp, name, ingress, sick, args.isolation_in_flight)
    worker = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                     "RELAIS_WORKER_ID": f"bench-{stamp}-{name}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                   out / f"{name}.log")
    meter = CpuMeter({"ingest-worker": worker.pid, "upstream-sim": sim.pid, **infra_pids()})
    samples, text, lag = [], "", None
    try:
        deadline = time.time() + 600
        while not samples or samples[-1][1] < expected_a:
            if time.time() > deadline:
                raise RuntimeError(f"{name}: upstream a accepted {samples[-1][1] if samples else 0} of "
                                   f"{expected_a} within 600 s")
            if worker.poll() is not None:
                raise RuntimeError(f"the worker of {name} exited early; see {out / (name + '.log')}")
            accepted = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries")).get("accepted", 0)
            if accepted > 0:
                if not samples:
                    meter.start()
                samples.append((time.time(), accepted))
            time.sleep(0.25)
        cpu = meter.stop(expected_a)
        text = http_get(f"http://{WORKER_ADMIN}/metrics")
        rss = peak_rss_bytes(worker.pid)
        # Kafka's own view of the group: the ingress is committed when nothing is left past its
        # committed offsets (each look takes the tool a second or two: an upper bound).
        group = f"bench-{stamp}-{name}"
        while (lag := committed_lag(group, ingress)) != 0 and time.time() < deadline:
            time.sleep(0.5)
        committed_at = time.time()
    finally:
        stop(worker)
    seen = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
    (first_at, _), (last_at, last) = samples[0], samples[-1]
    return {
        "records_per_second": round(sustained_rate(samples, expected_a), 1),
        "whole_run_records_per_second": round(last / max(last_at - first_at, 1e-6), 1),
        "delivered": last,
        "seconds": round(last_at - first_at, 2),
        "ingress_committed_after_seconds": round(committed_at - last_at, 2) if lag == 0 else None,
        "retries_scheduled_b": metric_sum(text, "relais_worker_retries_scheduled_total", upstream="b"),
        "dead_lettered": metric_sum(text, "relais_worker_dead_letters_total"),
        "peak_in_flight_upstream": seen.get("peak_in_progress"),
        "order_violations": seen.get("order_violations"),
        "duplicate_deliveries": seen.get("duplicate_deliveries"),
        "peak_rss_bytes": rss,
        "cpu": cpu,
        "machine_cores_busy": cpu["machine_cores_busy"],
        "cpu_us_per_message": cpu["components"]["ingest-worker"]["cpu_us_per_unit"],
    }


def isolation_benchmark(args, out, stamp):
    """Upstream `a`'s rate alone and with `b` down, in alternating rounds."""
    alone, mixed = f"bench.{stamp}.isolation-alone", f"bench.{stamp}.isolation-mixed"
    for topic in (alone, mixed):
        create_topic(topic, PARTITIONS)
    latency = {"latency": {"kind": "log_normal", "median_ms": float(args.isolation_latency_ms), "sigma": 0.25}}
    sick = refusing_address()
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN},
                out / "isolation-upstream-sim.log")
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        healthy, sick_count = args.isolation_messages, args.isolation_messages // 2
        log(f"isolation: producing {healthy} messages for a (twice) and {sick_count} for b")
        sent = produce_both(alone, mixed, healthy, sick_count, args.isolation_keys, out)
        runs = alternate(args.rounds, [
            ("alone", lambda index: isolation_round(
                args, out, stamp, sim, f"isolation-alone-r{index}", alone, sick, sent["alone_a"], latency)),
            ("b_down", lambda index: isolation_round(
                args, out, stamp, sim, f"isolation-b-down-r{index}", mixed, sick, sent["mixed_a"], latency)),
        ], log)
    finally:
        stop(sim)
    rates = {name: spread(side, "records_per_second") for name, side in runs.items()}
    results = {
        "messages_a": sent["alone_a"],
        "messages_a_with_b": sent["mixed_a"],
        "messages_b": sent["mixed_b"],
        "keys": args.isolation_keys,
        "in_flight": args.isolation_in_flight,
        "upstream": f"log-normal, median {args.isolation_latency_ms} ms, sigma 0.25",
        "rounds": runs,
        "rates": rates,
        "ratio": round(rates["b_down"]["median"] / rates["alone"]["median"], 3),
        "comparison": compare(rates["b_down"], rates["alone"]),
        "ingress_committed_after_seconds": {name: spread(side, "ingress_committed_after_seconds")
                                            for name, side in runs.items()},
        "machine_cores_busy": {name: spread(side, "machine_cores_busy") for name, side in runs.items()},
        "peak_rss": {name: spread(side, "peak_rss_bytes") for name, side in runs.items()},
        "cpu_us_per_message": {name: spread(side, "cpu_us_per_message") for name, side in runs.items()},
    }
    for name, side in runs.items():
        results[name] = median_round(side, "records_per_second").copy()
        # Correctness holds in every round or not at all: the worst round is reported.
        for count in ("order_violations", "duplicate_deliveries", "dead_lettered"):
            results[name][count] = max(result.get(count) or 0 for result in side)
    return results
