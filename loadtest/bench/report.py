"""The Markdown report: one section per benchmark."""

import os

from common import cpu_rows, mib
from rounds import cell, ratio_cell, spread


def rounds_note(rounds):
    return (f"Each figure is the median of {rounds} alternating rounds (A B A B ...) with the range "
            "of the rounds in brackets; a difference is claimed only where the ranges do not overlap."
            if rounds > 1 else "One round only (`--quick`): a single run, no spread, no claim of a difference.")


def rounds_table(unit, rows):
    """One row per system: `(label, results of its rounds, key of its rate, key of its own CPU
    per unit)`; each cell the median with the range of the rounds."""
    lines = [f"| system | {unit} | own CPU µs per unit | peak RSS MiB |", "| --- | --- | --- | --- |"]
    for label, results, cpu_key in rows:
        skipped = next((result["skipped"] for result in results if "skipped" in result), None)
        if skipped or not results:
            lines.append(f"| {label} | not measured: {skipped or 'not run'} | | |")
            continue
        lines.append(f"| {label} | {cell(spread(results, 'records_per_second'))} | "
                     f"{cell(spread(results, cpu_key), digits=1)} | "
                     f"{cell(spread(results, 'peak_rss_bytes'), digits=1, scale=1 / 2**20)} |")
    return "\n".join(lines) + "\n"


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
    summary = "\n".join(
        f"| {rate} | {cell(sides['relais']['p50'], 1)} | {cell(sides['relais']['p99'], 1)} | "
        f"{cell(sides['centrifugo']['p50'], 1)} | {cell(sides['centrifugo']['p99'], 1)} | "
        f"{ratio_cell(sides['p99_comparison'])} |"
        for rate, sides in fanout["by_rate"].items())
    cpu = "\n".join(
        f"| {rate} | {cell(sides['relais'].get('cpu_us_per_frame'), 2)} | "
        f"{cell(sides['centrifugo'].get('cpu_us_per_frame'), 2)} | {ratio_cell(sides.get('cpu_comparison'))} |"
        for rate, sides in fanout["by_rate"].items())
    return f"""## realtime-gateway fan-out to {fanout['clients']} WebSocket clients, beside Centrifugo

Events produced to the gateway's topic at a fixed rate for {fanout['seconds']} s; every client
receives every event. Latency is from production (the event's `decided_at`) to receipt by the
client, through Kafka and the gateway (quantiles within 2.2 % histogram buckets).

| events/s | Relais p50 ms | Relais p99 ms | Centrifugo p50 ms | Centrifugo p99 ms | p99 Relais / Centrifugo (lower is better) |
| --- | --- | --- | --- | --- | --- |
{summary}

Each server's own CPU per frame it delivered (one event to one client), over the round at that
rate:

| events/s | realtime-gateway CPU µs per frame | Centrifugo CPU µs per frame | Relais / Centrifugo (lower is better) |
| --- | --- | --- | --- |
{cpu}

{rounds_note(len(fanout["rounds"]["relais"]))} The tables below are the median round of each
(by p99 at the highest rate).

{header}
{fanout_rows(fanout['runs'])}

Gateway peak RSS: {mib(fanout['gateway_peak_rss_bytes'])}.

{peer}
{fanout_scale_section(fanout.get("scale"))}"""


def fanout_scale_section(scale):
    """Many clients at the lowest rate: latency, and the memory each connection costs."""
    if not scale:
        return ""
    rate, sides = next(iter(scale["by_rate"].items()))
    rows = "\n".join(
        f"| {label} | {cell(sides[name]['p50'], 1)} | {cell(sides[name]['p99'], 1)} | "
        f"{cell(sides[name]['delivered_ratio'], 4)} | "
        f"{cell(scale['memory'][name]['peak_rss_bytes'], 1, 1 / 2**20)} | "
        f"{cell(scale['memory'][name]['bytes_per_client'], 1, 1 / 2**10)} |"
        for name, label in (("relais", "realtime-gateway"), ("centrifugo", "Centrifugo")))
    return f"""### {scale['clients']:,} clients at {rate} events/s

The same comparison with {scale['clients']:,} clients for {scale['seconds']} s. Memory per connection
is the server's peak RSS during the round less its RSS once ready, before any client connected,
over the clients: what a connection costs while it receives the feed, its buffers included.

| system | p50 ms | p99 ms | delivered / expected | peak RSS MiB | KiB per connection |
| --- | --- | --- | --- | --- | --- |
{rows}

p99 Relais / Centrifugo (lower is better): {ratio_cell(sides['p99_comparison'])}.
{rounds_note(len(scale["rounds"]["relais"]))}
"""


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


def client_rows(worker):
    """The worker's HTTP client alone, beside wrk: where the gap to wrk comes from."""
    rows = ""
    names = {"reqwest": "bare reqwest client (the library under the worker's stack)",
             "resilience": "the worker's resilience stack (deadline, bulkhead, breaker, retry, timeout, probe)"}
    for kind, run in (worker.get("http_client_alone") or {}).items():
        rate = run["requests_per_second"]
        to_wrk = f"{rate['median'] / worker['wrk_requests_per_second']:.2f}" if rate else "not measured"
        rows += (f"| {names.get(kind, kind)} alone, {run['concurrency']} callers, no Kafka | "
                 f"{cell(rate)} requests/s, {cell(run['cpu_us_per_request'], digits=1)} CPU µs per request "
                 f"(ratio to wrk {to_wrk}) |\n")
    rows += ("| **worker's CPU per message / the bare client's CPU per request**, each round against the "
             f"client's run beside it | **{cell(worker.get('worker_cpu_over_client_cpu'), digits=2)}** |\n")
    bare = worker.get("bare_worker")
    if bare:
        rows += ("| the bare worker (`loadgen bare-worker`: consume, POST with the bare client, two records "
                 "and the offsets in a transaction; nothing of Relais) | "
                 f"{cell(bare['rate'])} messages/s, {cell(bare['cpu_us_per_message'], digits=1)} CPU µs per message |\n"
                 "| **worker's CPU per message / the bare worker's**, each round against the bare worker's run "
                 f"beside it | **{cell(worker.get('worker_cpu_over_bare_worker_cpu'), digits=2)}** |\n")
    return rows


def worker_section(worker):
    runs = worker["rounds"]
    comparisons = worker["comparisons"]
    return f"""## ingest-worker against the raw HTTP rate of upstream-sim and against Apache Camel

{rounds_table("messages/s", [
    (f"ingest-worker ({worker['in_flight']} in flight), Kafka → HTTP → outcome transaction, {worker['messages']} "
     "messages", runs["worker"], "cpu_us_per_message"),
    ("Apache Camel 4.18 route, Kafka → HTTP with resilience4j breaker and redelivery", runs["camel"],
     "cpu_us_per_record"),
    ("the same Camel route also writing two outcome records per message (audit, event)",
     runs["camel_with_outcomes"], "cpu_us_per_record"),
])}
{rounds_note(len(runs["worker"]))}

| measure | value |
| --- | --- |
| **ratio worker / Camel** | {ratio_cell(comparisons["camel"])} |
| **ratio worker / Camel with outcome records** | {ratio_cell(comparisons["camel_with_outcomes"])} |
| wrk, 2 threads, 64 connections, POST of the same body | {worker['wrk_requests_per_second']:.0f} requests/s |
| **ratio worker (median) / wrk** | **{worker['ratio_worker_to_wrk']:.2f}** (target ≥ {worker['target_ratio']}) |
{client_rows(worker)}| Kafka's consumer perf tool on the same topic (upper bound on ingestion) | {worker['kafka_consumer_ceiling_per_second']:.0f} messages/s |
| ratio worker / consumer ceiling | {worker['ratio_worker_to_consumer_ceiling']} |

Each worker message costs one HTTP request plus its share of the Kafka fetch and of a transaction
writing two records (audit and realtime event) with the consumed offsets. The Camel route does
less per message: it POSTs and lets the Kafka client auto-commit (at-least-once, no outcome
records, no dead-letter topic), with one consumer thread per partition (Camel's way to run
partitions in parallel). The second Camel row adds the two outcome records per message, sent
without a transaction: the same work as the worker minus exactly-once. wrk only sends requests.

Where the CPU went (everything shares {os.cpu_count()} cores), during wrk's run:

{cpu_rows(worker.get("wrk_cpu"), "request")}
and during the worker's median round (from its first committed message to its last):

{cpu_rows(worker.get("worker_cpu"), "message")}
At these costs per message, upstream-sim and the broker alone would fill the machine at
{worker.get('rate_if_worker_cost_nothing') or 0:.0f} messages/s even if the worker cost nothing: a ratio of at most
**{worker.get('ratio_bound_if_worker_cost_nothing')}** to wrk on this machine.
"""


def slow_section(slow):
    runs = slow["rounds"]

    def correctness(name):
        run = slow.get(name) or {}
        if "skipped" in run or not run:
            return ""
        return (f"| {name.replace('_', ' ')} | {run.get('peak_in_flight_upstream')} | "
                f"{run.get('order_violations')} of {run.get('ordered_events')} | {run.get('duplicate_deliveries')} |\n")
    return f"""## A slow upstream: in flight and in order

upstream-sim answers in {slow['upstream']}; {slow['messages']} messages over {slow['keys']} keys, order kept
per key; {slow['concurrency']} deliveries in flight at most for each system. By Little's law 8,000
messages/s need about 800 in flight. In-flight, order violations and duplicates are upstream-sim's
own counts.

{rounds_table("messages/s", [
    ("ingest-worker (ordering key, adaptive concurrency, exactly-once outcomes)", runs["worker"],
     "cpu_us_per_message"),
    ("Confluent Parallel Consumer 0.5.3.3, KEY order, async commits (at-least-once, no outcome records)",
     runs["parallel_consumer"], "cpu_us_per_record"),
    ("Apache Camel 4.18 route (one consumer thread per partition, auto-commit)", runs["camel"],
     "cpu_us_per_record"),
])}
{rounds_note(len(runs["worker"]))}

| system | peak in flight at the upstream (median round) | order violations (worst round) | duplicates (worst round) |
| --- | --- | --- | --- |
{correctness("worker")}{correctness("parallel_consumer")}{correctness("camel")}
Ratios of messages/s: worker / Parallel Consumer {ratio_cell(slow["comparisons"]["parallel_consumer"])};
worker / Camel {ratio_cell(slow["comparisons"]["camel"])}. Targets: at least 8,000 messages/s per
worker, RSS under 250 MiB, no order violation.
"""


def isolation_section(isolation):
    runs = isolation["rounds"]

    def row(name, label):
        run = isolation[name]
        return (f"| {label} | {cell(isolation['rates'][name])} | "
                f"{cell(isolation['ingress_committed_after_seconds'][name], 1)} | "
                f"{cell(isolation['cpu_us_per_message'][name], 1)} | "
                f"{cell(isolation['machine_cores_busy'][name], 2)} | "
                f"{cell(isolation['peak_rss'][name], 1, 1 / 2**20)} | {run['order_violations']} | "
                f"{run['duplicate_deliveries']} | {run['dead_lettered']:.0f} |\n")
    moved = isolation["b_down"]["retries_scheduled_b"]
    return f"""## Isolation: a healthy upstream beside one that refuses connections

Upstream `a` (upstream-sim answering in {isolation['upstream']}; {isolation['in_flight']} in flight at
most) and upstream `b` (nothing listening: every connection refused), both with the default retry
tiers and key ordering. Alone: {isolation['messages_a']:,} messages for `a` over {isolation['keys']:,} keys.
With `b` down: as many for `a` ({isolation['messages_a_with_b']:,}) with {isolation['messages_b']:,} for `b`
interleaved on every partition. The rate is upstream-sim's own count of `a`'s deliveries, between
10 % and 90 % of them. "Ingress committed" is from `a`'s last delivery until Kafka's consumer-group
tool shows no ingress record past the group's committed offsets (with `b` down, `b`'s messages
included: moved to a retry tier; {moved:,.0f} moves between tiers in the median round). Cores busy:
the whole machine's, of {os.cpu_count()}, while `a` was delivered.

| ingress | `a` delivered/s | ingress committed after s | worker CPU µs per `a` message | machine cores busy | peak RSS MiB | order violations (worst round) | duplicates (worst round) | dead-lettered |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{row("alone", "`a` alone")}{row("b_down", "`a` with `b` down")}
{rounds_note(len(runs["alone"]))}

**`a`'s rate with `b` down / alone: {isolation['ratio']:.2f}** ({ratio_cell(isolation['comparison'])};
target at least 0.9).
"""


def sustained_cell(audit):
    """The two systems' sustained rates and their ratio, for the audit section."""
    rates = audit.get("sustained_rates") or {}
    if not rates.get("audit") or not rates.get("camel"):
        return "not measured"
    return (f"audit-service {cell(rates['audit'], 0)}, Camel {cell(rates['camel'], 0)} records/s, ratio "
            f"{ratio_cell(audit['comparisons'].get('camel_sustained'))}")


def audit_section(audit):
    runs = audit["rounds"]
    worker_run, steady = audit["worker_records"], audit["steady"]

    def run_row(run, what):
        return (f"| audit-service, {what}: {run['records']} records into {run['objects']} objects in {run['seconds']} s | "
                f"{run['records_per_second']:.0f} records/s, {run['stored_bytes_per_second'] / 2**20:.2f} MiB/s stored (gzip), "
                f"{run['ndjson_bytes_per_second'] / 2**20:.2f} MiB/s of NDJSON ({run['ndjson_bytes_per_record']:.0f} bytes "
                f"per record, {run['stored_bytes_per_record']:.0f} stored) |\n")
    return f"""## audit-service against the raw PUT bandwidth of RGW and against Apache Camel

The same {audit['records']} synthetic audit records (loadgen) stored by each system into the same RGW:

{rounds_table("records/s", [
    ("audit-service: read_committed, decode, JSON line, gzip, index, PUT, commit after the PUT", runs["audit"],
     "cpu_us_per_record"),
    ("Apache Camel 4.18 route, Kafka → batches → gzip → aws2-s3 PUT, auto-commit", runs["camel"],
     "cpu_us_per_record"),
])}
{rounds_note(len(runs["audit"]))}

**Ratio audit-service / Camel, records per second**: {ratio_cell(audit["comparisons"]["camel"])} (target ≥ 2).
Sustained, from 10 % to 90 % of the records stored (both measured alike, without the start and
the idle close that ends a finite input): {sustained_cell(audit)}.

| measure (median round of audit-service) | value |
| --- | --- |
{run_row(steady, "synthetic audit records (loadgen), the throughput run")}| raw PUT, 12 connections, objects of {audit['mean_object_bytes']} bytes (the run above) | {audit['raw_put_per_second']:.1f} PUT/s, {audit['raw_put_bytes_per_second'] / 2**20:.2f} MiB/s |
| same run, sustained (from 10 % to 90 % of the records written) | {steady['sustained_records_per_second']:.0f} records/s, {steady['sustained_stored_bytes_per_second'] / 2**20:.2f} MiB/s stored, {steady['sustained_ndjson_bytes_per_second'] / 2**20:.2f} MiB/s of NDJSON |
| **ratio audit / raw PUT bandwidth, bytes stored**: whole run; sustained | **{audit['ratio_audit_to_raw_put_bandwidth']}**; **{audit['ratio_sustained_audit_to_raw_put_bandwidth']}** (target ≥ {audit['target_ratio']}) |
| **ratio audit / raw PUT bandwidth, NDJSON bytes before compression**: whole run; sustained | **{audit['ratio_audit_ndjson_to_raw_put_bandwidth']}**; **{audit['ratio_sustained_audit_ndjson_to_raw_put_bandwidth']}** |
{run_row(worker_run, "the worker benchmark's audit records")}| audit-service peak RSS | {mib(audit['audit_peak_rss_bytes'])} |

The audit figure includes consuming (read_committed), decoding each protobuf record, writing it
as a documented JSON line, compressing (gzip level 2, the default), the lookup index beside each object and
committing offsets only after the PUT; the raw PUT only sends bytes already in memory. The Camel
route stores the Kafka values as they are (one per line, gzip level 2, objects of the same record
count) with auto-committed offsets: less work per record and no exactly-once guarantee. The
worker's records are few: their run is mostly start-up and the idle close of the last objects,
hence the larger synthetic run for the throughput and the comparison. The whole-run rate counts from the first
stored object to the last, so it includes the idle close (1 s here) that ends a finite input;
the sustained rate is what a continuous stream keeps.

Compressed, a record takes {steady['stored_bytes_per_record']} bytes in RGW, so the stored-bytes target
(0.8 × raw PUT) means **{audit['records_per_second_for_target']:.0f} records/s**, while Kafka's own consumer
perf tool reads {audit['kafka_consumer_ceiling_per_second']:.0f} records/s from the same topic on this
machine: in stored bytes the target is beyond anything that has to consume the topic here.

Where the CPU went while audit-service stored the synthetic records (median round):

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


def instructions_section(counted):
    worker, bare = counted["worker"], counted["bare_worker"]
    top = "".join(f"| `{name[:110]}` | {count:,} |\n" for name, count in worker["top_functions"])
    return f"""## Instructions per message, counted (callgrind)

Each system under valgrind's callgrind over {counted['sizes'][0]:,} and then {counted['sizes'][1]:,} messages,
{counted['in_flight']} deliveries in flight; the difference between the two counts over the difference in
messages. A count does not change with the hour as CPU time does, so it settles small differences; it
leaves out cache misses and waits, so its ratio is a floor under the ratio of CPU time.

| system | instructions per message | the runtime's threads | librdkafka's threads |
| --- | --- | --- | --- |
| ingest-worker | {worker['instructions_per_message']:,} | {worker['runtime_threads']:,} | {worker['librdkafka_threads']:,} |
| the bare worker (`loadgen bare-worker`) | {bare['instructions_per_message']:,} | {bare['runtime_threads']:,} | {bare['librdkafka_threads']:,} |
| **ratio worker / bare worker** | **{counted['ratio']:.2f}** | | |

Where the worker's instructions go, by function (its own instructions, not those of what it calls):

| function | instructions per message |
| --- | --- |
{top}"""
