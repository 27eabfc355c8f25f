#!/usr/bin/env python3
"""Times darkroom against the PIL baseline on a 15-MP photo, side by side, in one run.

usage: .venv/bin/python bench/compare_pil.py [--runs N] [--darkroom target/release/darkroom]

Makes bench-out/photo_15mp.jpg (the 12-MP bus photo resized to 4480x3360, JPEG q92), grades
a proxy as a stand-in model, then times split and merge for both tools (median of N runs,
peak RSS of each run from wait4) and compares output sizes. Prints a Markdown table.
"""
import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"


def timed(cmd):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if status != 0:
        sys.exit(f"{cmd} failed: {err}")
    # ru_maxrss is KiB on Linux; CPU time (user + sys) is barely touched by VM steal.
    return elapsed, usage.ru_maxrss / 1024.0, usage.ru_utime + usage.ru_stime


def measure(cmd, runs):
    results = [timed(cmd) for _ in range(runs)]
    wall = statistics.median(r[0] for r in results)
    cpu = statistics.median(r[2] for r in results)
    return wall, max(r[1] for r in results), cpu


def cpu_name():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--darkroom", default=str(ROOT / "target/release/darkroom"))
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    photo = OUT / "photo_15mp.jpg"
    if not photo.exists():
        src = Image.open(ROOT / "../shared/testdata/photo_bus_4032x3024_p3.jpg")
        src.resize((4480, 3360), Image.LANCZOS).save(photo, quality=92, icc_profile=src.info.get("icc_profile"))
    dr, pil = OUT / "darkroom", OUT / "pil"
    for d in (dr, pil):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    shutil.copy(photo, dr / "photo.jpg")
    baseline = [sys.executable, str(ROOT / "bench/imgproxyproc_pil.py")]
    quiet = [args.darkroom, "-q"]

    rows = []
    t_dr, m_dr, c_dr = measure(quiet + ["split", str(dr / "photo.jpg"), "1024", "1024"], args.runs)
    t_pil, m_pil, c_pil = measure(baseline + ["split", str(photo), "1024", "1024", str(pil)], args.runs)
    rows.append(("split 15 MP -> 1024x1024", t_dr, t_pil, c_dr, c_pil, m_dr, m_pil, None))

    # The "model": a grade on the proxy, the same input for both tools' deltas.
    proxy = Image.open(dr / "photo_proxy.png").convert("RGB")
    graded = ImageEnhance.Color(ImageEnhance.Contrast(proxy).enhance(1.15)).enhance(1.2)
    graded.save(dr / "processed.png")
    subprocess.run(quiet + ["delta", str(dr / "photo.jpg"), str(dr / "processed.png"), "1024", "1024"], check=True)
    shutil.copy(dr / "photo_proxy_delta.png", pil / "proxy_delta.png")

    t_dr, m_dr, c_dr = measure(quiet + ["merge", str(dr / "photo.jpg"), str(dr / "photo_proxy_delta.png")], args.runs)
    t_pil, m_pil, c_pil = measure(baseline + ["merge", str(photo), str(pil / "proxy_delta.png"), str(pil / "merged.png")], args.runs)
    size_ratio = (dr / "photo_merged.png").stat().st_size / (pil / "merged.png").stat().st_size
    rows.append(("merge 15 MP (PNG out)", t_dr, t_pil, c_dr, c_pil, m_dr, m_pil, size_ratio))

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; runs: median of {args.runs}; "
          f"Pillow {Image.__version__}; input {photo.name} 4480x3360")
    print()
    print("| operation | darkroom wall | PIL wall | speed-up (wall) | darkroom CPU | PIL CPU | "
          "darkroom peak RSS | PIL peak RSS | output size vs PIL |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, a, b, ca, cb, ma, mb, ratio in rows:
        r = f"{ratio:.3f}x" if ratio else "-"
        print(f"| {name} | {a:.3f} s | {b:.3f} s | **{b / a:.1f}x** | {ca:.3f} s | {cb:.3f} s | "
              f"{ma:.0f} MiB | {mb:.0f} MiB | {r} |")


if __name__ == "__main__":
    main()
