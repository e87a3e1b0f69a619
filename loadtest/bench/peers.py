"""The peer systems: the Camel routes and the Parallel Consumer (Maven), Centrifugo (Go), each
built on demand and run against the same broker, upstream-sim and RGW as Relais."""

import os
import shutil
import subprocess
import sys
import time

from common import BOOTSTRAP, CpuMeter, http_get, infra_pids, log, peak_rss_bytes, ROOT, stop, sustained_rate


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
    meter = CpuMeter({name.removeprefix("the "): process.pid, **infra_pids()})
    try:
        first, handled, stored, deadline = None, 0, 0, time.time() + 600
        samples = []  # (time, records handled) from the first handled record on
        while time.time() < deadline:
            try:
                handled, stored = (int(x) for x in http_get(f"http://{count_address}/count").split())
            except (OSError, ValueError):
                pass
            now = time.time()
            if handled > 0 and first is None:
                first = (now, handled, stored)
                meter.start()
            if first is not None:
                samples.append((now, handled))
            if handled >= records or (first is not None and now - first[0] >= max_seconds):
                break
            if process.poll() is not None:
                sys.exit(f"{name} exited early; see {out / log_name}")
            time.sleep(0.25)
        else:
            sys.exit(f"{name} did not finish within 600 s; see {out / log_name}")
        elapsed = max(now - first[0], 1e-6)
        cpu = meter.stop(handled - first[1])
        return {"records_per_second": round((handled - first[1]) / elapsed, 1),
                # Measured as audit-service's: between 10 % and 90 % of the records handled.
                "sustained_records_per_second": (round(sustained_rate(samples, records), 1)
                                                 if handled >= records else None),
                "cpu": cpu, "cpu_us_per_record": cpu["components"][name.removeprefix("the ")]["cpu_us_per_unit"],
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
