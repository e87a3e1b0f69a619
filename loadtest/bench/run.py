#!/usr/bin/env python3
"""Benchmarks of Relais, measured in one run on this machine, reported as ratios.

Worker benchmark: messages per second end to end (Kafka -> ingest-worker -> upstream-sim ->
outcome transaction) beside the request rate an HTTP load tool (wrk) reaches against the same
upstream-sim in the same run. The ratio is the figure; absolute numbers depend on the machine.
Also the worker's peak RSS.

Audit benchmark: audit-service storing two million synthetic audit records (loadgen)
(records/s, MB/s into RGW) beside the raw PUT bandwidth of the same RGW for objects of the
same size, in the same run, and beside Apache Camel storing the same records; the same for the
audit records the worker benchmark produced; CPU per component and the service's peak RSS.

Lookup benchmark: a million synthetic audit records (loadgen) stored by audit-service, then
trail lookups by trace id and by message id through its gRPC API; median latency, idle and
while the service stores a second batch as fast as it can.

Fan-out benchmark: 1,000 WebSocket clients on realtime-gateway while events are produced to its
topic at a fixed rate (loadgen ws-fanout): frames delivered per second, p99 latency from
produce to receipt, and the gateway's peak RSS; then 5,000 clients at the lowest rate, for
the memory each connection costs (`--fanout-scale-clients`).

Isolation benchmark: a healthy upstream's delivery rate alone and with a second upstream,
which a third of the ingress is routed to, refusing connections.

Every comparison with a peer runs in alternating rounds (Relais, peer, Relais, peer, ...; three
by default) and reports each side's median and spread and whether the spreads overlap.

Instructions benchmark: instructions per message of the worker and of the bare worker,
counted under valgrind's callgrind rather than timed, and where the worker's go.

Usage: run.py [--only worker,slow,isolation,audit,lookup,fanout,outage,instructions] [--rounds N | --quick] [--out DIR]
Needs the native infrastructure (`make infra-up`) and release binaries (`make release`).
"""
import argparse
import datetime
import json
import os
from pathlib import Path
import sys
import time

from audit import audit_benchmark, lookup_benchmark
import charts
from common import raise_open_files_limit, RELEASE, ROOT
from gateway import fanout_benchmark, outage_benchmark
from instructions import instructions_benchmark
from isolation import isolation_benchmark
from peers import build_camel, build_parallel_consumer
from report import (audit_section, fanout_section, instructions_section, isolation_section, lookup_section,
                    outage_section, slow_section, worker_section)
from worker import slow_upstream_benchmark, worker_benchmark


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=300_000)
    # 256 in flight left the two cores a quarter idle (the worker waited on round trips); 512 keep
    # them busy, at about 15 MiB more RSS.
    parser.add_argument("--worker-in-flight", type=int, default=512,
                        help="the worker's deliveries in flight (its upstream's bulkhead limit) in the benchmark")
    parser.add_argument("--no-peers", action="store_true", help="skip the peer systems")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of Relais and each peer (A B A B ...); medians and spreads reported")
    parser.add_argument("--quick", action="store_true", help="one round of everything, for development")
    parser.add_argument("--wrk-seconds", type=int, default=15)
    parser.add_argument("--put-seconds", type=int, default=10)
    parser.add_argument("--audit-records", type=int, default=2_000_000,
                        help="synthetic audit records for the audit throughput run")
    parser.add_argument("--lookup-records", type=int, default=1_000_000)
    parser.add_argument("--fanout-clients", type=int, default=1000)
    parser.add_argument("--fanout-rates", type=lambda text: [int(x) for x in text.split(",")], default=[100, 500])
    parser.add_argument("--fanout-seconds", type=int, default=20)
    parser.add_argument("--fanout-scale-clients", type=int, default=5000,
                        help="clients of the second fan-out comparison, at the lowest rate, for the memory "
                             "per connection (0: skip it)")
    parser.add_argument("--outage-seconds", type=int, default=300)
    parser.add_argument("--outage-rate", type=int, default=300, help="messages per second during the outage run")
    parser.add_argument("--slow-messages", type=int, default=200_000,
                        help="messages of the slow-upstream run")
    parser.add_argument("--slow-keys", type=int, default=10_000)
    parser.add_argument("--slow-queued", type=int, default=None,
                        help="the worker's pipeline.max_queued_per_upstream in the slow-upstream run (default: its own)")
    parser.add_argument("--slow-in-flight", type=int, default=1000,
                        help="deliveries in flight in the slow-upstream run (worker and peers alike)")
    parser.add_argument("--isolation-messages", type=int, default=60_000,
                        help="messages for the healthy upstream in the isolation run (half as many for the other)")
    parser.add_argument("--isolation-keys", type=int, default=10_000)
    parser.add_argument("--isolation-in-flight", type=int, default=100,
                        help="each upstream's max_in_flight in the isolation run")
    parser.add_argument("--isolation-latency-ms", type=int, default=50,
                        help="the healthy upstream's median latency in the isolation run")
    parser.add_argument("--only", type=lambda text: set(text.split(",")),
                        default={"worker", "slow", "isolation", "audit", "lookup", "fanout", "outage", "instructions"})
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "bench")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
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
        ("isolation", lambda: isolation_benchmark(args, args.out, stamp)),
        ("audit", lambda: audit_benchmark(args, args.out, stamp, results["worker"]["audit_topic"], args.messages)),
        ("lookup", lambda: lookup_benchmark(args, args.out, stamp)),
        ("fanout", lambda: fanout_benchmark(args, args.out, stamp)),
        ("outage", lambda: outage_benchmark(args, args.out, stamp)),
        ("instructions", lambda: instructions_benchmark(args, args.out, stamp)),
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
    if "isolation" in results:
        sections.append(isolation_section(results["isolation"]))
    if "audit" in results:
        sections.append(audit_section(results["audit"]))
    if "lookup" in results:
        sections.append(lookup_section(results["lookup"]))
    if "fanout" in results:
        sections.append(fanout_section(results["fanout"]))
    if "outage" in results:
        sections.append(outage_section(results["outage"]))
    if "instructions" in results:
        sections.append(instructions_section(results["instructions"]))
    sections.append(charts.write_all(results, args.out))
    report = "\n".join(sections) + "\nRaw data: `report.json` and the logs beside it.\n"
    (args.out / "report.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
