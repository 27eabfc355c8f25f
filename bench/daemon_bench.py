#!/usr/bin/env python3
"""Daemon benchmark: intake latency, per-job overhead, idle CPU and RSS with 1,000 files.

Runs the release binary `darkroom serve` on a temp tree (split-to-proxy, 64x64 proxies,
one worker, the default 2 s stability window) and measures:

  * idle CPU of the daemon over 10 s with nothing to do (no busy polling);
  * intake-to-claim latency of 1,000 small PNGs copied in (close-write: claimed at once)
    and of 200 more hard-linked in (no close-write: claimed after the stability window);
  * per-job time of the daemon (claim to proxy written, 1,000 jobs back to back) against
    the bare work of `darkroom batch-split -j 1` on the same files;
  * peak and waiting RSS of the daemon while the 1,000 files queue.

Standard library only. Usage: python3 bench/daemon_bench.py [--files 1000] [--json OUT]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "darkroom")
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))
SAMPLE = os.path.join(SHARED, "testdata", "tiny_17x9.png")
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONFIG = """
[daemon]
root = "var"
workers = 1
stability_window = "2s"
log_level = "warn"

[[rule]]
name = "bench"
recipe = "split-to-proxy"
size = "64x64"
"""


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def read_log(path):
    entries = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                entries.append(json.loads(line))
    return entries


def parse_at(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--linked", type=int, default=200)
    parser.add_argument("--json", help="write the figures here as JSON")
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        raise SystemExit("build first: cargo build --release")

    work = tempfile.mkdtemp(prefix="darkroom-bench-")
    try:
        with open(os.path.join(work, "darkroom.toml"), "w") as f:
            f.write(CONFIG)
        inbox = os.path.join(work, "var", "inbox", "bench")
        log_path = os.path.join(work, "var", "metadata", "processing_log.jsonl")
        stderr = open(os.path.join(work, "daemon.stderr"), "w")
        daemon = subprocess.Popen(
            [BINARY, "serve", "--config", os.path.join(work, "darkroom.toml")],
            stderr=stderr,
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: os.path.isdir(inbox) and os.path.exists(log_path) or os.path.isdir(inbox), 30, "start")
        time.sleep(1.0)

        # Idle CPU.
        c0, t0 = cpu_seconds(daemon.pid), time.time()
        time.sleep(10)
        idle_cpu = (cpu_seconds(daemon.pid) - c0) / (time.time() - t0) * 100
        idle_rss = rss_kib(daemon.pid)

        # One file at a time (an unloaded daemon): the latency a person dropping a file sees.
        single = {}
        for i in range(20):
            path = os.path.join(inbox, f"single_{i:03d}.png")
            with open(SAMPLE, "rb") as src, open(path, "wb") as f:
                f.write(src.read())
            single[path] = time.time()
            time.sleep(0.3)
        wait_for(lambda: sum(1 for e in read_log(log_path) if e.get("to") == "awaiting-return") >= 20, 60, "single files")
        entries = read_log(log_path)
        claimed = {e["file"]: parse_at(e["at"]) for e in entries if e.get("to") == "queued" and e.get("from") is None}
        single_latencies = [claimed[p] - t for p, t in single.items() if p in claimed]
        base = 20

        # 1,000 files copied in (close-write), as fast as Python can.
        sample = open(SAMPLE, "rb").read()
        dropped = {}
        rss_samples = []
        for i in range(args.files):
            path = os.path.join(inbox, f"img_{i:05d}.png")
            with open(path, "wb") as f:
                f.write(sample)
            dropped[path] = time.time()
            if i % 50 == 0:
                rss_samples.append(rss_kib(daemon.pid))

        def count(state, kind="split"):
            return sum(1 for e in read_log(log_path) if e.get("to") == state and e.get("kind") == kind)

        def sample_rss_until_done():
            rss_samples.append(rss_kib(daemon.pid))
            return count("awaiting-return") >= base + args.files

        wait_for(sample_rss_until_done, 600, "the proxies")
        entries = read_log(log_path)
        claimed = {e["file"]: parse_at(e["at"]) for e in entries if e.get("to") == "queued" and e.get("from") is None}
        written = sorted(parse_at(e["at"]) for e in entries if e.get("to") == "awaiting-return")
        latencies = [claimed[p] - t for p, t in dropped.items() if p in claimed]
        first_claim = min(claimed[p] for p in dropped)
        per_job_daemon = (written[-1] - first_claim) / args.files
        peak_rss = rss_kib(daemon.pid, "VmHWM")

        # Hard links: no close-write event, so the stability window applies.
        outside = os.path.join(work, "outside")
        os.makedirs(outside)
        linked = {}
        for i in range(args.linked):
            source = os.path.join(outside, f"l_{i:05d}.png")
            with open(source, "wb") as f:
                f.write(sample)
            target = os.path.join(inbox, f"linked_{i:05d}.png")
            os.link(source, target)
            linked[target] = time.time()
        wait_for(lambda: count("queued") >= base + args.files + args.linked, 120, "the linked files")
        entries = read_log(log_path)
        claimed = {e["file"]: parse_at(e["at"]) for e in entries if e.get("to") == "queued" and e.get("from") is None}
        window_latencies = [claimed[p] - t for p, t in linked.items() if p in claimed]

        daemon.terminate()
        daemon.wait(timeout=120)

        # The bare CLI work on the same files, one at a time.
        cli_dir = os.path.join(work, "cli")
        os.makedirs(cli_dir)
        for i in range(args.files):
            shutil.copyfile(SAMPLE, os.path.join(cli_dir, f"img_{i:05d}.png"))
        t0 = time.time()
        subprocess.run(
            [BINARY, "-q", "batch-split", os.path.join(cli_dir, "*.png"), "64", "64", "-j", "1"],
            check=True,
        )
        per_job_cli = (time.time() - t0) / args.files
    finally:
        shutil.rmtree(work, ignore_errors=True)

    figures = {
        "files": args.files,
        "idle_cpu_percent": round(idle_cpu, 3),
        "idle_rss_mib": round(idle_rss / 1024, 1),
        "claim_latency_single_file_ms": {
            "median": round(statistics.median(single_latencies) * 1000, 1),
            "max": round(max(single_latencies) * 1000, 1),
        },
        "claim_latency_close_write_ms": {
            "median": round(statistics.median(latencies) * 1000, 1),
            "p95": round(percentile(latencies, 95) * 1000, 1),
            "max": round(max(latencies) * 1000, 1),
        },
        "claim_latency_window_ms": {
            "median": round(statistics.median(window_latencies) * 1000, 1),
            "p95": round(percentile(window_latencies, 95) * 1000, 1),
            "max": round(max(window_latencies) * 1000, 1),
        },
        "per_job_daemon_ms": round(per_job_daemon * 1000, 2),
        "per_job_cli_ms": round(per_job_cli * 1000, 2),
        "per_job_overhead_ms": round((per_job_daemon - per_job_cli) * 1000, 2),
        "rss_while_waiting_max_mib": round(max(rss_samples) / 1024, 1),
        "peak_rss_mib": round(peak_rss / 1024, 1),
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
