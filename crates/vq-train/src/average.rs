//! Polyak averaging: an exponential moving average of the trained weights, kept beside the
//! model being trained. The average is what evaluations measure and what a checkpoint's
//! `model.safetensors` holds; the weights being trained go to `training.safetensors`, so that a
//! resume continues both exactly.
//!
//! Why: with small batches the last steps' weights carry the noise of their last few batches;
//! their average over the last thousand or so steps reconstructs better at no training cost.

use std::path::Path;

use anyhow::Result;
use tch::{nn, Tensor};
use vq_model::{VqVae, VqVaeConfig};

#[derive(Debug)]
pub struct WeightAverage {
    /// The averaged model's variables (saved as the checkpoint's model).
    pub vs: nn::VarStore,
    pub model: VqVae,
    decay: f64,
    /// `(average, live)` pairs of the trainable variables.
    averaged: Vec<(Tensor, Tensor)>,
    /// `(copy, live)` pairs of the rest (the EMA codebook and its statistics): not averaged but
    /// copied, because the codebook is already an average of the live encoder's outputs.
    copied: Vec<(Tensor, Tensor)>,
}

impl WeightAverage {
    /// Starts the average at the current weights of `live` (a model built from `config`).
    pub fn new(live: &nn::VarStore, config: &VqVaeConfig, decay: f64) -> Result<Self> {
        let mut vs = nn::VarStore::new(live.device());
        let model = VqVae::new(vs.root(), config);
        vs.copy(live)?;
        // The average is never trained itself.
        vs.freeze();
        let ours = vs.variables();
        let mut averaged = Vec::new();
        let mut copied = Vec::new();
        let mut names: Vec<(String, Tensor)> = live.variables().into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, live_var) in names {
            let Some(mine) = ours.get(&name) else {
                anyhow::bail!("the averaged model has no variable {name}");
            };
            let mine = mine.shallow_clone();
            if live_var.requires_grad() {
                averaged.push((mine, live_var));
            } else {
                copied.push((mine, live_var));
            }
        }
        Ok(WeightAverage {
            vs,
            model,
            decay,
            averaged,
            copied,
        })
    }

    /// Folds in the live weights after optimizer update number `updates` (1-based). The decay
    /// ramps up as `(1 + n) / (10 + n)` so that the first updates are not drowned by the
    /// initial weights.
    pub fn update(&mut self, updates: i64) {
        let _guard = tch::no_grad_guard();
        let n = updates as f64;
        let decay = self.decay.min((1.0 + n) / (10.0 + n));
        for (avg, live) in &mut self.averaged {
            let _ = avg.lerp_(live, 1.0 - decay);
        }
    }

    /// Copies the live model's non-averaged variables (the codebook and its statistics), as
    /// they are now. Call before evaluating or saving the average.
    pub fn sync(&mut self) {
        let _guard = tch::no_grad_guard();
        for (copy, live) in &mut self.copied {
            copy.copy_(live);
        }
    }

    /// Loads a checkpoint's averaged weights.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        vq_model::load_weights(&mut self.vs, path)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn tiny() -> VqVaeConfig {
        VqVaeConfig {
            hidden_channels: 8,
            residual_hidden_channels: 4,
            residual_layers: 1,
            codebook_size: 8,
            code_dim: 4,
            compute: vq_model::ComputeKind::F32,
            ..VqVaeConfig::default()
        }
    }

    fn var(vs: &nn::VarStore, name: &str) -> Tensor {
        vs.variables()[name].detach().copy()
    }

    #[test]
    fn averages_trained_weights_and_copies_the_codebook() {
        tch::manual_seed(0);
        let live = nn::VarStore::new(Device::Cpu);
        let _model = VqVae::new(live.root(), &tiny());
        let mut avg = WeightAverage::new(&live, &tiny(), 0.9).unwrap();
        let w0 = var(&live, "encoder.down0.weight");
        assert_eq!(var(&avg.vs, "encoder.down0.weight"), w0);
        assert!(!avg.vs.variables()["encoder.down0.weight"].requires_grad());

        // Move the live weights and the (non-trainable) codebook.
        {
            let _g = tch::no_grad_guard();
            let vars = live.variables();
            let _ = vars["encoder.down0.weight"]
                .shallow_clone()
                .g_add_scalar_(1.0);
            let _ = vars["quantizer.codebook"]
                .shallow_clone()
                .g_add_scalar_(2.0);
        }
        // Update 100: decay min(0.9, 101/110) = 0.9, so the average moves by a tenth.
        avg.update(100);
        let expected = &w0 + 0.1;
        let got = var(&avg.vs, "encoder.down0.weight");
        assert!((got - expected).abs().max().double_value(&[]) < 1e-6);
        // The first update ramps: decay (1+1)/(10+1).
        let mut early = WeightAverage::new(&live, &tiny(), 0.999).unwrap();
        {
            let _g = tch::no_grad_guard();
            let _ = live.variables()["encoder.down0.weight"]
                .shallow_clone()
                .g_add_scalar_(1.0);
        }
        early.update(1);
        let moved = (var(&early.vs, "encoder.down0.weight") - (&w0 + 1.0))
            .mean(Kind::Float)
            .double_value(&[]);
        assert!((moved - 9.0 / 11.0).abs() < 1e-5, "{moved}");

        // The codebook is copied on sync, not averaged.
        let codebook = var(&live, "quantizer.codebook");
        assert_ne!(var(&avg.vs, "quantizer.codebook"), codebook);
        avg.sync();
        assert_eq!(var(&avg.vs, "quantizer.codebook"), codebook);
    }
}
