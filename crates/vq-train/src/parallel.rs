//! Data-parallel training steps on the CPU: each batch is split into one consecutive part per
//! thread; every thread runs the forward and backward pass of its part with a single LibTorch
//! thread, and the gradients are added (weighted by part size) before one optimizer step.
//!
//! Why: LibTorch's own threading splits each convolution across the cores, which for the small
//! batches this model trains best with (32 images: 2,048 latent positions) leaves the threads
//! waiting on each other; whole passes per thread have no such waits (on the 2-core dev CPU,
//! two single-threaded halves of 16 images did 289 images/s against 255 for one two-threaded
//! batch of 32).
//!
//! The helper threads' models share every tensor's storage with the main model, so the
//! optimizer's and the codebook's in-place updates reach them without copies; only their
//! gradients are their own. Results are deterministic for a given thread count (the gradient
//! sum has a fixed order), as they are with LibTorch's threading.

use std::sync::mpsc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Result};
use tch::{nn, Tensor};
use vq_model::{VqVae, VqVaeConfig, VqVaeOutput};

/// What a helper thread sends back for its part of the batch.
struct PartResult {
    /// Detached forward figures.
    output: VqVaeOutput,
    /// Gradients of the part's mean loss, in the order of [`DataParallel::trainable`]; empty
    /// when the loss was not finite (no backward pass then).
    grads: Vec<Tensor>,
}

#[derive(Debug)]
struct Helper {
    jobs: Option<mpsc::Sender<Tensor>>,
    results: mpsc::Receiver<PartResult>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PartResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartResult").finish_non_exhaustive()
    }
}

/// The training step's threads: the calling thread takes the first part of each batch, each
/// helper one of the others.
#[derive(Debug)]
pub struct DataParallel {
    helpers: Vec<Helper>,
    /// The main model's trainable variables, sorted by name.
    trainable: Vec<Tensor>,
}

fn trainable_sorted(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

fn zero_grads(vars: &[Tensor]) {
    for p in vars {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.detach_().zero_();
        }
    }
}

impl DataParallel {
    /// Sets up `threads` threads (the caller's and `threads - 1` helpers) for the model whose
    /// variables are in `vs`. With one thread, steps run on the caller alone, with LibTorch's
    /// own threading left as it is.
    pub fn new(vs: &nn::VarStore, config: &VqVaeConfig, threads: usize) -> Result<Self> {
        let main: std::collections::HashMap<String, Tensor> = vs.variables();
        let mut helpers = Vec::new();
        for index in 1..threads.max(1) {
            // The helper's model: its own leaf variables on the main model's storage.
            let helper_vs = nn::VarStore::new(vs.device());
            let model = VqVae::new(helper_vs.root(), config);
            for (name, mut var) in helper_vs.variables() {
                let source = main.get(&name).ok_or_else(|| {
                    anyhow!("the helper model has a variable {name} the model lacks")
                })?;
                var.set_data(&source.detach());
            }
            let trainable: Vec<Tensor> = trainable_sorted(&helper_vs)
                .into_iter()
                .map(|(_, t)| t)
                .collect();
            let (job_tx, job_rx) = mpsc::channel::<Tensor>();
            let (result_tx, result_rx) = mpsc::channel::<PartResult>();
            let handle = std::thread::Builder::new()
                .name(format!("train-part-{index}"))
                .spawn(move || {
                    // Keeps the VarStore (and so the variables) alive with the model.
                    let _vs = helper_vs;
                    tch::set_num_threads(1);
                    for xs in job_rx {
                        let out = model.forward(&xs);
                        let grads = if out.loss.double_value(&[]).is_finite() {
                            zero_grads(&trainable);
                            out.loss.backward();
                            trainable.iter().map(|p| p.grad()).collect()
                        } else {
                            Vec::new()
                        };
                        let result = PartResult {
                            output: out.detach(),
                            grads,
                        };
                        if result_tx.send(result).is_err() {
                            break;
                        }
                    }
                })?;
            helpers.push(Helper {
                jobs: Some(job_tx),
                results: result_rx,
                handle: Some(handle),
            });
        }
        Ok(DataParallel {
            helpers,
            trainable: trainable_sorted(vs).into_iter().map(|(_, t)| t).collect(),
        })
    }

    /// Number of threads a step runs on.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Forward and backward pass of `model` on the batch `xs`, leaving the gradients of its
    /// mean loss in the main model's variables. Returns the detached forward figures of the
    /// whole batch, or `None` when a part's loss is not finite (the gradients are then
    /// unspecified and must not be applied).
    pub fn forward_backward(&mut self, model: &VqVae, xs: &Tensor) -> Result<Option<VqVaeOutput>> {
        let batch = xs.size()[0];
        let parts = (self.threads() as i64).min(batch).max(1);
        if parts == 1 {
            let out = model.forward(xs);
            if !out.loss.double_value(&[]).is_finite() {
                return Ok(None);
            }
            zero_grads(&self.trainable);
            out.loss.backward();
            return Ok(Some(out.detach()));
        }
        // Consecutive parts, the first ones one image larger when the batch does not divide.
        let sizes: Vec<i64> = (0..parts)
            .map(|i| batch / parts + i64::from(i < batch % parts))
            .collect();
        let pieces = xs.split_with_sizes(&sizes, 0);
        // This thread's part runs single-threaded too; LibTorch's threading is put back after.
        let outer_threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let result = self.run_parts(model, &pieces, &sizes);
        tch::set_num_threads(outer_threads);
        result
    }

    fn run_parts(
        &mut self,
        model: &VqVae,
        pieces: &[Tensor],
        sizes: &[i64],
    ) -> Result<Option<VqVaeOutput>> {
        let parts = pieces.len();
        let batch: i64 = sizes.iter().sum();
        for (helper, piece) in self.helpers.iter().zip(&pieces[1..]) {
            helper
                .jobs
                .as_ref()
                .expect("jobs open until drop")
                .send(piece.shallow_clone())
                .map_err(|_| anyhow!("a training thread stopped"))?;
        }
        let out = model.forward(&pieces[0]);
        let finite = out.loss.double_value(&[]).is_finite();
        if finite {
            zero_grads(&self.trainable);
            out.loss.backward();
        }
        let mut outputs = vec![out.detach()];
        let mut grads = Vec::new();
        for helper in &self.helpers[..parts - 1] {
            let result = helper
                .results
                .recv()
                .map_err(|_| anyhow!("a training thread failed"))?;
            outputs.push(result.output);
            grads.push(result.grads);
        }
        if !finite || grads.iter().any(Vec::is_empty) {
            return Ok(None);
        }
        // ∂(Σ nᵢ·Lᵢ / N): each part's gradient weighted by its share of the batch.
        let _guard = tch::no_grad_guard();
        let share = |i: usize| sizes[i] as f64 / batch as f64;
        for (k, p) in self.trainable.iter().enumerate() {
            let mut g = p.grad();
            if !g.defined() {
                continue;
            }
            let _ = g.g_mul_scalar_(share(0));
            for (i, part) in grads.iter().enumerate() {
                if part[k].defined() {
                    let _ = g.g_add_(&(&part[k] * share(i + 1)));
                }
            }
        }
        Ok(Some(VqVaeOutput::concat(&outputs)))
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        for helper in &mut self.helpers {
            // Closing the job channel ends the helper's loop.
            helper.jobs.take();
            if let Some(handle) = helper.handle.take() {
                let _ = handle.join();
            }
        }
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
            codebook_size: 16,
            code_dim: 4,
            compute: vq_model::ComputeKind::F32,
            ..VqVaeConfig::default()
        }
    }

    fn grads(vs: &nn::VarStore) -> Vec<Tensor> {
        trainable_sorted(vs)
            .iter()
            .map(|(_, t)| t.grad().copy())
            .collect()
    }

    #[test]
    fn split_batches_give_the_whole_batch_gradients_and_figures() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &tiny());
        // 7 images: parts of 3, 2 and 2 with three threads.
        let xs = Tensor::rand([7, 3, 32, 32], (Kind::Float, Device::Cpu)) - 0.5;
        let mut whole = DataParallel::new(&vs, &tiny(), 1).unwrap();
        let reference = whole.forward_backward(&model, &xs).unwrap().unwrap();
        let reference_grads = grads(&vs);
        for threads in [2, 3] {
            let mut split = DataParallel::new(&vs, &tiny(), threads).unwrap();
            assert_eq!(split.threads(), threads);
            // Twice: the second step reuses the helpers and must not accumulate gradients.
            for _ in 0..2 {
                let out = split.forward_backward(&model, &xs).unwrap().unwrap();
                let close = |a: &Tensor, b: &Tensor| {
                    (a - b).abs().max().double_value(&[])
                        <= 1e-5 * (1.0 + b.abs().max().double_value(&[]))
                };
                assert!(close(&out.loss, &reference.loss));
                assert!(close(
                    &out.reconstruction_loss,
                    &reference.reconstruction_loss
                ));
                assert!(close(&out.reconstruction, &reference.reconstruction));
                assert_eq!(out.quantized.codes, reference.quantized.codes);
                assert_eq!(out.quantized.counts, reference.quantized.counts);
                assert_eq!(out.quantized.flat_inputs.size(), vec![7 * 64, 4]);
                for (g, r) in grads(&vs).iter().zip(&reference_grads) {
                    assert!(close(g, r), "threads {threads}: gradients differ");
                }
            }
        }
    }

    #[test]
    fn helpers_see_in_place_updates_of_the_weights() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = VqVae::new(vs.root(), &tiny());
        let xs = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) - 0.5;
        let mut split = DataParallel::new(&vs, &tiny(), 2).unwrap();
        let before = split.forward_backward(&model, &xs).unwrap().unwrap();
        {
            let _g = tch::no_grad_guard();
            let _ = vs.variables()["decoder.up1.bias"]
                .shallow_clone()
                .g_add_scalar_(0.25);
        }
        let after = split.forward_backward(&model, &xs).unwrap().unwrap();
        // Both halves' reconstructions moved by the bias change.
        let moved = (&after.reconstruction - &before.reconstruction).mean_dim(
            &[1i64, 2, 3][..],
            false,
            Kind::Float,
        );
        let expected = Tensor::full([4], 0.25, (Kind::Float, Device::Cpu));
        assert!((moved - expected).abs().max().double_value(&[]) < 1e-5);
    }
}
