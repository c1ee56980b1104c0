"""Run by tests/pytorch.rs: NumPy itself against `vq_codes::npy`.

argv: DIR. DIR holds `ours_<dtype>.npy`, written by vqvae-rs. For every dtype this checks that
`numpy.load` reads ours to the expected values and that `numpy.save` writes the same bytes, then
writes `numpy_<dtype>.npy` (little- and big-endian) for vqvae-rs to read. Prints one JSON
object: the dtypes checked and any mismatch, which the Rust test judges.
"""

import io
import json
import os
import sys

import numpy as np

DTYPES = ["i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"]
SHAPES = {"i1": (3, 4), "u1": (2, 3, 4), "i2": (2, 1, 3, 4), "u2": (5,), "i4": (2, 2),
          "u4": (3,), "i8": (4, 1, 2, 2), "u8": (2,)}


def expected(code):
    """The values both sides agree on: `(i · 37) mod 200`, less 100 for signed types."""
    shape = SHAPES[code]
    n = int(np.prod(shape))
    values = (np.arange(n, dtype=np.int64) * 37) % 200
    if code.startswith("i"):
        values -= 100
    return values.astype(code).reshape(shape)


directory = sys.argv[1]
mismatches = []
for code in DTYPES:
    want = expected(code)
    ours = os.path.join(directory, f"ours_{code}.npy")
    got = np.load(ours)
    if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
        mismatches.append(f"{ours}: {got.dtype} {got.shape}, expected {want.dtype} {want.shape}")
    buffer = io.BytesIO()
    np.save(buffer, want)
    with open(ours, "rb") as f:
        if f.read() != buffer.getvalue():
            mismatches.append(f"{ours}: not the bytes numpy.save writes")
    np.save(os.path.join(directory, f"numpy_{code}.npy"), want)
    if code not in ("i1", "u1"):
        np.save(os.path.join(directory, f"numpy_big_{code}.npy"), want.astype(">" + code))
print(json.dumps({"numpy": np.__version__, "checked": DTYPES, "mismatches": mismatches}))
