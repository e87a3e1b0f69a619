#!/usr/bin/env python3
"""Benchmarks of Relais, measured in one run on this machine, reported as ratios.

Worker benchmark: messages per second end to end (Kafka -> ingest-worker -> upstream-sim ->
outcome transaction) beside the request rate an HTTP load tool (wrk) reaches against the same
upstream-sim in the same run. The ratio is the figure; absolute numbers depend on the machine.
Also the worker's peak RSS.

Audit benchmark: audit-service storing two million synthetic audit records (loadgen)
(records/s, MB/s into RGW) beside the raw PUT bandwidth of the same RGW for objects of the
same size, in the same run; the same for the audit records the worker benchmark produced, beside
Apache Camel storing them; CPU per component and the service's peak RSS.

Lookup benchmark: a million synthetic audit records (loadgen) stored by audit-service, then
trail lookups by trace id and by message id through its gRPC API; median latency, idle and
while the service stores a second batch as fast as it can.

Fan-out benchmark: 1,000 WebSocket clients on realtime-gateway while events are produced to its
topic at a fixed rate (loadgen ws-fanout): frames delivered per second, p99 latency from
produce to receipt, and the gateway's peak RSS.

Usage: run.py [--only worker,audit,lookup,fanout] [--messages N] [--wrk-seconds S] [--out DIR]
Needs the native infrastructure (`make infra-up`) and release binaries (`make release`).
"""

import argparse
import datetime
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import charts

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("RELAIS_STATE_DIR", ROOT / ".state"))
BOOTSTRAP = os.environ.get("RELAIS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
RELEASE = ROOT / "target" / "release"
SIM_API, SIM_ADMIN, WORKER_ADMIN = "127.0.0.1:18090", "127.0.0.1:19104", "127.0.0.1:19101"
AUDIT_ADMIN = "127.0.0.1:19102"
S3_ENDPOINT = os.environ.get("RELAIS_S3_ENDPOINT", "http://127.0.0.1:7480")
S3_REGION = os.environ.get("RELAIS_S3_REGION", "default")
S3_ACCESS = os.environ.get("RELAIS_S3_ACCESS_KEY", "relais-dev")
S3_SECRET = os.environ.get("RELAIS_S3_SECRET_KEY", "relais-dev-secret")


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def kafka_tool(cls, *args, stdin=None):
    libs = next((STATE / "kafka").glob("libs-*"), None)
    if libs is None:
        sys.exit("Kafka jars not found: run `make infra-up` first")
    command = ["java", "-Xshare:auto", "-XX:TieredStopAtLevel=1", "-Xmx512m",
               f"-Dlog4j2.configurationFile={ROOT}/deploy/native/kafka/tools-log4j2.properties",
               "-cp", f"{libs}/*", cls, *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, check=True).stdout


def create_topic(name, partitions):
    kafka_tool("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BOOTSTRAP, "--create",
               "--topic", name, "--partitions", str(partitions), "--replication-factor", "1")


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def http_post(url, data=b"", method="POST"):
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def metric(text, name):
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            try:
                return float(line.split()[-1] if "#" not in line else line.split("#")[0].split()[-1])
            except ValueError:
                continue
    return 0.0


def wait_http(url, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            http_get(url)
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{url} did not answer within {seconds}s")


def status_bytes(pid, field):
    """A size field of /proc/PID/status (VmHWM: peak RSS, VmRSS: current RSS), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def peak_rss_bytes(pid):
    return status_bytes(pid, "VmHWM")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid):
    """User + system CPU time of a process (all its threads) so far; 0 once it is gone."""
    try:
        # Fields after the command name, which may itself contain spaces or parentheses.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_seconds():
    """CPU time spent by everything on the machine so far (all cores, idle and iowait excluded)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def infra_pids():
    """The native stack's daemons (deploy/native/infra.sh writes their pid files)."""
    files = {"kafka broker": STATE / "kafka" / "kafka.pid", "radosgw": STATE / "ceph" / "run" / "rgw.daemon.pid",
             "ceph-osd": STATE / "ceph" / "run" / "osd.daemon.pid", "ceph-mon": STATE / "ceph" / "run" / "mon.daemon.pid"}
    pids = {}
    for name, path in files.items():
        try:
            pids[name] = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return pids


class CpuMeter:
    """Where the machine's CPU time went between start() and stop(): per named process, this
    benchmark script itself with the children it reaped (wrk, the S3 PUT threads), and the rest
    of the machine. Reported per unit of work, so the figures say what each part costs."""

    def __init__(self, pids, tools="bench script and the tools it ran"):
        self.pids = dict(pids)
        self.tools = tools
        self.started = None

    def _read(self):
        own = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        sample = {name: process_cpu_seconds(pid) for name, pid in self.pids.items()}
        sample[self.tools] = (own.ru_utime + own.ru_stime + children.ru_utime
                                                   + children.ru_stime)
        return time.time(), machine_busy_seconds(), sample

    def start(self):
        self.started = self._read()
        return self

    def stop(self, units):
        """CPU per component: seconds, cores used on average and microseconds per unit."""
        (t0, busy0, sample0), (t1, busy1, sample1) = self.started, self._read()
        elapsed, units = max(t1 - t0, 1e-6), max(units, 1)
        seconds = {name: max(sample1[name] - sample0[name], 0.0) for name in sample1}
        seconds["rest of the machine"] = max((busy1 - busy0) - sum(seconds.values()), 0.0)
        return {
            "elapsed_seconds": round(elapsed, 2),
            "units": units,
            "machine_cores_busy": round((busy1 - busy0) / elapsed, 2),
            "components": {name: {"cpu_seconds": round(value, 2), "cores": round(value / elapsed, 2),
                                  "cpu_us_per_unit": round(value / units * 1e6, 1)}
                           for name, value in seconds.items()},
        }


def cpu_rows(cpu, unit):
    """Markdown rows: the CPU each component spent per unit of work."""
    if not cpu:
        return ""
    rows = "".join(f"| {name} | {part['cores']:.2f} | {part['cpu_us_per_unit']:.1f} |\n"
                   for name, part in sorted(cpu["components"].items(), key=lambda item: -item[1]["cpu_seconds"]))
    return (f"| component | cores busy (of {os.cpu_count()}) | CPU µs per {unit} |\n| --- | --- | --- |\n" + rows
            + f"| whole machine | {cpu['machine_cores_busy']:.2f} | |\n")


def raise_open_files_limit():
    """A thousand WebSocket clients need more descriptors than the usual soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def start(binary, env, log_path):
    handle = open(log_path, "ab")
    # The S3 user every audit-service of the benchmark writes as (it has no built-in keys).
    s3 = {"RELAIS_S3_ENDPOINT": S3_ENDPOINT, "RELAIS_S3_ACCESS_KEY": S3_ACCESS, "RELAIS_S3_SECRET_KEY": S3_SECRET}
    return subprocess.Popen([str(RELEASE / binary)], env={**os.environ, **s3, **env, "RUST_LOG": "warn"},
                            stdout=handle, stderr=handle, stdin=subprocess.DEVNULL)


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


CAMEL_DIR = ROOT / "loadtest" / "peers" / "camel"
CAMEL_COUNT = "127.0.0.1:19110"
PC_DIR = ROOT / "loadtest" / "peers" / "parallel-consumer"
PC_COUNT = "127.0.0.1:19111"


def build_camel():
    """The Camel peer (Maven Central); None with the reason when it cannot be built here."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        return "Maven and a JDK are needed to build the Camel peer"
    log("building the Camel peer (Maven)")
    result = subprocess.run([str(CAMEL_DIR / "build.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        return "building the Camel peer failed: " + (result.stdout + result.stderr).strip()[-400:]
    return None


def run_camel(mode, env, out, records, log_name, max_seconds=600):
    """Runs the Camel peer until it has handled `records` (or for `max_seconds` of handling, for
    a slow peer); returns the rate, bytes rate and peak RSS."""
    classpath = f"{CAMEL_DIR}/target/classes:{CAMEL_DIR}/target/dependency/*"
    return run_java_peer(
        "the Camel peer", ["-cp", classpath, "relais.peer.CamelPeer", mode],
        {**env, "CAMEL_PEER_BOOTSTRAP": BOOTSTRAP, "CAMEL_PEER_COUNT_PORT": CAMEL_COUNT.rsplit(":", 1)[1],
         # Ceph 16's RGW refuses the AWS SDK's default trailing checksums (HTTP 400).
         "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
         "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"},
        CAMEL_COUNT, out, records, log_name, max_seconds)


def run_java_peer(name, java_args, env, count_address, out, records, log_name, max_seconds):
    """Runs a Java peer that serves "records bytes" on GET /count until it has handled `records`
    (or for `max_seconds` of handling); returns the rate, bytes rate and peak RSS."""
    handle = open(out / log_name, "ab")
    process = subprocess.Popen(["java", "-Xmx1g", *java_args], env={**os.environ, **env},
                               stdout=handle, stderr=handle, stdin=subprocess.DEVNULL)
    try:
        first, handled, stored, deadline = None, 0, 0, time.time() + 600
        while time.time() < deadline:
            try:
                handled, stored = (int(x) for x in http_get(f"http://{count_address}/count").split())
            except (OSError, ValueError):
                pass
            now = time.time()
            if handled > 0 and first is None:
                first = (now, handled, stored)
            if handled >= records or (first is not None and now - first[0] >= max_seconds):
                break
            if process.poll() is not None:
                sys.exit(f"{name} exited early; see {out / log_name}")
            time.sleep(0.25)
        else:
            sys.exit(f"{name} did not finish within 600 s; see {out / log_name}")
        elapsed = max(now - first[0], 1e-6)
        return {"records_per_second": round((handled - first[1]) / elapsed, 1),
                "stored_bytes_per_second": round((stored - first[2]) / elapsed, 1),
                "records": handled,
                "peak_rss_bytes": peak_rss_bytes(process.pid)}
    finally:
        stop(process)


def build_parallel_consumer():
    """The Parallel Consumer peer (Maven Central); None, or the reason it cannot be built here."""
    if shutil.which("mvn") is None or shutil.which("java") is None:
        return "Maven and a JDK are needed to build the Parallel Consumer peer"
    log("building the Parallel Consumer peer (Maven)")
    result = subprocess.run([str(PC_DIR / "build.sh")], capture_output=True, text=True)
    if result.returncode != 0:
        return "building the Parallel Consumer peer failed: " + (result.stdout + result.stderr).strip()[-400:]
    return None


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


def follow_until(process, name, admin, counter, target, meter):
    """Polls `counter` on the process's /metrics every 0.25 s until it reaches `target`, the CPU
    meter running from the first counted unit to the last. Returns the (time, value) samples from
    the first counted unit on, the metrics text at the first and at the last sample, and the CPU."""
    samples, first_text, deadline = [], None, time.time() + 600
    while time.time() < deadline:
        try:
            text = http_get(f"http://{admin}/metrics")
        except OSError:
            text = ""
        value = metric(text, counter)
        if value > 0:
            if first_text is None:
                first_text = text
                meter.start()
            samples.append((time.time(), value))
        if value >= target:
            return samples, first_text, text, meter.stop(value - samples[0][1])
        if process.poll() is not None:
            sys.exit(f"{name} exited early; see its log in the output directory")
        time.sleep(0.25)
    sys.exit(f"{name} did not finish within 600 s")


def run_http_post(kind, seconds, concurrency, sim_pid):
    """The worker's HTTP client alone (`loadgen http-post`), bare reqwest or the resilience stack."""
    meter = CpuMeter({"upstream-sim": sim_pid, **infra_pids()}, tools=f"loadgen http-post ({kind})").start()
    output = subprocess.run(
        [str(RELEASE / "loadgen"), "http-post", "--url", f"http://{SIM_API}", "--client", kind,
         "--concurrency", str(concurrency), "--seconds", str(seconds)],
        capture_output=True, text=True, check=True, env={**os.environ, "RUST_LOG": "warn"}).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["cpu"] = meter.stop(result["requests"])
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


def worker_benchmark(args, out, stamp):
    topics = {name: f"bench.{stamp}.{name}" for name in ("ingress", "audit", "events", "dlq")}
    create_topic(topics["ingress"], 12)
    for name in ("audit", "events", "dlq"):
        create_topic(topics[name], 12 if name != "dlq" else 3)

    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN}, out / "upstream-sim.log")
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        log(f"wrk against upstream-sim for {args.wrk_seconds}s")
        wrk_rate, wrk_output, wrk_cpu = run_wrk(args.wrk_seconds, sim.pid)
        (out / "wrk.txt").write_text(wrk_output)
        http_post(f"http://{SIM_ADMIN}/admin/reset")
        log(f"wrk: {wrk_rate:.0f} requests/s")
        clients = {}
        for kind in ("reqwest", "resilience"):
            clients[kind] = run_http_post(kind, args.wrk_seconds, args.worker_in_flight, sim.pid)
            http_post(f"http://{SIM_ADMIN}/admin/reset")
            log(f"loadgen http-post --client {kind}: {clients[kind]['requests_per_second']:.0f} requests/s")

        log(f"producing {args.messages} messages")
        produce_seconds = produce(topics["ingress"], args.messages)

        config = out / "worker.toml"
        config.write_text(
            f'[kafka]\ngroup_id = "bench-{stamp}"\n'
            + "".join(f'{name}_topic = "{topic}"\n' for name, topic in topics.items())
            + f'[upstreams.default]\nurl = "http://{SIM_API}"\nretry_tiers = []\nallowed_networks = ["loopback"]\n'
            + f'[upstreams.default.policy.bulkhead]\nmax_concurrent = {args.worker_in_flight}\n')
        worker = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                         "RELAIS_WORKER_ID": f"bench-{stamp}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                       out / "ingest-worker.log")
        meter = CpuMeter({"ingest-worker": worker.pid, "upstream-sim": sim.pid, **infra_pids()})
        try:
            samples, _, _, worker_cpu = follow_until(worker, "ingest-worker", WORKER_ADMIN,
                                                     "relais_worker_committed_messages_total", args.messages, meter)
            (first_at, first), (last_at, last) = samples[0], samples[-1]
            worker_rate = (last - first) / max(last_at - first_at, 1e-6)
            # Per-second rates over the steady part, for the median.
            steady = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])
                      if b[1] < args.messages and b[0] > a[0]]
            rss = peak_rss_bytes(worker.pid)
        finally:
            stop(worker)
        deliveries = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
        camel = {"skipped": args.camel_unavailable} if args.camel_unavailable else None
        if camel is None:
            http_post(f"http://{SIM_ADMIN}/admin/reset")
            log("Camel peer: Kafka → HTTP on the same topic and upstream-sim")
            camel = run_camel("http", {"CAMEL_PEER_TOPIC": topics["ingress"], "CAMEL_PEER_GROUP": f"camel-http-{stamp}",
                                       "CAMEL_PEER_UPSTREAM": f"http://{SIM_API}/events"},
                              out, args.messages, "camel-http.log")
            camel["upstream_requests"] = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries")).get("requests")
        camel_outcomes = camel if "skipped" in camel else None
        if camel_outcomes is None:
            # The same route writing one outcome record to each of two topics per message, as the
            # worker writes an audit record and a realtime event: the same work, minus the
            # transaction.
            outcome_topics = [f"bench.{stamp}.camel-audit", f"bench.{stamp}.camel-events"]
            for topic in outcome_topics:
                create_topic(topic, 12)
            http_post(f"http://{SIM_ADMIN}/admin/reset")
            log("Camel peer: Kafka → HTTP → two outcome records")
            camel_outcomes = run_camel("http", {
                "CAMEL_PEER_TOPIC": topics["ingress"], "CAMEL_PEER_GROUP": f"camel-http-outcomes-{stamp}",
                "CAMEL_PEER_UPSTREAM": f"http://{SIM_API}/events", "CAMEL_PEER_OUTCOME_TOPICS": ",".join(outcome_topics)},
                out, args.messages, "camel-http-outcomes.log", max_seconds=60)
    finally:
        stop(sim)
    ceiling = consumer_ceiling(topics["ingress"], args.messages)
    # What the target asks, in CPU: wrk and upstream-sim saturate the machine between them, so
    # the worker, the broker and upstream-sim must fit the same cores at 0.7 x wrk's rate.
    # Counting only what the worker cannot do without (upstream-sim answering, the broker
    # serving the fetch and the outcome transaction), at the cost per message measured here:
    parts = worker_cpu["components"]
    others_us = parts["upstream-sim"]["cpu_us_per_unit"] + parts.get("kafka broker", {}).get("cpu_us_per_unit", 0)
    bound = (os.cpu_count() or 1) * 1e6 / others_us if others_us else None
    return {
        "kafka_consumer_ceiling_per_second": ceiling,
        "ratio_worker_to_consumer_ceiling": round(worker_rate / ceiling, 3) if ceiling else None,
        "messages": args.messages,
        "wrk_requests_per_second": round(wrk_rate, 1),
        "worker_messages_per_second": round(worker_rate, 1),
        "worker_median_interval_rate": round(statistics.median(steady), 1) if steady else None,
        "ratio_worker_to_wrk": round(worker_rate / wrk_rate, 3),
        "worker_peak_rss_bytes": rss,
        "produce_seconds": round(produce_seconds, 1),
        "upstream_requests": deliveries.get("requests"),
        "in_flight": args.worker_in_flight,
        "camel": camel,
        "ratio_worker_to_camel": (round(worker_rate / camel["records_per_second"], 2)
                                  if camel.get("records_per_second") else None),
        "camel_with_outcomes": camel_outcomes,
        "ratio_worker_to_camel_with_outcomes": (round(worker_rate / camel_outcomes["records_per_second"], 2)
                                                if camel_outcomes.get("records_per_second") else None),
        "target_ratio": 0.7,
        "wrk_cpu": wrk_cpu,
        "http_client_alone": clients,
        "worker_cpu": worker_cpu,
        "rate_if_worker_cost_nothing": round(bound, 1) if bound else None,
        "ratio_bound_if_worker_cost_nothing": round(bound / wrk_rate, 3) if bound else None,
        "audit_topic": topics["audit"],
    }


def produce_keyed(topic, count, keys, out):
    """`count` valid events over `keys` keys with their per-key sequence in `data`, as fast as
    loadgen writes them; returns the number sent."""
    scenario = out / "slow-upstream-load.toml"
    rate = 40_000
    seconds = max(1, count // rate)
    scenario.write_text(f'name = "slow-upstream"\nkeys = {keys}\nsequence = true\npayload_bytes = [40, 80]\n'
                        f'[mix]\nvalid = 1.0\n[[phase]]\nname = "fill"\nseconds = {seconds}\nrate = {rate}\n')
    output = subprocess.run(
        [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "ingress", "--scenario", str(scenario),
         "--topic", topic, "--admin-addr", "127.0.0.1:19105"],
        capture_output=True, text=True, check=True, env={**os.environ, "RUST_LOG": "warn"}).stdout
    return json.loads(output.strip().splitlines()[-1])["sent"]


def slow_upstream_benchmark(args, out, stamp):
    """An upstream answering in about 100 ms, 10,000 keys, order per key: how many messages a
    worker keeps in flight and delivers, beside the Parallel Consumer (KEY mode) and Camel doing
    Kafka → HTTP against the same upstream-sim with the same concurrency."""
    topics = {name: f"bench.{stamp}.slow-{name}" for name in ("ingress", "audit", "events", "dlq")}
    for name, partitions in (("ingress", 12), ("audit", 12), ("events", 12), ("dlq", 3)):
        create_topic(topics[name], partitions)
    latency = {"latency": {"kind": "log_normal", "median_ms": 100.0, "sigma": 0.25}}
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN},
                out / "slow-upstream-sim.log")
    results = {"concurrency": args.slow_in_flight, "keys": args.slow_keys, "upstream": "log-normal, median 100 ms, sigma 0.25"}
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        log(f"slow upstream: producing {args.slow_messages} messages over {args.slow_keys} keys")
        sent = produce_keyed(topics["ingress"], args.slow_messages, args.slow_keys, out)
        results["messages"] = sent

        def set_latency():
            http_post(f"http://{SIM_ADMIN}/admin/reset")
            http_post(f"http://{SIM_ADMIN}/admin/faults", json.dumps(latency).encode(), method="PUT")

        set_latency()
        config = out / "slow-worker.toml"
        config.write_text(
            f'[kafka]\ngroup_id = "bench-slow-{stamp}"\n'
            + "".join(f'{name}_topic = "{topic}"\n' for name, topic in topics.items())
            + f'[upstreams.default]\nurl = "http://{SIM_API}"\nretry_tiers = []\nallowed_networks = ["loopback"]\n'
            + f'max_in_flight = {args.slow_in_flight}\nordering = "key"\n'
            + (f'[pipeline]\nmax_queued_per_upstream = {args.slow_queued}\n' if args.slow_queued else '')
            + f'[upstreams.default.policy.bulkhead]\nmax_concurrent = {args.slow_in_flight}\n')
        worker = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                         "RELAIS_WORKER_ID": f"bench-slow-{stamp}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                       out / "slow-ingest-worker.log")
        meter = CpuMeter({"ingest-worker": worker.pid, "upstream-sim": sim.pid, **infra_pids()})
        try:
            log("slow upstream: ingest-worker")
            samples, _, last_text, cpu = follow_until(worker, "ingest-worker", WORKER_ADMIN,
                                                      "relais_worker_committed_messages_total", sent, meter)
            (first_at, first), (last_at, last) = samples[0], samples[-1]
            rss = peak_rss_bytes(worker.pid)
        finally:
            stop(worker)
        seen = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
        results["worker"] = {
            "messages_per_second": round((last - first) / max(last_at - first_at, 1e-6), 1),
            "peak_rss_bytes": rss, "peak_in_flight_upstream": seen.get("peak_in_progress"),
            "order_violations": seen.get("order_violations"), "ordered_events": seen.get("ordered_events"),
            "duplicate_deliveries": seen.get("duplicate_deliveries"), "cpu": cpu}

        def peer(name, unavailable, run):
            if unavailable:
                return {"skipped": unavailable}
            set_latency()
            log(f"slow upstream: {name}")
            result = run()
            seen = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
            result.update({"peak_in_flight_upstream": seen.get("peak_in_progress"),
                           "order_violations": seen.get("order_violations"),
                           "ordered_events": seen.get("ordered_events"),
                           "duplicate_deliveries": seen.get("duplicate_deliveries")})
            return result

        results["parallel_consumer"] = peer("Parallel Consumer (KEY)", args.pc_unavailable, lambda: run_java_peer(
            "the Parallel Consumer peer",
            ["-cp", f"{PC_DIR}/target/classes:{PC_DIR}/target/dependency/*", "relais.peer.ParallelConsumerPeer"],
            {"PC_PEER_BOOTSTRAP": BOOTSTRAP, "PC_PEER_TOPIC": topics["ingress"], "PC_PEER_GROUP": f"pc-slow-{stamp}",
             "PC_PEER_UPSTREAM": f"http://{SIM_API}/events", "PC_PEER_CONCURRENCY": str(args.slow_in_flight),
             "PC_PEER_COUNT_PORT": PC_COUNT.rsplit(":", 1)[1]},
            PC_COUNT, out, sent, "slow-parallel-consumer.log", 90))
        results["camel"] = peer("Camel", args.camel_unavailable, lambda: run_camel(
            "http", {"CAMEL_PEER_TOPIC": topics["ingress"], "CAMEL_PEER_GROUP": f"camel-slow-{stamp}",
                     "CAMEL_PEER_UPSTREAM": f"http://{SIM_API}/events"},
            out, sent, "slow-camel.log", max_seconds=60))
    finally:
        stop(sim)
    worker_rate = results["worker"]["messages_per_second"]
    for name in ("parallel_consumer", "camel"):
        rate = results[name].get("records_per_second")
        results[f"ratio_worker_to_{name}"] = round(worker_rate / rate, 2) if rate else None
    return results


def consumer_ceiling(topic, messages):
    """Kafka's own consumer perf tool reading the same topic: the upper bound on ingestion."""
    log(f"kafka consumer perf tool on {topic}")
    output = kafka_tool("org.apache.kafka.tools.ConsumerPerformance", "--bootstrap-server", BOOTSTRAP,
                        "--topic", topic, "--messages", str(messages), "--timeout", "60000",
                        "--group", f"bench-ceiling-{time.time_ns()}")
    lines = [line for line in output.splitlines() if line.strip()]
    header = [h.strip() for h in lines[0].split(",")]
    values = [v.strip() for v in lines[-1].split(",")]
    row = dict(zip(header, values))
    # The fetch rate leaves out the group join, which a long-running consumer pays once.
    return round(float(row.get("fetch.nMsg.sec", row.get("nMsg.sec", 0.0))), 1)


def s3_request(connection, host, method, path, body=b"", query=None, ok=(200, 204)):
    """One SigV4-signed request (unsigned payload, as RGW accepts) on a kept-alive connection.
    `path` is already URI-encoded; returns (status, body)."""
    import hashlib
    import hmac
    from urllib.parse import quote
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                               for k, v in sorted((query or {}).items()))
    headers = f"host:{host}\nx-amz-content-sha256:UNSIGNED-PAYLOAD\nx-amz-date:{amz_date}\n"
    signed = "host;x-amz-content-sha256;x-amz-date"
    request = f"{method}\n{path}\n{canonical_query}\n{headers}\n{signed}\nUNSIGNED-PAYLOAD"
    scope = f"{day}/{S3_REGION}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(request.encode()).hexdigest()}"
    key = ("AWS4" + S3_SECRET).encode()
    for part in (day, S3_REGION, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    connection.request(method, path + (f"?{canonical_query}" if canonical_query else ""), body=body, headers={
        "Host": host, "x-amz-date": amz_date, "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={S3_ACCESS}/{scope}, SignedHeaders={signed}, Signature={signature}"})
    response = connection.getresponse()
    payload = response.read()
    if response.status not in ok:
        raise RuntimeError(f"{method} {path}: HTTP {response.status}")
    return response.status, payload


def remove_buckets(*buckets):
    """Deletes what a benchmark stored: RGW here keeps objects in memory (memstore, a few GiB),
    and repeated runs that leave millions of records behind fill it until PUTs stall."""
    import concurrent.futures
    import http.client
    import xml.etree.ElementTree as ElementTree
    from urllib.parse import quote
    host = S3_ENDPOINT.split("//", 1)[1]
    namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"

    def delete_keys(bucket, keys):
        connection = http.client.HTTPConnection(host, timeout=30)
        for key in keys:
            s3_request(connection, host, "DELETE", f"/{bucket}/{quote(key, safe='/-_.~')}", ok=(200, 204, 404))

    for bucket in buckets:
        connection = http.client.HTTPConnection(host, timeout=30)
        keys, token = [], None
        while True:
            query = {"list-type": "2", **({"continuation-token": token} if token else {})}
            status, listing = s3_request(connection, host, "GET", f"/{bucket}", query=query, ok=(200, 404))
            if status == 404:
                break
            root = ElementTree.fromstring(listing)
            keys += [element.text for element in root.iter(f"{namespace}Key")]
            token = root.findtext(f"{namespace}NextContinuationToken")
            if not token:
                break
        if status == 404:
            continue
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda part: delete_keys(bucket, part), [keys[i::8] for i in range(8)]))
        s3_request(connection, host, "DELETE", f"/{bucket}", ok=(200, 204, 404, 409))
        log(f"removed bucket {bucket} ({len(keys)} objects)")


def raw_put_bandwidth(bucket, size, seconds, concurrency):
    """Objects of `size` random bytes PUT by `concurrency` connections for `seconds` (the caller
    removes the bucket afterwards)."""
    import concurrent.futures
    import http.client
    host = S3_ENDPOINT.split("//", 1)[1]
    body = os.urandom(size)
    stop_at = time.time() + seconds

    def loop(worker):
        connection = http.client.HTTPConnection(host, timeout=30)
        count = 0
        while time.time() < stop_at:
            s3_request(connection, host, "PUT", f"/{bucket}/raw-put/{worker}/{count}", body)
            count += 1
        return count

    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        counts = list(pool.map(loop, range(concurrency)))
    elapsed = time.time() - started
    puts = sum(counts)
    return puts / elapsed, puts * size / elapsed


def store_audit_records(out, name, topic, group, bucket, records):
    """audit-service storing `records` records of `topic`: rates from its first stored object to
    the last, CPU per component, peak RSS."""
    config = out / f"{name}.toml"
    config.write_text(f'[kafka]\ngroup_id = "{group}"\naudit_topic = "{topic}"\n[objects]\nidle = "1s"\n')
    service = start("audit-service", {"RELAIS_AUDIT_CONFIG": str(config), "RELAIS_ADMIN_ADDR": AUDIT_ADMIN,
                                      "RELAIS_S3_BUCKET": bucket, "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                    out / f"{name}.log")
    meter = CpuMeter({"audit-service": service.pid, **infra_pids()})
    try:
        samples, first_text, text, cpu = follow_until(service, "audit-service", AUDIT_ADMIN,
                                                      "relais_audit_records_written_total", records, meter)
        rss = peak_rss_bytes(service.pid)
    finally:
        stop(service)
    elapsed = max(samples[-1][0] - samples[0][0], 1e-6)
    written, objects = samples[-1][1], metric(text, "relais_audit_objects_written_total")
    stored_bytes, ndjson_bytes = (metric(text, "relais_audit_written_bytes_total"),
                                  metric(text, "relais_audit_uncompressed_written_bytes_total"))
    sustained = sustained_rate(samples, records)
    return {
        "records": int(written),
        "objects": int(objects),
        "mean_object_bytes": int(stored_bytes / max(objects, 1)),
        # Between 10 % and 90 % of the records written: the rate a continuous stream keeps,
        # without the start and the idle close of the last objects that end a finite run.
        "sustained_records_per_second": round(sustained, 1),
        "sustained_stored_bytes_per_second": round(sustained * stored_bytes / max(written, 1), 1),
        "sustained_ndjson_bytes_per_second": round(sustained * ndjson_bytes / max(written, 1), 1),
        "stored_bytes_per_record": round(stored_bytes / max(written, 1), 1),
        "ndjson_bytes_per_record": round(ndjson_bytes / max(written, 1), 1),
        "seconds": round(elapsed, 2),
        "records_per_second": round((written - samples[0][1]) / elapsed, 1),
        "stored_bytes_per_second": round((stored_bytes - metric(first_text, "relais_audit_written_bytes_total"))
                                         / elapsed, 1),
        "ndjson_bytes_per_second": round((ndjson_bytes - metric(first_text, "relais_audit_uncompressed_written_bytes_total"))
                                         / elapsed, 1),
        "cpu": cpu,
        "peak_rss_bytes": rss,
    }


def sustained_rate(samples, total):
    """Units per second between the samples where 10 % and 90 % of `total` were reached."""
    def first_at(share):
        return next(sample for sample in samples if sample[1] >= share * total)
    (t0, v0), (t1, v1) = first_at(0.1), first_at(0.9)
    return (v1 - v0) / max(t1 - t0, 1e-6)


def audit_benchmark(args, out, stamp, audit_topic, records):
    bucket = f"bench-{stamp}"
    log(f"audit-service on the worker's {records} audit records")
    worker_run = store_audit_records(out, "audit-service", audit_topic, f"bench-audit-{stamp}", bucket, records)

    # A few seconds of work is mostly start-up and the idle close of the last objects; the
    # throughput against RGW is measured on a larger set of synthetic records of the same shape.
    load_topic = f"bench.{stamp}.audit-load"
    create_topic(load_topic, 12)
    log(f"producing {args.audit_records} synthetic audit records")
    subprocess.run([str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "audit-records", "--topic", load_topic,
                    "--count", str(args.audit_records), "--hours", "1"], capture_output=True, check=True)
    log(f"audit-service on {args.audit_records} synthetic audit records")
    steady = store_audit_records(out, "audit-service-load", load_topic, f"bench-audit-load-{stamp}",
                                 f"{bucket}-load", args.audit_records)
    object_size = steady["mean_object_bytes"]
    log(f"raw PUT of {object_size} byte objects for {args.put_seconds}s")
    put_meter = CpuMeter(infra_pids(), tools="bench script (the PUT client)").start()
    put_rate, put_bandwidth = raw_put_bandwidth(bucket, object_size, args.put_seconds, 12)
    put_cpu = put_meter.stop(put_bandwidth * args.put_seconds / 2**20)
    ceiling = consumer_ceiling(load_topic, args.audit_records)
    # The stored-bytes target in records: compression leaves a few dozen bytes of each record,
    # so the target bandwidth needs this many records per second, against what Kafka's own
    # consumer reads from the same topic on this machine.
    records_for_target = 0.8 * put_bandwidth / steady["stored_bytes_per_record"]

    camel = {"skipped": args.camel_unavailable} if args.camel_unavailable else None
    if camel is None:
        log("Camel peer: Kafka → S3 on the same topic and RGW")
        camel = run_camel("s3", {"CAMEL_PEER_TOPIC": audit_topic, "CAMEL_PEER_GROUP": f"camel-s3-{stamp}",
                                 "CAMEL_PEER_BUCKET": f"{bucket}-camel", "CAMEL_PEER_S3_ENDPOINT": S3_ENDPOINT,
                                 "CAMEL_PEER_S3_REGION": S3_REGION, "CAMEL_PEER_S3_ACCESS_KEY": S3_ACCESS,
                                 "CAMEL_PEER_S3_SECRET_KEY": S3_SECRET,
                                 "CAMEL_PEER_BATCH": str(max(worker_run["records"] // max(worker_run["objects"], 1), 1))},
                          out, records, "camel-s3.log")
    remove_buckets(bucket, f"{bucket}-load", f"{bucket}-camel")
    return {
        "worker_records": worker_run,
        "steady": steady,
        "camel": camel,
        "ratio_audit_to_camel": (round(worker_run["records_per_second"] / camel["records_per_second"], 2)
                                 if camel.get("records_per_second") else None),
        # The headline figures, from the larger run.
        "records": steady["records"],
        "objects": steady["objects"],
        "mean_object_bytes": object_size,
        "audit_records_per_second": steady["records_per_second"],
        "audit_bytes_per_second": steady["stored_bytes_per_second"],
        "audit_ndjson_bytes_per_second": steady["ndjson_bytes_per_second"],
        "raw_put_per_second": round(put_rate, 1),
        "raw_put_bytes_per_second": round(put_bandwidth, 1),
        "raw_put_cpu_per_mib": put_cpu,
        "ratio_audit_to_raw_put_bandwidth": round(steady["stored_bytes_per_second"] / put_bandwidth, 3),
        "ratio_audit_ndjson_to_raw_put_bandwidth": round(steady["ndjson_bytes_per_second"] / put_bandwidth, 3),
        "ratio_sustained_audit_to_raw_put_bandwidth": round(steady["sustained_stored_bytes_per_second"]
                                                            / put_bandwidth, 3),
        "ratio_sustained_audit_ndjson_to_raw_put_bandwidth": round(steady["sustained_ndjson_bytes_per_second"]
                                                                   / put_bandwidth, 3),
        "records_per_second_for_target": round(records_for_target, 1),
        "kafka_consumer_ceiling_per_second": ceiling,
        "audit_peak_rss_bytes": max(steady["peak_rss_bytes"], worker_run["peak_rss_bytes"]),
        "target_ratio": 0.8,
    }


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


def lookup_benchmark(args, out, stamp):
    topic = f"bench.{stamp}.lookup"
    create_topic(topic, 12)
    log(f"producing {args.lookup_records} synthetic audit records")
    produced = json.loads(subprocess.run(
        [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "audit-records", "--topic", topic,
         "--count", str(args.lookup_records), "--hours", "4"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    config = out / "lookup.toml"
    config.write_text(f'[kafka]\ngroup_id = "bench-lookup-{stamp}"\naudit_topic = "{topic}"\n[objects]\nidle = "1s"\n')
    grpc = "127.0.0.1:50151"
    service = start("audit-service", {"RELAIS_AUDIT_CONFIG": str(config), "RELAIS_ADMIN_ADDR": AUDIT_ADMIN,
                                      "RELAIS_GRPC_ADDR": grpc, "RELAIS_S3_BUCKET": f"bench-lookup-{stamp}",
                                      "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}, out / "audit-lookup.log")
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            try:
                written = metric(http_get(f"http://{AUDIT_ADMIN}/metrics"), "relais_audit_records_written_total")
            except OSError:
                written = 0
            if written >= args.lookup_records:
                break
            if service.poll() is not None:
                sys.exit(f"audit-service exited early; see {out / 'audit-lookup.log'}")
            time.sleep(0.5)
        else:
            sys.exit("the lookup data set was not stored within 900 s")

        def lookup(flag, value):
            latencies = []
            for _ in range(5):
                lines = subprocess.run([str(RELEASE / "audit-service"), "trail", "--url", f"http://{grpc}", flag, value],
                                       capture_output=True, text=True, check=True,
                                       env={**os.environ, "RUST_LOG": "warn"}).stdout.strip().splitlines()
                summary = json.loads(lines[-1])
                if summary["records"] < 1:
                    sys.exit(f"lookup {flag} {value} found nothing")
                latencies.append(summary["latency_ms"])
            return statistics.median(latencies), summary["objects_scanned"]

        by_trace, scanned = lookup("--trace-id", produced["sample_trace_id"])
        by_message, _ = lookup("--message-id", produced["sample_message_id"])

        # The same lookups while the service stores as many records again at full rate: lookups
        # run in the process that ingests, so this is what an operator sees during a backlog.
        def written_now():
            return metric(http_get(f"http://{AUDIT_ADMIN}/metrics"), "relais_audit_records_written_total")

        log(f"the same lookups while {args.lookup_records} more records are stored")
        loader = subprocess.Popen(
            [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "audit-records", "--topic", topic,
             "--count", str(args.lookup_records), "--hours", "4"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 300
            while written_now() < args.lookup_records + 20_000:
                if time.time() > deadline:
                    sys.exit("the second batch did not start being stored within 300 s")
                time.sleep(0.2)
            busy_from, written_from = time.time(), written_now()
            busy_trace, _ = lookup("--trace-id", produced["sample_trace_id"])
            busy_message, _ = lookup("--message-id", produced["sample_message_id"])
            busy_seconds, written_during = time.time() - busy_from, written_now() - written_from
        finally:
            loader.wait(timeout=600)
    finally:
        stop(service)
    remove_buckets(f"bench-lookup-{stamp}")
    return {"records": args.lookup_records, "trace_lookup_median_ms": round(by_trace, 1),
            "message_lookup_median_ms": round(by_message, 1), "objects_read_per_lookup": scanned,
            "busy_trace_lookup_median_ms": round(busy_trace, 1),
            "busy_message_lookup_median_ms": round(busy_message, 1),
            "ingest_records_per_s_during_lookups": round(written_during / busy_seconds),
            "target_ms": 500}


GATEWAY_HTTP, GATEWAY_GRPC, GATEWAY_ADMIN = "127.0.0.1:18080", "127.0.0.1:50152", "127.0.0.1:19103"


CENTRIFUGO_HTTP = "127.0.0.1:18000"


def build_centrifugo():
    """Centrifugo from the Go module proxy: (binary, None) or (None, why not)."""
    if shutil.which("go") is None:
        return None, "Go is needed to build Centrifugo"
    log("building Centrifugo (Go module proxy; a few minutes the first time)")
    result = subprocess.run([str(ROOT / "loadtest" / "peers" / "centrifugo" / "build.sh")],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return None, "building Centrifugo failed: " + result.stderr.strip()[-400:]
    return result.stdout.strip().splitlines()[-1], None


def fanout_runs(args, topic, target, address, env):
    runs = []
    for rate in args.fanout_rates:
        log(f"fan-out ({target}): {args.fanout_clients} clients, {rate} events/s for {args.fanout_seconds} s")
        result = subprocess.run(
            [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "ws-fanout", "--target", target,
             "--gateway", address, "--topic", topic, "--clients", str(args.fanout_clients), "--rate", str(rate),
             "--seconds", str(args.fanout_seconds)],
            capture_output=True, text=True, check=True, env={**os.environ, **env})
        run = json.loads(result.stdout.strip().splitlines()[-1])
        run["rate"] = rate
        runs.append(run)
    return runs


def centrifugo_fanout(args, out, stamp):
    """The same clients and rates against Centrifugo consuming its own topic from the same broker."""
    binary, why_not = build_centrifugo()
    if binary is None:
        return {"skipped": why_not}
    topic = f"bench.{stamp}.centrifugo"
    create_topic(topic, 6)
    host, port = CENTRIFUGO_HTTP.rsplit(":", 1)
    config = out / "centrifugo.json"
    config.write_text(json.dumps({
        "http_server": {"address": host, "port": int(port)},
        # Anonymous clients may subscribe: the gateway's token check has no counterpart here.
        "client": {"insecure": True, "allowed_origins": ["*"]},
        "health": {"enabled": True},
        "consumers": [{"name": "relais_events", "enabled": True, "type": "kafka", "kafka": {
            "brokers": [BOOTSTRAP], "topics": [topic], "consumer_group": f"centrifugo-{stamp}",
            "publication_data_mode": {"enabled": True, "channels_header": "centrifugo-channels"}}}],
    }, indent=2))
    handle = open(out / "centrifugo.log", "ab")
    process = subprocess.Popen([binary, "--config", str(config)], stdout=handle, stderr=handle,
                               stdin=subprocess.DEVNULL)
    try:
        wait_http(f"http://{CENTRIFUGO_HTTP}/health")
        runs = fanout_runs(args, topic, "centrifugo", CENTRIFUGO_HTTP, {})
        peak = peak_rss_bytes(process.pid)
    finally:
        stop(process)
    return {"runs": runs, "peak_rss_bytes": peak, "version": "v6.9.1"}


def fanout_benchmark(args, out, stamp):
    topic = f"bench.{stamp}.fanout"
    create_topic(topic, 6)
    token = f"bench-viewer-{stamp}"
    config = out / "gateway.toml"
    # One token opens all the connections: its rate limit must allow the burst.
    config.write_text(f'[kafka]\nevents_topic = "{topic}"\n[http]\nrate_limit_per_second = 5000.0\n'
                      f'rate_limit_burst = 5000.0\n')
    gateway = start("realtime-gateway", {"RELAIS_GATEWAY_CONFIG": str(config), "RELAIS_HTTP_ADDR": GATEWAY_HTTP,
                                         "RELAIS_GRPC_ADDR": GATEWAY_GRPC, "RELAIS_ADMIN_ADDR": GATEWAY_ADMIN,
                                         "RELAIS_TOKENS": f"viewer:bench:{token}",
                                         "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP}, out / "gateway.log")
    try:
        wait_http(f"http://{GATEWAY_HTTP}/readyz")
        runs = fanout_runs(args, topic, "relais", GATEWAY_HTTP, {"RELAIS_TOKEN": token})
        peak = peak_rss_bytes(gateway.pid)
    finally:
        stop(gateway)
    centrifugo = {"skipped": "skipped (--no-peers)"} if args.no_peers else centrifugo_fanout(args, out, stamp)
    return {"clients": args.fanout_clients, "seconds": args.fanout_seconds, "runs": runs,
            "gateway_peak_rss_bytes": peak, "centrifugo": centrifugo}


def fanout_rows(runs):
    return "\n".join(
        f"| {run['rate']} | {run['connected']} | {run['frames_per_second']:.0f} | {run['delivered_ratio']:.4f} | "
        f"{run['latency_p50_ms']:.1f} | {run['latency_p99_ms']:.1f} | {run['disconnected_by_gateway']} |"
        for run in runs)


def fanout_section(fanout):
    header = ("| events/s produced | clients | frames delivered/s | delivered / expected | p50 ms | p99 ms | "
              "dropped clients |\n| --- | --- | --- | --- | --- | --- | --- |")
    centrifugo = fanout.get("centrifugo") or {}
    if "runs" in centrifugo:
        peer = f"""### Centrifugo {centrifugo['version']}, same clients, rates and broker

{header}
{fanout_rows(centrifugo['runs'])}

Centrifugo peak RSS: {mib(centrifugo['peak_rss_bytes'])}. Its Kafka consumer runs in
publication-data mode: each record's JSON payload is published as it is to the channel its
header names, and the clients connect anonymously. The gateway decodes each protobuf event,
checks its trace id, indexes it for the REST API and the trace view, updates the live
aggregates, and authenticates every client with a token.
"""
    else:
        peer = f"Centrifugo: not measured: {centrifugo.get('skipped', 'not run')}.\n"
    return f"""## realtime-gateway fan-out to {fanout['clients']} WebSocket clients, beside Centrifugo

Events produced to the gateway's topic at a fixed rate for {fanout['seconds']} s; every client
receives every event. Latency is from production (the event's `decided_at`) to receipt by the
client, through Kafka and the gateway (quantiles within 9 % histogram buckets).

{header}
{fanout_rows(fanout['runs'])}

Gateway peak RSS: {mib(fanout['gateway_peak_rss_bytes'])}.

{peer}"""


def outage_section(outage):
    peaks = " · ".join(f"{name} {mib(value)}" for name, value in outage["peak_rss_bytes"].items())
    return f"""## Peak memory through a {outage['outage_seconds']}-second upstream outage

{outage['rate']} messages/s through ingest-worker, audit-service and realtime-gateway (default
configuration) while upstream-sim refuses every connection for {outage['outage_seconds']} s, with
20 s of healthy traffic before and 40 s after. The worker's circuit opens and its partitions
pause; the backlog waits in Kafka, not in memory.

| measure | value |
| --- | --- |
| messages sent | {outage['sent']} |
| outcomes committed by the worker at the end | {outage['committed']} |
| every outcome committed, seconds after the load ended | {outage['seconds_from_load_end_to_drained']} |
| peak RSS | {peaks} |

RSS every 5 s: `outage-rss.svg`.
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300_000)
    # 256 in flight left the two cores a quarter idle (the worker waited on round trips); 512 keep
    # them busy, at about 15 MiB more RSS.
    parser.add_argument("--worker-in-flight", type=int, default=512,
                        help="the worker's deliveries in flight (its upstream's bulkhead limit) in the benchmark")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer systems")
    parser.add_argument("--wrk-seconds", type=int, default=15)
    parser.add_argument("--put-seconds", type=int, default=10)
    parser.add_argument("--audit-records", type=int, default=2_000_000,
                        help="synthetic audit records for the audit throughput run")
    parser.add_argument("--lookup-records", type=int, default=1_000_000)
    parser.add_argument("--fanout-clients", type=int, default=1000)
    parser.add_argument("--fanout-rates", type=lambda text: [int(x) for x in text.split(",")], default=[100, 500])
    parser.add_argument("--fanout-seconds", type=int, default=20)
    parser.add_argument("--outage-seconds", type=int, default=300)
    parser.add_argument("--outage-rate", type=int, default=300, help="messages per second during the outage run")
    parser.add_argument("--slow-messages", type=int, default=200_000,
                        help="messages of the slow-upstream run")
    parser.add_argument("--slow-keys", type=int, default=10_000)
    parser.add_argument("--slow-queued", type=int, default=None,
                        help="the worker's pipeline.max_queued_per_upstream in the slow-upstream run (default: its own)")
    parser.add_argument("--slow-in-flight", type=int, default=1000,
                        help="deliveries in flight in the slow-upstream run (worker and peers alike)")
    parser.add_argument("--only", type=lambda text: set(text.split(",")),
                        default={"worker", "slow", "audit", "lookup", "fanout", "outage"})
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    raise_open_files_limit()
    for binary in ("upstream-sim", "ingest-worker", "audit-service", "realtime-gateway", "loadgen"):
        if not (RELEASE / binary).exists():
            sys.exit(f"{RELEASE / binary} missing: run `make release` first")

    args.camel_unavailable = "skipped (--no-peers)" if args.no_peers else None
    if not args.no_peers and args.only & {"worker", "slow", "audit"}:
        args.camel_unavailable = build_camel()
    args.pc_unavailable = "skipped (--no-peers)" if args.no_peers else None
    if not args.no_peers and "slow" in args.only:
        args.pc_unavailable = build_parallel_consumer()
    stamp = time.strftime("%Y%m%d%H%M%S")
    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count()}}
    if "audit" in args.only:
        args.only.add("worker")  # the audit benchmark stores the worker benchmark's records
    benchmarks = [
        ("worker", lambda: worker_benchmark(args, args.out, stamp)),
        ("slow", lambda: slow_upstream_benchmark(args, args.out, stamp)),
        ("audit", lambda: audit_benchmark(args, args.out, stamp, results["worker"]["audit_topic"], args.messages)),
        ("lookup", lambda: lookup_benchmark(args, args.out, stamp)),
        ("fanout", lambda: fanout_benchmark(args, args.out, stamp)),
        ("outage", lambda: outage_benchmark(args, args.out, stamp)),
    ]
    for name, benchmark in benchmarks:
        if name in args.only:
            results[name] = benchmark()
            # Kept as it goes: a failure later does not lose what was measured.
            (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    sections = [f"""# Relais benchmarks

Measured {results['date']} on {results['machine']['cpus']} CPUs, everything on one machine in one run
(Kafka, upstream-sim, the load tool and the services share the cores: compare ratios, not absolutes).
The peers (Apache Camel 4.18, Centrifugo v6.9.1), why they were chosen and what each does not do:
`loadtest/peers/README.md`.
"""]
    if "worker" in results:
        sections.append(worker_section(results["worker"]))
    if "slow" in results:
        sections.append(slow_section(results["slow"]))
    if "audit" in results:
        sections.append(audit_section(results["audit"]))
    if "lookup" in results:
        sections.append(lookup_section(results["lookup"]))
    if "fanout" in results:
        sections.append(fanout_section(results["fanout"]))
    if "outage" in results:
        sections.append(outage_section(results["outage"]))
    sections.append(charts.write_all(results, args.out))
    report = "\n".join(sections) + "\nRaw data: `report.json` and the logs beside it.\n"
    (args.out / "report.md").write_text(report)
    print(report)


def mib(value):
    return f"{value / 2**20:.1f} MiB"


def peer_rows(peer, name, unit):
    if not peer or "skipped" in peer:
        return f"| {name} | not measured: {(peer or {}).get('skipped', 'not run')} |\n"
    return (f"| {name} | {peer['records_per_second']:.0f} {unit} |\n"
            f"| {name} peak RSS | {mib(peer['peak_rss_bytes'])} |\n")


def client_rows(worker):
    """The worker's HTTP client alone, beside wrk: where the gap to wrk comes from."""
    rows = ""
    names = {"reqwest": "bare reqwest client (the library under the worker's stack)",
             "resilience": "the worker's resilience stack (deadline, bulkhead, breaker, retry, timeout, probe)"}
    for kind, run in (worker.get("http_client_alone") or {}).items():
        parts = run["cpu"]["components"]
        own = next((part for name, part in parts.items() if name.startswith("loadgen")), {})
        rows += (f"| {names.get(kind, kind)} alone, {run['concurrency']} callers, no Kafka | "
                 f"{run['requests_per_second']:.0f} requests/s, {own.get('cpu_us_per_unit', 0):.1f} CPU µs per request "
                 f"(ratio to wrk {run['requests_per_second'] / worker['wrk_requests_per_second']:.2f}) |\n")
    return rows


def worker_section(worker):
    camel = worker.get("camel")
    return f"""## ingest-worker against the raw HTTP rate of upstream-sim and against Apache Camel

| measure | value |
| --- | --- |
| wrk, 2 threads, 64 connections, POST of the same body | {worker['wrk_requests_per_second']:.0f} requests/s |
| ingest-worker ({worker['in_flight']} in flight), Kafka → HTTP → outcome transaction, {worker['messages']} messages | {worker['worker_messages_per_second']:.0f} messages/s |
| median of per-interval rates | {worker['worker_median_interval_rate']} messages/s |
| **ratio worker / wrk** | **{worker['ratio_worker_to_wrk']:.2f}** (target ≥ {worker['target_ratio']}) |
{client_rows(worker)}{peer_rows(camel, "Apache Camel 4.18 route, Kafka → HTTP with resilience4j breaker and redelivery", "messages/s")}| **ratio worker / Camel** | **{worker.get('ratio_worker_to_camel')}** |
{peer_rows(worker.get("camel_with_outcomes"), "the same Camel route also writing two outcome records per message (audit, event)", "messages/s")}| **ratio worker / Camel with outcome records** | **{worker.get('ratio_worker_to_camel_with_outcomes')}** |
| Kafka's consumer perf tool on the same topic (upper bound on ingestion) | {worker['kafka_consumer_ceiling_per_second']:.0f} messages/s |
| ratio worker / consumer ceiling | {worker['ratio_worker_to_consumer_ceiling']} |
| worker peak RSS | {mib(worker['worker_peak_rss_bytes'])} |

Each worker message costs one HTTP request plus its share of the Kafka fetch and of a transaction
writing two records (audit and realtime event) with the consumed offsets. The Camel route does
less per message: it POSTs and lets the Kafka client auto-commit (at-least-once, no outcome
records, no dead-letter topic), with one consumer thread per partition (Camel's way to run
partitions in parallel). The second Camel row adds the two outcome records per message, sent
without a transaction: the same work as the worker minus exactly-once. wrk only sends requests.

Where the CPU went (everything shares {os.cpu_count()} cores), during wrk's run:

{cpu_rows(worker.get("wrk_cpu"), "request")}
and during the worker's run (from its first committed message to its last):

{cpu_rows(worker.get("worker_cpu"), "message")}
At these costs per message, upstream-sim and the broker alone would fill the machine at
{worker.get('rate_if_worker_cost_nothing') or 0:.0f} messages/s even if the worker cost nothing: a ratio of at most
**{worker.get('ratio_bound_if_worker_cost_nothing')}** to wrk on this machine.
"""


def slow_section(slow):
    def row(name, run, rate_key):
        if not run or "skipped" in run:
            return f"| {name} | not measured: {(run or {}).get('skipped', 'not run')} | | | | |\n"
        return (f"| {name} | {run[rate_key]:.0f} | {run.get('peak_in_flight_upstream')} | "
                f"{mib(run['peak_rss_bytes'])} | {run.get('order_violations')} of {run.get('ordered_events')} | "
                f"{run.get('duplicate_deliveries')} |\n")
    worker = slow["worker"]
    cpu = worker["cpu"]["components"].get("ingest-worker", {}).get("cpu_us_per_unit")
    return f"""## A slow upstream: in flight and in order

upstream-sim answers in {slow['upstream']}; {slow['messages']} messages over {slow['keys']} keys, order kept
per key; {slow['concurrency']} deliveries in flight at most for each system. By Little's law 8,000
messages/s need about 800 in flight. In-flight, order violations and duplicates are upstream-sim's
own counts.

| system | messages/s | peak in flight at the upstream | peak RSS | order violations | duplicates |
| --- | --- | --- | --- | --- | --- |
{row("ingest-worker (ordering key, adaptive concurrency, exactly-once outcomes)", worker, "messages_per_second")}{row("Confluent Parallel Consumer 0.5.3.3, KEY order, async commits (at-least-once, no outcome records)", slow.get("parallel_consumer"), "records_per_second")}{row("Apache Camel 4.18 route (one consumer thread per partition, auto-commit)", slow.get("camel"), "records_per_second")}
Ratios of messages/s: worker / Parallel Consumer **{slow.get('ratio_worker_to_parallel_consumer')}**, worker / Camel
**{slow.get('ratio_worker_to_camel')}**. Worker CPU: {cpu} µs per message. Targets: at least 8,000 messages/s per
worker, RSS under 250 MiB, no order violation.
"""


def audit_section(audit):
    camel = audit.get("camel") or {}
    camel_stored = (f"{camel['stored_bytes_per_second'] / 2**20:.2f} MiB/s stored"
                    if "stored_bytes_per_second" in camel else "")
    worker_run, steady = audit["worker_records"], audit["steady"]

    def run_row(run, what):
        return (f"| audit-service, {what}: {run['records']} records into {run['objects']} objects in {run['seconds']} s | "
                f"{run['records_per_second']:.0f} records/s, {run['stored_bytes_per_second'] / 2**20:.2f} MiB/s stored (gzip), "
                f"{run['ndjson_bytes_per_second'] / 2**20:.2f} MiB/s of NDJSON ({run['ndjson_bytes_per_record']:.0f} bytes "
                f"per record, {run['stored_bytes_per_record']:.0f} stored) |\n")
    return f"""## audit-service against the raw PUT bandwidth of RGW and against Apache Camel

| measure | value |
| --- | --- |
{run_row(steady, "synthetic audit records (loadgen), the throughput run")}| raw PUT, 12 connections, objects of {audit['mean_object_bytes']} bytes (the run above) | {audit['raw_put_per_second']:.1f} PUT/s, {audit['raw_put_bytes_per_second'] / 2**20:.2f} MiB/s |
| same run, sustained (from 10 % to 90 % of the records written) | {steady['sustained_records_per_second']:.0f} records/s, {steady['sustained_stored_bytes_per_second'] / 2**20:.2f} MiB/s stored, {steady['sustained_ndjson_bytes_per_second'] / 2**20:.2f} MiB/s of NDJSON |
| **ratio audit / raw PUT bandwidth, bytes stored**: whole run; sustained | **{audit['ratio_audit_to_raw_put_bandwidth']}**; **{audit['ratio_sustained_audit_to_raw_put_bandwidth']}** (target ≥ {audit['target_ratio']}) |
| **ratio audit / raw PUT bandwidth, NDJSON bytes before compression**: whole run; sustained | **{audit['ratio_audit_ndjson_to_raw_put_bandwidth']}**; **{audit['ratio_sustained_audit_ndjson_to_raw_put_bandwidth']}** |
{run_row(worker_run, "the worker benchmark's audit records")}{peer_rows(camel, "Apache Camel 4.18 route, Kafka → batches → gzip → aws2-s3 PUT, the worker's records", "records/s " + camel_stored)}| **ratio audit / Camel, records per second (worker's records)** | **{audit.get('ratio_audit_to_camel')}** |
| audit-service peak RSS | {mib(audit['audit_peak_rss_bytes'])} |

The audit figure includes consuming (read_committed), decoding each protobuf record, writing it
as a documented JSON line, compressing (gzip level 3), the lookup index beside each object and
committing offsets only after the PUT; the raw PUT only sends bytes already in memory. The Camel
route stores the Kafka values as they are (one per line, gzip level 3, objects of the same record
count) with auto-committed offsets: less work per record and no exactly-once guarantee. The
worker's records are few: their run is mostly start-up and the idle close of the last objects,
hence the larger synthetic run for the throughput. The whole-run rate counts from the first
stored object to the last, so it includes the idle close (1 s here) that ends a finite input;
the sustained rate is what a continuous stream keeps.

Compressed, a record takes {steady['stored_bytes_per_record']} bytes in RGW, so the stored-bytes target
(0.8 × raw PUT) means **{audit['records_per_second_for_target']:.0f} records/s**, while Kafka's own consumer
perf tool reads {audit['kafka_consumer_ceiling_per_second']:.0f} records/s from the same topic on this
machine: in stored bytes the target is beyond anything that has to consume the topic here.

Where the CPU went while audit-service stored the synthetic records:

{cpu_rows(steady.get("cpu"), "record")}
and during the raw PUT:

{cpu_rows(audit.get("raw_put_cpu_per_mib"), "MiB stored")}"""


def lookup_section(lookup):
    return f"""## Trail lookups at {lookup['records']} stored records

| lookup (gRPC, median of 5) | latency |
| --- | --- |
| by trace id | {lookup['trace_lookup_median_ms']} ms ({lookup['objects_read_per_lookup']} objects read) |
| by message id | {lookup['message_lookup_median_ms']} ms |
| by trace id, while storing at {lookup['ingest_records_per_s_during_lookups']} records/s | {lookup['busy_trace_lookup_median_ms']} ms |
| by message id, while storing | {lookup['busy_message_lookup_median_ms']} ms |
| target | < {lookup['target_ms']} ms |
"""


if __name__ == "__main__":
    main()
