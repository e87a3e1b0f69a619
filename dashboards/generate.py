#!/usr/bin/env python3
"""Writes the Grafana dashboards of dashboards/*.json from the panel lists below.

The JSON files are what Grafana provisions and what the tests check; this script is how they
are edited (run it after changing a panel: `python3 dashboards/generate.py`). Conventions:
every query selects its service's job and the `$instance` variable, rates use
`$__rate_interval`, every panel has a unit, and the data source is the fixed uid
`relais-prometheus` provisioned by compose/grafana.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "relais-prometheus"}


def sel(job, extra=""):
    """The selector every query of a service dashboard starts from."""
    extra = f", {extra}" if extra else ""
    return f'job="{job}", instance=~"$instance"{extra}'


def rate(metric, job, extra="", by=None):
    inner = f"rate({metric}{{{sel(job, extra)}}}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"


def quantile(q, metric, job, by="", extra=""):
    group = f"le, {by}" if by else "le"
    return (f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{{{sel(job, extra)}}}[$__rate_interval])))")


def panel(title, targets, unit, kind="timeseries", description="", stack=False):
    """targets: [(expr, legend)]"""
    return {"title": title, "targets": targets, "unit": unit, "kind": kind,
            "description": description, "stack": stack}


def row(title):
    return {"row": title}


def instance_variable(job):
    return {
        "name": "instance", "label": "instance", "type": "query", "datasource": DATASOURCE,
        "query": {"query": f'label_values(up{{job="{job}"}}, instance)', "refId": "instance"},
        "definition": f'label_values(up{{job="{job}"}}, instance)',
        "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


def render(uid, title, description, job, items, variables=True):
    panels, y, x, next_id = [], 0, 0, 1
    for item in items:
        if "row" in item:
            if x:
                y, x = y + 8, 0
            panels.append({"id": next_id, "type": "row", "title": item["row"], "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            next_id += 1
            y += 1
            continue
        width = 6 if item["kind"] == "stat" else 12
        if x + width > 24:
            y, x = y + 8, 0
        targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                    "datasource": DATASOURCE, "range": True}
                   for i, (expr, legend) in enumerate(item["targets"])]
        defaults = {"unit": item["unit"], "min": 0}
        if item["kind"] == "timeseries":
            defaults["custom"] = {"lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                                  "stacking": {"mode": "normal" if item["stack"] else "none"}}
        panels.append({
            "id": next_id, "type": item["kind"], "title": item["title"],
            "description": item["description"], "datasource": DATASOURCE,
            "gridPos": {"h": 8 if item["kind"] != "stat" else 4, "w": width, "x": x, "y": y},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": ({"legend": {"displayMode": "list", "placement": "bottom"},
                         "tooltip": {"mode": "multi"}} if item["kind"] == "timeseries"
                        else {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}),
            "targets": targets,
        })
        next_id += 1
        x += width
        if x >= 24:
            y, x = y + (8 if item["kind"] != "stat" else 4), 0
    return {
        "uid": uid, "title": title, "description": description, "tags": ["relais"],
        "editable": False, "schemaVersion": 39, "version": 1, "timezone": "utc",
        "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [instance_variable(job)] if variables else []},
        "annotations": {"list": []}, "panels": panels,
    }


W = "ingest-worker"
WORKER = [
    row("Throughput and outcomes"),
    panel("Messages by outcome", [(rate("relais_worker_messages_total", W, by="outcome"), "{{outcome}}")], "ops",
          stack=True, description="Every ingress message ends with exactly one outcome."),
    panel("Rejected input by reason", [(rate("relais_worker_rejections_total", W, by="reason"), "{{reason}}")], "ops",
          description="Invalid ingress, by stable reason code; each is audited and dead-lettered."),
    panel("Dead letters by reason", [(rate("relais_worker_dead_letters_total", W, by="reason"), "{{reason}}")], "ops"),
    panel("Processing time p50 / p99", [
        (quantile(0.5, "relais_worker_processing_duration_seconds", W), "p50"),
        (quantile(0.99, "relais_worker_processing_duration_seconds", W), "p99"),
    ], "s", description="From reading a message to its decided outcome."),
    row("Upstream calls (RED)"),
    panel("Requests by status", [(rate("http_client_request_duration_seconds_count", W,
                                       by="upstream, http_response_status_code"),
                                  "{{upstream}} {{http_response_status_code}}")], "reqps"),
    panel("Failed attempts by error type", [(rate("http_client_request_duration_seconds_count", W, 'error_type!=""',
                                                  by="upstream, error_type"), "{{upstream}} {{error_type}}")], "reqps"),
    panel("Attempt latency p50 / p99", [
        (quantile(0.5, "http_client_request_duration_seconds", W, by="upstream"), "p50 {{upstream}}"),
        (quantile(0.99, "http_client_request_duration_seconds", W, by="upstream"), "p99 {{upstream}}"),
    ], "s"),
    panel("Probe phases p99", [(quantile(0.99, "relais_http_client_phase_duration_seconds", W, by="phase"),
                                "{{phase}}")], "s",
          description="DNS, connect, TLS, time to first byte, transfer: where the time goes."),
    row("Resilience"),
    panel("Retries by reason", [(rate("relais_http_client_retries_total", W, by="upstream, reason"),
                                 "{{upstream}} {{reason}}")], "ops"),
    panel("Why retrying stopped", [(rate("relais_http_client_retry_stops_total", W, by="upstream, reason"),
                                    "{{upstream}} {{reason}}")], "ops"),
    panel("Timeouts by kind", [(rate("relais_http_client_timeouts_total", W, by="upstream, kind"),
                                "{{upstream}} {{kind}}")], "ops"),
    panel("Circuit state over time", [(f'max by (upstream, state) (relais_circuit_state{{{sel(W)}}})',
                                       "{{upstream}} {{state}}")], "bool",
          description="1 while the circuit is in that state, per upstream (the worst replica)."),
    panel("Circuit transitions", [(rate("relais_circuit_transitions_total", W, by="upstream, from, to"),
                                   "{{upstream}} {{from}}→{{to}}")], "ops"),
    panel("Calls refused by an open circuit", [(rate("relais_circuit_rejected_calls_total", W, by="upstream"),
                                                "{{upstream}}")], "ops"),
    panel("Retry budget use", [(f'max by (upstream) (relais_retry_budget_utilisation_ratio{{{sel(W)}}})',
                                "{{upstream}}")], "percentunit",
          description="Share of the retry budget in use; at 100 % retries are refused."),
    panel("Bulkhead in flight / rejected", [
        (f'sum by (upstream) (relais_bulkhead_in_flight_calls{{{sel(W)}}})', "in flight {{upstream}}"),
        (rate("relais_bulkhead_rejected_calls_total", W, by="upstream"), "rejected/s {{upstream}}"),
    ], "short"),
    row("Kafka and backpressure"),
    panel("Consumer lag", [(f'sum by (instance) (relais_worker_consumer_lag{{{sel(W)}}})', "{{instance}}")], "short",
          description="Records of relais.ingress not yet committed, per replica."),
    panel("Queue depth and capacity", [
        (f'sum by (instance) (relais_worker_queue_depth{{{sel(W)}}})', "depth {{instance}}"),
        (f'sum by (instance) (relais_worker_queue_capacity{{{sel(W)}}})', "capacity {{instance}}"),
    ], "short"),
    panel("Paused partitions and parked messages", [
        (f'sum by (instance) (relais_worker_paused_partitions{{{sel(W)}}})', "paused {{instance}}"),
        (f'sum by (instance) (relais_worker_parked_messages{{{sel(W)}}})', "parked {{instance}}"),
    ], "short", description="Partitions paused for backpressure; messages waiting for a closed circuit."),
    panel("Transactions", [
        (rate("relais_worker_transactions_total", W, by="result"), "{{result}}"),
        (quantile(0.99, "relais_worker_transaction_duration_seconds", W), "p99 duration (s)"),
    ], "short", description="Outcome records and offsets committed together."),
    panel("Assigned partitions and handovers", [
        (f'sum by (instance) (relais_worker_assigned_partitions{{{sel(W)}}})', "{{instance}}"),
        (f'sum by (result) (increase(relais_worker_handovers_total{{{sel(W)}}}[1h]))',
         "handovers in the last hour, {{result}}"),
        (f'sum(increase(relais_worker_outcomes_ahead_total{{{sel(W)}}}[1h]))',
         "outcomes committed ahead in the last hour"),
        (f'sum(increase(relais_worker_recorded_skipped_total{{{sel(W)}}}[1h]))',
         "read again, recorded ahead, not sent, in the last hour"),
        (f'min(relais_worker_offset_metadata_limit_bytes{{{sel(W)}}})',
         "commit metadata limit (bytes)"),
    ], "short", description="Partitions owned per replica. A partition moving away is handed over first: "
                            "committed when its deliveries in flight finished and were committed, timed_out "
                            "when some were still running (the next owner sends them again). What finished "
                            "behind an unfinished message is committed ahead of the offset in every round, "
                            "and whoever reads the partition next (after a move or a crash) skips it. The "
                            "metadata limit drops below kafka.offset_metadata_max_bytes when a broker "
                            "refused it (its offset.metadata.max.bytes is smaller)."),
    panel("Committed messages", [(rate("relais_worker_committed_messages_total", W), "committed")], "ops"),
    panel("Uncommitted messages", [
        (f'sum by (instance) (relais_worker_uncommitted_messages{{{sel(W)}}})', "{{instance}}"),
    ], "short", description="Read and not yet committed; at pipeline.max_uncommitted while commits fail."),
    panel("Transactional calls retried", [
        (rate("relais_worker_transaction_call_retries_total", W), "retried calls"),
    ], "ops", description="Calls made again because librdkafka said their error was retriable (a commit that timed out)."),
    panel("Transactional producers replaced", [
        (f'sum by (instance) (increase(relais_worker_transactional_producer_replacements_total{{{sel(W)}}}[$__rate_interval]))',
         "{{instance}}"),
    ], "short", description="New producers made after librdkafka left one in a fatal state (a broker away longer than "
                            "the delivery timeout). More than three within five minutes stop the worker."),
    row("Per-upstream scheduling and pace"),
    panel("Queued and in flight per upstream", [
        (f'sum by (upstream) (relais_worker_upstream_queued_messages{{{sel(W)}}})', "queued {{upstream}}"),
        (f'sum by (upstream) (relais_worker_upstream_in_flight_deliveries{{{sel(W)}}})', "in flight {{upstream}}"),
        (f'sum by (upstream) (relais_worker_upstream_concurrency_limit{{{sel(W)}}})', "limit {{upstream}}"),
        (f'sum by (upstream) (relais_worker_upstream_concurrency_knee{{{sel(W)}}})', "knee {{upstream}}"),
    ], "short", description="Each upstream has its own queue and in-flight limit (adaptive: it follows what the upstream takes, and stays below twice the knee, where more in flight stopped delivering more): a sick upstream's messages wait in its own."),
    panel("Ingress to outcome per upstream (p50, p99)", [
        (quantile(0.5, "relais_worker_ingress_to_outcome_seconds", W, by="upstream"), "p50 {{upstream}}"),
        (quantile(0.99, "relais_worker_ingress_to_outcome_seconds", W, by="upstream"), "p99 {{upstream}}"),
    ], "s", description="From the ingress record's timestamp to the outcome: what a sender waits, queued and throttled time included."),
    panel("Throttled calls", [
        (rate("relais_throttled_calls_total", W, by="upstream, reason"), "{{upstream}} {{reason}}"),
    ], "ops", description="Calls that waited for the upstream's rate limit, or for the pause it asked for with Retry-After."),
    row("Retry tiers"),
    panel("Moved to a retry tier", [
        (rate("relais_worker_retries_scheduled_total", W, by="upstream, reason"), "{{upstream}} {{reason}}"),
    ], "ops", description="Messages that left their partition for a retry tier (not an outcome): the upstream could not take them soon."),
    panel("Waiting in retry tiers", [
        (f'sum by (topic) (relais_worker_retry_waiting_messages{{{sel(W)}}})', "{{topic}}"),
        (f'sum(relais_worker_retry_waiting_keys{{{sel(W)}}})', "keys whose later messages follow"),
    ], "short", description="Messages in each retry topic after the committed offset, over the replicas' partitions; keys kept in order behind a waiting message."),
    panel("Oldest waiting per tier", [
        (f'max by (topic) (relais_worker_retry_oldest_age_seconds{{{sel(W)}}})', "{{topic}}"),
    ], "s", description="Since the oldest message not yet due in each tier moved there; at most the tier's delay while the tiers keep up."),
    row("Upstreams held and records cut"),
    panel("Upstreams held", [
        (f'max by (upstream, reason) (relais_worker_upstream_held{{{sel(W)}}})', "{{upstream}} {{reason}}"),
    ], "short", description="1 while an upstream is held and its messages wait: unauthorized (401/403, one trial call per pause) or disabled (410 or by an operator, until re-enabled on the gateway)."),
    panel("Records refused by the broker / DLQ copies cut", [
        (rate("relais_worker_refused_records_total", W, by="topic"), "refused {{topic}}"),
        (rate("relais_worker_dlq_truncated_total", W), "DLQ copies cut to the dlq limits"),
    ], "ops", description="A refused DLQ copy is written again without its payload; a cut copy says what it left out."),
    panel("Kafka resets: records deleted before they were read", [
        (f'sum by (topic) (increase(relais_worker_records_deleted_unread_total{{{sel(W)}}}[1h]))',
         "deleted unread {{topic}}"),
        (f'sum by (topic, kind) (increase(relais_worker_offset_resets_total{{{sel(W)}}}[1h]))',
         "resets {{kind}} {{topic}}"),
    ], "short", description="Offsets of the ingress and retry topics Kafka deleted (retention) before this worker read them, and offset resets by kind (rewound: the log ended before the worker's offset). Each is also a kafka.records_deleted or kafka.log_rewound action in the audit trail."),
]

A = "audit-service"
AUDIT = [
    row("Records"),
    panel("Records consumed / written", [
        (rate("relais_audit_records_consumed_total", A), "consumed"),
        (rate("relais_audit_records_written_total", A), "written (stored and committed)"),
        (rate("relais_audit_records_quarantined_total", A), "quarantined"),
    ], "ops"),
    panel("Consumer lag", [(f'sum(relais_audit_consumer_lag{{{sel(A)}}})', "lag")], "short"),
    panel("Assigned partitions", [
        (f'sum by (instance) (relais_audit_assigned_partitions{{{sel(A)}}})', "{{instance}}"),
    ], "short", description="Audit topic partitions each instance holds; a lag of zero over none says nothing."),
    row("Objects in RGW"),
    panel("Objects and bytes written", [
        (rate("relais_audit_objects_written_total", A), "objects/s"),
    ], "ops"),
    panel("Bytes written", [(rate("relais_audit_written_bytes_total", A), "stored")], "Bps"),
    panel("PUT latency p50 / p99", [
        (quantile(0.5, "relais_audit_put_duration_seconds", A), "p50"),
        (quantile(0.99, "relais_audit_put_duration_seconds", A), "p99"),
    ], "s"),
    panel("PUT retries", [(rate("relais_audit_put_retries_total", A), "retries")], "ops",
          description="Retries while RGW is slow or down; records stay buffered meanwhile."),
    panel("Object size p50", [(quantile(0.5, "relais_audit_object_size_bytes", A), "p50")], "bytes"),
    panel("Offset commits", [(rate("relais_audit_commits_total", A), "commits"),
                             (rate("relais_audit_commit_failures_total", A), "failed (retried; the partition waits)")], "ops"),
    row("Buffer and backpressure"),
    panel("Buffered records", [(f'sum(relais_audit_buffer_records{{{sel(A)}}})', "records")], "short",
          description="Held in memory until stored; bounded by [buffer] in the configuration."),
    panel("Buffered bytes", [(f'sum(relais_audit_buffer_bytes{{{sel(A)}}})', "bytes")], "bytes"),
    panel("Oldest unflushed record age", [(f'max(relais_audit_oldest_unflushed_age_seconds{{{sel(A)}}})', "age")],
          "s"),
    panel("Consumption paused", [(f'max(relais_audit_paused{{{sel(A)}}})', "paused")], "bool"),
    panel("Objects closed under buffer pressure", [(rate("relais_audit_pressure_closes_total", A), "closes")],
          "ops", description="Open objects closed early because they filled the buffer: more partitions "
          "× objects.max_records than buffer.max_records. Often nonzero: raise [buffer] or lower "
          "objects.max_records."),
    panel("Kafka resets: records deleted before they were stored", [
        (f'sum by (topic) (increase(relais_audit_records_deleted_unread_total{{{sel(A)}}}[1h]))',
         "deleted unread {{topic}}"),
        (f'sum by (topic, kind) (increase(relais_audit_offset_resets_total{{{sel(A)}}}[1h]))',
         "resets {{kind}} {{topic}}"),
        (f'sum(increase(relais_audit_objects_under_second_key_total{{{sel(A)}}}[1h]))',
         "stored beside another log's object"),
    ], "short", description="Audit records Kafka deleted (retention) before this service stored them, offset resets by kind (rewound: the log ended before the service's offset), and objects of a new log of the topic (deleted and created again) stored under second keys beside the old log's, which are kept."),
]

G = "realtime-gateway"
GATEWAY = [
    row("Events"),
    panel("Events taken in / rejected", [
        (rate("relais_gateway_events_consumed_total", G), "taken in"),
        (rate("relais_gateway_events_rejected_total", G, by="reason"), "rejected {{reason}}"),
    ], "ops"),
    panel("History and lag", [
        (f'sum(relais_gateway_history_events{{{sel(G)}}})', "events held"),
        (f'sum(relais_gateway_consumer_lag{{{sel(G)}}})', "consumer lag"),
        (f'sum by (topic) (increase(relais_gateway_events_log_restarts_total{{{sel(G)}}}[1h]))',
         "log restarts in the last hour"),
    ], "short", description="Events held for resumes and listings; records not read yet; partitions "
       "of relais.events whose log started again (the topic created again)."),
    row("REST API (RED)"),
    panel("Requests by route and status", [(rate("http_server_request_duration_seconds_count", G,
                                                 by="http_route, http_response_status_code"),
                                            "{{http_route}} {{http_response_status_code}}")], "reqps"),
    panel("Latency p99 by route", [(quantile(0.99, "http_server_request_duration_seconds", G, by="http_route"),
                                    "{{http_route}}")], "s"),
    panel("Refused requests", [(rate("relais_gateway_auth_failures_total", G, by="reason"), "{{reason}}")], "ops",
          description="Missing or invalid token, forbidden role, rate limit."),
    panel("Audit lookups", [(rate("relais_gateway_audit_queries_total", G, by="result"), "{{result}}")], "ops"),
    row("WebSocket feed"),
    panel("WebSocket clients", [(f'sum(relais_gateway_ws_connections{{{sel(G)}}})', "connected")], "short"),
    panel("Frames sent / dropped", [
        (rate("relais_gateway_ws_messages_sent_total", G), "sent"),
        (rate("relais_gateway_ws_messages_dropped_total", G, by="reason"), "dropped {{reason}}"),
    ], "ops"),
    panel("Lagged disconnects, gaps, replays", [
        (rate("relais_gateway_ws_lagged_disconnects_total", G), "lagged disconnects"),
        (rate("relais_gateway_ws_gaps_total", G), "resume gaps"),
        (rate("relais_gateway_ws_replayed_total", G), "replayed frames"),
    ], "ops"),
    panel("Decision to client p99", [(quantile(0.99, "relais_gateway_ws_delivery_latency_seconds", G), "p99")], "s"),
    row("Workers (gRPC)"),
    panel("WorkerReport streams", [(f'sum(relais_gateway_grpc_streams{{{sel(G)}}})', "open")], "short"),
    panel("Worker reports", [(rate("relais_gateway_worker_reports_total", G), "reports")], "ops"),
]

S = "upstream-sim"
SIM = [
    row("Requests"),
    panel("Requests by action", [(rate("upstream_sim_requests_total", S, by="action"), "{{action}}")], "reqps",
          stack=True, description="What the simulator did with each request: answered, error, 429, hang, reset."),
    panel("Latency p50 / p99", [
        (quantile(0.5, "upstream_sim_request_duration_seconds", S), "p50"),
        (quantile(0.99, "upstream_sim_request_duration_seconds", S), "p99"),
    ], "s"),
    panel("Duplicate deliveries", [(rate("upstream_sim_duplicate_deliveries_total", S), "duplicates")], "ops",
          description="Requests whose Idempotency-Key was seen before (at-least-once delivery)."),
]

OVERVIEW = [
    row("Pipeline"),
    panel("Ingress decided by outcome", [
        ('sum by (outcome) (rate(relais_worker_messages_total{job="ingest-worker"}[$__rate_interval]))',
         "{{outcome}}")], "ops", stack=True),
    panel("Worker consumer lag", [('sum(relais_worker_consumer_lag{job="ingest-worker"})', "lag")], "short"),
    panel("Upstream p99", [(
        'histogram_quantile(0.99, sum by (le, upstream) (rate(http_client_request_duration_seconds_bucket'
        '{job="ingest-worker"}[$__rate_interval])))', "{{upstream}}")], "s"),
    panel("Circuits open", [('max by (upstream) (relais_circuit_state{job="ingest-worker", state="open"})',
                             "{{upstream}}")], "bool"),
    panel("Audit records stored", [
        ('sum(rate(relais_audit_records_written_total{job="audit-service"}[$__rate_interval]))', "stored")],
        "ops"),
    panel("Audit buffer", [('sum(relais_audit_buffer_records{job="audit-service"})', "records")], "short"),
    panel("Gateway WebSocket clients", [('sum(relais_gateway_ws_connections{job="realtime-gateway"})',
                                         "clients")], "short"),
    panel("Services up", [('up{job=~"ingest-worker|audit-service|realtime-gateway|upstream-sim"}',
                           "{{job}} {{instance}}")], "bool"),
]

DASHBOARDS = {
    "ingest-worker": ("relais-ingest-worker", "Relais / ingest-worker",
                      "Throughput, upstream RED, resilience and Kafka backpressure of every worker replica.",
                      W, WORKER),
    "audit-service": ("relais-audit-service", "Relais / audit-service",
                      "The audit trail into Ceph RGW: records, objects, PUTs, buffer and backpressure.", A, AUDIT),
    "realtime-gateway": ("relais-realtime-gateway", "Relais / realtime-gateway",
                         "Event intake, REST API, WebSocket feed and worker reports.", G, GATEWAY),
    "upstream-sim": ("relais-upstream-sim", "Relais / upstream-sim",
                     "What the simulated external API saw and did.", S, SIM),
    "overview": ("relais-overview", "Relais / overview", "The pipeline at a glance.", "ingest-worker", OVERVIEW),
}


def main():
    for name, (uid, title, description, job, items) in DASHBOARDS.items():
        dashboard = render(uid, title, description, job, items, variables=name != "overview")
        (HERE / f"{name}.json").write_text(json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n")
        print(f"dashboards/{name}.json: {sum(1 for p in dashboard['panels'] if p['type'] != 'row')} panels")


if __name__ == "__main__":
    main()
