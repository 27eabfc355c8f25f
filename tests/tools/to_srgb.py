#!/usr/bin/env python3
"""Converts an image to an sRGB PNG with Pillow's littleCMS (ImageCms), upright by its EXIF
orientation: the reference side of darkroom's ComfyUI tests, independent of darkroom's own
colour management.

usage: to_srgb.py IN OUT.png
"""
import io
import sys

from PIL import Image, ImageCms, ImageOps

image = ImageOps.exif_transpose(Image.open(sys.argv[1]))
icc = image.info.get("icc_profile")
image = image.convert("RGB")
if icc:
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    target = ImageCms.createProfile("sRGB")
    image = ImageCms.profileToProfile(
        image, source, target, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC
    )
image.save(sys.argv[2])
