#!/usr/bin/env python3
"""Upscale speed: darkroom's Rust path against Python onnxruntime on the same models.

Runs `examples/upscale_bench` (darkroom: per model, untiled and tiled at the recommended
context, median of RUNS) and the same untiled inference through the onnxruntime Python API
(the wheel in ./.venv: scripts/setup-venv), same input crop, same thread count (all cores),
median of RUNS. Both sides run ROUNDS times, alternating, so that a busy spell of the host
falls on both; each figure is the median over the rounds, and the speed is the median of
the rounds' own ratios. Prints a Markdown table.

Usage: .venv/bin/python bench/upscale_bench.py [--size 128] [--runs 3] [--tile 64] [--rounds 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DARKROOM_SHARED", os.path.join(ROOT, "..", "shared"))


def python_seconds(model, array, runs):
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        out = session.run(None, {name: array})[0]
        np.clip(out, 0, 1)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = os.path.join(SHARED, "models")
    subprocess.run(["cargo", "build", "--release", "--example", "upscale_bench"], check=True, cwd=ROOT)
    page = Image.open(os.path.join(SHARED, "testdata", "painting_peppercarrot_ep01_p03.jpg")).convert("RGB")
    crop = np.asarray(page.crop((400, 700, 400 + args.size, 700 + args.size)), dtype=np.float32) / 255.0
    array = np.ascontiguousarray(crop.transpose(2, 0, 1)[None])
    rounds = {}
    for _ in range(args.rounds):
        out = subprocess.run(
            [os.path.join(ROOT, "target/release/examples/upscale_bench"), models, str(args.size), str(args.runs), str(args.tile)],
            check=True, capture_output=True, text=True,
        ).stdout
        for line in out.strip().splitlines():
            r = json.loads(line)
            r["python_s"] = python_seconds(os.path.join(models, r["model"] + ".onnx"), array, args.runs)
            rounds.setdefault(r["model"], []).append(r)
    print(f"input {args.size}x{args.size}, median of {args.runs} runs, {args.rounds} alternating rounds, {os.cpu_count()} threads, onnxruntime {ort.__version__}")
    print("| model | scale | output MP/s (darkroom, untiled) | darkroom untiled | Python onnxruntime untiled | darkroom / Python speed (rounds) | tiled (tile {}, context) | tiling cost |".format(args.tile))
    print("|---|---|---|---|---|---|---|---|")
    for model, runs in rounds.items():
        med = lambda key: statistics.median(r[key] for r in runs)
        ratios = [r["python_s"] / r["untiled_s"] for r in runs]
        first = runs[0]
        print(
            f"| {model} | x{first['scale']} | {med('output_mp_per_s'):.3f} | {med('untiled_s'):.3f} s | {med('python_s'):.3f} s | "
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) | {med('tiled_s'):.3f} s (context {first['context']}) | {med('tiling_cost'):.2f} |"
        )


if __name__ == "__main__":
    main()
