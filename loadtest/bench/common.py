"""What every benchmark shares: the native stack's addresses, starting and stopping the
services, reading their metrics, and where the CPU went (CpuMeter)."""

import json
import os
from pathlib import Path
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request


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


def committed_lag(group, topic):
    """Records of `topic` past the offsets `group` has committed (a partition without a committed
    offset counts whole), by Kafka's own consumer-group tool; None while the group has none."""
    output = kafka_tool("org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--bootstrap-server",
                        BOOTSTRAP, "--describe", "--group", group)
    rows = [line.split() for line in output.splitlines()]
    rows = [fields for fields in rows if len(fields) >= 6 and fields[0] == group and fields[1] == topic]
    if not rows:
        return None
    # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG ...
    return sum(int(fields[5]) if fields[5].isdigit() else int(fields[4]) for fields in rows)


def produce_sequenced(topic, count, keys, seconds, scenario_path, event_type="order.created", id_prefix=None,
                      admin_port=19105):
    """`count` valid events of one type over `keys` keys, with their per-key sequence in `data`,
    spread over `seconds` by loadgen; returns how many the broker acknowledged."""
    scenario_path.write_text(f'name = "{scenario_path.stem}"\nseed = 7\nkeys = {keys}\nsequence = true\n'
                             f'payload_bytes = [40, 80]\n[types]\n"{event_type}" = 1.0\n[mix]\nvalid = 1.0\n'
                             f'[[phase]]\nname = "fill"\nseconds = {seconds}\nrate = {max(1, count // seconds)}\n')
    command = [str(RELEASE / "loadgen"), "--kafka-bootstrap", BOOTSTRAP, "ingress", "--scenario", str(scenario_path),
               "--topic", topic, "--admin-addr", f"127.0.0.1:{admin_port}"]
    if id_prefix:
        command += ["--id-prefix", id_prefix]
    output = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "RUST_LOG": "warn"}).stdout
    return json.loads(output.strip().splitlines()[-1])["sent"]


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


def metric_sum(text, name, **labels):
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if not (line.startswith(name + " ") or line.startswith(name + "{")):
            continue
        if all(label in line for label in wanted):
            try:
                total += float(line.split("#")[0].split()[-1])
            except ValueError:
                continue
    return total


def wait_http(url, seconds=30):
    deadline = time.time() + seconds
    last_error = None
    while time.time() < deadline:
        try:
            http_get(url)
            return
        except OSError as error:
            last_error = error
            time.sleep(0.1)
    sys.exit(f"{url} did not answer within {seconds}s (last: {last_error})")


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


def listen_addresses(env):
    """The loopback addresses a service is told to listen on: its `RELAIS_*_LISTEN` and
    `RELAIS_*_ADDR` settings (every service of the bench names its own addresses so)."""
    return [value for key, value in env.items()
            if key.startswith("RELAIS_") and key.endswith(("_LISTEN", "_ADDR")) and value.startswith("127.0.0.1:")]


def ensure_free(address, binary):
    """Stops the bench when something already answers where `binary` is to listen. The service
    would fail to bind while its readiness check reached the other process: a service left from
    an earlier run, perhaps with other faults set, would then be measured in its place."""
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        probe.settimeout(1)
        if probe.connect_ex((host, int(port))) == 0:
            sys.exit(f"{address}, where {binary} is to listen, is taken by another process "
                     f"(left from an earlier run?): stop it and run again")


def start(binary, env, log_path):
    for address in listen_addresses(env):
        ensure_free(address, binary)
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


def sustained_rate(samples, total):
    """Units per second between the samples where 10 % and 90 % of `total` were reached: the
    steady rate, without the start (a group join) and the last stragglers at the end."""
    def first_at(share):
        return next(sample for sample in samples if sample[1] >= share * total)
    (t0, v0), (t1, v1) = first_at(0.1), first_at(0.9)
    return (v1 - v0) / max(t1 - t0, 1e-6)


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


def mib(value):
    return f"{value / 2**20:.1f} MiB"
