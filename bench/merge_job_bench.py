#!/usr/bin/env python3
"""The daemon's merge job on a 12-MP photo: its time and the daemon's peak memory.

Runs the release binary `darkroom serve` on a temp tree with one split-to-proxy rule (the
defaults: a 1024x1024 proxy, guided merge with the refined delta), drops the 12-MP camera
JPEG into the inbox, waits for its proxy, returns the proxy with a tone-curve edit applied
(every byte v -> v + (255 - v) / 8, done on the PNG's decoded rows so it needs no imaging
library), and waits for the merge. Reports, per run (a fresh daemon each time):

  * the merge job's seconds as its provenance sidecar records them (the sum of its
    `timings_seconds`);
  * the daemon's peak RSS (VmHWM) after the merge; the split before it peaks lower;
  * the same run's split time, for scale.

Standard library only. Usage: python3 bench/merge_job_bench.py [--runs 3] [--json OUT]
"""

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The test suite's stdlib PNG reader (any filter), shared rather than copied.
sys.path.insert(0, os.path.join(ROOT, "tests", "tools"))
from nn_upscale import read_png  # noqa: E402
BINARY = os.environ.get("DARKROOM_BINARY", os.path.join(ROOT, "target", "release", "darkroom"))
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))
PHOTO = os.path.join(SHARED, "testdata", "photo_bus_4032x3024_p3.jpg")

CONFIG = """
[daemon]
root = "var"
workers = 1
stability_window = "0.3s"
log_level = "warn"

[[rule]]
name = "bench"
recipe = "split-to-proxy"
"""


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while True:
        found = predicate()
        if found:
            return found
        if time.time() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def png_chunks(data):
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def chunk(kind, body):
    return (
        struct.pack(">I", len(body))
        + kind
        + body
        + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def edited_proxy(path):
    """The proxy with a brightening tone curve, as an 8-bit PNG (filter None)."""
    header, kept = None, b""
    for kind, body in png_chunks(open(path, "rb").read()):
        if kind == b"IHDR":
            header = body
        elif kind in (b"iCCP", b"sRGB", b"gAMA", b"cHRM"):
            kept += chunk(kind, body)
    _, _, depth, colour, _, rows = read_png(path)
    if depth != 8 or colour not in (2, 6):
        raise SystemExit(f"unexpected proxy format: depth {depth}, colour type {colour}")
    curve = bytes(v + (255 - v) // 8 for v in range(256))
    out = b"".join(b"\0" + bytes(row).translate(curve) for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + kept
        + chunk(b"IDAT", zlib.compress(out, 6))
        + chunk(b"IEND", b"")
    )


def one_run(scratch):
    tree = tempfile.mkdtemp(prefix="merge-bench-", dir=scratch)
    config = os.path.join(tree, "darkroom.toml")
    with open(config, "w") as f:
        f.write(CONFIG)
    daemon = subprocess.Popen(
        [BINARY, "serve", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        var = os.path.join(tree, "var")
        inbox = os.path.join(var, "inbox", "bench")
        wait_for(lambda: os.path.isdir(inbox), 30, "the daemon's folders")
        staged = os.path.join(tree, "photo.jpg")
        shutil.copy(PHOTO, staged)
        os.rename(staged, os.path.join(inbox, "photo.jpg"))
        out_dir = os.path.join(var, "exchange", "out", "bench")
        proxy = wait_for(
            lambda: next(
                (os.path.join(out_dir, n) for n in os.listdir(out_dir) if n.endswith(".png")),
                None,
            ),
            120,
            "the proxy",
        )
        time.sleep(0.2)
        edited = edited_proxy(proxy)
        staged = os.path.join(tree, "return.png")
        with open(staged, "wb") as f:
            f.write(edited)
        os.rename(staged, os.path.join(var, "exchange", "in", "bench", os.path.basename(proxy)))
        sidecar = os.path.join(var, "metadata", "bench", "photo.json")
        wait_for(lambda: os.path.exists(sidecar), 300, "the merge's sidecar")
        time.sleep(0.2)
        provenance = json.load(open(sidecar))
        peak = peak_rss_kib(daemon.pid)
        timings = provenance.get("timings_seconds", {})
        return {
            "merge_seconds": sum(timings.values()),
            "timings": timings,
            "split_seconds": (provenance.get("proxy") or {}).get("seconds"),
            "proxy_source": (provenance.get("output") or {}).get("proxy_source", "rebuilt"),
            "peak_rss_mib": peak / 1024,
        }
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(tree, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", help="write the runs and medians here")
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        raise SystemExit(f"build it first: cargo build --release ({BINARY} is missing)")
    scratch = tempfile.mkdtemp(prefix="merge-bench-")
    try:
        runs = [one_run(scratch) for _ in range(args.runs)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for i, run in enumerate(runs, 1):
        print(
            f"run {i}: merge {run['merge_seconds']:.3f} s {run['timings']}, "
            f"split {run['split_seconds']:.3f} s, peak RSS {run['peak_rss_mib']:.0f} MiB, "
            f"proxy {run['proxy_source']}"
        )
    summary = {
        "photo": os.path.basename(PHOTO),
        "median_merge_seconds": statistics.median(r["merge_seconds"] for r in runs),
        "median_peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }
    print(
        f"median: merge {summary['median_merge_seconds']:.3f} s, "
        f"peak RSS {summary['median_peak_rss_mib']:.0f} MiB ({args.runs} runs)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
