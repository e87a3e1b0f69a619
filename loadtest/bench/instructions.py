"""Instructions per message: the worker beside the bare worker, counted instead of timed.

CPU time on a shared machine swings with the hour; the number of instructions a process
executes for the same work does not. Each system runs under valgrind's callgrind over two
ingress topics of different sizes, and the difference between the two counts divided by the
difference in messages is what one message costs, start-up and shutdown cancelled out. The
split between the runtime's threads and librdkafka's, and the functions the worker spends most
in, say where its instructions go.

Under valgrind every thread shares one core and runs about fifty times slower, so both
systems keep fewer deliveries in flight than in the timed run; instructions per message barely
depend on that. Cache misses and waits are not counted: a ratio of instructions is a floor
under the ratio of CPU time, not the same figure.
"""

import os
import re
import shutil
import subprocess
import sys
import time

from common import (BOOTSTRAP, create_topic, http_get, log, metric, RELEASE, ROOT, SIM_ADMIN, SIM_API, start, stop,
                    wait_http, WORKER_ADMIN)
from worker import produce, worker_config

SIZES = (2_000, 8_000)
IN_FLIGHT = 32
# Where the instructions of each kind of thread start.
RUNTIME_THREADS = "tokio::runtime::scheduler::multi_thread::worker::run"
LIBRDKAFKA_THREADS = "rd_kafka_broker_thread_main"
ANNOTATED_LINE = re.compile(r"\s*([\d,]+) \([ \d.]+%\)\s+(.+)$")


def ensure_valgrind():
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        subprocess.run(["bash", "-c", '. "$0" && apt_install valgrind', str(ROOT / "deploy/native/lib.sh")],
                       check=True)


def callgrind(output):
    return ["valgrind", "--tool=callgrind", "--fair-sched=yes", f"--callgrind-out-file={output}"]


def total_instructions(callgrind_file):
    """The count callgrind wrote at the end of its output file."""
    with open(callgrind_file) as data:
        for line in data:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    sys.exit(f"{callgrind_file}: no instruction total")


def function_instructions(annotated):
    """Instructions by function from `callgrind_annotate --auto=no` output. Inlined code is
    listed under the file it came from; its instructions are added to its function's."""
    functions = {}
    for line in annotated.splitlines():
        match = ANNOTATED_LINE.match(line)
        if not match or "PROGRAM TOTALS" in line:
            continue
        name = match.group(2).split(" [")[0]
        name = name.split(":", 1)[1] if ":" in name else name
        functions[name] = functions.get(name, 0) + int(match.group(1).replace(",", ""))
    return functions


def annotate(callgrind_file, inclusive):
    return subprocess.run(["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
                           "--auto=no", str(callgrind_file)], capture_output=True, text=True, check=True).stdout


def inclusive_of(annotated, function):
    """A function's inclusive count; the largest where inlining lists it more than once."""
    counts = [int(m.group(1).replace(",", "")) for m in map(ANNOTATED_LINE.match, annotated.splitlines())
              if m and m.group(2).split(" [")[0].endswith(":" + function)]
    return max(counts, default=0)


def per_message(small, large, sizes):
    return (large - small) / (sizes[1] - sizes[0])


def worker_run(out, stamp, ingress, messages):
    """The worker under callgrind until it has committed every message of `ingress`."""
    name = f"worker-{messages}"
    config = out / f"instructions-{name}.toml"
    worker_config(config, f"bench-{stamp}-instructions-{name}", ingress, f"bench.{stamp}.instructions.{name}.",
                  IN_FLIGHT)
    output = out / f"instructions-{name}.callgrind"
    env = {**os.environ, "RELAIS_WORKER_CONFIG": str(config), "RELAIS_ADMIN_ADDR": WORKER_ADMIN,
           "RELAIS_WORKER_ID": f"bench-{stamp}-instructions-{name}", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP,
           "RUST_LOG": "warn"}
    with open(out / f"instructions-{name}.log", "ab") as log_file:
        worker = subprocess.Popen(callgrind(output) + [str(RELEASE / "ingest-worker")], env=env, stdout=log_file,
                                  stderr=log_file, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 1200
        while metric(scrape(), "relais_worker_committed_messages_total") < messages:
            if worker.poll() is not None:
                sys.exit(f"the worker under callgrind exited early; see {out}/instructions-{name}.log")
            if time.time() > deadline:
                sys.exit("the worker under callgrind did not commit its messages within 1,200 s")
            time.sleep(1)
    finally:
        stop(worker)
        # callgrind writes its counts when the process has ended.
        worker.wait(timeout=300)
    return output


def scrape():
    try:
        return http_get(f"http://{WORKER_ADMIN}/metrics", timeout=10)
    except OSError:
        return ""


def bare_worker_run(out, stamp, ingress, messages):
    """`loadgen bare-worker` under callgrind over the whole of `ingress`."""
    name = f"bare-worker-{messages}"
    topics = [f"bench.{stamp}.instructions.{name}.{kind}" for kind in ("audit", "events")]
    for topic in topics:
        create_topic(topic, 12)
    output = out / f"instructions-{name}.callgrind"
    with open(out / f"instructions-{name}.log", "ab") as log_file:
        subprocess.run(
            callgrind(output) + [str(RELEASE / "loadgen"), "bare-worker", "--topic", ingress, "--group",
                                 f"bench-{stamp}-instructions-{name}", "--audit-topic", topics[0], "--events-topic",
                                 topics[1], "--url", f"http://{SIM_API}", "--concurrency", str(IN_FLIGHT),
                                 "--messages", str(messages)],
            stdout=subprocess.DEVNULL, stderr=log_file, stdin=subprocess.DEVNULL, check=True, timeout=1200,
            env={**os.environ, "RUST_LOG": "warn", "RELAIS_KAFKA_BOOTSTRAP": BOOTSTRAP})
    return output


def summary(files, top):
    """Instructions per message in all, by kind of thread, and by function (the `top` largest)."""
    small, large = files
    inclusive = [annotate(path, inclusive=True) for path in files]
    own = [function_instructions(annotate(path, inclusive=False)) for path in files]
    functions = {name: per_message(own[0].get(name, 0), own[1].get(name, 0), SIZES)
                 for name in set(own[0]) | set(own[1])}
    return {
        "instructions_per_message": round(per_message(total_instructions(small), total_instructions(large), SIZES)),
        "runtime_threads": round(per_message(*(inclusive_of(text, RUNTIME_THREADS) for text in inclusive), SIZES)),
        "librdkafka_threads": round(per_message(*(inclusive_of(text, LIBRDKAFKA_THREADS) for text in inclusive),
                                                SIZES)),
        "top_functions": [[name, round(count)] for name, count in
                          sorted(functions.items(), key=lambda item: -item[1])[:top]],
    }


def instructions_benchmark(args, out, stamp):
    ensure_valgrind()
    ingress = {}
    for messages in SIZES:
        ingress[messages] = f"bench.{stamp}.instructions.ingress-{messages}"
        create_topic(ingress[messages], 12)
        produce(ingress[messages], messages)
    sim = start("upstream-sim", {"RELAIS_SIM_LISTEN": SIM_API, "RELAIS_ADMIN_ADDR": SIM_ADMIN},
                out / "upstream-sim-instructions.log")
    try:
        wait_http(f"http://{SIM_ADMIN}/healthz")
        runs = {}
        for name, run in (("worker", worker_run), ("bare_worker", bare_worker_run)):
            files = []
            for messages in SIZES:
                log(f"counting the instructions of the {name.replace('_', ' ')} over {messages} messages")
                files.append(run(out, stamp, ingress[messages], messages))
            runs[name] = summary(files, top=15)
    finally:
        stop(sim)
    return {"sizes": list(SIZES), "in_flight": IN_FLIGHT, **runs,
            "ratio": round(runs["worker"]["instructions_per_message"]
                           / runs["bare_worker"]["instructions_per_message"], 2)}
