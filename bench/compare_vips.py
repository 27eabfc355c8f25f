#!/usr/bin/env python3
"""darkroom against libvips, side by side in one run.

usage: .venv/bin/python bench/compare_vips.py [--runs N] [--darkroom target/release/darkroom]

- split to a 1024x1024 proxy against `vipsthumbnail --size 1024x1024` (Debian's libvips:
  shrink-on-load, which is libjpeg-turbo's DCT-scaled decode for JPEGs), both as commands;
  inputs: the 12-MP bus photo as it is (baseline JPEG), the same photo at 15 MP as a
  progressive JPEG (q92) and as a 12-MP PNG;
- an additive merge of 15 MP (PNG out) against the same merge as a pyvips pipeline (PyPI
  `pyvips` with `pyvips-binary`), timed in-process so Python's start is not counted:
  load, crop the delta's proxy area, Lanczos3 up to full size, add less 127, PNG.

Wall time, median of N runs. Prints a Markdown table for docs/performance.md.
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyvips
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out" / "vips"
BUS = ROOT / "../shared/testdata/photo_bus_4032x3024_p3.jpg"


def run_time(cmd):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def median_time(work, runs):
    work()  # warm the page cache
    return statistics.median(timed(work) for _ in range(runs))


def timed(work):
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def vips_merge(original, delta_path, geometry, output):
    image = pyvips.Image.new_from_file(str(original), access="sequential")
    delta = pyvips.Image.new_from_file(str(delta_path)).crop(
        geometry["pad_left"], geometry["pad_top"], geometry["scaled_width"], geometry["scaled_height"]
    )
    delta = delta.resize(
        image.width / geometry["scaled_width"],
        vscale=image.height / geometry["scaled_height"],
        kernel="lanczos3",
    ).crop(0, 0, image.width, image.height)
    merged = (image.cast("short") + delta.cast("short") - 127).cast("uchar")
    merged.pngsave(str(output))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--darkroom", default=str(ROOT / "target/release/darkroom"))
    args = parser.parse_args()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    bus = Image.open(BUS)
    icc = bus.info.get("icc_profile")
    inputs = {
        "baseline JPEG 12 MP": OUT / "bus_12mp.jpg",
        "progressive JPEG 15 MP": OUT / "bus_15mp_progressive.jpg",
        "PNG 12 MP": OUT / "bus_12mp.png",
    }
    shutil.copy(BUS, inputs["baseline JPEG 12 MP"])
    bus.resize((4480, 3360), Image.LANCZOS).save(
        inputs["progressive JPEG 15 MP"], quality=92, progressive=True, icc_profile=icc
    )
    bus.save(inputs["PNG 12 MP"], icc_profile=icc)
    darkroom = [args.darkroom, "-q"]
    (OUT / "darkroom").mkdir()
    rows = []
    for label, path in inputs.items():
        ours = median_time(
            lambda: run_time(darkroom + ["--overwrite", "split", str(path), "1024", "1024",
                                         "--output-dir", str(OUT / "darkroom")]),
            args.runs,
        )
        theirs = median_time(
            lambda: run_time(["vipsthumbnail", str(path), "--size", "1024x1024",
                              "-o", str(OUT / "%s_vips.png")]),
            args.runs,
        )
        rows.append((f"split {label} -> 1024x1024", ours, theirs, "vipsthumbnail"))

    # The merge: a graded proxy of the 15-MP photo as the "model's" edit.
    original = OUT / "photo_15mp.jpg"
    bus.resize((4480, 3360), Image.LANCZOS).save(original, quality=92, icc_profile=icc)
    merge_dir = OUT / "merge"
    merge_dir.mkdir()
    shutil.copy(original, merge_dir / "photo.jpg")
    subprocess.run(darkroom + ["split", str(merge_dir / "photo.jpg"), "1024", "1024"], check=True,
                   stdout=subprocess.DEVNULL)
    proxy = Image.open(merge_dir / "photo_proxy.png").convert("RGB")
    ImageEnhance.Color(ImageEnhance.Contrast(proxy).enhance(1.15)).enhance(1.2).save(
        merge_dir / "processed.png")
    subprocess.run(darkroom + ["delta", str(merge_dir / "photo.jpg"), str(merge_dir / "processed.png"),
                               "1024", "1024"], check=True, stdout=subprocess.DEVNULL)
    geometry = json.loads((merge_dir / "photo_proxy_metadata.txt").read_text())["geometry"]
    delta = merge_dir / "photo_proxy_delta.png"
    ours = median_time(
        lambda: run_time(darkroom + ["--overwrite", "merge", str(merge_dir / "photo.jpg"), str(delta)]),
        args.runs,
    )
    theirs = median_time(lambda: vips_merge(original, delta, geometry, OUT / "vips_merged.png"), args.runs)
    rows.append(("additive merge 15 MP (PNG out)", ours, theirs, "pyvips pipeline, in-process"))

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; median of {args.runs}; "
          f"vipsthumbnail {subprocess.run(['vips', '--version'], capture_output=True, text=True).stdout.strip()}, "
          f"pyvips {pyvips.__version__} (libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)})")
    print()
    print("| operation | darkroom | libvips | against | darkroom faster by |")
    print("|---|---|---|---|---|")
    for name, a, b, against in rows:
        print(f"| {name} | {a:.3f} s | {b:.3f} s | {against} | **{b / a:.2f}x** |")


if __name__ == "__main__":
    sys.exit(main())
