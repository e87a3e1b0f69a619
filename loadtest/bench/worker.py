"""ingest-worker benchmarks: the CPU-bound run (an upstream that answers at once) and the
slow-upstream run (about 100 ms, order per key), each beside its peers in alternating rounds."""

import datetime
import json
import os
from pathlib import Path
import shutil
import statistics
import subprocess
import tempfile
import time

from common import (
    BOOTSTRAP, consumer_ceiling, CpuMeter, create_topic, follow_until, http_get, http_post, infra_pids,
    kafka_tool, log, peak_rss_bytes, produce_sequenced, RELEASE, ROOT, SIM_ADMIN, SIM_API, start, stop, wait_http, WORKER_ADMIN)
from peers import PC_COUNT, PC_DIR, run_camel, run_java_peer
from rounds import alternate, compare, median_round, paired_ratio, spread


def run_wrk(seconds, sim_pid):
    if shutil.which("wrk") is None:
        # The native stack's installer refreshes the package lists first (a fresh machine has
        # none) and says clearly when it cannot install.
        subprocess.run(["bash", "-c", '. "$0" && apt_install wrk',
                        str(ROOT / "deploy/native/lib.sh")], check=True)
    meter = CpuMeter({"upstream-sim": sim_pid, **infra_pids()}, tools="wrk").start()
    output = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(Path(__file__).with_name("post.lua")),
         f"http://{SIM_API}/events"], capture_output=True, text=True, check=True).stdout
    rate = next(float(line.split()[1]) for line in output.splitlines() if line.startswith("Requests/sec"))
    requests = next(int(line.split()[0]) for line in output.splitlines() if " requests in " in line)
    return rate, output, meter.stop(requests)


def run_http_post(kind, seconds, concurrency, sim_pid):
    """The worker's HTTP client alone (`loadgen http-post`), bare reqwest or the resilience stack."""
    meter = CpuMeter({"upstream-sim": sim_pid, **infra_pids()}, tools=f"loadgen http-post ({kind})").start()
    output = subprocess.run(
        [str(RELEASE / "loadgen"), "http-post", "--url", f"http://{SIM_API}", "--client", kind,
         "--concurrency", str(concurrency), "--seconds", str(seconds)],
        capture_output=True, text=True, check=True, env={**os.environ, "RUST_LOG": "warn"}).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["cpu"] = meter.stop(result["requests"])
    own = next((part for name, part in result["cpu"]["components"].items() if name.startswith("loadgen")), {})
    result["cpu_us_per_request"] = own.get("cpu_us_per_unit")
    return result


def produce(topic, count):
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    with tempfile.NamedTemporaryFile("w", suffix=".payloads", delete=False) as payloads:
        for index in range(2000):
            payloads.write(json.dumps({"id": f"bench-{index}", "type": "order.created", "occurred_at": now,
                                       "source": "bench", "data": {"n": index, "note": "benchmark payload"}}) + "\n")
    started = time.time()
    kafka_tool("org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records", str(count),
               "--throughput", "-1", "--payload-file", payloads.name,
               "--producer-props", f"bootstrap.servers={BOOTSTRAP}", "linger.ms=10", "batch.size=262144",
               "compression.type=lz4")
    os.unlink(payloads.name)
    return time.time() - started


def worker_config(path, group, ingress, topic_prefix, max_concurrent, upstream_extra="", extra=""):
    """Writes a worker's configuration to `path`: one upstream at upstream-sim, output topics of
    its own (created here, named `{topic_prefix}{audit,events,dlq}`). Returns the topics."""
    topics = {name: f"{topic_prefix}{name}" for name in ("audit", "events", "dlq")}
    for name, topic in topics.items():
        create_topic(topic, 12 if name != "dlq" else 3)
    path.write_text(
        f'[kafka]\ngroup_id = "{group}"\ningress_topic = "{ingress}"\n'
        + "".join(f'{name}_topic = "{topic}"\n' for name, topic in topics.items())
        + f'[upstreams.default]\nurl = "http://{SIM_API}"\nretry_tiers = []\nallowed_networks = ["loopback"]\n'
        + upstream_extra + extra
        + f'[upstreams.default.policy.bulkhead]\nmax_concurrent = {max_concurrent}\n')
    return topics


def worker_round(args, out, stamp, index, sim, ingress):
    """One run of the worker over the whole ingress topic, in a consumer group and with output
    topics of its own: rate, CPU per message, peak RSS."""
    config = out / f"worker-r{index}.toml"
    topics = worker_config(config, f"bench-{stamp}-r{index}", ingress, f"bench.{stamp}.r{index}.",
                           args.worker_in_flight)
    http_post(f"http://{SIM_ADMIN}/admin/reset")
    worker = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                     "RELAIS_WORKER_ID": f"bench-{stamp}-r{index}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                   out / f"ingest-worker-r{index}.log")
    meter = CpuMeter({"ingest-worker": worker.pid, "upstream-sim": sim.pid, **infra_pids()})
    try:
        samples, _, _, cpu = follow_until(worker, "ingest-worker", WORKER_ADMIN,
                                          "relais_worker_committed_messages_total", args.messages, meter)
        rss = peak_rss_bytes(worker.pid)
    finally:
        stop(worker)
    (first_at, first), (last_at, last) = samples[0], samples[-1]
    # Per-second rates over the steady part, for the median.
    steady = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])
              if b[1] < args.messages and b[0] > a[0]]
    return {"records_per_second": round((last - first) / max(last_at - first_at, 1e-6), 1),
            "median_interval_rate": round(statistics.median(steady), 1) if steady else None,
            "peak_rss_bytes": rss, "cpu": cpu,
            "cpu_us_per_message": cpu["components"]["ingest-worker"]["cpu_us_per_unit"],
            "upstream_requests": json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries")).get("requests"),
            "audit_topic": topics["audit"]}


def bare_worker_round(args, out, stamp, index, sim, ingress):
    """`loadgen bare-worker` over the same ingress topic, with output topics and a group of its
    own: the worker's consume, POST and transactional outcome records with nothing of Relais
    around them, so the worker's CPU per message over this one's is what Relais adds."""
    topics = [f"bench.{stamp}.bare-r{index}.{name}" for name in ("audit", "events")]
    for topic in topics:
        create_topic(topic, 12)
    http_post(f"http://{SIM_ADMIN}/admin/reset")
    meter = CpuMeter({"upstream-sim": sim.pid, **infra_pids()}, tools="loadgen bare-worker").start()
    with open(out / f"bare-worker-r{index}.log", "ab") as stderr:
        output = subprocess.run(
            [str(RELEASE / "loadgen"), "bare-worker", "--topic", ingress, "--group", f"bench-bare-{stamp}-r{index}",
             "--audit-topic", topics[0], "--events-topic", topics[1], "--url", f"http://{SIM_API}",
             "--concurrency", str(args.worker_in_flight), "--messages", str(args.messages)],
            stdout=subprocess.PIPE, stderr=stderr, text=True, check=True,
            env={**os.environ, "RUST_LOG": "warn", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}).stdout
    result = json.loads(output.strip().splitlines()[-1])
    cpu = meter.stop(result["messages"])
    own = next((part for name, part in cpu["components"].items() if name.startswith("loadgen")), {})
    return {"records_per_second": round(result["messages_per_second"], 1), "failed": result["failed"],
            "cpu": cpu, "cpu_us_per_message": own.get("cpu_us_per_unit"),
            "upstream_requests": json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries")).get("requests")}


def camel_round(args, out, stamp, index, ingress, outcome_topics=None):
    """The Camel route over the same ingress topic in a group of its own; with `outcome_topics`,
    also writing one outcome record to each per message, as the worker does."""
    http_post(f"http://{SIM_ADMIN}/admin/reset")
    name = "camel-http-outcomes" if outcome_topics else "camel-http"
    env = {"CAMEL_PEER_TOPIC": ingress, "CAMEL_PEER_GROUP": f"{name}-{stamp}-r{index}",
           "CAMEL_PEER_UPSTREAM": f"http://{SIM_API}/events"}
    if outcome_topics:
        env["CAMEL_PEER_OUTCOME_TOPICS"] = ",".join(outcome_topics)
    result = run_camel("http", env, out, args.messages, f"{name}-r{index}.log",
                       max_seconds=60 if outcome_topics else 600)
    result["upstream_requests"] = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries")).get("requests")
    return result


def worker_benchmark(args, out, stamp):
    """The CPU-bound run: the worker against an upstream that answers at once, beside wrk's raw
    rate and the Camel route, in alternating rounds."""
    ingress = f"bench.{stamp}.ingress"
    create_topic(ingress, 12)
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN}, out / "upstream-sim.log")
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        log(f"wrk against upstream-sim for {args.wrk_seconds}s")
        wrk_rate, wrk_output, wrk_cpu = run_wrk(args.wrk_seconds, sim.pid)
        (out / "wrk.txt").write_text(wrk_output)
        http_post(f"http://{SIM_ADMIN}/admin/reset")
        log(f"wrk: {wrk_rate:.0f} requests/s")

        def http_client(kind):
            def run(index):
                result = run_http_post(kind, args.wrk_seconds, args.worker_in_flight, sim.pid)
                http_post(f"http://{SIM_ADMIN}/admin/reset")
                return result
            return run

        log(f"producing {args.messages} messages")
        produce_seconds = produce(ingress, args.messages)
        # The same route writing one outcome record to each of two topics per message, as the
        # worker writes an audit record and a realtime event: the same work, minus the
        # transaction.
        outcome_topics = [f"bench.{stamp}.camel-audit", f"bench.{stamp}.camel-events"]
        if not args.camel_unavailable:
            for topic in outcome_topics:
                create_topic(topic, 12)
        skipped = {"skipped": args.camel_unavailable} if args.camel_unavailable else None
        # The HTTP client alone runs in the same turns: the worker's CPU per message over the
        # client's CPU per request, round by round, holds while the machine's speed drifts.
        runs = alternate(args.rounds, [
            ("http_reqwest", http_client("reqwest")),
            ("http_resilience", http_client("resilience")),
            ("worker", lambda index: worker_round(args, out, stamp, index, sim, ingress)),
            ("bare_worker", lambda index: bare_worker_round(args, out, stamp, index, sim, ingress)),
            ("camel", lambda index: skipped or camel_round(args, out, stamp, index, ingress)),
            ("camel_with_outcomes",
             lambda index: skipped or camel_round(args, out, stamp, index, ingress, outcome_topics)),
        ], log)
    finally:
        stop(sim)
    ceiling = consumer_ceiling(ingress, args.messages)
    rates = {name: spread(results, "records_per_second") for name, results in runs.items()}
    median_worker = median_round(runs["worker"], "records_per_second")
    worker_rate = rates["worker"]["median"]
    # What the target asks, in CPU: wrk and upstream-sim saturate the machine between them, so
    # the worker, the broker and upstream-sim must fit the same cores at 0.7 x wrk's rate.
    # Counting only what the worker cannot do without (upstream-sim answering, the broker
    # serving the fetch and the outcome transaction), at the cost per message measured here:
    parts = median_worker["cpu"]["components"]
    others_us = parts["upstream-sim"]["cpu_us_per_unit"] + parts.get("kafka broker", {}).get("cpu_us_per_unit", 0)
    bound = (os.cpu_count() or 1) * 1e6 / others_us if others_us else None
    return {
        "rounds": runs,
        "rates": rates,
        "worker_cpu_us_per_message": spread(runs["worker"], "cpu_us_per_message"),
        "worker_peak_rss": spread(runs["worker"], "peak_rss_bytes"),
        "comparisons": {name: compare(rates["worker"], rates[name]) for name in ("camel", "camel_with_outcomes")},
        "kafka_consumer_ceiling_per_second": ceiling,
        "ratio_worker_to_consumer_ceiling": round(worker_rate / ceiling, 3) if ceiling else None,
        "messages": args.messages,
        "wrk_requests_per_second": round(wrk_rate, 1),
        "worker_messages_per_second": worker_rate,
        "worker_median_interval_rate": median_worker["median_interval_rate"],
        "ratio_worker_to_wrk": round(worker_rate / wrk_rate, 3),
        "worker_peak_rss_bytes": median_worker["peak_rss_bytes"],
        "produce_seconds": round(produce_seconds, 1),
        "upstream_requests": median_worker["upstream_requests"],
        "in_flight": args.worker_in_flight,
        "camel": median_round(runs["camel"], "records_per_second") or runs["camel"][0],
        "camel_with_outcomes": (median_round(runs["camel_with_outcomes"], "records_per_second")
                                or runs["camel_with_outcomes"][0]),
        "target_ratio": 0.7,
        "wrk_cpu": wrk_cpu,
        "http_client_alone": {kind: {"requests_per_second": spread(runs[f"http_{kind}"], "requests_per_second"),
                                     "cpu_us_per_request": spread(runs[f"http_{kind}"], "cpu_us_per_request"),
                                     "concurrency": args.worker_in_flight}
                              for kind in ("reqwest", "resilience")},
        "worker_cpu_over_client_cpu": paired_ratio(runs["worker"], "cpu_us_per_message",
                                                   runs["http_reqwest"], "cpu_us_per_request"),
        "bare_worker": {"rate": rates["bare_worker"],
                        "cpu_us_per_message": spread(runs["bare_worker"], "cpu_us_per_message")},
        "worker_cpu_over_bare_worker_cpu": paired_ratio(runs["worker"], "cpu_us_per_message",
                                                        runs["bare_worker"], "cpu_us_per_message"),
        "worker_cpu": median_worker["cpu"],
        "rate_if_worker_cost_nothing": round(bound, 1) if bound else None,
        "ratio_bound_if_worker_cost_nothing": round(bound / wrk_rate, 3) if bound else None,
        # The audit benchmark stores the first round's records: exactly `messages` of them.
        "audit_topic": runs["worker"][0]["audit_topic"],
    }


def produce_keyed(topic, count, keys, out):
    """`count` valid events over `keys` keys with their per-key sequence in `data`, as fast as
    loadgen writes them; returns the number sent."""
    return produce_sequenced(topic, count, keys, max(1, count // 40_000), out / "slow-upstream-load.toml")


def slow_upstream_benchmark(args, out, stamp):
    """An upstream answering in about 100 ms, 10,000 keys, order per key: how many messages a
    worker keeps in flight and delivers, beside the Parallel Consumer (KEY mode) and Camel doing
    Kafka → HTTP against the same upstream-sim with the same concurrency, in alternating rounds."""
    ingress = f"bench.{stamp}.slow-ingress"
    create_topic(ingress, 12)
    latency = {"latency": {"kind": "log_normal", "median_ms": 100.0, "sigma": 0.25}}
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN},
                out / "slow-upstream-sim.log")
    results = {"concurrency": args.slow_in_flight, "keys": args.slow_keys, "upstream": "log-normal, median 100 ms, sigma 0.25"}

    def with_upstream_view(run):
        """A side's round against a fresh upstream-sim, with what upstream-sim saw added."""
        def measured(index):
            http_post(f"http://{SIM_ADMIN}/admin/reset")
            http_post(f"http://{SIM_ADMIN}/admin/faults", json.dumps(latency).encode(), method="PUT")
            result = run(index)
            if "skipped" in result:
                return result
            seen = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
            result.update({"peak_in_flight_upstream": seen.get("peak_in_progress"),
                           "order_violations": seen.get("order_violations"),
                           "ordered_events": seen.get("ordered_events"),
                           "duplicate_deliveries": seen.get("duplicate_deliveries")})
            return result
        return measured

    def worker(index):
        config = out / f"slow-worker-r{index}.toml"
        topics = worker_config(
            config, f"bench-slow-{stamp}-r{index}", ingress, f"bench.{stamp}.slow-r{index}-", args.slow_in_flight,
            upstream_extra=f'max_in_flight = {args.slow_in_flight}\nordering = "key"\n',
            extra=f'[pipeline]\nmax_queued_per_upstream = {args.slow_queued}\n' if args.slow_queued else "")
        process = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                          "RELAIS_WORKER_ID": f"bench-slow-{stamp}-r{index}",
                                          "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                        out / f"slow-ingest-worker-r{index}.log")
        meter = CpuMeter({"ingest-worker": process.pid, "upstream-sim": sim.pid, **infra_pids()})
        try:
            samples, _, _, cpu = follow_until(process, "ingest-worker", WORKER_ADMIN,
                                              "relais_worker_committed_messages_total", sent, meter)
            rss = peak_rss_bytes(process.pid)
        finally:
            stop(process)
        (first_at, first), (last_at, last) = samples[0], samples[-1]
        return {"records_per_second": round((last - first) / max(last_at - first_at, 1e-6), 1),
                "peak_rss_bytes": rss, "cpu": cpu,
                "cpu_us_per_message": cpu["components"]["ingest-worker"]["cpu_us_per_unit"]}

    def parallel_consumer(index):
        if args.pc_unavailable:
            return {"skipped": args.pc_unavailable}
        return run_java_peer(
            "the Parallel Consumer peer",
            ["-cp", f"{PC_DIR}/target/classes:{PC_DIR}/target/dependency/*", "relais.peer.ParallelConsumerPeer"],
            {"PC_PEER_BOOTSTRAP": BOOTSTRAP, "PC_PEER_TOPIC": ingress, "PC_PEER_GROUP": f"pc-slow-{stamp}-r{index}",
             "PC_PEER_UPSTREAM": f"http://{SIM_API}/events", "PC_PEER_CONCURRENCY": str(args.slow_in_flight),
             "PC_PEER_COUNT_PORT": PC_COUNT.rsplit(":", 1)[1]},
            PC_COUNT, out, sent, f"slow-parallel-consumer-r{index}.log", 90)

    def camel(index):
        if args.camel_unavailable:
            return {"skipped": args.camel_unavailable}
        return run_camel("http", {"CAMEL_PEER_TOPIC": ingress, "CAMEL_PEER_GROUP": f"camel-slow-{stamp}-r{index}",
                                  "CAMEL_PEER_UPSTREAM": f"http://{SIM_API}/events"},
                         out, sent, f"slow-camel-r{index}.log", max_seconds=60)

    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        log(f"slow upstream: producing {args.slow_messages} messages over {args.slow_keys} keys")
        sent = produce_keyed(ingress, args.slow_messages, args.slow_keys, out)
        results["messages"] = sent
        runs = alternate(args.rounds, [("worker", with_upstream_view(worker)),
                                       ("parallel_consumer", with_upstream_view(parallel_consumer)),
                                       ("camel", with_upstream_view(camel))], log)
    finally:
        stop(sim)
    results["rounds"] = runs
    results["rates"] = {name: spread(side, "records_per_second") for name, side in runs.items()}
    results["peak_rss"] = {name: spread(side, "peak_rss_bytes") for name, side in runs.items()}
    results["worker_cpu_us_per_message"] = spread(runs["worker"], "cpu_us_per_message")
    results["comparisons"] = {name: compare(results["rates"]["worker"], results["rates"][name])
                              for name in ("parallel_consumer", "camel")}
    # Correctness holds in every round or not at all: the worst round is reported.
    for name, side in runs.items():
        measured = [result for result in side if "skipped" not in result]
        results[name] = (median_round(measured, "records_per_second") or side[0]).copy()
        for count in ("order_violations", "duplicate_deliveries"):
            if measured:
                results[name][count] = max(result.get(count) or 0 for result in measured)
    return results
