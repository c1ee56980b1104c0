//! Adam whose state we own, so that a run can be checkpointed and resumed exactly (tch's
//! optimizer state cannot be saved).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use tch::{nn, Kind, Tensor};

#[derive(Debug)]
pub struct Adam {
    /// Trainable variables by name (sorted, so the update order is fixed).
    params: BTreeMap<String, Tensor>,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW), applied to the tensors of two or more dimensions (the
    /// weight matrices and embeddings; not biases or norms), as nanoGPT does. 0: plain Adam.
    pub weight_decay: f64,
    /// Updates applied so far.
    pub steps: i64,
}

impl Adam {
    pub fn new(vs: &nn::VarStore) -> Self {
        let params: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let zeros = |p: &Tensor| Tensor::zeros_like(p).set_requires_grad(false);
        Adam {
            m: params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect(),
            v: params.iter().map(|(k, p)| (k.clone(), zeros(p))).collect(),
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            steps: 0,
        }
    }

    pub fn zero_grad(&mut self) {
        for p in self.params.values_mut() {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// The variables it updates, in its update order: the inputs for `Tensor::run_backward`
    /// whose gradients [`Adam::step_with`] takes.
    pub fn parameters(&self) -> Vec<&Tensor> {
        self.params.values().collect()
    }

    /// One update with learning rate `lr` from the gradients already computed.
    pub fn step(&mut self, lr: f64) {
        let grads: Vec<Tensor> = self.params.values().map(Tensor::grad).collect();
        self.step_with(lr, &grads);
    }

    /// One update with learning rate `lr` from `grads`, one for each of
    /// [`Adam::parameters`] in that order (an undefined one leaves its variable alone).
    pub fn step_with(&mut self, lr: f64, grads: &[Tensor]) {
        assert_eq!(
            grads.len(),
            self.params.len(),
            "a gradient for every parameter"
        );
        let _guard = tch::no_grad_guard();
        // Data-parallel: the mean of the ranks' gradients (each the mean over its part of the
        // global batch), summed in one bucket, so that every rank applies the same update.
        if let Some(group) = vq_model::collective::group() {
            let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
            vq_model::collective::all_reduce_sum(&defined);
            let world = group.world_size() as f64;
            for g in defined {
                let _ = g.shallow_clone().divide_scalar_(world);
            }
        }
        self.steps += 1;
        let t = self.steps as i32;
        let bias1 = 1.0 - self.beta1.powi(t);
        let bias2 = 1.0 - self.beta2.powi(t);
        for ((name, p), g) in self.params.iter_mut().zip(grads) {
            if !g.defined() {
                continue;
            }
            // In place wherever possible, as PyTorch's own single-tensor Adam: three temporaries
            // per parameter instead of eight (the optimizer was 5% of a CPU step).
            let m = self.m.get_mut(name).expect("moment for every parameter");
            let _ = m.lerp_(g, 1.0 - self.beta1);
            let v = self.v.get_mut(name).expect("moment for every parameter");
            let _ = v.lerp_(&g.square(), 1.0 - self.beta2);
            let mut denom = v.sqrt();
            let _ = denom.g_div_scalar_(bias2.sqrt()).g_add_scalar_(self.eps);
            let mut update = &*m / &denom;
            let _ = update.g_mul_scalar_(lr / bias1);
            if self.weight_decay > 0.0 && p.dim() >= 2 {
                let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
            }
            let _ = p.g_sub_(&update);
        }
    }

    /// Saves the moments as safetensors (`m.NAME`, `v.NAME`); the step count goes in the
    /// run state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let named: Vec<(String, &Tensor)> = self
            .m
            .iter()
            .map(|(k, t)| (format!("m.{k}"), t))
            .chain(self.v.iter().map(|(k, t)| (format!("v.{k}"), t)))
            .collect();
        Ok(vq_store::weights::save_tensors(&named, path)?)
    }

    pub fn load(&mut self, path: &Path, steps: i64) -> Result<()> {
        let loaded = vq_store::weights::load_tensors(path)?;
        let _guard = tch::no_grad_guard();
        for (prefix, moments) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (name, t) in moments.iter_mut() {
                let key = format!("{prefix}.{name}");
                let Some(src) = loaded.get(&key) else {
                    bail!(
                        "{}: no {key} (optimizer state of another model?)",
                        path.display()
                    );
                };
                if src.size() != t.size() {
                    bail!(
                        "{}: {key} has shape {:?}, the model needs {:?}",
                        path.display(),
                        src.size(),
                        t.size()
                    );
                }
                t.copy_(&src.to_kind(Kind::Float));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn minimises_a_quadratic_and_round_trips_its_state() {
        let _rng = vq_model::seeded(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let x = vs.root().var("x", &[3], nn::Init::Const(5.0));
        let mut adam = Adam::new(&vs);
        for _ in 0..400 {
            adam.zero_grad();
            x.square().sum(Kind::Float).backward();
            adam.step(0.05);
        }
        assert!(x.abs().max().double_value(&[]) < 0.05, "{x}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adam.safetensors");
        adam.save(&path).unwrap();
        let vs2 = nn::VarStore::new(Device::Cpu);
        let _x2 = vs2.root().var("x", &[3], nn::Init::Const(0.0));
        let mut adam2 = Adam::new(&vs2);
        adam2.load(&path, adam.steps).unwrap();
        assert_eq!(adam2.steps, 400);
        assert_eq!(adam2.m["x"], adam.m["x"]);
        assert_eq!(adam2.v["x"], adam.v["x"]);

        // Weight decay pulls a matrix towards zero without a gradient; a vector is left alone.
        let vs4 = nn::VarStore::new(Device::Cpu);
        let w = vs4.root().var("w", &[2, 2], nn::Init::Const(1.0));
        let b = vs4.root().var("b", &[2], nn::Init::Const(1.0));
        let mut adamw = Adam::new(&vs4);
        adamw.weight_decay = 0.5;
        adamw.zero_grad();
        (w.sum(Kind::Float) * 0.0 + b.sum(Kind::Float) * 0.0).backward();
        adamw.step(0.1);
        assert!((w.double_value(&[0, 0]) - 0.95).abs() < 1e-6, "{w}");
        assert_eq!(b.double_value(&[0]), 1.0);

        let vs3 = nn::VarStore::new(Device::Cpu);
        let _y = vs3.root().var("y", &[3], nn::Init::Const(0.0));
        assert!(Adam::new(&vs3).load(&path, 1).is_err());
    }
}
