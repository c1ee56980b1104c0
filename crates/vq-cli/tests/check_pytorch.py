"""Run by tests/pytorch.rs: the exported model in PyTorch against vqvae-rs's own answers.

argv: EXPORT_DIR REFERENCE.safetensors RESAVED_DIR ODD_CODES.npy. Prints one JSON object of figures; the
Rust test judges them. Also writes the model back through `vqvae_rs.save` to RESAVED_DIR, for
vq-cli to load (the way back from PyTorch).
"""

import json
import math
import sys

import numpy as np
import torch

export_dir, reference_path, resaved_dir, odd_npy = sys.argv[1:5]
sys.path.insert(0, export_dir)
import vqvae_rs  # noqa: E402

torch.set_num_threads(2)
ref = vqvae_rs.read_safetensors(reference_path)
images, codes = ref["images"], ref["codes"]
figures = {}
for name in ("plain", "sharp"):
    model = vqvae_rs.load(export_dir, decoder=name)
    ours = model.encode(images)
    figures[f"{name}_codes_equal"] = (ours == codes).double().mean().item()
    figures[f"{name}_codes_shape"] = list(ours.shape)
    pixels = model.decode(codes)
    figures[f"{name}_pixels_max_diff"] = (pixels - ref[f"{name}_pixels"]).abs().max().item()
    u8 = model.decode_uint8(codes).long()
    figures[f"{name}_uint8_max_diff"] = (u8 - ref[f"{name}_uint8"].long()).abs().max().item()
# An image that is not a multiple of the downsampling (45 × 38): padded as vq-cli pads it.
odd = vqvae_rs.load(export_dir).encode(ref["odd_image"])
figures["odd_codes_equal"] = (odd == ref["odd_codes"]).double().mean().item()
# vq-cli's .npy of those codes, read by NumPy itself.
figures["odd_npy_equal"] = bool(np.array_equal(np.load(odd_npy), ref["odd_codes"].numpy()))
# The prior: logits of the test codes given their classes, then samples of its own.
prior = vqvae_rs.load_prior(export_dir)
logits = prior.logits(codes[:, 0], ref["labels"])
figures["prior_logits_max_diff"] = (logits - ref["prior_logits"]).abs().max().item()
figures["prior_argmax_equal"] = (logits.argmax(1) == ref["prior_logits"].argmax(1)).double().mean().item()
generator = torch.Generator().manual_seed(0)
labels = torch.arange(8) % 10
samples = prior.sample(8, labels=labels, guidance=2.0, generator=generator)
figures["prior_samples_shape"] = list(samples.shape)
nll = torch.nn.functional.cross_entropy(prior.logits(samples, labels), samples)
figures["prior_samples_bits_per_code"] = nll.item() / math.log(2)
vqvae_rs.save(vqvae_rs.load(export_dir), resaved_dir)
print(json.dumps(figures))
