#!/usr/bin/env python3
"""The HTTP listener under load (docs/performance.md, "The HTTP API under load").

Two runs of 500 files dropped into a split-to-proxy rule of the release daemon:
  1. alone: how long until every file's proxy is written (jobs per second);
  2. the same while wrk keeps 200 clients busy for 30 s (100 on /api/v1/jobs, 100 on
     /metrics): the API's p50/p99 latency and errors, and the job throughput beside it.

usage: bench/http_load.py [--files 500] [--seconds 30] [--json OUT]
Needs wrk (Debian package wrk) and a release build (cargo build --release).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "darkroom")
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))
IMAGE = os.path.join(SHARED, "testdata", "photo_coffee_600x400.png")

CONFIG = """[daemon]
root = "var"
stability_window = "500ms"
workers = 1

[http]
listen = "127.0.0.1:0"

[[rule]]
name = "photos"
recipe = "split-to-proxy"
size = "256x256"
"""


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def start_daemon(tree):
    with open(os.path.join(tree, "darkroom.toml"), "w") as f:
        f.write(CONFIG)
    log = open(os.path.join(tree, "daemon.log"), "w")
    daemon = subprocess.Popen([BINARY, "serve", "--config", "darkroom.toml"], cwd=tree,
                              stdout=subprocess.DEVNULL, stderr=log)
    address_file = os.path.join(tree, "var", "state", "http.address")
    deadline = time.time() + 30
    while not (os.path.exists(address_file) and open(address_file).read().strip()):
        if time.time() > deadline:
            sys.exit("the daemon did not start: " + open(os.path.join(tree, "daemon.log")).read())
        time.sleep(0.05)
    time.sleep(0.5)
    return daemon, "http://" + open(address_file).read().strip()


def awaiting(base):
    rules = get_json(base + "/api/v1/rules")["rules"]
    return rules[0]["jobs"].get("awaiting-return", 0)


def drop_files(tree, count):
    inbox = os.path.join(tree, "var", "inbox", "photos")
    for i in range(count):
        temp = os.path.join(inbox, f".drop{i:04d}.png")
        shutil.copyfile(IMAGE, temp)
        os.rename(temp, os.path.join(inbox, f"photo{i:04d}.png"))


def flow(tree, base, count):
    """Drops `count` files and returns the seconds until every proxy is written."""
    started = time.time()
    drop_files(tree, count)
    while awaiting(base) < count:
        time.sleep(0.25)
    return time.time() - started


def wrk(url, connections, seconds):
    return subprocess.Popen(
        ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "--timeout", "10s", url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def to_ms(text):
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text):
    p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)
    requests = int(re.search(r"(\d+) requests in", text).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests": requests,
        "p50_ms": to_ms(p50),
        "p99_ms": to_ms(p99),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (Debian package wrk)")
    results = {}
    with tempfile.TemporaryDirectory() as tree:
        daemon, base = start_daemon(tree)
        try:
            seconds = flow(tree, base, args.files)
        finally:
            daemon.terminate()
            daemon.wait()
        results["alone"] = {"seconds": seconds, "jobs_per_second": args.files / seconds}
        print(f"alone:     {args.files} files in {seconds:.1f} s = {args.files / seconds:.1f} jobs/s")
    with tempfile.TemporaryDirectory() as tree:
        daemon, base = start_daemon(tree)
        try:
            jobs = wrk(base + "/api/v1/jobs", 100, args.seconds)
            metrics = wrk(base + "/metrics", 100, args.seconds)
            time.sleep(1)
            seconds = flow(tree, base, args.files)
            jobs_out, _ = jobs.communicate()
            metrics_out, _ = metrics.communicate()
        finally:
            daemon.terminate()
            daemon.wait()
        results["under_load"] = {
            "seconds": seconds,
            "jobs_per_second": args.files / seconds,
            "api_jobs": parse_wrk(jobs_out),
            "metrics": parse_wrk(metrics_out),
        }
        print(f"with load: {args.files} files in {seconds:.1f} s = {args.files / seconds:.1f} jobs/s")
        for name in ["api_jobs", "metrics"]:
            r = results["under_load"][name]
            print(f"  {name:9} {r['requests']} requests in {args.seconds} s, p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, non-2xx {r['non_2xx']}, socket errors {r['socket_errors']}")
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
