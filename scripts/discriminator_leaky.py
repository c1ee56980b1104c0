#!/usr/bin/env python3
"""The patch discriminator's training pass with each way of writing its leaky ReLU (slope 0.2).

  discriminator_leaky.py [--threads 2] [--batch 32] [--profile]

A PyTorch replica of `vq-model`'s default `PatchDiscriminator` (4×4 convolutions 3→64 and
64→128 of stride 2, 128→256 and 256→1 of stride 1, channels-last, in bf16 and f32 as
`ComputeKind` casts them): milliseconds an image for a forward pass and the gradients of the
weights and of the input, as the decoder's adversarial step needs them. `--profile` prints
torch.profiler's table for `maximum(x, 0.2 x)`, the form used before. Run it alone: the times
are only comparable within one run.
"""
import argparse
import time

import torch
import torch.nn.functional as F

VARIANTS = {
    "maximum(x, 0.2x)": lambda x: torch.maximum(x, x * 0.2),
    "F.leaky_relu(x, 0.2)": lambda x: F.leaky_relu(x, 0.2),
    "0.2x + 0.8 relu(x)": lambda x: x * 0.2 + x.relu() * 0.8,
    "x + 0.8 relu(-x)": lambda x: x + (-x).relu() * 0.8,
}
# (out, in, stride) of each 4×4 convolution, padding 1.
SHAPES = [(64, 3, 2), (128, 64, 2), (256, 128, 1), (1, 256, 1)]


def discriminator(x, params, kind, leaky):
    x = x.contiguous(memory_format=torch.channels_last)
    for j, (w, b, stride) in enumerate(params):
        x = F.conv2d(x.to(kind), w.to(kind), b.to(kind), stride, 1)
        if j < len(params) - 1:
            x = leaky(x)
    return x.float()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    params = [
        ((torch.randn(o, i, 4, 4) * 0.05).requires_grad_(), torch.zeros(o, requires_grad=True), s)
        for o, i, s in SHAPES
    ]
    leaves = [t for w, b, _ in params for t in (w, b)]
    x = torch.randn(args.batch, 3, 32, 32, requires_grad=True)

    def step(kind, leaky):
        out = discriminator(x, params, kind, leaky)
        torch.autograd.grad(out.mean(), leaves + [x])

    for kind in (torch.bfloat16, torch.float32):
        for name, leaky in VARIANTS.items():
            for _ in range(5):
                step(kind, leaky)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(kind, leaky)
            ms = (time.perf_counter() - start) / args.steps * 1000 / args.batch
            print(f"{str(kind):16} {name:22} {ms:.3f} ms an image", flush=True)
    if args.profile:
        from torch.profiler import profile

        with profile(record_shapes=True) as prof:
            for _ in range(10):
                step(torch.bfloat16, VARIANTS["maximum(x, 0.2x)"])
        print(prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
