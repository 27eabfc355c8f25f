#!/usr/bin/env python3
"""The daemon on a GPU: images dropped into an upscale inbox, run on CUDA, end to end.

Starts the release binary `darkroom serve` on a temp tree with `provider = "cuda"` and one
upscale rule per model asked for, drops IMAGES crops of SIZE x SIZE (PNG, cut from the
testdata photos) into each inbox at once, and measures, per rule:

  * wall time from the drop to the last output, images per second and output MP/s;
  * the first output's time (it includes loading the model) and the steady rate after it;
  * per-image latency, drop to output file (median and maximum);
  * that every output is there once, at SIZE * scale, with no temp file left;
  * the GPU memory in use at the end (nvidia-smi), and darkroom's own job counters
    from /metrics.

Needs PIL and the ONNX Runtime GPU library: ORT_DYLIB_PATH, or [runtime] onnxruntime found
the usual way (scripts/bench-cuda sets it up). Usage:
  python3 bench/cuda_daemon.py [--images 24] [--size 512] [--models realesrgan-x4plus-x4,...]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "darkroom")
SHARED = os.path.abspath(os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared")))
SOURCES = ["photo_bus_4032x3024_p3.jpg", "panorama_4032x1008_4to1.jpg", "painting_peppercarrot_ep01_p03.jpg"]
TILES = {"realesrgan-x4plus-x4": (512, 64), "realesrgan-x4plus-anime-6b-x4": (512, 64),
         "realesr-animevideov3-x4": (512, 32), "waifu2x-upconv7-photo-x2": (1024, 8)}


def config(models, root, provider, conv_search, tile=None, batch=1, devices=None, workers=1):
    text = f"""
[daemon]
root = "{root}"
workers = {workers}
stability_window = "1s"
log_level = "info"

[runtime]
provider = "{provider}"
cuda_conv_search = "{conv_search}"
{f"devices = [{devices}]" if devices else ""}

[http]
listen = "127.0.0.1:0"
"""
    for name in models:
        default_tile, context = TILES.get(name, (512, 64))
        tile = tile or default_tile
        text += f"""
[models.{name}]
path = "{os.path.join(SHARED, 'models', name + '.onnx')}"
tile = {tile}
context = {context}
batch = {batch}
domains = ["{name}"]

[[rule]]
name = "{name}"
recipe = "upscale"
domain = "{name}"
output_format = "png"
originals = "keep"
"""
    return text


def crops(count, size, into, varied):
    """COUNT different crops, round-robin over the testdata photos: SIZE x SIZE, or with
    `varied` each of its own size between SIZE/2 and SIZE (as photos of a collection are)."""
    os.makedirs(into, exist_ok=True)
    pictures = [Image.open(os.path.join(SHARED, "testdata", name)).convert("RGB") for name in SOURCES]
    paths = []
    for i in range(count):
        picture = pictures[i % len(pictures)]
        step = i // len(pictures)
        x = (step * 97) % max(1, picture.width - size)
        y = (step * 61) % max(1, picture.height - size)
        w, h = (size - (i * 37) % (size // 2), size - (i * 53) % (size // 2)) if varied else (size, size)
        path = os.path.join(into, f"crop{i:03d}.png")
        picture.crop((x, y, x + w, y + h)).save(path)
        paths.append(path)
    return paths


def gpu_memory_mib():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
        return int(out.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--models", default="realesrgan-x4plus-x4,realesr-animevideov3-x4")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--tile", type=int, help="every model's tile (default: 512, waifu2x 1024)")
    parser.add_argument("--batch", type=int, default=1, help="tiles per model run")
    parser.add_argument("--varied", action="store_true", help="crops of many sizes, not all SIZE x SIZE")
    parser.add_argument("--conv-search", default="heuristic", help="[runtime] cuda_conv_search: heuristic or exhaustive")
    parser.add_argument("--provider", default="cuda", help="cuda, or cpu to try the bench itself on a machine without a GPU")
    parser.add_argument("--devices", help="[runtime] devices, e.g. 0 or 0,1: one model lane per CUDA device")
    parser.add_argument("--workers", type=int, default=1, help="[daemon] workers (give one per device)")
    parser.add_argument("--json")
    args = parser.parse_args()
    models = args.models.split(",")
    work = tempfile.mkdtemp(prefix="darkroom-cuda-")
    root = os.path.join(work, "var")
    with open(os.path.join(work, "darkroom.toml"), "w") as f:
        f.write(config(models, root, args.provider, args.conv_search, args.tile, args.batch,
                       args.devices, args.workers))
    staged = crops(args.images, args.size, os.path.join(work, "staged"), args.varied)
    inputs = {os.path.splitext(os.path.basename(p))[0]: Image.open(p).size for p in staged}
    log = open(os.path.join(work, "daemon.log"), "w")
    daemon = subprocess.Popen([BINARY, "serve", "--config", os.path.join(work, "darkroom.toml")],
                              stdout=log, stderr=subprocess.STDOUT)
    results = {}
    try:
        address_file = os.path.join(root, "state", "http.address")
        deadline = time.time() + 60
        while not os.path.exists(address_file):
            if daemon.poll() is not None or time.time() > deadline:
                raise SystemExit(f"the daemon did not start; log:\n{open(log.name).read()}")
            time.sleep(0.1)
        address = open(address_file).read().strip()
        for name in models:
            inbox = os.path.join(root, "inbox", name)
            outdir = os.path.join(root, "processed", name, "images")
            dropped = {}
            started = time.time()
            for path in staged:
                target = os.path.join(inbox, os.path.basename(path))
                shutil.copyfile(path, target + ".part")
                os.rename(target + ".part", target)
                dropped[os.path.splitext(os.path.basename(path))[0]] = time.time()
            done = {}
            while len(done) < len(staged):
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon exited; log:\n{open(log.name).read()[-4000:]}")
                if time.time() - started > args.timeout:
                    status = urllib.request.urlopen(f"http://{address}/api/v1/status", timeout=10).read().decode()
                    raise SystemExit(f"{name}: {len(done)} of {len(staged)} outputs after {args.timeout} s\n"
                                     f"status: {status}\nlog:\n{open(log.name).read()[-6000:]}")
                for entry in os.scandir(outdir) if os.path.isdir(outdir) else []:
                    if entry.name.endswith(".png") and not entry.name.startswith("."):
                        stem = entry.name.split("_x")[0]
                        if stem in dropped and stem not in done:
                            done[stem] = (entry.stat().st_mtime, entry.path)
                time.sleep(0.05)
            finished = sorted(t for t, _ in done.values())
            wall = finished[-1] - started
            # After the first output the model is loaded: the rest is the steady rate.
            steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 and finished[-1] > finished[0] else 0
            latencies = [done[stem][0] - dropped[stem] for stem in done]
            sizes = {stem: Image.open(path).size for stem, (_, path) in done.items()}
            leftovers = [n for n in os.listdir(outdir) if n.startswith(".") or n.endswith((".tmp", ".part"))]
            scales = {(sizes[stem][0] / inputs[stem][0], sizes[stem][1] / inputs[stem][1]) for stem in done}
            scale = int(next(iter(scales))[0]) if len(scales) == 1 else 0
            out_mp = sum(w * h for w, h in sizes.values()) / 1e6
            results[name] = {
                "images": len(done), "size": args.size, "scale": scale, "wall_s": round(wall, 2),
                "images_per_s": round(len(done) / wall, 2), "output_mp_per_s": round(out_mp / wall, 2),
                "first_output_s": round(finished[0] - started, 2), "steady_images_per_s": round(steady, 2),
                "latency_median_s": round(statistics.median(latencies), 2),
                "latency_max_s": round(max(latencies), 2),
                "distinct_output_sizes": len(set(sizes.values())), "outputs": len(os.listdir(outdir)),
                "temp_files_left": leftovers,
            }
        metrics = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
        counters = [line for line in metrics.splitlines()
                    if re.match(r"darkroom_(jobs\{|job_duration_seconds_(sum|count)|stage_duration_seconds_(sum|count)|model_lane_busy|failures)", line)]
        gpu = gpu_memory_mib()
        status = json.load(urllib.request.urlopen(f"http://{address}/api/v1/status", timeout=10))
        lanes = status.get("model_lanes", [])
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
    providers = [line for line in open(log.name) if "provider" in line.lower() or "CUDA" in line][:6]
    report = {"results": results, "gpu_memory_used_mib_at_end": gpu, "metrics": counters, "model_lanes": lanes,
              "log_lines_about_the_provider": [line.strip() for line in providers]}
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    for name, r in results.items():
        print(f"| {name} | {r['images']} x {'up to ' if args.varied else ''}{args.size}px -> x{r['scale']} | {r['wall_s']} s | "
              f"{r['images_per_s']} img/s | {r['output_mp_per_s']} MP/s | {r['first_output_s']} s | {r['steady_images_per_s']} img/s | "
              f"{r['latency_median_s']} / {r['latency_max_s']} s |")
    bad = [n for n, r in results.items() if r["outputs"] != args.images or r["temp_files_left"] or not r["scale"]]
    shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
