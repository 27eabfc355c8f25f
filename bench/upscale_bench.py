#!/usr/bin/env python3
"""Upscale speed: darkroom's Rust path against Python onnxruntime on the same models.

Runs `examples/upscale_bench` (darkroom: per model, untiled and tiled at the recommended
context, median of RUNS) and the same untiled inference through the onnxruntime Python API
(the wheel in ./.venv: scripts/setup-venv), same input crop, same thread count (all cores),
median of RUNS. Both sides time image to image: 8-bit RGB in, the model's tensors, 8-bit RGB
out. Both sides run ROUNDS times, alternating, so that a busy spell of the host
falls on both; each figure is the median over the rounds, and the speed is the median of
the rounds' own ratios. Prints a Markdown table.

Usage: .venv/bin/python bench/upscale_bench.py [--size 128] [--runs 3] [--tile 64] [--rounds 3]
           [--provider cpu|cuda] [--models a,b] [--batch N] [--no-build]

With --provider cuda both sides run on the GPU (onnxruntime-gpu in the Python that runs this
script; scripts/bench-cuda sets that up) and both first run each shape once, untimed, so
that cuDNN's kernel search is not counted.
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


CPU_MODELS = "waifu2x-upconv7-photo-x2,realesr-animevideov3-x4,realesrgan-x4plus-anime-6b-x4"


def python_seconds(model, picture, runs, provider, conv_search):
    """Image to image, as a Python user writes it: to floats, the run, clip, back to 8 bits."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    wanted = "CUDAExecutionProvider" if provider == "cuda" else "CPUExecutionProvider"
    chosen = [(wanted, {"cudnn_conv_algo_search": conv_search.upper()})] if provider == "cuda" else [wanted]
    session = ort.InferenceSession(model, options, providers=chosen)
    if session.get_providers()[0] != wanted:
        raise SystemExit(f"onnxruntime {ort.__version__} could not start {wanted} (got {session.get_providers()})")
    name = session.get_inputs()[0].name

    def upscale():
        array = np.ascontiguousarray((np.asarray(picture, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None])
        out = np.clip(session.run(None, {name: array})[0][0], 0, 1)
        return Image.fromarray(np.round(out * 255.0).astype(np.uint8).transpose(1, 2, 0))

    upscale()  # the first run of a shape picks kernels
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        upscale()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", default=CPU_MODELS, help="comma-separated model names")
    parser.add_argument("--batch", type=int, default=1, help="also time darkroom's tiled run with N tiles per model run")
    parser.add_argument("--conv-search", default="heuristic", help="cuDNN's algorithm search on CUDA: heuristic or exhaustive (both sides)")
    parser.add_argument("--no-build", action="store_true", help="use the built target/release/examples/upscale_bench")
    args = parser.parse_args()
    models = os.path.join(SHARED, "models")
    if args.provider == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if not args.no_build:
        subprocess.run(["cargo", "build", "--release", "--example", "upscale_bench"], check=True, cwd=ROOT)
    page = Image.open(os.path.join(SHARED, "testdata", "painting_peppercarrot_ep01_p03.jpg")).convert("RGB")
    crop = page.crop((400, 700, 400 + args.size, 700 + args.size))
    rounds = {}
    for _ in range(args.rounds):
        out = subprocess.run(
            [os.path.join(ROOT, "target/release/examples/upscale_bench"), models, str(args.size), str(args.runs), str(args.tile),
             args.provider, args.models, str(args.batch), args.conv_search],
            check=True, capture_output=True, text=True, env={**os.environ, "DARKROOM_SHARED": SHARED},
        ).stdout
        for line in out.strip().splitlines():
            r = json.loads(line)
            if r["provider"].lower() != args.provider:
                raise SystemExit(f"darkroom ran {r['model']} on {r['provider']}, not {args.provider}")
            r["python_s"] = python_seconds(os.path.join(models, r["model"] + ".onnx"), crop, args.runs, args.provider, args.conv_search)
            rounds.setdefault(r["model"], []).append(r)
    search = f" (cuDNN search {args.conv_search})" if args.provider == "cuda" else ""
    print(f"input {args.size}x{args.size}, {args.provider}{search}, median of {args.runs} runs, {args.rounds} alternating rounds, {os.cpu_count()} threads, onnxruntime {ort.__version__}")
    batched = f" | tiled, {args.batch} tiles per run" if args.batch > 1 else ""
    print("| model | scale | output MP/s (darkroom, untiled) | darkroom untiled | Python onnxruntime untiled | darkroom / Python speed (rounds) | tiled (tile {}, context, largest difference from untiled in levels) | tiling cost{} |".format(args.tile, batched))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if batched else ""))
    for model, runs in rounds.items():
        med = lambda key: statistics.median(r[key] for r in runs)
        ratios = [r["python_s"] / r["untiled_s"] for r in runs]
        first = runs[0]
        print(
            f"| {model} | x{first['scale']} | {med('output_mp_per_s'):.3f} | {med('untiled_s'):.3f} s | {med('python_s'):.3f} s | "
            f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)}) | {med('tiled_s'):.3f} s (context {first['context']}, seams {max(r['tiled_max_diff'] for r in runs)}) | {med('tiling_cost'):.2f} |"
            + (f" {med('tiled_batch_s'):.3f} s (seams {max(r['tiled_batch_max_diff'] for r in runs)}) |" if batched else "")
        )


if __name__ == "__main__":
    main()
