#!/usr/bin/env python3
"""JPEG and WebP at a given file size: the peers of `cargo xtask bench codec`.

  codec_peer.py export DIR          writes scikit-image's colour photographs as PNG into DIR
  codec_peer.py match PNG BYTES...  for each byte budget, the highest JPEG and WebP quality
                                    whose file fits in it, its size and PSNR (one JSON line each)

PSNR is on [0, 1] pixels over all three channels (10·log10(1/MSE)), as vq-cli reports it.
Pillow's encoders: JPEG with 4:2:0 chroma subsampling (its default), WebP lossy at method 6.
"""
import io
import json
import sys

import numpy as np
from PIL import Image

PHOTOS = ["astronaut", "coffee", "chelsea", "motorcycle_left"]


def export(out_dir):
    import os
    import skimage.data

    # The files that ship inside the wheel (some of skimage.data's functions download).
    data_dir = os.path.dirname(skimage.data.__file__)
    os.makedirs(out_dir, exist_ok=True)
    for name in PHOTOS:
        img = np.asarray(Image.open(os.path.join(data_dir, f"{name}.png")).convert("RGB"))
        Image.fromarray(img).save(os.path.join(out_dir, f"{name}.png"))
        print(json.dumps({"photo": name, "width": img.shape[1], "height": img.shape[0]}))


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) / 255.0 - b.astype(np.float64) / 255.0) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-10)))


def encode(img, fmt, quality):
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    else:
        img.save(buf, "WEBP", quality=quality, method=6)
    data = buf.getvalue()
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return len(data), decoded


def match(png, budgets):
    img = Image.open(png).convert("RGB")
    ref = np.asarray(img)
    pixels = ref.shape[0] * ref.shape[1]
    cache = {}
    for budget in budgets:
        row = {"photo": png, "budget_bytes": budget}
        for fmt in ["JPEG", "WEBP"]:
            best = None
            # Sizes grow with quality: binary search for the highest quality that fits.
            lo, hi = 1, 100
            while lo <= hi:
                q = (lo + hi) // 2
                if (fmt, q) not in cache:
                    cache[(fmt, q)] = encode(img, fmt, q)
                size, decoded = cache[(fmt, q)]
                if size <= budget:
                    best = (q, size, decoded)
                    lo = q + 1
                else:
                    hi = q - 1
            if best is None:
                row[fmt.lower()] = None
            else:
                q, size, decoded = best
                row[fmt.lower()] = {
                    "quality": q,
                    "bytes": size,
                    "bpp": size * 8 / pixels,
                    "psnr": psnr(ref, decoded),
                }
        print(json.dumps(row))


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2])
    elif sys.argv[1] == "match":
        match(sys.argv[2], [int(b) for b in sys.argv[3:]])
    else:
        sys.exit(__doc__)
