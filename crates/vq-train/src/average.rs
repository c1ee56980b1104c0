//! Polyak averaging: an exponential moving average of the trained weights, kept beside the
//! model being trained. The average is what evaluations measure and what a checkpoint's
//! `model.safetensors` holds; the weights being trained go to `training.safetensors`, so that a
//! resume continues both exactly.
//!
//! Why: with small batches the last steps' weights carry the noise of their last few batches;
//! their average over the last thousand or so steps reconstructs better at no training cost.

use anyhow::Result;
use tch::{nn, Tensor};
use vq_model::{VqVae, VqVaeConfig};

#[derive(Debug)]
pub struct WeightAverage {
    /// The averaged model's variables (saved as the checkpoint's model).
    pub vs: nn::VarStore,
    pub model: VqVae,
    decay: f64,
    /// `(average, live)` pairs of the model's parameters: the trained weights and the
    /// quantizer's codebook.
    averaged: Vec<(Tensor, Tensor)>,
    /// `(copy, live)` pairs of the training statistics (a codebook's moving averages and usage
    /// counters): copied, so that the saved model's statistics are the live ones.
    copied: Vec<(Tensor, Tensor)>,
}

impl WeightAverage {
    /// Starts the average at the current weights of `live` (its variables in `live_vs`, built
    /// from `config`).
    pub fn new(
        live_vs: &nn::VarStore,
        live: &VqVae,
        config: &VqVaeConfig,
        decay: f64,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(live_vs.device());
        let model = VqVae::new(vs.root(), config);
        vs.copy(live_vs)?;
        // The average is never trained itself.
        vs.freeze();
        // The codebook is averaged too, although its own update may already be an average: the
        // averaged encoder's outputs lag the live encoder's, and so does an averaged codebook
        // (measured ahead of the live codebook, docs/experiments.md).
        let pairs = |ours: Vec<Tensor>, theirs: Vec<Tensor>| -> Result<Vec<(Tensor, Tensor)>> {
            anyhow::ensure!(
                ours.len() == theirs.len()
                    && ours.iter().zip(&theirs).all(|(a, b)| a.size() == b.size()),
                "the averaged model does not have the live model's shape"
            );
            Ok(ours.into_iter().zip(theirs).collect())
        };
        let averaged = pairs(model.parameters(), live.parameters())?;
        let copied = pairs(model.statistics(), live.statistics())?;
        anyhow::ensure!(
            averaged.len() + copied.len() == live_vs.variables().len(),
            "the model's parameters and statistics do not cover all its variables"
        );
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

    /// Copies the live model's statistics, as they are now. Call before evaluating or saving
    /// the average.
    pub fn sync(&mut self) {
        let _guard = tch::no_grad_guard();
        for (copy, live) in &mut self.copied {
            copy.copy_(live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// The codebook's name in the weights file (the test checks the file's variables by name).
    const CODEBOOK: &str = "quantizer.codebook";

    fn tiny() -> VqVaeConfig {
        vq_store::parse_config(
            r#"{"hidden_channels": 8, "residual": {"hidden_channels": 4, "layers": 1},
                "quantizer": {"kind": "vq", "codebook_size": 8, "code_dim": 4}, "compute": "f32"}"#,
        )
        .unwrap()
    }

    fn var(vs: &nn::VarStore, name: &str) -> Tensor {
        vs.variables()[name].detach().copy()
    }

    #[test]
    fn averages_trained_weights_and_the_codebook() {
        let _rng = vq_model::seeded(0);
        let live = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(live.root(), &tiny());
        let mut avg = WeightAverage::new(&live, &model, &tiny(), 0.9).unwrap();
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
        let cb0 = var(&avg.vs, CODEBOOK);
        let count0 = var(&avg.vs, "quantizer.ema_count");
        {
            let _g = tch::no_grad_guard();
            let _ = live.variables()["quantizer.ema_count"]
                .shallow_clone()
                .g_add_scalar_(3.0);
        }
        // Update 100: decay min(0.9, 101/110) = 0.9, so the average moves by a tenth.
        avg.update(100);
        let expected = &w0 + 0.1;
        let got = var(&avg.vs, "encoder.down0.weight");
        assert!((got - expected).abs().max().double_value(&[]) < 1e-6);
        // So does the codebook, the EMA codebook included.
        let got = var(&avg.vs, CODEBOOK);
        assert!((got - (&cb0 + 0.2)).abs().max().double_value(&[]) < 1e-5);
        // The codebook's statistics are copied on sync, not averaged.
        assert_eq!(var(&avg.vs, "quantizer.ema_count"), count0);
        avg.sync();
        assert_eq!(
            var(&avg.vs, "quantizer.ema_count"),
            var(&live, "quantizer.ema_count")
        );
        assert!(
            (var(&avg.vs, CODEBOOK) - (&cb0 + 0.2))
                .abs()
                .max()
                .double_value(&[])
                < 1e-5
        );
        // The first update ramps: decay (1+1)/(10+1).
        let mut early = WeightAverage::new(&live, &model, &tiny(), 0.999).unwrap();
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
    }
}
