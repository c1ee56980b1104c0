#!/usr/bin/env python3
"""The plain PyTorch VQ-VAE that people copy (the VQ-VAE paper's CIFAR-10 model as in the
widely shared notebooks): random codebook init U(-1/K, 1/K), codebook loss + commitment loss
(beta = 0.25), Adam 3e-4 at a constant rate, batch 128, inputs in [-0.5, 0.5]. Same
architecture as vqvae-rs's default (hidden 128, residual hidden 32, 2 residual layers, 8x8
grid, K = 512, D = 64).

  --mode speed    time training steps, print one JSON line with images/s
                  (--device cuda, --amp bf16 for autocast, --channels-last: the fair peers on
                  a GPU and on a CPU with AMX)
  --mode quality  train --steps steps on CIFAR-10 and evaluate on the test split (mean
                  per-image PSNR on [0, 1] pixels, SSIM, perplexity, codes used), one JSON line
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Residual(nn.Module):
    def __init__(self, h, r):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(h, r, 3, padding=1, bias=False),
                                   nn.ReLU(), nn.Conv2d(r, h, 1, bias=False))

    def forward(self, x):
        return x + self.block(x)


class Stack(nn.Module):
    def __init__(self, h, r, n):
        super().__init__()
        self.layers = nn.ModuleList([Residual(h, r) for _ in range(n)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return F.relu(x)


class VectorQuantizer(nn.Module):
    def __init__(self, k, d, beta):
        super().__init__()
        self.k, self.d, self.beta = k, d, beta
        self.embedding = nn.Embedding(k, d)
        self.embedding.weight.data.uniform_(-1 / k, 1 / k)

    def forward(self, z):
        z = z.permute(0, 2, 3, 1).contiguous()
        flat = z.view(-1, self.d)
        dist = (flat.pow(2).sum(1, keepdim=True) + self.embedding.weight.pow(2).sum(1)
                - 2 * flat @ self.embedding.weight.t())
        codes = dist.argmin(1)
        q = self.embedding(codes).view(z.shape)
        loss = F.mse_loss(q, z.detach()) + self.beta * F.mse_loss(z, q.detach())
        q = z + (q - z).detach()
        counts = torch.bincount(codes, minlength=self.k).float()
        return loss, q.permute(0, 3, 1, 2).contiguous(), codes, counts


class VQVAE(nn.Module):
    def __init__(self, h=128, r=32, n=2, k=512, d=64, beta=0.25):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, h // 2, 4, 2, 1), nn.ReLU(), nn.Conv2d(h // 2, h, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(h, h, 3, 1, 1), Stack(h, r, n), nn.Conv2d(h, d, 1))
        self.vq = VectorQuantizer(k, d, beta)
        self.decoder = nn.Sequential(
            nn.Conv2d(d, h, 3, 1, 1), Stack(h, r, n), nn.ConvTranspose2d(h, h // 2, 4, 2, 1),
            nn.ReLU(), nn.ConvTranspose2d(h // 2, 3, 4, 2, 1))

    def forward(self, x):
        vq_loss, q, codes, counts = self.vq(self.encoder(x))
        recon = self.decoder(q)
        return recon, F.mse_loss(recon, x) + vq_loss, counts


def load_split(folder, split):
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    raw = np.concatenate([np.fromfile(os.path.join(folder, n), dtype=np.uint8) for n in names])
    raw = raw.reshape(-1, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy())


def ssim(x, y):
    c = x.shape[1]
    g = torch.exp(-((torch.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    g = g / g.sum()
    w = (g[:, None] @ g[None, :]).expand(c, 1, 11, 11).contiguous()
    f = lambda t: F.conv2d(t, w, groups=c)
    mx, my = f(x), f(y)
    sx, sy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2))
    return m.flatten(1).mean(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["speed", "quality"], required=True)
    p.add_argument("--data", default="datasets/cifar-10-batches-bin")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: torch.autocast around the forward pass (weights stay f32)")
    p.add_argument("--channels-last", action="store_true",
                   help="model and inputs in channels-last memory format")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
    model = VQVAE().to(device, memory_format=memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    train = load_split(a.data, "train")
    gen = torch.Generator().manual_seed(a.seed)

    def step():
        idx = torch.randint(0, train.shape[0], (a.batch_size,), generator=gen)
        x = (train[idx].float() / 255.0 - 0.5).to(device, memory_format=memory_format)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.amp == "bf16"):
            recon, loss, counts = model(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    if a.mode == "speed":
        for _ in range(a.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        print(json.dumps({"peer": "pytorch-reference", "torch": torch.__version__, "threads": a.threads,
                          "device": a.device, "amp": a.amp, "channels_last": a.channels_last,
                          "batch_size": a.batch_size, "steps": a.steps, "seconds": dt,
                          "images_per_s": a.steps * a.batch_size / dt,
                          "peak_memory_bytes": peak}))
        return

    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
        if not math.isfinite(loss):
            raise SystemExit("loss diverged")
    train_s = time.perf_counter() - t0
    test = load_split(a.data, "test")
    model.eval()
    psnr, ssims, counts = [], [], torch.zeros(512)
    with torch.no_grad():
        for i in range(0, test.shape[0], 500):
            x = (test[i:i + 500].float() / 255.0 - 0.5).to(device, memory_format=memory_format)
            recon, _, c = model(x)
            recon, x, c = recon.float().cpu(), x.cpu(), c.cpu()
            r, t = (recon + 0.5).clamp(0, 1), x + 0.5
            mse = (r - t).pow(2).flatten(1).mean(1)
            psnr.append(-10 * torch.log10(mse.clamp_min(1e-10)))
            ssims.append(ssim(r, t))
            counts += c
    prob = counts / counts.sum()
    print(json.dumps({"peer": "pytorch-reference", "steps": a.steps, "train_s": train_s,
                      "psnr": torch.cat(psnr).mean().item(), "ssim": torch.cat(ssims).mean().item(),
                      "perplexity": math.exp(-(prob * (prob + 1e-10).log()).sum().item()),
                      "codes_used": int((counts > 0).sum().item()), "codebook_size": 512}))


if __name__ == "__main__":
    main()
