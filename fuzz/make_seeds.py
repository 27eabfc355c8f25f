#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the CC0 files of
../shared/testdata: small real images in the formats and variants darkroom reads, their
metadata blocks, the bad files, and the configs darkroom ships. Deterministic; run it with
the project's venv (Pillow) after changing it, and commit what it writes:

    .venv/bin/python fuzz/make_seeds.py
"""
import io
import pathlib
import re
import shutil
import struct
import subprocess
import tempfile
import zlib

from PIL import Image, PngImagePlugin

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = pathlib.Path(ROOT.parent / "shared" / "testdata")
SEEDS = ROOT / "fuzz" / "seeds"

XMP = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6">'
    b"<dc:subject xmlns:dc=\"http://purl.org/dc/elements/1.1/\">cat</dc:subject>"
    b"</rdf:Description></rdf:RDF></x:xmpmeta>"
)

EVERY_RECIPE = """[daemon]
root = "var"
workers = 2
stability_window = "500ms"
job_timeout = "10m"
[daemon.limits]
max_megapixels = 64
[runtime]
provider = "cpu"
[models.photo]
path = "models/photo-x2.onnx"
scale = 2
tile = 128
domains = ["photo"]
[http]
listen = "0.0.0.0:8480"
token = "0123456789abcdef0123456789abcdef"
[[notify]]
url = "https://example.org/hook"
events = ["done", "failed"]
secret = "s3cret"
[[rule]]
name = "photos"
recipe = "split-to-proxy"
size = "1024x1024"
return_timeout = "24h"
tool = { comfyui = ["http://127.0.0.1:8188", "http://127.0.0.1:8189"], workflow = "grade.json" }
[[rule]]
name = "script"
recipe = "split-to-proxy"
size = "25%"
tool = "cmd(python3 edit.py %i %o)"
upscale_method = "model:photo"
[[rule]]
name = "up"
recipe = "upscale"
domain = "photo"
[[rule]]
name = "full"
recipe = "enhance"
model = "photo"
via = "proxy"
size = "50%"
[[rule]]
name = "lora"
recipe = "normalise"
preset = "sdxl"
mode = "bucket"
caption_template = "{stem}"
"""

MANY_PROBLEMS = """[daemon]
workers = 0
bogus = 1
stability_window = "soon"
[http]
listen = "10.0.0.1:80"
[[notify]]
url = "ftp://x"
events = ["sometimes"]
[[rule]]
name = "photos"
recipe = "split-to-proxy"
size = "huge"
upscale_method = "cmd(tool %i)"
[[rule]]
name = "photos"
recipe = "teleport"
"""


def small(name, size):
    image = Image.open(SHARED / name)
    image.load()
    return image.convert("RGB").resize(size, Image.LANCZOS)


def exif_block(orientation, big_endian=False, as_long=False):
    """A TIFF-structured EXIF block with one IFD0 entry: Orientation."""
    e = ">" if big_endian else "<"
    header = (b"MM\0*" if big_endian else b"II*\0") + struct.pack(e + "I", 8)
    if as_long:
        entry = struct.pack(e + "HHII", 0x0112, 4, 1, orientation)
    else:
        entry = struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0)
    return header + struct.pack(e + "H", 1) + entry + struct.pack(e + "I", 0)


def save(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def encoded(image, format, **options):
    out = io.BytesIO()
    image.save(out, format, **options)
    return out.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def main():
    # Each target's seeds are written afresh; SEEDS/README.md (the licences) and the inputs
    # fuzzing found (regression_*, each a regression test from then on) stay.
    for path in SEEDS.glob("*/*"):
        if not path.name.startswith("regression_"):
            path.unlink()
    photo = small("photo_coffee_600x400.png", (48, 32))
    odd = small("tiny_17x9.png", (17, 9))
    gray = Image.open(SHARED / "gray_camera_512.png").resize((24, 24), Image.LANCZOS)

    # JPEG: the variants of real files, small enough for the fuzzer to mutate quickly.
    jpegs = {
        "baseline_420.jpg": encoded(photo, "JPEG", quality=85),
        "baseline_444.jpg": encoded(photo, "JPEG", quality=90, subsampling=0),
        "baseline_422.jpg": encoded(photo, "JPEG", quality=90, subsampling=1),
        "progressive.jpg": encoded(photo, "JPEG", quality=85, progressive=True),
        "restart.jpg": encoded(photo, "JPEG", quality=85, restart_marker_blocks=2),
        "gray.jpg": encoded(gray, "JPEG", quality=85),
        "cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG", quality=85),
        "odd_17x9.jpg": encoded(odd, "JPEG", quality=85),
        "exif_orientation6.jpg": encoded(photo, "JPEG", quality=80, exif=b"Exif\0\0" + exif_block(6)),
        "xmp.jpg": encoded(photo, "JPEG", quality=80, xmp=XMP),
        "line_1x8.jpg": encoded(small("photo_coffee_600x400.png", (1, 8)), "JPEG"),
    }
    for name, data in jpegs.items():
        save("decode_jpeg", name, data)
        save("jpeg_reduced", name, data)
    for name in ["broken_truncated.jpg", "broken_text_named.jpg"]:
        save("decode_jpeg", name, (SHARED / name).read_bytes())
        save("jpeg_reduced", name, (SHARED / name).read_bytes())

    # PNG: colour types and depths, text chunks (tEXt, zTXt, iTXt), darkroom's metadata.
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "plain")
    info.add_text("Description", "compressed " * 20, zip=True)
    info.add_itxt("XML:com.adobe.xmp", XMP.decode(), zip=True)
    pngs = {
        "rgb.png": encoded(photo, "PNG"),
        "rgba.png": encoded(photo.convert("RGBA"), "PNG"),
        "gray.png": encoded(gray, "PNG"),
        "palette.png": encoded(photo.convert("P"), "PNG"),
        "rgb16.png": encoded(Image.open(SHARED / "hdr_room_16bit_hlg.png").crop((0, 0, 16, 12)), "PNG"),
        "odd_17x9_icc.png": (SHARED / "tiny_17x9.png").read_bytes(),
        "text_chunks.png": encoded(photo, "PNG", pnginfo=info),
        "exif.png": encoded(photo, "PNG", exif=exif_block(8, big_endian=True)),
    }
    # A proxy with darkroom's own embedded metadata (iTXt), made by the release binary.
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [ROOT / "target" / "release" / "darkroom", "-q", "split", SHARED / "tiny_17x9.png",
             "16", "16", "--output-dir", out],
            check=True,
            capture_output=True,
        )
        pngs["darkroom_proxy.png"] = (pathlib.Path(out) / "tiny_17x9_proxy.png").read_bytes()
    bomb = (SHARED / "bomb_png_100000x100000.png").read_bytes()
    pngs["bomb_100000x100000.png"] = bomb
    pngs["truncated.png"] = (SHARED / "broken_truncated.png").read_bytes()[:4096]
    # A zTXt whose text inflates to 4 MiB: over every inflation cap.
    head = encoded(photo, "PNG")
    ztxt = png_chunk(b"zTXt", b"XML:com.adobe.xmp\0\0" + zlib.compress(b" " * (4 << 20), 9))
    pngs["ztxt_bomb.png"] = head[:33] + ztxt + head[33:]
    for name, data in pngs.items():
        save("decode_png", name, data)
        save("metadata", name, data)

    tiffs = {
        "rgb.tif": encoded(photo, "TIFF"),
        "rgb_lzw.tif": encoded(photo, "TIFF", compression="tiff_lzw"),
        "rgb_deflate.tif": encoded(photo, "TIFF", compression="tiff_adobe_deflate"),
        "gray_packbits.tif": encoded(gray, "TIFF", compression="packbits"),
        "rgba16.tif": encoded(Image.open(SHARED / "hdr_room_16bit_hlg.png").crop((0, 0, 8, 8)), "TIFF"),
    }
    for name, data in tiffs.items():
        save("decode_tiff", name, data)
        save("metadata", name, data)

    webps = {
        "lossy.webp": encoded(photo, "WEBP", quality=80),
        "lossless.webp": encoded(photo, "WEBP", lossless=True),
        "alpha.webp": encoded(photo.convert("RGBA"), "WEBP", quality=80),
        "xmp.webp": encoded(photo, "WEBP", quality=80, xmp=XMP),
    }
    for name, data in webps.items():
        save("decode_webp", name, data)
        save("metadata", name, data)

    frames = [photo, photo.transpose(Image.FLIP_LEFT_RIGHT)]
    gifs = {
        "still.gif": encoded(photo, "GIF"),
        "animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "transparent.gif": encoded(photo.convert("P"), "GIF", transparency=0),
    }
    for name, data in gifs.items():
        save("decode_gif", name, data)

    save("metadata", "xmp.jpg", jpegs["xmp.jpg"])

    exifs = {
        "ii_orientation6.exif": b"Exif\0\0" + exif_block(6),
        "mm_orientation8.exif": exif_block(8, big_endian=True),
        "orientation_as_long.exif": exif_block(6, as_long=True),
    }
    for name in ["photo_exif_orientation6.jpg", "photo_bus_4032x3024_p3.jpg"]:
        with Image.open(SHARED / name) as image:
            exifs[name.replace(".jpg", ".exif")] = image.info["exif"]
    for name, data in exifs.items():
        save("exif", name, data)

    save("config", "darkroom.toml", (ROOT / "config" / "darkroom.toml").read_bytes())
    save("config", "every_recipe.toml", EVERY_RECIPE.encode())
    save("config", "many_problems.toml", MANY_PROBLEMS.encode())
    # Every TOML example of the README and docs: the keys and tables people write.
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for k, block in enumerate(re.findall(r"```toml\n(.*?)```", doc.read_text(), re.S)):
            save("config", f"{doc.stem}_{k}.toml", block.encode())


if __name__ == "__main__":
    main()
