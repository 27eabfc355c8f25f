#!/usr/bin/env python3
"""The straightforward Python/PIL implementation of the imgproxyproc spec, as the baseline
darkroom is measured against (PIL Lanczos + numpy int16, PNG at PIL's default level).

usage: imgproxyproc_pil.py split INPUT W H OUTDIR
       imgproxyproc_pil.py merge ORIGINAL DELTA OUTPUT
"""
import json
import sys

import numpy as np
from PIL import Image, ImageOps


def split(path, tw, th, outdir):
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    w, h = img.size
    scale = min(tw / w, th / h)
    sw, sh = max(1, int(w * scale)), max(1, int(h * scale))
    small = img.resize((sw, sh), Image.LANCZOS)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    left, top = (tw - sw) // 2, (th - sh) // 2
    canvas.paste(small, (left, top))
    canvas.save(f"{outdir}/proxy.png")
    meta = {"original": [w, h], "scaled": [sw, sh], "pad": [left, top], "canvas": [tw, th]}
    open(f"{outdir}/proxy_metadata.txt", "w").write(json.dumps(meta))


def merge(original, delta_path, output):
    img = ImageOps.exif_transpose(Image.open(original)).convert("RGB")
    meta = json.load(open(delta_path.replace("delta.png", "metadata.txt")))
    left, top = meta["pad"]
    sw, sh = meta["scaled"]
    delta = Image.open(delta_path).convert("RGB").crop((left, top, left + sw, top + sh))
    delta = delta.resize(img.size, Image.LANCZOS)
    out = np.asarray(img, dtype=np.int16) + (np.asarray(delta, dtype=np.int16) - 127)
    Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)).save(output)


if __name__ == "__main__":
    if sys.argv[1] == "split":
        split(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif sys.argv[1] == "merge":
        merge(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit(__doc__)
