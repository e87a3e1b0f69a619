"""SVG charts for the benchmark report, drawn by hand so `make bench` needs no plotting library.

Each chart is a plain SVG file beside report.md; `write_all` draws those the results allow and
returns the Markdown that shows them.
"""

from html import escape
from pathlib import Path

WIDTH, HEIGHT = 720, 360
LEFT, RIGHT, TOP, BOTTOM = 90, 20, 50, 80
COLOURS = ["#3b6ea8", "#d9822b", "#5a9e4b", "#a64d79", "#7f7f7f"]


def _frame(title, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15">{escape(title)}</text>\n'
            f'{body}</svg>\n')


def _nice_max(value):
    """A round axis maximum at or above `value`."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def _y_axis(maximum, unit):
    plot_height = HEIGHT - TOP - BOTTOM
    lines = []
    for tick in range(5):
        value = maximum * tick / 4
        y = HEIGHT - BOTTOM - plot_height * tick / 4
        lines.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        lines.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{value:,.0f}</text>')
    lines.append(f'<text x="16" y="{TOP + plot_height / 2}" transform="rotate(-90 16 {TOP + plot_height / 2})" '
                 f'text-anchor="middle">{escape(unit)}</text>')
    return "\n".join(lines) + "\n"


def bar_chart(title, unit, bars):
    """bars: [(label, value)], one colour each."""
    bars = [(label, value) for label, value in bars if value is not None]
    maximum = _nice_max(max((value for _, value in bars), default=1))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(bars), 1)
    body = _y_axis(maximum, unit)
    for index, (label, value) in enumerate(bars):
        height = plot_height * value / maximum
        x = LEFT + slot * index + slot * 0.15
        y = HEIGHT - BOTTOM - height
        body += (f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{height:.1f}" '
                 f'fill="{COLOURS[index % len(COLOURS)]}"/>\n'
                 f'<text x="{x + slot * 0.35:.1f}" y="{y - 5:.1f}" text-anchor="middle">{value:,.0f}</text>\n'
                 f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">'
                 f'{escape(label)}</text>\n')
    return _frame(title, body)


def grouped_bar_chart(title, unit, groups, series):
    """groups: x labels; series: [(name, [value per group])]."""
    values = [value for _, row in series for value in row if value is not None]
    maximum = _nice_max(max(values, default=1))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_width / max(len(groups), 1)
    width = slot * 0.7 / max(len(series), 1)
    body = _y_axis(maximum, unit)
    for group_index, group in enumerate(groups):
        body += (f'<text x="{LEFT + slot * (group_index + 0.5):.1f}" y="{HEIGHT - BOTTOM + 18}" '
                 f'text-anchor="middle">{escape(group)}</text>\n')
        for series_index, (_, row) in enumerate(series):
            value = row[group_index]
            if value is None:
                continue
            height = plot_height * value / maximum
            x = LEFT + slot * group_index + slot * 0.15 + width * series_index
            y = HEIGHT - BOTTOM - height
            body += (f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{height:.1f}" '
                     f'fill="{COLOURS[series_index % len(COLOURS)]}"/>\n'
                     f'<text x="{x + width / 2:.1f}" y="{y - 5:.1f}" text-anchor="middle">{value:,.1f}</text>\n')
    body += _legend([name for name, _ in series])
    return _frame(title, body)


def line_chart(title, unit, xs, series, x_unit):
    """xs: x values; series: [(name, [y per x])]."""
    values = [value for _, row in series for value in row]
    maximum = _nice_max(max(values, default=1))
    x_max = max(xs, default=1) or 1
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    body = _y_axis(maximum, unit)
    for tick in range(6):
        x_value = x_max * tick / 5
        x = LEFT + plot_width * tick / 5
        body += f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{x_value:,.0f}</text>\n'
    body += (f'<text x="{LEFT + plot_width / 2}" y="{HEIGHT - BOTTOM + 36}" text-anchor="middle">'
             f'{escape(x_unit)}</text>\n')
    for index, (_, row) in enumerate(series):
        points = " ".join(f"{LEFT + plot_width * x / x_max:.1f},{HEIGHT - BOTTOM - plot_height * y / maximum:.1f}"
                          for x, y in zip(xs, row))
        body += (f'<polyline points="{points}" fill="none" stroke="{COLOURS[index % len(COLOURS)]}" '
                 f'stroke-width="2"/>\n')
    body += _legend([name for name, _ in series])
    return _frame(title, body)


def _legend(names):
    items = []
    for index, name in enumerate(names):
        x = LEFT + 170 * index
        y = HEIGHT - 22
        items.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{COLOURS[index % len(COLOURS)]}"/>'
                     f'<text x="{x + 18}" y="{y}">{escape(name)}</text>')
    return "\n".join(items) + "\n"


def _rate(peer):
    return peer.get("records_per_second") if peer and "skipped" not in peer else None


def write_all(results, out: Path):
    """Draws the charts the results allow; returns the report's Markdown section for them."""
    charts = []
    worker = results.get("worker")
    if worker:
        charts.append(("worker.svg", "Kafka → HTTP, messages per second", bar_chart(
            "Kafka → HTTP on upstream-sim (higher is better)", "messages/s", [
                ("wrk (HTTP only)", worker["wrk_requests_per_second"]),
                ("Kafka consumer ceiling", worker.get("kafka_consumer_ceiling_per_second")),
                ("ingest-worker", worker["worker_messages_per_second"]),
                ("Camel", _rate(worker.get("camel"))),
                ("Camel + outcomes", _rate(worker.get("camel_with_outcomes"))),
            ])))
    audit = results.get("audit")
    if audit:
        rates = audit.get("rates") or {}
        charts.append(("audit.svg", "Kafka → RGW, records per second", bar_chart(
            "Kafka → S3, the same synthetic records, same RGW, median of rounds (higher is better)", "records/s", [
                ("audit-service", (rates.get("audit") or {}).get("median")),
                ("Camel", (rates.get("camel") or {}).get("median")),
            ])))
        charts.append(("audit-bandwidth.svg", "Bandwidth into RGW", bar_chart(
            "Bandwidth into RGW, 2M synthetic records (MiB/s)", "MiB/s", [
                ("raw PUT", audit["raw_put_bytes_per_second"] / 2**20),
                ("audit NDJSON", audit.get("audit_ndjson_bytes_per_second", 0) / 2**20),
                ("audit stored (gzip)", audit["audit_bytes_per_second"] / 2**20),
            ])))
    fanout = results.get("fanout")
    if fanout:
        rates = [f"{run['rate']} events/s" for run in fanout["runs"]]
        series = [("realtime-gateway p99", [run["latency_p99_ms"] for run in fanout["runs"]]),
                  ("realtime-gateway p50", [run["latency_p50_ms"] for run in fanout["runs"]])]
        centrifugo = fanout.get("centrifugo") or {}
        if "runs" in centrifugo:
            series += [("Centrifugo p99", [run["latency_p99_ms"] for run in centrifugo["runs"]]),
                       ("Centrifugo p50", [run["latency_p50_ms"] for run in centrifugo["runs"]])]
        charts.append(("fanout.svg", "Fan-out latency", grouped_bar_chart(
            f"Produce → receipt latency, {fanout['clients']} WebSocket clients (lower is better)", "ms",
            rates, series)))
    rss = []
    if worker:
        rss += [("worker", worker["worker_peak_rss_bytes"]), ("Camel HTTP", (worker.get("camel") or {}).get("peak_rss_bytes"))]
    if audit:
        rss += [("audit", audit["audit_peak_rss_bytes"]), ("Camel S3", (audit.get("camel") or {}).get("peak_rss_bytes"))]
    if fanout:
        rss += [("gateway", fanout["gateway_peak_rss_bytes"]),
                ("Centrifugo", (fanout.get("centrifugo") or {}).get("peak_rss_bytes"))]
    if rss:
        charts.append(("rss.svg", "Peak RSS per benchmark", bar_chart(
            "Peak RSS in each benchmark (lower is better)", "MiB",
            [(name, value / 2**20 if value else None) for name, value in rss])))
    outage = results.get("outage")
    if outage and outage["samples"]:
        names = list(outage["peak_rss_bytes"])
        xs = [sample["t"] for sample in outage["samples"]]
        charts.append(("outage-rss.svg", "RSS through the upstream outage", line_chart(
            f"RSS through a {outage['outage_seconds']} s upstream outage (starts at 20 s)", "MiB", xs,
            [(name, [sample[name] / 2**20 for sample in outage["samples"]]) for name in names], "seconds")))
    lines = ["## Charts", ""]
    for file_name, caption, svg in charts:
        (out / file_name).write_text(svg)
        lines.append(f"![{caption}]({file_name})")
        lines.append("")
    return "\n".join(lines)
