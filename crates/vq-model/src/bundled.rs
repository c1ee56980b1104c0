//! The VQ-VAE this repository ships (`models/cifar10-default/`), compiled into every binary
//! that links this crate, so that an installed `vq-cli` has its default model wherever it runs.

use vq_store::Bundled;

/// `models/cifar10-default`: the model `vq-cli` uses unless `--checkpoint` says otherwise.
pub static BUNDLED: Bundled = Bundled {
    name: "models/cifar10-default",
    config: include_str!("../../../models/cifar10-default/config.json"),
    weights: include_bytes!("../../../models/cifar10-default/model.safetensors"),
    state: Some(include_str!("../../../models/cifar10-default/state.json")),
    eval: Some(include_str!("../../../models/cifar10-default/eval.json")),
};

/// `models/cifar10-sharp`: the bundled model with its decoder fine-tuned by `vq-train decoder`
/// (encoder and codebook frozen, so it reads and writes the same codes). `vq-cli sample` decodes
/// with it by default, since its samples measured the lower FID (docs/experiments.md).
pub static BUNDLED_TUNED_DECODER: Bundled = Bundled {
    name: "models/cifar10-sharp",
    config: include_str!("../../../models/cifar10-sharp/config.json"),
    weights: include_bytes!("../../../models/cifar10-sharp/model.safetensors"),
    state: Some(include_str!("../../../models/cifar10-sharp/state.json")),
    eval: Some(include_str!("../../../models/cifar10-sharp/eval.json")),
};
