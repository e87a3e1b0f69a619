"""audit-service benchmarks: storing into RGW beside the raw PUT bandwidth and the Camel route,
and trail lookups while it stores."""

import datetime
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

from common import (
    AUDIT_ADMIN, BOOTSTRAP, consumer_ceiling, CpuMeter, create_topic, follow_until, http_get, infra_pids,
    log, metric, peak_rss_bytes, RELEASE, S3_ACCESS, S3_ENDPOINT, S3_REGION, S3_SECRET, start, stop,
    sustained_rate)
from peers import run_camel
from rounds import alternate, compare, median_round, spread


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
    and repeated runs that leave millions of records behind fill it until PUTs stall. A bucket
    that cannot be removed is reported, not raised: the measurements are taken by then."""
    for bucket in buckets:
        try:
            remove_bucket(bucket)
        except (OSError, RuntimeError, http.client.HTTPException) as error:
            log(f"WARNING: bucket {bucket} not removed ({error}); a full memstore refuses even deletes: "
                "`deploy/native/infra.sh clean ceph` then `make infra-up` start it empty")


def remove_bucket(bucket):
    import concurrent.futures
    import xml.etree.ElementTree as ElementTree
    from urllib.parse import quote
    host = S3_ENDPOINT.split("//", 1)[1]
    namespace = "{http://s3.amazonaws.com/doc/2006-03-01/}"

    class Session:
        """Requests on one kept-alive connection, a new one after a failure (a request that
        timed out leaves its connection unusable), three tries each."""

        def __init__(self):
            self.connection = None

        def request(self, method, path, query=None, ok=(200, 204, 404)):
            for attempt in range(3):
                self.connection = self.connection or http.client.HTTPConnection(host, timeout=30)
                try:
                    return s3_request(self.connection, host, method, path, query=query, ok=ok)
                except (OSError, http.client.HTTPException):
                    self.connection.close()
                    self.connection = None
                    if attempt == 2:
                        raise

    def delete_keys(keys):
        session = Session()
        for key in keys:
            session.request("DELETE", f"/{bucket}/{quote(key, safe='/-_.~')}")

    session, keys, token = Session(), [], None
    while True:
        query = {"list-type": "2", **({"continuation-token": token} if token else {})}
        status, listing = session.request("GET", f"/{bucket}", query=query, ok=(200, 404))
        if status == 404:
            return
        root = ElementTree.fromstring(listing)
        keys += [element.text for element in root.iter(f"{namespace}Key")]
        token = root.findtext(f"{namespace}NextContinuationToken")
        if not token:
            break
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(delete_keys, [keys[i::8] for i in range(8)]))
    session.request("DELETE", f"/{bucket}", ok=(200, 204, 404, 409))
    log(f"removed bucket {bucket} ({len(keys)} objects)")


def raw_put_bandwidth(bucket, size, seconds, concurrency):
    """Objects of `size` random bytes PUT by `concurrency` connections for `seconds` (the caller
    removes the bucket afterwards)."""
    import concurrent.futures
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


def audit_benchmark(args, out, stamp, audit_topic, records):
    """audit-service and the Camel route storing the same two million synthetic records in RGW,
    in alternating rounds, beside RGW's raw PUT bandwidth; and the service on the worker's own
    audit records."""
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

    audit_results = []  # camel_round sizes its objects like the first of these

    def audit_round(index):
        name = f"audit-service-load-r{index}"
        result = store_audit_records(out, name, load_topic, f"bench-audit-load-{stamp}-r{index}",
                                     f"{bucket}-load-r{index}", args.audit_records)
        result["cpu_us_per_record"] = result["cpu"]["components"]["audit-service"]["cpu_us_per_unit"]
        if index > 0:
            # The first round's objects stay for the raw PUT's object size; later ones go now.
            remove_buckets(f"{bucket}-load-r{index}")
        audit_results.append(result)
        return result

    def camel_round(index):
        if args.camel_unavailable:
            return {"skipped": args.camel_unavailable}
        first = audit_results[0]
        result = run_camel("s3", {"CAMEL_PEER_TOPIC": load_topic, "CAMEL_PEER_GROUP": f"camel-s3-{stamp}-r{index}",
                                  "CAMEL_PEER_BUCKET": f"{bucket}-camel-r{index}", "CAMEL_PEER_S3_ENDPOINT": S3_ENDPOINT,
                                  "CAMEL_PEER_S3_REGION": S3_REGION, "CAMEL_PEER_S3_ACCESS_KEY": S3_ACCESS,
                                  "CAMEL_PEER_S3_SECRET_KEY": S3_SECRET,
                                  "CAMEL_PEER_BATCH": str(max(first["records"] // max(first["objects"], 1), 1))},
                           out, args.audit_records, f"camel-s3-r{index}.log", max_seconds=120)
        remove_buckets(f"{bucket}-camel-r{index}")
        return result

    runs = alternate(args.rounds, [("audit", audit_round), ("camel", camel_round)], log)
    rates = {name: spread(results, "records_per_second") for name, results in runs.items()}
    sustained = {name: spread(results, "sustained_records_per_second") for name, results in runs.items()}
    steady = median_round(runs["audit"], "records_per_second")
    object_size = runs["audit"][0]["mean_object_bytes"]
    log(f"raw PUT of {object_size} byte objects for {args.put_seconds}s")
    put_meter = CpuMeter(infra_pids(), tools="bench script (the PUT client)").start()
    put_rate, put_bandwidth = raw_put_bandwidth(bucket, object_size, args.put_seconds, 12)
    put_cpu = put_meter.stop(put_bandwidth * args.put_seconds / 2**20)
    ceiling = consumer_ceiling(load_topic, args.audit_records)
    # The stored-bytes target in records: compression leaves a few dozen bytes of each record,
    # so the target bandwidth needs this many records per second, against what Kafka's own
    # consumer reads from the same topic on this machine.
    records_for_target = 0.8 * put_bandwidth / steady["stored_bytes_per_record"]
    remove_buckets(bucket, f"{bucket}-load-r0")
    camel = median_round(runs["camel"], "records_per_second") or runs["camel"][0]
    return {
        "rounds": runs,
        "rates": rates,
        "audit_cpu_us_per_record": spread(runs["audit"], "cpu_us_per_record"),
        "sustained_rates": sustained,
        "comparisons": {"camel": compare(rates["audit"], rates["camel"]),
                        "camel_sustained": compare(sustained["audit"], sustained["camel"])},
        "worker_records": worker_run,
        "steady": steady,
        "camel": camel,
        # The headline figures, from the median round.
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
    grpc = "127.0.0.1:19151"
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
