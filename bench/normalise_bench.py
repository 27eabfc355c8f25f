#!/usr/bin/env python3
"""Times `darkroom normalise` against a straightforward PIL script, per core, and measures
the memory of a 1,000-image drop.

usage: .venv/bin/python bench/normalise_bench.py [--copies 5] [--runs 5] [--thousand]

Inputs: the four test photos big enough for sdxl (12-MP bus, EXIF-rotated 1800x1200, the
4:1 panorama, the Pepper&Carrot page), each hard-linked --copies times. Both tools run
pinned to one core (taskset -c 0; darkroom with -j 1), sdxl + bucket:

- PIL: open, exif_transpose, convert to RGB, pick the bucket (the same kohya rule), one
  resize with the crop box (Lanczos), save PNG. Nothing else.
- darkroom: the same, plus ICC to sRGB, the quality scores (sharpness, noise, blockiness,
  clipping, perceptual hash), a thumbnail, a sidecar, the processing log and the reports.
  Thresholds and the duplicate check are off so every image is written, as PIL writes them.

--thousand also drops 1,000 images (hard links of the four) on `darkroom normalise` with all
cores and reports the peak RSS. Prints a Markdown table.
"""
import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from compare_pil import cpu_name, timed  # the same timing (wait4: wall, peak RSS, CPU)

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DARKROOM_SHARED", ROOT.parent / "shared"))
PHOTOS = [
    "photo_bus_4032x3024_p3.jpg",
    "photo_exif_orientation6.jpg",
    "panorama_4032x1008_4to1.jpg",
    "painting_peppercarrot_ep01_p03.jpg",
]

PIL_SCRIPT = r'''
import math, sys
from pathlib import Path
from PIL import Image, ImageOps

def buckets(side=1024, step=64):
    area = side * side
    lo, hi = side // 2 // step * step, side * 2 // step * step
    out = set()
    for w in range(lo, hi + 1, step):
        h = min(area // w // step * step, hi)
        if h >= lo:
            out.add((w, h)); out.add((h, w))
    return sorted(out)

BUCKETS = buckets()
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for i, path in enumerate(sorted(src.iterdir())):
    im = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = im.size
    a = math.log(w / h)
    bw, bh = min(BUCKETS, key=lambda b: (abs(math.log(b[0] / b[1]) - a), -b[0] * b[1]))
    if w / h > bw / bh:
        cw, ch = h * bw / bh, h
    else:
        cw, ch = w, w * bh / bw
    left, top = (w - cw) / 2, (h - ch) / 2
    out = im.resize((bw, bh), Image.LANCZOS, box=(left, top, left + cw, top + ch))
    out.save(dst / f"{i + 1:04d}.png")
'''


def make_inputs(folder, copies):
    folder.mkdir(parents=True)
    n = 0
    for copy in range(copies):
        for name in PHOTOS:
            n += 1
            os.link(SHARED / "testdata" / name, folder / f"{n:05d}_{name}")
    return n


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--darkroom", default=str(ROOT / "target/release/darkroom"))
    parser.add_argument("--thousand", action="store_true")
    args = parser.parse_args()
    off = ["--min-sharpness", "off", "--max-noise", "off", "--max-blockiness", "off",
           "--max-clipped", "off", "--duplicate-distance", "off"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        count = make_inputs(tmp / "in", args.copies)
        script = tmp / "pil_normalise.py"
        script.write_text(PIL_SCRIPT)
        pil, dark = [], []
        for run in range(args.runs):
            for out in ("pil", "dark"):
                shutil.rmtree(tmp / out, ignore_errors=True)
            pil.append(timed(["taskset", "-c", "0", sys.executable, str(script), str(tmp / "in"), str(tmp / "pil")]))
            dark.append(timed(["taskset", "-c", "0", args.darkroom, "normalise", str(tmp / "in"), str(tmp / "dark"),
                               "--preset", "sdxl", "--mode", "bucket", "-j", "1", *off]))
        written = len(list((tmp / "dark" / "images").glob("*.png")))
        if written != count:
            sys.exit(f"darkroom wrote {written} of {count} images")
        pil_s = statistics.median(r[0] for r in pil)
        dark_s = statistics.median(r[0] for r in dark)
        print(f"normalise sdxl + bucket, {count} images ({args.copies} x the 4 photos), one core, median of {args.runs}")
        print(f"machine: {cpu_name()}, {os.cpu_count()} cores\n")
        print("| tool (one core) | images/s | s per image | peak RSS |")
        print("|---|---|---|---|")
        print(f"| PIL script (resize + crop + save) | {count / pil_s:.2f} | {pil_s / count:.3f} | {max(r[1] for r in pil):.0f} MiB |")
        print(f"| darkroom normalise -j 1 (+ sRGB, scores, sidecars, reports) | {count / dark_s:.2f} | {dark_s / count:.3f} | {max(r[1] for r in dark):.0f} MiB |")
        print(f"\nspeed-up per core: {pil_s / dark_s:.2f}x")
        # Each PIL run and the darkroom run right after it see the same machine (a VM's speed
        # drifts by tens of percent over minutes): their ratios, and the median of those.
        paired = sorted(p[0] / d[0] for p, d in zip(pil, dark))
        print(f"paired runs: {', '.join(f'{r:.2f}x' for r in paired)} (median {statistics.median(paired):.2f}x)")
        if args.thousand:
            shutil.rmtree(tmp / "in")
            copies = math.ceil(1000 / len(PHOTOS))
            make_inputs(tmp / "in", copies)
            extra = sorted((tmp / "in").iterdir())[1000:]
            for p in extra:
                p.unlink()
            shutil.rmtree(tmp / "dark", ignore_errors=True)
            seconds, rss, _ = timed([args.darkroom, "normalise", str(tmp / "in"), str(tmp / "dark"),
                                  "--preset", "sdxl", "--mode", "bucket", *off])
            print(f"\n1,000 images at once, all cores: {seconds:.1f} s ({1000 / seconds:.1f} images/s), peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
