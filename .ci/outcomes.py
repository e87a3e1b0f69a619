#!/usr/bin/env python3
"""Checks through realtime-gateway's REST API that every message of one loadgen run has its
outcome: the valid ones delivered, the invalid ones rejected, nothing missing and nothing twice;
and that a delivered and a rejected message can each be looked up by its id with the audit
record audit-service stored in RGW.

It reads what a user reads (`/api/v1/events` and `/api/v1/messages/{id}` with the viewer token
`make dev` printed), waiting up to --timeout seconds for the last outcomes and again for the
audit records. Exits non-zero with what is missing.
"""

import argparse
import collections
import datetime
import json
import sys
import time
import urllib.parse
import urllib.request


def get(base, token, path):
    request = urllib.request.Request(f"{base}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def audited(base, token, event, timeout):
    """The message lookup of `event` once it holds the event's audit record, or why not."""
    path = f"/api/v1/messages/{urllib.parse.quote(event['message_id'], safe='')}"
    deadline = time.monotonic() + timeout
    while True:
        answer = get(base, token, path)
        outcomes = [record["outcome"] for record in answer["audit"]]
        if outcomes == [event["outcome"]] and not answer["partial"]:
            return None
        if time.monotonic() > deadline:
            return f"{path} answered audit outcomes {outcomes}, partial {answer['partial']}"
        time.sleep(1)


def events_since(base, token, since):
    """Every event the gateway holds that was decided at or after `since`, newest first."""
    events, cursor = [], None
    while True:
        query = {"from": since, "limit": "1000"}
        if cursor:
            query["cursor"] = cursor
        page = get(base, token, f"/api/v1/events?{urllib.parse.urlencode(query)}")
        events.extend(page["events"])
        cursor = page.get("next_cursor")
        if not cursor:
            return events


def parse_time(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--token", required=True)
    parser.add_argument("--summary", required=True, help="loadgen's JSON summary line")
    parser.add_argument("--load-started-at", required=True, help="RFC 3339, before the load")
    parser.add_argument("--stack-started-at", help="RFC 3339, before `make dev`")
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--timeout", type=float, default=90)
    args = parser.parse_args()

    lines = [line for line in open(args.summary).read().splitlines() if line.startswith("{")]
    summary = json.loads(lines[-1])
    sent, valid = summary["sent"], summary["by_kind"].get("valid", 0)
    expected = {outcome: count for outcome, count in
                (("delivered", valid), ("rejected", sent - valid)) if count}
    if sent == 0 or summary["errors"]:
        sys.exit(f"loadgen sent {sent} messages with {summary['errors']} errors")

    deadline = time.monotonic() + args.timeout
    while True:
        events = events_since(args.gateway, args.token, args.load_started_at)
        outcomes = collections.Counter(event["outcome"] for event in events)
        ids = collections.Counter(event["message_id"] for event in events)
        if dict(outcomes) == expected or time.monotonic() > deadline:
            break
        time.sleep(1)

    print(f"{sent} messages sent ({valid} valid); outcomes through the REST API: {dict(outcomes)}")
    twice = [event_id for event_id, count in ids.items() if count > 1]
    if dict(outcomes) != expected or twice:
        sys.exit(f"expected outcomes {expected}, got {dict(outcomes)}"
                 f"{'; messages with two outcomes: ' + ', '.join(twice[:5]) if twice else ''}")

    for outcome in expected:
        event = next(event for event in events if event["outcome"] == outcome)
        problem = audited(args.gateway, args.token, event, args.timeout)
        if problem:
            sys.exit(f"the {outcome} message {event['message_id']} is not in the audit trail: {problem}")
        print(f"the {outcome} message {event['message_id']} looked up by its id, with its audit record")

    delivered = [parse_time(event["decided_at"]) for event in events if event["outcome"] == "delivered"]
    if args.stack_started_at and delivered:
        first = min(delivered) - parse_time(args.stack_started_at)
        print(f"first delivered message {first.total_seconds():.0f} s after `make dev` started")


if __name__ == "__main__":
    main()
