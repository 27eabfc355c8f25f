#!/usr/bin/env python3
"""Writes the JPEG corpus of the differential test (tests/jpeg_differential.rs) into OUT,
with libjpeg-turbo's own decodes of every file as the reference.

    jpeg_corpus.py OUT TESTDATA

Encoders: Pillow (libjpeg-turbo 3.1: baseline, progressive, 4:4:4/4:2:2/4:2:0, restart
intervals, grayscale, Adobe CMYK), imagecodecs (libjpeg-turbo 3.1: 4:4:0, YCCK, 12-bit) and
jpegtran (Debian's libjpeg-turbo: arithmetic coding, progressive transcodes). The reference
decodes are Pillow's (libjpeg-turbo), at full size and with its DCT scaling at 1/2, 1/4
and 1/8 (`Image.draft`), and imagecodecs' where Pillow cannot open a file (12-bit).

OUT/manifest.json lists every case: its file, features, and libjpeg-turbo's verdict
("accept" with the reference PNGs, or "refuse" with its error), and djpeg's warning when
it decodes a damaged file by filling in what is missing.
"""
import io
import json
import pathlib
import subprocess
import sys

import imagecodecs
import numpy as np
from PIL import Image

OUT = pathlib.Path(sys.argv[1])
TESTDATA = pathlib.Path(sys.argv[2])
OUT.mkdir(parents=True, exist_ok=True)
cases = []


def source(width, height):
    """A real photo: the bus (CC0) downscaled to fit, then cropped to width x height."""
    bus = Image.open(TESTDATA / "photo_bus_4032x3024_p3.jpg").convert("RGB")
    scale = max(width / bus.width, height / bus.height, 1 / 8)
    fitted = bus.resize(
        (max(width, round(bus.width * scale)), max(height, round(bus.height * scale))),
        Image.LANCZOS,
    )
    left = (fitted.width - width) // 2
    top = (fitted.height - height) // 2
    return fitted.crop((left, top, left + width, top + height))


def pillow(image, **options):
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def jpegtran(data, *args):
    return subprocess.run(
        ["jpegtran", *args], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


def warnings_of(data):
    """What djpeg (libjpeg-turbo) says of `data`: None when it decodes cleanly, its warning
    when it decodes with one (exit status 2: corrupt or truncated data filled in)."""
    run = subprocess.run(["djpeg", "-outfile", "/dev/null"], input=data, capture_output=True)
    return run.stderr.decode(errors="replace").strip() if run.returncode == 2 else None


def reference(name, data):
    """libjpeg-turbo's verdict and decodes of `data`, written beside it."""
    entry = {"name": name, "file": f"{name}.jpg"}
    (OUT / entry["file"]).write_bytes(data)
    entry["warning"] = warnings_of(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            full = image.convert("L" if image.mode == "L" else "RGB")
    except Exception as error:  # Pillow cannot open it: 12-bit, or refused by libjpeg-turbo
        try:
            pixels = imagecodecs.jpeg8_decode(data)
        except Exception as error2:
            entry.update(reference="refuse", error=f"{error}; {error2}")
            return entry
        entry.update(reference="accept", bits=12 if pixels.dtype == np.uint16 else 8)
        if pixels.dtype == np.uint16:
            pixels = np.round(pixels.astype(np.float64) * 255 / 4095).astype(np.uint8)
        full = Image.fromarray(pixels.squeeze())
        full.save(OUT / f"{name}.full.png")
        entry.update(width=full.width, height=full.height, scaled={})
        return entry
    full.save(OUT / f"{name}.full.png")
    entry.update(reference="accept", bits=8, width=full.width, height=full.height, scaled={})
    for eighths in (4, 2, 1):
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            target = ((image.width * eighths + 7) // 8, (image.height * eighths + 7) // 8)
            # Pillow picks the scale by integer division of the sizes: ask for the floor.
            image.draft(mode, (max(1, image.width * eighths // 8), max(1, image.height * eighths // 8)))
            image.load()
            if image.size != target:
                continue
            scaled = image.convert("L" if image.mode == "L" else "RGB")
        scaled.save(OUT / f"{name}.{eighths}.png")
        entry["scaled"][str(eighths)] = f"{name}.{eighths}.png"
    return entry


def add(name, data, **features):
    entry = reference(name, data)
    entry["features"] = features
    cases.append(entry)


photo = source(256, 192)
for label, subsampling in [("444", 0), ("422", 1), ("420", 2)]:
    add(f"baseline_{label}", pillow(photo, quality=92, subsampling=subsampling),
        coding="baseline", subsampling=label)
    add(f"progressive_{label}", pillow(photo, quality=92, subsampling=subsampling, progressive=True),
        coding="progressive", subsampling=label, same_coefficients_as=f"baseline_{label}")
pixels = np.asarray(photo)
s440 = imagecodecs.jpeg8_encode(pixels, level=92, subsampling="440")
add("baseline_440", s440, coding="baseline", subsampling="440")
add("progressive_440", jpegtran(s440, "-progressive"), coding="progressive", subsampling="440",
    same_coefficients_as="baseline_440")
for blocks in (1, 5, 64):
    add(f"restart_{blocks}_blocks", pillow(photo, quality=90, restart_marker_blocks=blocks),
        coding="baseline", restart_interval=blocks)
add("restart_1_row", pillow(photo, quality=90, restart_marker_rows=1), coding="baseline", restart_rows=1)
add("progressive_restart", pillow(photo, quality=90, progressive=True, restart_marker_blocks=7),
    coding="progressive", restart_interval=7, same_coefficients_as="restart_1_blocks")
add("gray", pillow(photo.convert("L"), quality=92), coding="baseline", colour="gray")
add("gray_progressive", pillow(photo.convert("L"), quality=92, progressive=True),
    coding="progressive", colour="gray", same_coefficients_as="gray")
cmyk = photo.convert("CMYK")
add("cmyk_adobe", pillow(cmyk, quality=92), coding="baseline", colour="cmyk")
# Adobe stores CMYK inverted (as Photoshop writes it); APP14 transform 2 marks YCCK.
inverted = 255 - np.asarray(cmyk)
add("ycck_adobe", imagecodecs.jpeg8_encode(inverted, level=92, colorspace="CMYK", outcolorspace="YCCK"),
    coding="baseline", colour="ycck")
for width, height in [(1, 37), (37, 1), (33, 17), (255, 129), (7, 7)]:
    add(f"odd_{width}x{height}", pillow(source(width, height), quality=90),
        coding="baseline", size=f"{width}x{height}")
    add(f"odd_{width}x{height}_progressive", pillow(source(width, height), quality=90, progressive=True),
        coding="progressive", size=f"{width}x{height}", same_coefficients_as=f"odd_{width}x{height}")
baseline = pillow(photo, quality=92)
add("arithmetic", jpegtran(baseline, "-arithmetic"), coding="arithmetic")
add("arithmetic_progressive", jpegtran(baseline, "-arithmetic", "-progressive"),
    coding="arithmetic-progressive")
twelve = np.round(pixels.astype(np.float64) * 4095 / 255).astype(np.uint16)
# Progressive with every scan's band split in two and a refinement pass: jpegtran's own
# scan script, to reach the decoder's end-of-band runs and refinements across bands.
script = OUT / "scans.txt"
script.write_text(
    "0 1 2: 0 0 0 1;\n0: 1 2 0 2;\n0: 3 9 0 2;\n0: 10 63 0 2;\n1: 1 63 0 1;\n2: 1 63 0 1;\n"
    "0: 1 63 2 1;\n0: 1 63 1 0;\n0 1 2: 0 0 1 0;\n1: 1 63 1 0;\n2: 1 63 1 0;\n"
)
add("progressive_scan_script", jpegtran(baseline, "-scans", str(script)), coding="progressive",
    same_coefficients_as="baseline_420_q92")
add("baseline_420_q92", baseline, coding="baseline", subsampling="420")
add("twelve_bit", imagecodecs.jpeg8_encode(twelve, level=92, bitspersample=12), coding="baseline", bits=12)

# Damage: cut at half (no EOI), bytes flipped in the entropy-coded data, a bad SOF.
progressive = pillow(photo, quality=92, progressive=True)
add("truncated_baseline", baseline[: len(baseline) // 2], damage="truncated")
add("truncated_progressive", progressive[: len(progressive) // 2], damage="truncated")
corrupt = bytearray(baseline)
middle = len(corrupt) * 2 // 3
corrupt[middle : middle + 16] = bytes(16)
add("corrupt_entropy", bytes(corrupt), damage="zeroed entropy bytes")
sof = baseline.index(b"\xff\xc0")
no_width = bytearray(baseline)
no_width[sof + 7 : sof + 9] = b"\0\0"
add("sof_zero_width", bytes(no_width), damage="width 0")
bad_table = bytearray(baseline)
dht = baseline.index(b"\xff\xc4")
bad_table[dht + 5 : dht + 21] = b"\xff" * 16  # code counts over 256
add("bad_huffman_table", bytes(bad_table), damage="huffman table")

(OUT / "manifest.json").write_text(json.dumps(cases, indent=1))
