"""Screening decoders for the bundled model's frozen codes, in PyTorch on the CPU.

A PyTorch port of what `vq-train decoder` does (a decoder trained on the codes of a frozen
VQ-VAE, optionally against a patch discriminator with the hinge loss), used to screen decoder
shapes and adversarial settings quickly before running the Rust trainer: it encodes the
CIFAR-10 splits once with the bundled model (re-implemented here from its safetensors file and
checked to reproduce its test PSNR, 25.47 dB), then trains a decoder for a fixed number of
minutes and writes the first `--fid-images` test reconstructions as PNG files, whose FID is
measured with `vq-cli fid DIR cifar10:test`.

It is not the product and not a benchmark; the figures claimed for our decoders in
docs/experiments.md come from `vq-train decoder` itself. Its findings are there too.

    # a decoder of its own shape, reconstruction loss only, 30 minutes on one thread
    python3 scripts/decoder_screen.py --stages 256x4,128x2,64x2 --minutes 30 --lr 5e-4 --out runs/screen/s256
    # then against a discriminator, from those weights (fixed adversarial weight 0.003)
    python3 scripts/decoder_screen.py --stages 256x4,128x2,64x2 --init runs/screen/s256/G.pt \
        --minutes 20 --lr 1e-4 --adv 0.003 --out runs/screen/gan
    vq-cli --threads 1 --json fid runs/screen/gan/png cifar10:test

Needs PyTorch 2.13 (`target/bench-venv`, made by `cargo xtask bench train`) and Pillow.
"""
import json, struct, sys, time, os, math, argparse
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.environ.get('VQ_ROOT', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
p = argparse.ArgumentParser()
p.add_argument('--arch', default='stages')
p.add_argument('--stages', default='256x4,128x2,64x2')
p.add_argument('--res-ratio', type=float, default=0.5)
p.add_argument('--minutes', type=float, default=20)
p.add_argument('--steps', type=int, default=0)
p.add_argument('--batch', type=int, default=32)
p.add_argument('--lr', type=float, default=5e-4)
p.add_argument('--threads', type=int, default=1)
p.add_argument('--out', default='runs/screen/run')
p.add_argument('--adv', type=float, default=0.0)
p.add_argument('--adv-start', type=int, default=0)
p.add_argument('--init', default='')
p.add_argument('--loss', default='mse')
p.add_argument('--dch', type=int, default=64)
p.add_argument('--r1', type=float, default=0.0)
p.add_argument('--dlr', type=float, default=1.0)
p.add_argument('--gema', type=float, default=0.0)
p.add_argument('--noise', type=int, default=0)
p.add_argument('--bf16', type=int, default=1)
p.add_argument('--fid-images', type=int, default=5000)
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
os.makedirs(args.out, exist_ok=True)


def load_st(path):
    f = open(path, 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n)); data = f.read()
    out = {}
    for k, v in h.items():
        if k == '__metadata__':
            continue
        a, b = v['data_offsets']
        out[k] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np.float32).reshape(v['shape']).copy())
    return out


def cifar(split):
    files = [f'data_batch_{i}.bin' for i in range(1, 6)] if split == 'train' else ['test_batch.bin']
    xs = []
    for f in files:
        raw = np.fromfile(f'{ROOT}/datasets/cifar-10-batches-bin/{f}', dtype=np.uint8).reshape(-1, 3073)
        xs.append(raw[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(xs))


W = load_st(f'{ROOT}/models/cifar10-default/model.safetensors')


def encode(x_u8):
    x = x_u8.float() / 255.0 - 0.5
    c = lambda x, n, s, p: F.conv2d(x, W[n + '.weight'], W.get(n + '.bias'), s, p)
    x = F.relu(c(x, 'encoder.down0', 2, 1)); x = F.relu(c(x, 'encoder.down1', 2, 1)); x = c(x, 'encoder.mid', 1, 1)
    for i in range(2):
        h = F.conv2d(F.relu(x), W[f'encoder.res.{i}.conv3.weight'], None, 1, 1)
        x = x + F.conv2d(F.relu(h), W[f'encoder.res.{i}.conv1.weight'])
    x = F.relu(x)
    z = c(x, 'encoder.to_code', 1, 0)
    cb = W['quantizer.codebook']
    zf = z.permute(0, 2, 3, 1).reshape(-1, 64)
    d = (cb * cb).sum(1)[None] - 2 * zf @ cb.T
    return d.argmin(1).view(z.shape[0], 8, 8)


cache = os.path.join(ROOT, 'runs', 'screen', 'codes.pt')
os.makedirs(os.path.dirname(cache), exist_ok=True)
if not os.path.exists(cache):
    tr, te = cifar('train'), cifar('test')
    with torch.no_grad():
        enc = lambda x: torch.cat([encode(x[i:i + 1000]) for i in range(0, len(x), 1000)])
        codes = dict(train=enc(tr), train_flip=enc(tr.flip(3)), test=enc(te))
    codes.update(train_x=tr, test_x=te)
    torch.save(codes, cache)
D = torch.load(cache)
CB = W['quantizer.codebook']


def embed(codes):
    return CB[codes].permute(0, 3, 1, 2).contiguous()


class Res(nn.Module):
    def __init__(s, c, r):
        super().__init__(); s.a = nn.Conv2d(c, r, 3, 1, 1, bias=False); s.b = nn.Conv2d(r, c, 1, bias=False)
    def forward(s, x):
        return x + s.b(F.relu(s.a(F.relu(x))))


class Tiny(nn.Module):
    def __init__(s):
        super().__init__()
        s.from_code = nn.Conv2d(64, 128, 3, 1, 1); s.res = nn.ModuleList([Res(128, 32) for _ in range(2)])
        s.up0 = nn.ConvTranspose2d(128, 64, 4, 2, 1); s.up1 = nn.ConvTranspose2d(64, 3, 4, 2, 1)
        sd = {k[len('decoder.'):].replace('res.0.conv3', 'res.0.a').replace('res.0.conv1', 'res.0.b').replace('res.1.conv3', 'res.1.a').replace('res.1.conv1', 'res.1.b'): v for k, v in W.items() if k.startswith('decoder.')}
        s.load_state_dict(sd)
    def forward(s, z):
        x = s.from_code(z)
        for r in s.res: x = r(x)
        return s.up1(F.relu(s.up0(F.relu(x))))


class Stages(nn.Module):
    def __init__(s, stages, ratio, noise):
        super().__init__()
        s.noise = noise
        c0 = stages[0][0]
        s.from_code = nn.Conv2d(64 + noise, c0, 3, 1, 1)
        s.stages = nn.ModuleList(); s.ups = nn.ModuleList()
        for i, (c, n) in enumerate(stages):
            s.stages.append(nn.ModuleList([Res(c, max(8, int(c * ratio))) for _ in range(n)]))
            if i + 1 < len(stages):
                s.ups.append(nn.ConvTranspose2d(c, stages[i + 1][0], 4, 2, 1))
        s.to_pixels = nn.Conv2d(stages[-1][0], 3, 3, 1, 1)
    def forward(s, z):
        if s.noise:
            z = torch.cat([z, torch.randn(z.shape[0], s.noise, *z.shape[2:], dtype=z.dtype)], 1)
        x = s.from_code(z)
        for i, st in enumerate(s.stages):
            for r in st: x = r(x)
            x = F.relu(x)
            if i < len(s.ups): x = s.ups[i](x)
        return s.to_pixels(x)


class Disc(nn.Module):
    def __init__(s, ch):
        super().__init__()
        s.net = nn.Sequential(nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2),
                              nn.Conv2d(ch * 2, ch * 4, 4, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch * 4, 1, 4, 1, 1))
    def forward(s, x): return s.net(x)


if args.arch == 'tiny':
    G = Tiny()
else:
    G = Stages([tuple(int(v) for v in st.split('x')) for st in args.stages.split(',')], args.res_ratio, args.noise)
if args.init:
    G.load_state_dict(torch.load(args.init))
G = G.to(memory_format=torch.channels_last)
nparams = sum(p.numel() for p in G.parameters())
import copy
Gema = copy.deepcopy(G) if args.gema > 0 else None
optG = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.9) if args.adv > 0 else (0.9, 0.999))
Dn = Disc(args.dch).to(memory_format=torch.channels_last) if args.adv > 0 else None
optD = torch.optim.Adam(Dn.parameters(), lr=args.lr, betas=(0.5, 0.9)) if Dn else None

tx = D['train_x']; tc = D['train']; tcf = D['train_flip']
N = len(tx)
log = open(f'{args.out}/log.txt', 'a')
t0 = time.time(); step = 0
g = torch.Generator().manual_seed(0)
total_steps = args.steps
while True:
    el = time.time() - t0
    if (args.steps and step >= args.steps) or (not args.steps and el > args.minutes * 60):
        break
    frac = el / (args.minutes * 60) if not args.steps else step / args.steps
    lr = args.lr * (0.5 * (1 + math.cos(math.pi * min(frac, 1.0))) * 0.95 + 0.05)
    for o, m in [(optG, 1.0), (optD, args.dlr)]:
        if o:
            for pg in o.param_groups: pg['lr'] = lr * m
    idx = torch.randint(N, (args.batch,), generator=g)
    flip = torch.rand(args.batch, generator=g) < 0.5
    x = tx[idx].float() / 255.0 - 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    codes = torch.where(flip[:, None, None], tcf[idx], tc[idx])
    z = embed(codes).to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.bf16)):
        y = G(z)
    y = y.float()
    rec = F.mse_loss(y, x) if args.loss == 'mse' else (y - x).abs().mean()
    loss = rec
    dl = torch.tensor(0.0); adv = torch.tensor(0.0)
    if Dn is not None:
        # discriminator step
        xr = x.detach().requires_grad_(args.r1 > 0)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.bf16)):
            dr = Dn(xr).float(); df = Dn(y.detach()).float()
        dl = F.relu(1 - dr).mean() + F.relu(1 + df).mean()
        if args.r1 > 0:
            gr, = torch.autograd.grad(dr.sum(), xr, create_graph=True)
            dl = dl + args.r1 / 2 * gr.pow(2).sum([1, 2, 3]).mean()
        optD.zero_grad(); dl.backward(); optD.step()
        if step >= args.adv_start:
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bool(args.bf16)):
                adv = -Dn(y).float().mean()
            loss = rec + args.adv * adv
    optG.zero_grad(); loss.backward(); optG.step()
    if Gema is not None:
        with torch.no_grad():
            for pe, pg in zip(Gema.parameters(), G.parameters()):
                pe.lerp_(pg, 1 - args.gema)
    if step % 200 == 0:
        psnr = -10 * math.log10(F.mse_loss(y.detach(), x).item())
        line = f'step {step} t {el:.0f}s lr {lr:.2e} train psnr {psnr:.2f} D {dl.item():.3f} adv {adv.item():.3f}'
        print(line, flush=True); log.write(line + '\n'); log.flush()
    step += 1
el = time.time() - t0
torch.save(G.state_dict(), f'{args.out}/G.pt')
if Gema is not None:
    torch.save(Gema.state_dict(), f'{args.out}/Gema.pt')
    G = Gema
# evaluation: PSNR on the test split, f32
G.eval()
with torch.no_grad():
    te_x = D['test_x']; te_c = D['test']
    mses = []; outs = []
    for i in range(0, len(te_x), 500):
        y = G(embed(te_c[i:i + 500]).to(memory_format=torch.channels_last)).float()
        x = te_x[i:i + 500].float() / 255.0 - 0.5
        y8 = ((y + 0.5).clamp(0, 1) * 255).round()
        mses.append((((y8 / 255.0) - (x + 0.5)) ** 2).mean([1, 2, 3]))
        outs.append(y8.to(torch.uint8))
    mse = torch.cat(mses); out = torch.cat(outs)
psnr = (-10 * torch.log10(mse)).mean().item()
res = dict(args=vars(args), params=nparams, steps=step, seconds=el, images_per_s=step * args.batch / el, test_psnr_mean=psnr, test_psnr_of_mean_mse=-10 * math.log10(mse.mean().item()))
print(json.dumps(res), flush=True)
json.dump(res, open(f'{args.out}/result.json', 'w'))
# reconstructions as PNG for vq-cli fid
from PIL import Image
os.makedirs(f'{args.out}/png', exist_ok=True)
for i in range(args.fid_images):
    Image.fromarray(out[i].permute(1, 2, 0).numpy()).save(f'{args.out}/png/{i:05d}.png')
