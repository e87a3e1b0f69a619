#!/usr/bin/env python3
"""Benchmarks of Relais, measured in one run on this machine, reported as ratios.

Worker benchmark: messages per second end to end (Kafka -> ingest-worker -> upstream-sim ->
outcome transaction) beside the request rate an HTTP load tool (wrk) reaches against the same
upstream-sim in the same run. The ratio is the figure; absolute numbers depend on the machine.
Also the worker's peak RSS.

Usage: run.py [--messages N] [--wrk-seconds S] [--out DIR]
Needs the native infrastructure (`make infra-up`) and release binaries (`make release`).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("RELAIS_STATE_DIR", ROOT / ".state"))
BOOTSTRAP = os.environ.get("RELAIS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
RELEASE = ROOT / "target" / "release"
SIM_API, SIM_ADMIN, WORKER_ADMIN = "127.0.0.1:18090", "127.0.0.1:19104", "127.0.0.1:19101"


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


def peak_rss_bytes(pid):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def start(binary, env, log_path):
    handle = open(log_path, "ab")
    return subprocess.Popen([str(RELEASE / binary)], env={**os.environ, **env, "RUST_LOG": "warn"},
                            stdout=handle, stderr=handle, stdin=subprocess.DEVNULL)


def stop(process):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def run_wrk(seconds):
    if shutil.which("wrk") is None:
        log("installing wrk (Debian package)")
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "wrk"],
                       check=True, capture_output=True)
    output = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{seconds}s", "-s", str(Path(__file__).with_name("post.lua")),
         f"http://{SIM_API}/events"], capture_output=True, text=True, check=True).stdout
    rate = next(float(line.split()[1]) for line in output.splitlines() if line.startswith("Requests/sec"))
    return rate, output


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


def worker_benchmark(args, out):
    stamp = time.strftime("%Y%m%d%H%M%S")
    topics = {name: f"bench.{stamp}.{name}" for name in ("ingress", "audit", "events", "dlq")}
    create_topic(topics["ingress"], 12)
    for name in ("audit", "events", "dlq"):
        create_topic(topics[name], 12 if name != "dlq" else 3)

    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN}, out / "upstream-sim.log")
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        log(f"wrk against upstream-sim for {args.wrk_seconds}s")
        wrk_rate, wrk_output = run_wrk(args.wrk_seconds)
        (out / "wrk.txt").write_text(wrk_output)
        http_post(f"http://{SIM_ADMIN}/admin/reset")
        log(f"wrk: {wrk_rate:.0f} requests/s")

        log(f"producing {args.messages} messages")
        produce_seconds = produce(topics["ingress"], args.messages)

        config = out / "worker.toml"
        config.write_text(
            f'[kafka]\ngroup_id = "bench-{stamp}"\n'
            + "".join(f'{name}_topic = "{topic}"\n' for name, topic in topics.items())
            + f'[upstreams.default]\nurl = "http://{SIM_API}"\n')
        worker = start("ingest-worker", {"RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
                                         "RELAIS_WORKER_ID": f"bench-{stamp}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP},
                       out / "ingest-worker.log")
        try:
            samples, first, deadline = [], None, time.time() + 600
            while time.time() < deadline:
                try:
                    committed = metric(http_get(f"http://{WORKER_ADMIN}/metrics"), "relais_worker_committed_messages_total")
                except OSError:
                    committed = 0.0
                now = time.time()
                samples.append((now, committed))
                if committed > 0 and first is None:
                    first = (now, committed)
                if committed >= args.messages:
                    break
                if worker.poll() is not None:
                    sys.exit(f"ingest-worker exited early; see {out / 'ingest-worker.log'}")
                time.sleep(0.25)
            else:
                sys.exit("the worker did not finish within 600 s")
            last = samples[-1]
            worker_rate = (last[1] - first[1]) / max(last[0] - first[0], 1e-6)
            # Per-second rates over the steady part, for the median.
            steady = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])
                      if a[1] > 0 and b[1] < args.messages and b[0] > a[0]]
            rss = peak_rss_bytes(worker.pid)
        finally:
            stop(worker)
        deliveries = json.loads(http_get(f"http://{SIM_ADMIN}/admin/deliveries"))
    finally:
        stop(sim)
    return {
        "messages": args.messages,
        "wrk_requests_per_second": round(wrk_rate, 1),
        "worker_messages_per_second": round(worker_rate, 1),
        "worker_median_interval_rate": round(statistics.median(steady), 1) if steady else None,
        "ratio_worker_to_wrk": round(worker_rate / wrk_rate, 3),
        "worker_peak_rss_bytes": rss,
        "produce_seconds": round(produce_seconds, 1),
        "upstream_requests": deliveries.get("requests"),
        "target_ratio": 0.7,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--wrk-seconds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for binary in ("upstream-sim", "ingest-worker"):
        if not (RELEASE / binary).exists():
            sys.exit(f"{RELEASE / binary} missing: run `make release` first")

    results = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count()}, "worker": worker_benchmark(args, args.out)}
    (args.out / "report.json").write_text(json.dumps(results, indent=2) + "\n")
    worker = results["worker"]
    report = f"""# Relais benchmarks

Measured {results['date']} on {results['machine']['cpus']} CPUs, everything on one machine in one run
(Kafka, upstream-sim, the load tool and the worker share the cores: compare ratios, not absolutes).

## ingest-worker against the raw HTTP rate of upstream-sim

| measure | value |
| --- | --- |
| wrk, 2 threads, 64 connections, POST of the same body | {worker['wrk_requests_per_second']:.0f} requests/s |
| ingest-worker, Kafka → HTTP → outcome transaction, {worker['messages']} messages | {worker['worker_messages_per_second']:.0f} messages/s |
| median of per-interval rates | {worker['worker_median_interval_rate']} messages/s |
| **ratio worker / wrk** | **{worker['ratio_worker_to_wrk']:.2f}** (target ≥ {worker['target_ratio']}) |
| worker peak RSS | {worker['worker_peak_rss_bytes'] / 2**20:.1f} MiB |

Each worker message costs one HTTP request plus its share of the Kafka fetch and of a transaction
writing two records (audit and realtime event). Raw data: `report.json`, `wrk.txt`, the logs.
"""
    (args.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
