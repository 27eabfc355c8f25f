#!/usr/bin/env python3
"""A stand-in model tool for darkroom's `tool = "cmd(...)"` tests: a global colour grade
(warmer, more contrast) of IN written to OUT at the same size, or at half the size with
--half (a tool that breaks the proxy's size).

usage: grade_tool.py IN OUT [--half]
"""
import sys

import numpy as np
from PIL import Image

image = Image.open(sys.argv[1]).convert("RGB")
pixels = np.asarray(image).astype(np.float32) / 255.0
graded = np.clip((pixels - 0.5) * 1.2 + 0.5, 0.0, 1.0) ** np.array([0.9, 1.0, 1.15])
out = Image.fromarray((graded * 255.0 + 0.5).astype(np.uint8))
if "--half" in sys.argv[3:]:
    out = out.resize((image.width // 2, image.height // 2))
out.save(sys.argv[2])
