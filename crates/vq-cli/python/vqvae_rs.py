"""A vqvae-rs VQ-VAE and its transformer prior in PyTorch, from the files `vq-cli export
--pytorch DIR` writes.

Self-contained: it needs `torch` and nothing else (not this project, not `safetensors`).

    import torch, vqvae_rs
    model = vqvae_rs.load("DIR")                     # the model and its own decoder
    sharp = vqvae_rs.load("DIR", decoder="sharp")    # the sharp decoder, where exported
    codes = model.encode(images)      # (N, 3, H, W) uint8 → (N, L, h, w) int64 token ids
    pixels = model.decode(codes)      # → (N, 3, h·f, w·f) float pixels, [0, 1] when clamped
    images = model.decode_uint8(codes)  # → (N, 3, h·f, w·f) uint8, as vq-cli writes them
    prior = vqvae_rs.load_prior("DIR")               # the transformer prior, where exported
    logits = prior.logits(codes[:, 0], labels)        # → (N, V, h, w), each code given those before
    grids = prior.sample(8, labels=torch.full((8,), 3), guidance=2.0)  # → (8, h, w) new codes

The networks are the ones of `crates/vq-model` (`nets.rs`, `quantizer/`) and
`crates/vq-prior` (`transformer.rs`): the tensor names of each `model.safetensors` are their
variable names (README.md in DIR lists them). Encoding pads an
image by repeating its edge pixels to a multiple of the downsampling factor, as `vq-cli` does;
`vq-cli` encodes images over 256 pixels in overlapping tiles whose results equal one pass, so
one pass here gives the same codes.

Going the other way: a model of the same config trained in PyTorch with these modules is saved
with `save(model, DIR)` (the same tensor names), and `vq-cli --checkpoint DIR/model` loads it.
"""

import json
import os
import struct

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "load",
    "load_prior",
    "VqVae",
    "TransformerPrior",
    "read_safetensors",
    "write_safetensors",
    "save",
]

_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_safetensors(path):
    """The tensors of a `.safetensors` file, by name (the format: an 8-byte little-endian
    header length, a JSON header of names, dtypes, shapes and byte offsets, then the data)."""
    with open(path, "rb") as f:
        data = f.read()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = memoryview(data)[8 + length :]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _DTYPES[info["dtype"]]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=dtype)
        tensors[name] = flat.reshape(info["shape"]).clone()
    return tensors


def write_safetensors(path, tensors):
    """Writes `tensors` (name → tensor) as a `.safetensors` file."""
    names = {v: k for k, v in _DTYPES.items()}
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        # A 0-d tensor has no byte view of its own: flatten it first.
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": names[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)


# --- the networks -------------------------------------------------------------------------


class ResidualStack(nn.Module):
    """`x + conv1x1(relu(conv3x3(relu(x))))`, repeated, then a final ReLU."""

    def __init__(self, channels, hidden, layers):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "conv3": nn.Conv2d(channels, hidden, 3, padding=1, bias=False),
                    "conv1": nn.Conv2d(hidden, channels, 1, bias=False),
                }
            )
            for _ in range(layers)
        )

    def forward(self, x):
        for block in self.blocks:
            x = x + block["conv1"](F.relu(block["conv3"](F.relu(x))))
        return F.relu(x)

    def names(self, prefix):
        return {
            f"{prefix}.{i}.{conv}.weight": self.blocks[i][conv].weight
            for i in range(len(self.blocks))
            for conv in ("conv3", "conv1")
        }


def _conv_names(prefix, conv):
    out = {f"{prefix}.weight": conv.weight}
    if conv.bias is not None:
        out[f"{prefix}.bias"] = conv.bias
    return out


class Encoder(nn.Module):
    def __init__(self, cfg, out_channels):
        super().__init__()
        h = cfg["hidden_channels"]
        c = cfg["in_channels"]
        if cfg["downsample"] == 4:
            self.downs = nn.ModuleList(
                [nn.Conv2d(c, h // 2, 4, 2, 1), nn.Conv2d(h // 2, h, 4, 2, 1)]
            )
        else:
            self.downs = nn.ModuleList([nn.Conv2d(c, h, 4, 2, 1)])
        self.mid = nn.Conv2d(h, h, 3, 1, 1)
        res = cfg["residual"]
        self.res = ResidualStack(h, res["hidden_channels"], res["layers"])
        self.to_code = nn.Conv2d(h, out_channels, 1)

    def forward(self, x):
        for d in self.downs:
            x = F.relu(d(x))
        return self.to_code(self.res(self.mid(x)))

    def names(self, prefix):
        out = {}
        for i, d in enumerate(self.downs):
            out.update(_conv_names(f"{prefix}.down{i}", d))
        out.update(_conv_names(f"{prefix}.mid", self.mid))
        out.update(self.res.names(f"{prefix}.res"))
        out.update(_conv_names(f"{prefix}.to_code", self.to_code))
        return out


class Decoder(nn.Module):
    """The encoder's mirror, or a decoder of its own stages (`"decoder"` in the config)."""

    def __init__(self, cfg, in_channels):
        super().__init__()
        staged = cfg.get("decoder")
        out = cfg["in_channels"]
        self.staged = staged is not None
        if not self.staged:
            h = cfg["hidden_channels"]
            res = cfg["residual"]
            self.from_code = nn.Conv2d(in_channels, h, 3, 1, 1)
            self.stages = nn.ModuleList([ResidualStack(h, res["hidden_channels"], res["layers"])])
            if cfg["downsample"] == 4:
                self.ups = nn.ModuleList(
                    [nn.ConvTranspose2d(h, h // 2, 4, 2, 1), nn.ConvTranspose2d(h // 2, out, 4, 2, 1)]
                )
            else:
                self.ups = nn.ModuleList([nn.ConvTranspose2d(h, out, 4, 2, 1)])
            self.to_pixels = None
        else:
            stages = staged["stages"]
            fraction = staged.get("residual_fraction", 0.5)
            self.from_code = nn.Conv2d(in_channels, stages[0]["channels"], 3, 1, 1)
            self.stages = nn.ModuleList(
                ResidualStack(
                    s["channels"],
                    max(1, int(_round_half_away(s["channels"] * fraction))),
                    s["blocks"],
                )
                for s in stages
            )
            self.ups = nn.ModuleList(
                nn.ConvTranspose2d(a["channels"], b["channels"], 4, 2, 1)
                for a, b in zip(stages, stages[1:])
            )
            self.to_pixels = nn.Conv2d(stages[-1]["channels"], out, 3, 1, 1)

    def forward(self, z):
        x = self.from_code(z)
        if not self.staged:
            x = self.stages[0](x)
            for i, up in enumerate(self.ups):
                x = up(x)
                if i < len(self.ups) - 1:
                    x = F.relu(x)
            return x
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.ups):
                x = self.ups[i](x)
        return self.to_pixels(x)

    def names(self, prefix):
        out = _conv_names(f"{prefix}.from_code", self.from_code)
        if not self.staged:
            out.update(self.stages[0].names(f"{prefix}.res"))
        else:
            for i, s in enumerate(self.stages):
                out.update(s.names(f"{prefix}.stage{i}"))
            out.update(_conv_names(f"{prefix}.to_pixels", self.to_pixels))
        for i, up in enumerate(self.ups):
            out.update(_conv_names(f"{prefix}.up{i}", up))
        return out


def _round_half_away(x):
    """Rust's `f64::round`: halves away from zero (Python's round() goes to even)."""
    return float(int(x + 0.5)) if x >= 0 else -float(int(-x + 0.5))


class Codebook(nn.Module):
    """K codes of dimension D; the nearest code by `argmin ‖e‖² − 2·z·e`."""

    def __init__(self, size, dim):
        super().__init__()
        self.codebook = nn.Parameter(torch.zeros(size, dim))

    def nearest(self, z):
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        cb = self.codebook
        scores = (cb * cb).sum(1).unsqueeze(0) - (flat @ cb.t()) * 2.0
        return scores.argmin(1).view(b, 1, h, w)

    def embed(self, codes):
        return F.embedding(codes[:, 0], self.codebook).permute(0, 3, 1, 2)


class VectorQuantizer(nn.Module):
    def __init__(self, q):
        super().__init__()
        self.book = Codebook(q["codebook_size"], q["code_dim"])

    def encode(self, z):
        return self.book.nearest(z)

    def embed(self, codes):
        return self.book.embed(codes)

    def names(self, prefix):
        return {f"{prefix}.codebook": self.book.codebook}


class CosineQuantizer(nn.Module):
    """Projected to a few dimensions, normalised, matched to unit codes, projected back."""

    def __init__(self, q):
        super().__init__()
        self.in_proj = nn.Conv2d(q["latent_dim"], q["code_dim"], 1)
        self.out_proj = nn.Conv2d(q["code_dim"], q["latent_dim"], 1)
        self.book = Codebook(q["codebook_size"], q["code_dim"])

    def encode(self, z):
        p = self.in_proj(z)
        p = p / p.norm(p=2, dim=1, keepdim=True).clamp_min(1e-12)
        return self.book.nearest(p)

    def embed(self, codes):
        return self.out_proj(self.book.embed(codes))

    def names(self, prefix):
        out = {f"{prefix}.codebook": self.book.codebook}
        out.update(_conv_names(f"{prefix}.in_proj", self.in_proj))
        out.update(_conv_names(f"{prefix}.out_proj", self.out_proj))
        return out


class ResidualQuantizer(nn.Module):
    """L codebooks in sequence, each on what the levels before it leave."""

    def __init__(self, q):
        super().__init__()
        self.levels = nn.ModuleList(
            Codebook(q["codebook_size"], q["code_dim"]) for _ in range(q["depth"])
        )

    def encode(self, z):
        residual, codes = z, []
        for level in self.levels:
            c = level.nearest(residual)
            residual = residual - level.embed(c)
            codes.append(c)
        return torch.cat(codes, 1)

    def embed(self, codes):
        total = None
        for i in range(codes.shape[1]):
            e = self.levels[i].embed(codes[:, i : i + 1])
            total = e if total is None else total + e
        return total

    def names(self, prefix):
        return {f"{prefix}.level{i}.codebook": l.codebook for i, l in enumerate(self.levels)}


class FiniteScalarQuantizer(nn.Module):
    """Each latent channel bounded and rounded to `levels[i]` values; no codebook."""

    def __init__(self, q):
        super().__init__()
        self.levels = list(q["levels"])

    def _per_channel(self, values, like):
        return torch.tensor(values, dtype=torch.float32, device=like.device).view(1, -1, 1, 1)

    def encode(self, z):
        eps = 1e-3
        half = self._per_channel([(l - 1) * (1 + eps) / 2 for l in self.levels], z)
        offset = self._per_channel([0.5 if l % 2 == 0 else 0.0 for l in self.levels], z)
        shift = torch.atanh(offset / half)
        rounded = torch.round(torch.tanh(z + shift) * half - offset)
        half_width = self._per_channel([l // 2 for l in self.levels], z)
        digits = torch.round(rounded + half_width).long()
        basis, b = [], 1
        for l in self.levels:
            basis.append(b)
            b *= l
        basis = torch.tensor(basis, device=z.device).view(1, -1, 1, 1)
        return (digits * basis).sum(1, keepdim=True)

    def embed(self, codes):
        rest = codes[:, 0]
        channels = []
        for l in self.levels:
            channels.append((torch.remainder(rest, l) - l // 2).float())
            rest = torch.div(rest, l, rounding_mode="floor")
        rounded = torch.stack(channels, 1)
        return rounded / self._per_channel([l // 2 for l in self.levels], rounded)

    def names(self, prefix):
        return {}


_QUANTIZERS = {
    "vq": VectorQuantizer,
    "cosine": CosineQuantizer,
    "residual": ResidualQuantizer,
    "fsq": FiniteScalarQuantizer,
}

# `value = byte · scale + offset` for each `input_range`.
_RANGES = {
    "zero_one": (1.0 / 255.0, 0.0),
    "minus_half_to_half": (1.0 / 255.0, -0.5),
    "minus_one_to_one": (2.0 / 255.0, -1.0),
}


def _latent_dim(q):
    if q["kind"] == "cosine":
        return q["latent_dim"]
    if q["kind"] == "fsq":
        return len(q["levels"])
    return q["code_dim"]


class VqVae(nn.Module):
    """Encoder → quantizer → decoder, built from a vqvae-rs `config.json` (format 2)."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        q = cfg["quantizer"]
        latent = _latent_dim(q)
        self.encoder = Encoder(cfg, latent)
        self.quantizer = _QUANTIZERS[q["kind"]](q)
        self.decoder = Decoder(cfg, latent)
        self.downsample = cfg["downsample"]
        self.scale, self.offset = _RANGES[cfg.get("input_range", "minus_half_to_half")]

    def tensor_names(self):
        """Parameter by the tensor name `model.safetensors` gives it."""
        out = self.encoder.names("encoder")
        out.update(self.quantizer.names("quantizer"))
        out.update(self.decoder.names("decoder"))
        return out

    def load_tensors(self, tensors):
        for name, param in self.tensor_names().items():
            if name not in tensors:
                raise KeyError(f"the weights have no tensor {name}")
            value = tensors[name]
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(f"{name}: shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(value.to(param.dtype))

    def to_model_range(self, images):
        """uint8 (N, 3, H, W) pixels, or floats in [0, 1], to the model's input range."""
        if images.dtype == torch.uint8:
            return images.float() * self.scale + self.offset
        return images.float() * (255.0 * self.scale) + self.offset

    @torch.no_grad()
    def encode(self, images):
        """(N, 3, H, W) uint8 images (or floats in [0, 1]) → (N, L, h, w) int64 codes."""
        x = self.to_model_range(images)
        f = self.downsample
        pad_h, pad_w = -x.shape[2] % f, -x.shape[3] % f
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.quantizer.encode(self.encoder(x))

    @torch.no_grad()
    def decode(self, codes):
        """(N, L, h, w) codes → (N, 3, h·f, w·f) float pixels on [0, 1] (not clamped)."""
        x = self.decoder(self.quantizer.embed(codes.long()))
        return (x - self.offset) / (self.scale * 255.0)

    @torch.no_grad()
    def decode_uint8(self, codes):
        """(N, L, h, w) codes → (N, 3, h·f, w·f) uint8 pixels, rounded as vq-cli writes them."""
        x = self.decoder(self.quantizer.embed(codes.long()))
        return ((x - self.offset) / self.scale).round().clamp(0, 255).to(torch.uint8)


# --- the prior --------------------------------------------------------------------------


class _Block(nn.Module):
    """A pre-norm transformer block (`crates/vq-prior/src/transformer.rs`): causal
    self-attention with `kv_heads` key/value heads shared by the query heads, then an MLP."""

    def __init__(self, width, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads = heads, kv_heads
        head_dim = width // heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, width + 2 * kv_heads * head_dim)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, d = x.shape
        head_dim = d // self.heads
        kv = self.kv_heads * head_dim
        parts = self.qkv(self.ln1(x))

        def split(start, heads):
            return parts[:, :, start : start + heads * head_dim].view(b, t, heads, head_dim).transpose(1, 2)

        q, k, v = split(0, self.heads), split(d, self.kv_heads), split(d + kv, self.kv_heads)
        group = self.heads // self.kv_heads
        if group > 1:
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TransformerPrior(nn.Module):
    """The transformer code prior over raster-ordered code grids, from a vqvae-rs prior
    `config.json` (`"arch": {"kind": "transformer", ...}`). Its first token is the class (the
    last row of `classes` is the null class, which classifier-free guidance uses)."""

    def __init__(self, cfg):
        super().__init__()
        arch, prov = cfg["arch"], cfg["provenance"]
        if arch.get("kind") != "transformer":
            raise ValueError(f"this module runs the transformer prior, not {arch.get('kind')!r}")
        if prov["codes"].get("depth", 1) != 1:
            raise ValueError("a prior over one code level is expected")
        self.config = cfg
        d, vocabulary = arch["width"], prov["codes"]["vocabulary"]
        self.side, self.vocabulary = prov["grid_side"], vocabulary
        self.class_count = prov["classes"]
        self.class_names = prov.get("class_names") or []
        self.codes = nn.Embedding(vocabulary, d)
        self.classes = nn.Embedding(self.class_count + 1, d)
        self.positions = nn.Parameter(torch.zeros(self.side * self.side, d))
        heads = arch["heads"]
        kv_heads = arch.get("kv_heads") or heads
        self.blocks = nn.ModuleList(_Block(d, heads, kv_heads) for _ in range(arch["layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocabulary)

    def tensor_names(self):
        """Parameter by the tensor name the prior's `model.safetensors` gives it."""
        out = {"positions": self.positions}
        for name, module in [("codes", self.codes), ("classes", self.classes)]:
            out[f"{name}.weight"] = module.weight
        linears = [("ln_f", self.ln_f), ("head", self.head)]
        for i, block in enumerate(self.blocks):
            for part in ("ln1", "qkv", "proj", "ln2", "fc1", "fc2"):
                linears.append((f"block{i}.{part}", getattr(block, part)))
        for name, module in linears:
            out[f"{name}.weight"] = module.weight
            out[f"{name}.bias"] = module.bias
        return out

    load_tensors = VqVae.load_tensors

    def _class_rows(self, labels, n, device):
        null = torch.full((n,), self.class_count, dtype=torch.long, device=device)
        if labels is None or self.class_count == 0:
            return null
        labels = torch.as_tensor(labels, device=device).long().reshape(n)
        if labels.min() < 0 or labels.max() >= self.class_count:
            raise ValueError(f"labels are classes 0 to {self.class_count - 1}")
        return labels

    @torch.no_grad()
    def logits(self, codes, labels=None):
        """(B, h, w) codes (and (B,) labels, or None: the null class) → (B, V, h, w) logits of
        each code given the class and the codes before it in raster order."""
        if codes.dim() == 4:
            codes = codes[:, 0]
        b, h, w = codes.shape
        t = h * w
        flat = codes.reshape(b, t).long()
        x = self.classes(self._class_rows(labels, b, codes.device)).unsqueeze(1)
        if t > 1:
            x = torch.cat([x, self.codes(flat[:, : t - 1])], 1)
        x = x + self.positions[:t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)).view(b, h, w, -1).permute(0, 3, 1, 2)

    @torch.no_grad()
    def sample(
        self,
        n,
        labels=None,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        guidance=1.0,
        guided_codes=None,
        generator=None,
    ):
        """`n` new (n, h, w) code grids in raster order, of `labels` ((n,) classes) when given,
        with classifier-free guidance (`u + guidance · (c − u)` on the logits, u the null
        class's) on the first `guided_codes` codes (None: all) and the usual temperature, top-k
        and top-p. Defaults: the plain conditional distribution; the prior's own settings are
        `config["sampling"]` (`sample(n, labels, **prior.config["sampling"])`). Each code reruns
        the network over the grid so far (simple, not fast: vq-cli keeps a key/value cache)."""
        device = self.positions.device
        length = self.side * self.side
        guided = labels is not None and self.class_count > 0 and guidance != 1.0
        guided_until = length if guided_codes is None else max(0, min(guided_codes, length))
        guided = guided and guided_until > 0
        cond = self._class_rows(labels, n, device)
        rows = torch.cat([cond, torch.full_like(cond, self.class_count)]) if guided else cond
        x = self.classes(rows).unsqueeze(1)
        codes = torch.zeros(n, length, dtype=torch.long, device=device)
        for t in range(length):
            if guided and t == guided_until:
                # The rest from the conditional model alone: drop the unconditional rows.
                guided = False
                x = x[:n]
            h = x + self.positions[: t + 1]
            for block in self.blocks:
                h = block(h)
            logits = self.head(self.ln_f(h[:, -1])).float()
            if guided:
                c, u = logits[:n], logits[n:]
                logits = u + (c - u) * guidance
            logits = logits / max(temperature, 1e-6)
            if 0 < top_k < self.vocabulary:
                kth = logits.topk(top_k, 1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if top_p < 1.0:
                sorted_logits, order = logits.sort(1, descending=True)
                probs = sorted_logits.softmax(1)
                drop_sorted = (probs.cumsum(1) - probs) >= top_p
                drop = drop_sorted.scatter(1, order, drop_sorted)
                logits = logits.masked_fill(drop, float("-inf"))
            nxt = torch.multinomial(logits.softmax(1), 1, generator=generator).squeeze(1)
            codes[:, t] = nxt
            fed = torch.cat([nxt, nxt]) if guided else nxt
            x = torch.cat([x, self.codes(fed).unsqueeze(1)], 1)
        return codes.view(n, self.side, self.side)


def load_prior(directory):
    """The prior `vq-cli export --pytorch` wrote to `directory` (its `prior/` folder), for the
    exported model's codes."""
    path = os.path.join(directory, "prior")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no prior was exported (export the bundled model, or pass --prior)")
    return _load_part(path, TransformerPrior)


def _load_part(path, network):
    """`network` built from `path`/config.json, its weights from `path`/model.safetensors."""
    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    module = network(cfg)
    module.load_tensors(read_safetensors(os.path.join(path, "model.safetensors")))
    return module.eval()


def load(directory, decoder="plain"):
    """The VQ-VAE `vq-cli export --pytorch` wrote to `directory`: its own decoder (`plain`), or
    the sharp decoder exported beside it (`sharp`)."""
    sub = {"plain": "model", "sharp": "sharp"}.get(decoder)
    if sub is None:
        raise ValueError(f"decoder is 'plain' or 'sharp', not {decoder!r}")
    path = os.path.join(directory, sub)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not exported (export the bundled model for 'sharp')")
    return _load_part(path, VqVae)


def save(model, directory):
    """Writes `model` (a VqVae) as a checkpoint folder `vq-cli --checkpoint` loads:
    `config.json` and `model.safetensors` under the same tensor names."""
    os.makedirs(directory, exist_ok=True)
    cfg = dict(model.config)
    cfg["format"] = 2
    cfg.pop("codes_of", None)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    tensors = {k: v.detach().float() for k, v in model.tensor_names().items()}
    # The codebook statistics vq-cli's checkpoints carry (unused for inference).
    for name, book in list(tensors.items()):
        if name.endswith("codebook"):
            base = name[: -len("codebook")]
            tensors[base + "ema_count"] = torch.ones(book.shape[0])
            tensors[base + "ema_sum"] = book.clone()
            tensors[base + "last_used"] = torch.zeros(book.shape[0])
    write_safetensors(os.path.join(directory, "model.safetensors"), tensors)
