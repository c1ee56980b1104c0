"""Hyperparameter screen of vqvae-rs's default training recipe, for a GPU.

A PyTorch port of what `vq-train` does by default (the VQ-VAE of `vq-model`; EMA codebook with
Laplace-smoothed counts; dead-code restarts from the batch's encoder outputs; k-means++ then 20
Lloyd iterations on the encoder outputs of 4,096 training images; Adam with warm-up and cosine
decay; weight averaging; random horizontal flips). M variants train at once as the M groups of
one grouped network, on the same batches and from the same initial weights (unless a variant
names another `init`), so that their differences come from their hyperparameters; variants that
differ only in how the weights are averaged share one training trajectory exactly.

It is not the product and not a benchmark: it exists because a full run of the Rust recipe takes
an hour on the 2-core development CPU, while this screens a dozen variants in minutes on a GPU
(results in docs/experiments.md). Its absolute figures differ from the Rust run's
by a few hundredths of a dB (another k-means, another random stream).

    # the training images, optionally a subset, packed small enough to carry to a GPU machine
    python3 scripts/recipe_screen.py pack --data datasets/cifar-10-batches-bin --out packed \
        --train-images 26000 --test-images 2000
    python3 scripts/recipe_screen.py run --packed packed --config '{"steps": 35000,
        "variants": [{}, {"init": 1}, {"lr": 3e-3}, {"wema": 0.998}]}'

A variant overrides BASE below (the Rust defaults). Evaluations (mean per-image PSNR on [0, 1]
pixels of the averaged weights, as `vq-train` reports it) print as JSON lines and are written to
`$OUT/<name>.json` (or the working folder).
"""
import argparse
import json
import lzma
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def read_cifar(data, split, n):
    """The first `n` images of a CIFAR-10 binary split as `(n, 3, 32, 32)` uint8."""
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    parts = [np.fromfile(os.path.join(data, f), dtype=np.uint8).reshape(-1, 3073)[:, 1:] for f in files]
    return np.concatenate(parts)[:n].reshape(-1, 3, 32, 32)


def pack(images):
    """Lossless: the residual of the planar gradient predictor (a 2-D second difference), xz'd;
    CIFAR-10 packs to about 60% of its raw size this way."""
    x = images.astype(np.int16)
    g = x.copy()
    g[..., 1:, 1:] = x[..., 1:, 1:] - (x[..., 1:, :-1] + x[..., :-1, 1:] - x[..., :-1, :-1])
    g[..., 0, 1:] = x[..., 0, 1:] - x[..., 0, :-1]
    g[..., 1:, 0] = x[..., 1:, 0] - x[..., :-1, 0]
    return lzma.compress((g % 256).astype(np.uint8).tobytes(), preset=6)


def unpack(blob):
    g = np.frombuffer(lzma.decompress(blob), dtype=np.uint8).reshape(-1, 3, 32, 32).astype(np.int64)
    return (np.cumsum(np.cumsum(g, axis=2), axis=3) % 256).astype(np.uint8)


def load(args, split, n):
    if args.packed:
        with open(os.path.join(args.packed, f"{split}.xz"), "rb") as fh:
            images = unpack(fh.read())[:n]
    else:
        images = read_cifar(args.data, split, n)
    return torch.from_numpy(np.ascontiguousarray(images))


# The Rust defaults (`TrainConfig`, `VqVaeConfig`): peak learning rate, Adam's beta2, commitment
# cost, final learning rate as a fraction of the peak, weight-averaging decay, random flips,
# codebook EMA decay, steps after which an unused code restarts, warm-up steps, and which initial
# weights (0 is shared by every variant that does not name another).
BASE = dict(lr=2e-3, beta2=0.999, commit=0.25, final=0.05, wema=0.998, hflip=1, cbdecay=0.99,
            dead=50, warmup=200, init=0)


def run(args):
    cfg = json.loads(args.config)
    steps, B, K, D, H, R = cfg["steps"], cfg.get("batch", 32), 512, 64, 128, 32
    variants = [dict(BASE, **v) for v in cfg["variants"]]
    M = len(variants)
    torch.manual_seed(0)
    train = load(args, "train", cfg.get("train_n", 10**9)).to(dev)
    test = load(args, "test", cfg.get("test_n", 2000)).to(dev)
    N_train = train.shape[0]
    print(f"{dev} {torch.cuda.get_device_name() if dev.type == 'cuda' else ''} train {N_train} M {M}", flush=True)

    def col(key):
        return torch.tensor([v[key] for v in variants], dtype=torch.float32, device=dev)

    # Parameters: name -> (tensor (M*rows, ...), rows per model). tch's init: kaiming uniform
    # (ReLU gain, fan_in = size[1]*k*k), zero bias.
    shapes = {
        "e.d0.w": (64, 3, 4, 4), "e.d0.b": (64,), "e.d1.w": (128, 64, 4, 4), "e.d1.b": (128,),
        "e.mid.w": (H, H, 3, 3), "e.mid.b": (H,),
        "e.r0.c3": (R, H, 3, 3), "e.r0.c1": (H, R, 1, 1), "e.r1.c3": (R, H, 3, 3), "e.r1.c1": (H, R, 1, 1),
        "e.tc.w": (D, H, 1, 1), "e.tc.b": (D,),
        "d.fc.w": (H, D, 3, 3), "d.fc.b": (H,),
        "d.r0.c3": (R, H, 3, 3), "d.r0.c1": (H, R, 1, 1), "d.r1.c3": (R, H, 3, 3), "d.r1.c1": (H, R, 1, 1),
        "d.u0.w": (H, 64, 4, 4), "d.u0.b": (64,), "d.u1.w": (64, 3, 4, 4), "d.u1.b": (3,),
    }
    inits = sorted(set(v["init"] for v in variants))
    per_init = {}
    for s in inits:
        g = torch.Generator().manual_seed(1000 + s)
        p = {}
        for n, sh in shapes.items():
            if n.endswith(".b"):
                p[n] = torch.zeros(sh)
            else:
                bound = math.sqrt(6.0 / (sh[1] * sh[2] * sh[3]))
                p[n] = (torch.rand(sh, generator=g) * 2 - 1) * bound
        per_init[s] = p
    params = {n: torch.cat([per_init[v["init"]][n] for v in variants]).to(dev).requires_grad_() for n in shapes}

    def rows_of(n):
        return shapes[n][0]

    def conv(x, w, b, stride, pad):
        return F.conv2d(x, w, b, stride, pad, 1, M)

    def encoder(p, x):  # x (B, M*3, 32, 32)
        x = F.relu(conv(x, p["e.d0.w"], p["e.d0.b"], 2, 1))
        x = F.relu(conv(x, p["e.d1.w"], p["e.d1.b"], 2, 1))
        x = conv(x, p["e.mid.w"], p["e.mid.b"], 1, 1)
        x = res(p, "e", x)
        return conv(x, p["e.tc.w"], p["e.tc.b"], 1, 0)

    def res(p, pre, x):
        for i in range(2):
            inner = F.relu(conv(F.relu(x), p[f"{pre}.r{i}.c3"], None, 1, 1))
            x = x + conv(inner, p[f"{pre}.r{i}.c1"], None, 1, 0)
        return F.relu(x)

    def decoder(p, q):
        x = conv(q, p["d.fc.w"], p["d.fc.b"], 1, 1)
        x = res(p, "d", x)
        x = F.relu(F.conv_transpose2d(x, p["d.u0.w"], p["d.u0.b"], 2, 1, 0, M))
        return F.conv_transpose2d(x, p["d.u1.w"], p["d.u1.b"], 2, 1, 0, M)

    def to_flat(z):  # (B, M*D, h, w) -> (M, B*h*w, D)
        b, _, h, w = z.shape
        return z.view(b, M, D, h, w).permute(1, 0, 3, 4, 2).reshape(M, -1, D), (b, h, w)

    def from_flat(f, bhw):
        b, h, w = bhw
        return f.view(M, b, h, w, D).permute(1, 0, 4, 2, 3).reshape(b, M * D, h, w)

    def nearest(cb, flat):
        scores = (cb * cb).sum(-1).unsqueeze(1) - 2 * torch.bmm(flat, cb.transpose(1, 2))
        return scores.argmin(-1)

    # k-means init (k-means++ then 20 Lloyd iterations) on the encoder outputs of 4096 images,
    # once per distinct initial weights.
    cb = torch.empty(M, K, D, device=dev)
    kidx = torch.randperm(N_train, generator=torch.Generator().manual_seed(7))[:4096].to(dev)
    with torch.no_grad():
        imgs = train[kidx].float() / 255 - 0.5
        zs = torch.cat([encoder(params, imgs[i:i + 256].repeat(1, M, 1, 1)) for i in range(0, 4096, 256)])
        flat_all, _ = to_flat(zs)
        gk = torch.Generator(device=dev).manual_seed(11)
        for s in inits:
            m0 = [i for i, v in enumerate(variants) if v["init"] == s][0]
            X = flat_all[m0]
            c = torch.empty(K, D, device=dev)
            c[0] = X[torch.randint(X.shape[0], (1,), device=dev, generator=gk)]
            d2 = ((X - c[0]) ** 2).sum(1)
            for j in range(1, K):
                i = torch.multinomial(d2 / d2.sum(), 1, generator=gk)
                c[j] = X[i[0]]
                d2 = torch.minimum(d2, ((X - c[j]) ** 2).sum(1))
            for _ in range(20):
                a = nearest(c[None], X[None])[0]
                sums = torch.zeros(K, D, device=dev).index_add_(0, a, X)
                cnt = torch.zeros(K, device=dev).index_add_(0, a, torch.ones_like(a, dtype=torch.float))
                c = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c)
            for i, v in enumerate(variants):
                if v["init"] == s:
                    cb[i] = c
    ema_count = torch.ones(M, K, device=dev)
    ema_sum = cb.clone()
    last_used = torch.zeros(M, K, device=dev)

    names = list(shapes)
    mom = {n: torch.zeros_like(params[n]) for n in names}
    vel = {n: torch.zeros_like(params[n]) for n in names}
    avg = {n: params[n].detach().clone() for n in names}
    avg_cb = cb.clone()
    # More weight averages of the same trajectories (codebook averaged too), evaluated beside.
    extra = cfg.get("extra_wema", [])
    extra_avg = [({n: params[n].detach().clone() for n in names}, cb.clone()) for _ in extra]

    def per_row(vals, n):
        r = vals.repeat_interleave(rows_of(n))
        return r.view(-1, *([1] * (params[n].dim() - 1)))

    lr_peak, final, warm = col("lr"), col("final"), col("warmup")
    beta2, commit, wema, cbdecay, dead_steps = col("beta2"), col("commit"), col("wema"), col("cbdecay"), col("dead")
    hflip = col("hflip").bool()
    eps_l = 1e-5

    def lr_at(step):
        s = torch.full_like(lr_peak, float(step))
        wu = lr_peak * (s + 1) / warm
        prog = ((s - warm) / (steps - warm).clamp_min(1)).clamp(0, 1)
        floor = lr_peak * final
        cos = floor + (lr_peak - floor) * 0.5 * (1 + torch.cos(math.pi * prog))
        return torch.where(s < warm, wu, cos)

    def evaluate(p, cbk):
        psnr = torch.zeros(M, device=dev)
        mse_t = torch.zeros(M, device=dev)
        with torch.no_grad():
            for i in range(0, test.shape[0], 500):
                x = test[i:i + 500].float() / 255 - 0.5
                z = encoder(p, x.repeat(1, M, 1, 1))
                f, bhw = to_flat(z)
                codes = nearest(cbk, f)
                q = torch.gather(cbk, 1, codes.unsqueeze(-1).expand(-1, -1, D))
                rec = decoder(p, from_flat(q, bhw)).view(x.shape[0], M, 3, 32, 32)
                r = (rec + 0.5).clamp(0, 1)
                t = (x + 0.5).unsqueeze(1)
                mse = ((r - t) ** 2).flatten(2).mean(-1)  # (b, M)
                psnr += (-10 * torch.log10(mse.clamp_min(1e-10))).sum(0)
                mse_t += mse.sum(0)
        return (psnr / test.shape[0]).tolist(), (mse_t / test.shape[0]).tolist()

    def refit(p, cbk):
        sums = torch.zeros(M, K, D, device=dev)
        cnt = torch.zeros(M, K, device=dev)
        with torch.no_grad():
            for i in range(0, N_train, 500):
                x = train[i:i + 500].float() / 255 - 0.5
                f, _ = to_flat(encoder(p, x.repeat(1, M, 1, 1)))
                codes = nearest(cbk, f)
                sums.scatter_add_(1, codes.unsqueeze(-1).expand(-1, -1, D), f)
                cnt.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float))
        return torch.where(cnt[..., None] > 0, sums / cnt.clamp_min(1)[..., None], cbk)

    g = torch.Generator(device=dev).manual_seed(3)
    perm = torch.randperm(N_train, device=dev, generator=g)
    pos = 0
    t0 = time.time()
    history = []
    ar = torch.arange(M, device=dev)
    for step in range(steps):
        if pos + B > N_train:
            perm = torch.randperm(N_train, device=dev, generator=g)
            pos = 0
        idx = perm[pos:pos + B]
        pos += B
        x = train[idx].float() / 255 - 0.5
        flip = torch.rand(B, device=dev, generator=g) < 0.5
        xf = torch.where(flip[:, None, None, None], x.flip(-1), x)
        xm = torch.where(hflip[None, :, None, None, None], xf[:, None], x[:, None])  # (B, M, 3, 32, 32)
        xin = xm.reshape(B, M * 3, 32, 32)
        z = encoder(params, xin)
        flat, bhw = to_flat(z)
        with torch.no_grad():
            codes = nearest(cb, flat)
        q = torch.gather(cb, 1, codes.unsqueeze(-1).expand(-1, -1, D))
        commit_m = ((flat - q) ** 2).mean((1, 2))
        q_st = q + (flat - flat.detach())
        rec = decoder(params, from_flat(q_st, bhw)).view(B, M, 3, 32, 32)
        mse_m = ((rec - xm) ** 2).mean((0, 2, 3, 4))
        loss = (mse_m + commit * commit_m).sum()
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        with torch.no_grad():
            t = step + 1
            lr = lr_at(step)
            b1c = 1 - 0.9 ** t
            b2c = 1 - beta2 ** t
            for n, gr in zip(names, grads):
                mom[n].mul_(0.9).add_(gr, alpha=0.1)
                b2 = per_row(beta2, n)
                vel[n].mul_(b2).addcmul_(gr, gr, value=1.0).sub_(gr * gr * b2)  # v = b2 v + (1-b2) g^2
                upd = (mom[n] / b1c) / ((vel[n] / per_row(b2c, n)).sqrt() + 1e-8) * per_row(lr, n)
                params[n].sub_(upd)
            decay_w = torch.minimum(wema, torch.full_like(wema, (1.0 + t) / (10.0 + t)))
            for n in names:
                avg[n].lerp_(params[n], per_row(1 - decay_w, n))
            # EMA codebook (Laplace smoothed), then dead-code restarts from this batch's outputs.
            fl = flat.detach()
            onehot_idx = codes + (ar * K)[:, None]
            counts = torch.zeros(M * K, device=dev).index_add_(0, onehot_idx.flatten(), torch.ones(codes.numel(), device=dev)).view(M, K)
            sums = torch.zeros(M * K, D, device=dev).index_add_(0, onehot_idx.flatten(), fl.reshape(-1, D)).view(M, K, D)
            dc = cbdecay[:, None]
            ema_count.mul_(dc).add_(counts * (1 - dc))
            ema_sum.mul_(dc[..., None]).add_(sums * (1 - dc[..., None]))
            n_tot = ema_count.sum(1, keepdim=True)
            smoothed = (ema_count + eps_l) / (n_tot + K * eps_l) * n_tot
            cb.copy_(ema_sum / smoothed[..., None])
            last_used.copy_(torch.where(counts > 0, torch.full_like(last_used, float(t)), last_used))
            dead = (t - last_used) >= dead_steps[:, None]
            pick = torch.randint(fl.shape[1], (M, K), device=dev, generator=g)
            fresh = torch.gather(fl, 1, pick.unsqueeze(-1).expand(-1, -1, D))
            cb.copy_(torch.where(dead[..., None], fresh, cb))
            ema_sum.copy_(torch.where(dead[..., None], fresh, ema_sum))
            ema_count.copy_(torch.where(dead, torch.ones_like(ema_count), ema_count))
            last_used.copy_(torch.where(dead, torch.full_like(last_used, float(t)), last_used))
            avg_cb.lerp_(cb, (1 - decay_w)[:, None, None])
            for w, (ea, ecb) in zip(extra, extra_avg):
                ew = 1 - min(w, (1.0 + t) / (10.0 + t))
                torch._foreach_lerp_([ea[n] for n in names], [params[n] for n in names], ew)
                ecb.lerp_(cb, ew)
        if t % cfg.get("eval_every", 5000) == 0 or t == steps or t in cfg.get("eval_at", []):
            ps, ms = evaluate(avg, cb)
            rec_ = dict(step=t, s=round(time.time() - t0, 1), psnr=[round(a, 3) for a in ps])
            for w, (ea, ecb) in zip(extra, extra_avg):
                rec_[f"wema{w}_avg_cb"] = [round(a, 3) for a in evaluate(ea, ecb)[0]]
            if cfg.get("codebook_average"):
                rec_["psnr_avg_cb"] = [round(a, 3) for a in evaluate(avg, avg_cb)[0]]
            if t == steps:
                # After training: Lloyd steps that refit the live codebook to the averaged
                # encoder's outputs on the training images.
                refit_cb = cb.clone()
                for it in range(cfg.get("refit_iters", 0)):
                    refit_cb = refit(avg, refit_cb)
                    rec_[f"psnr_refit{it + 1}"] = [round(a, 3) for a in evaluate(avg, refit_cb)[0]]
            history.append(rec_)
            print(json.dumps(rec_), flush=True)
            with open(os.path.join(os.environ.get("OUT", "/tmp"), cfg.get("name", "screen") + ".json"), "w") as fh:
                json.dump(dict(variants=variants, history=history), fh)
        if t == 50:
            torch.cuda.synchronize() if dev.type == "cuda" else None
            print(f"50 steps in {time.time() - t0:.1f}s", flush=True)
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, cfg.get("name", "screen") + ".json"), "w") as fh:
        json.dump(dict(variants=variants, history=history), fh)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack CIFAR-10 images for carrying to a GPU machine")
    p.add_argument("--data", required=True, help="CIFAR-10 binary folder")
    p.add_argument("--out", required=True)
    p.add_argument("--train-images", type=int, default=50000)
    p.add_argument("--test-images", type=int, default=10000)
    # Variants in one process share the batch; compare batch sizes across processes.
    r = sub.add_parser("run", help="train and evaluate the variants of --config")
    r.add_argument("--data", default="datasets/cifar-10-batches-bin")
    r.add_argument("--packed", help="a folder written by `pack` (instead of --data)")
    r.add_argument("--config", required=True, help="JSON: steps, variants, optional batch, "
                   "eval_every, eval_at, train_n, test_n, name, codebook_average (also evaluate "
                   "an averaged codebook), refit_iters (Lloyd refits after training), extra_wema "
                   "(more averaging decays of the same trajectories)")
    args = parser.parse_args()
    if args.command == "pack":
        os.makedirs(args.out, exist_ok=True)
        for split, n in (("test", args.test_images), ("train", args.train_images)):
            with open(os.path.join(args.out, f"{split}.xz"), "wb") as fh:
                fh.write(pack(read_cifar(args.data, split, n)))
    else:
        run(args)


if __name__ == "__main__":
    main()
