//! The VQ-VAE as a training task: reconstruction on image batches, the quantizer's k-means
//! initialisation, weight averaging, and test-split evaluations with reconstruction pictures.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array1, Array4};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Device, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, Split};
use vq_model::{evaluate, images_to_tensor, save_grid, Evaluation, VqVae, VIEW_SCALE};
use vq_store::names::{CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TRAINING_FILE};
use vq_store::RunDir;

use crate::adam::Adam;
use crate::average::WeightAverage;
use crate::config::{DataConfig, TrainConfig};
use crate::runner::RunState;
use crate::task::{Metric, StepReport, Task};

/// What a VQ-VAE run's pictures of its evaluations are called (`recon-step-NNNNNN.png`).
pub const PICTURE: &str = "recon";

/// A VQ-VAE being trained.
#[derive(Debug)]
pub struct VqVaeTask {
    config: TrainConfig,
    device: Device,
    train: Cifar10,
    test: Cifar10,
    vs: nn::VarStore,
    model: VqVae,
    adam: Adam,
    /// The average of the weights that evaluations and `model.safetensors` use.
    average: Option<WeightAverage>,
}

impl crate::task::Evaluation for Evaluation {
    fn score(&self) -> f64 {
        self.psnr
    }
}

/// Loads a split of the run's dataset.
pub(crate) fn load_split(data: &DataConfig, split: Split) -> Result<Cifar10> {
    vq_data::load_split(&data.path, split, &data.load_options())
        .with_context(|| format!("loading the {split} split"))
}

impl VqVaeTask {
    /// Encodes `kmeans_init_images` training images (a seeded sample) and initialises the
    /// quantizer from their encoder outputs.
    fn init_quantizer(&mut self) -> Result<()> {
        let count = self.config.kmeans_init_images.min(self.train.len());
        let seed = self.config.schedule.seed;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x6b6d);
        let mut indices: Vec<usize> = (0..self.train.len()).collect();
        indices.shuffle(&mut rng);
        indices.truncate(count);
        let batch = BatchIndices {
            flips: vec![false; count],
            indices,
        };
        let images = images_to_tensor(
            &gather(
                self.train.images.view(),
                &batch,
                self.config.model.input_range,
            ),
            self.device,
        )?;
        let started = Instant::now();
        let kmeans = vq_kmeans::KMeansConfig::new(1)
            .seed(seed)
            .max_iters(self.config.kmeans_iters)
            .tol(1e-4);
        if let Some(fit) = self.model.init_quantizer(&images, 256, &kmeans)? {
            tracing::info!(
                "quantizer from k-means on {} encoder outputs of {count} images: {} iterations, inertia {:.4e}, {} empty clusters, {:.1} s",
                fit.points,
                fit.iterations,
                fit.inertia,
                fit.empty_clusters,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }
}

impl Task for VqVaeTask {
    type Config = TrainConfig;
    type Eval = Evaluation;
    const ITEMS: &'static str = "images";
    const KIND: crate::view::RunKind = crate::view::RunKind::VqVae;

    fn build(config: &TrainConfig, _run: &RunDir, device: Device, fresh: bool) -> Result<Self> {
        let train = load_split(&config.data, Split::Train)?;
        let test = load_split(&config.data, Split::Test)?;
        tracing::info!(
            "{} train, {} test images from {}; convolutions in {:?}",
            train.len(),
            test.len(),
            config.data.path.display(),
            config.model.compute.kind(device)
        );
        let vs = nn::VarStore::new(device);
        let model = VqVae::new(vs.root(), &config.model);
        let adam = Adam::new(&vs);
        let mut task = VqVaeTask {
            config: config.clone(),
            device,
            train,
            test,
            vs,
            model,
            adam,
            average: None,
        };
        if fresh && config.kmeans_init_images > 0 {
            task.init_quantizer()?;
        }
        if config.weight_ema > 0.0 {
            task.average = Some(WeightAverage::new(
                &task.vs,
                &task.model,
                &config.model,
                config.weight_ema,
            )?);
        }
        Ok(task)
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn flips(&self) -> bool {
        self.config.hflip
    }

    fn step(&mut self, step: usize, lr: f64, batch: &BatchIndices) -> Result<Option<StepReport>> {
        let images = gather(
            self.train.images.view(),
            batch,
            self.config.model.input_range,
        );
        let xs = images_to_tensor(&images, self.device)?;
        let Some((out, restarted)) = train_step(&mut self.model, &mut self.adam, &xs, lr, step)
        else {
            return Ok(None);
        };
        if let Some(avg) = &mut self.average {
            avg.update(self.adam.steps);
        }
        let (scale, _) = self.config.model.input_range.scale_offset();
        let unit_mse = out.reconstruction_loss.double_value(&[]) / (scale as f64 * 255.0).powi(2);
        Ok(Some(StepReport {
            loss: out.loss.double_value(&[]),
            metrics: vec![
                Metric::mean("mse", unit_mse),
                Metric::mean("perplexity", out.quantized.perplexity()),
                Metric::last("codes_used", out.quantized.codes_used() as f64),
                Metric::sum("restarted_codes", restarted as f64),
            ],
        }))
    }

    fn finish_log_line(&self, line: &mut serde_json::Map<String, serde_json::Value>) {
        crate::task::add_psnr(line);
    }

    fn evaluate(
        &mut self,
        run: &RunDir,
        step: usize,
        last: bool,
        elapsed_s: f64,
    ) -> Result<Evaluation> {
        let count = if last {
            self.test.len()
        } else {
            self.config.eval_images.min(self.test.len())
        };
        // The model evaluations and checkpoints serve: the average, or the trained weights.
        let served = match &mut self.average {
            Some(avg) => {
                avg.sync();
                &avg.model
            }
            None => &self.model,
        };
        let eval = evaluate(served, &self.test, count, self.device, step, elapsed_s)?;
        if crate::dist::Dist::current()?.is_main() {
            save_reconstructions(served, &self.test, self.device, &run.picture(PICTURE, step))?;
        }
        Ok(eval)
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        match &mut self.average {
            // model.safetensors holds the average; the trained weights go beside it.
            Some(avg) => {
                avg.sync();
                vq_store::weights::save(&avg.vs, &dir.join(MODEL_FILE))?;
                vq_store::weights::save(&self.vs, &dir.join(TRAINING_FILE))?;
            }
            None => vq_store::weights::save(&self.vs, &dir.join(MODEL_FILE))?,
        }
        self.adam.save(&dir.join(OPTIMIZER_FILE))?;
        vq_store::write_config(&dir.join(CONFIG_FILE), &self.config.model)?;
        Ok(())
    }

    fn optimizer_steps(&self) -> i64 {
        self.adam.steps
    }

    fn replicated(&self) -> Vec<Tensor> {
        let mut stores = vec![&self.vs];
        stores.extend(self.average.as_ref().map(|avg| &avg.vs));
        crate::dist::sorted_variables(&stores)
    }

    fn load(&mut self, dir: &Path, state: &RunState) -> Result<()> {
        match &mut self.average {
            Some(avg) => {
                vq_store::weights::load(&mut self.vs, &dir.join(TRAINING_FILE))?;
                vq_store::weights::load(&mut avg.vs, &dir.join(MODEL_FILE))?;
            }
            None => vq_store::weights::load(&mut self.vs, &dir.join(MODEL_FILE))?,
        }
        self.adam
            .load(&dir.join(OPTIMIZER_FILE), state.adam_steps)?;
        Ok(())
    }

    fn generation_figures(&mut self, _run: &RunDir) -> Result<Option<serde_json::Value>> {
        if !self.config.fid || !crate::dist::Dist::current()?.is_main() {
            return Ok(None);
        }
        let served = match &mut self.average {
            Some(avg) => {
                avg.sync();
                &avg.model
            }
            None => &self.model,
        };
        let count = self.test.len();
        reconstruction_fid(served, &self.config.data, &self.test, count, self.device).map(Some)
    }
}

/// One optimisation step on the batch `xs` (0-based `step`): forward, backward, Adam, then the
/// quantizer's after-step update (EMA, dead-code restarts). Returns the forward pass and the
/// number of codes restarted, or `None` (nothing updated) when the loss is not finite.
pub fn train_step(
    model: &mut VqVae,
    adam: &mut Adam,
    xs: &Tensor,
    lr: f64,
    step: usize,
) -> Option<(vq_model::VqVaeOutput, i64)> {
    let out = model.forward_t(xs, true);
    if crate::dist::Dist::any_non_finite(out.loss.double_value(&[])) {
        return None;
    }
    adam.zero_grad();
    out.loss.backward();
    adam.step(lr);
    let restarted = model.quantizer.after_step(&out.quantized, step as i64 + 1);
    Some((out, restarted))
}

/// The FID and KID of `model`'s reconstructions of the first `count` test images against the
/// whole test split (its statistics cached beside the dataset), as `summary.json` records them.
pub(crate) fn reconstruction_fid(
    model: &VqVae,
    data: &DataConfig,
    test: &Cifar10,
    count: usize,
    device: Device,
) -> Result<serde_json::Value> {
    let net = vq_fid::InceptionV3::load(&vq_fid::default_weights(), device)?;
    tracing::info!("FID of {count} reconstructions of the test split (minutes on a CPU)");
    let reference = vq_fid::split_stats(&net, &data.path, Split::Test, &mut |_, _| {})?.value;
    let features = vq_fid::models::reconstruction_features(
        &net,
        model,
        test,
        vq_model::EvalScope::first(count),
        device,
        &mut |_| {},
    )?;
    let ours = vq_fid::FeatureStats::from_features(&features)?;
    let fid = vq_fid::frechet_distance(&ours, &reference)?;
    let kid = vq_fid::kernel_inception_distance(&ours.sample, &reference.sample, 100, 1000, 0)?;
    Ok(serde_json::json!({
        "rfid": fid, "rkid": kid, "images": ours.count,
        "against": "the test split",
    }))
}

/// The first 32 test images, in rows of 8, each row followed by its reconstructions, enlarged
/// to be seen.
pub(crate) fn save_reconstructions(
    model: &VqVae,
    test: &Cifar10,
    device: Device,
    path: &Path,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let n = 32.min(test.len());
    let range = model.config.input_range;
    let batch = BatchIndices {
        indices: (0..n).collect(),
        flips: vec![false; n],
    };
    let xs = images_to_tensor(&gather(test.images.view(), &batch, range), device)?;
    let recon = model.forward(&xs).reconstruction;
    let mut rows = Vec::new();
    for r in 0..n.div_ceil(8) as i64 {
        let len = 8.min(n as i64 - r * 8);
        rows.push(xs.narrow(0, r * 8, len));
        rows.push(recon.narrow(0, r * 8, len));
    }
    let refs: Vec<&Tensor> = rows.iter().collect();
    save_grid(&refs, 8, VIEW_SCALE, range, path)?;
    Ok(())
}

/// Builds a small CIFAR-10-shaped dataset with smooth, learnable images (tests and demos).
pub fn synthetic_split(n: usize, seed: u64) -> Cifar10 {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let params: Vec<[f32; 6]> = (0..n)
        .map(|_| std::array::from_fn(|_| rng.random::<f32>()))
        .collect();
    let images = Array4::from_shape_fn((n, 3, 32, 32), |(i, c, y, x)| {
        let p = params[i];
        let v = 0.5
            + 0.5
                * ((x as f32 * p[0] * 0.4
                    + y as f32 * p[1] * 0.4
                    + c as f32 * p[2] * 2.0
                    + p[3] * 6.0)
                    .sin());
        (v * 255.0 * (0.5 + 0.5 * p[4])) as u8
    });
    let labels = Array1::from_shape_fn(n, |i| (i % 10) as u8);
    Cifar10 {
        images,
        labels,
        class_names: vq_data::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
    }
}
