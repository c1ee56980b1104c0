//! A sharper decoder for the same codes (`vq-train decoder`): the encoder and the codebook of a
//! trained VQ-VAE stay frozen, so every code grid, `.vqz` file and prior of it stays valid, and
//! only the decoder trains, on a reconstruction loss plus a hinge GAN loss from a patch
//! discriminator (VQGAN's recipe without its perceptual loss, whose network cannot be installed
//! here). The result is an ordinary VQ-VAE checkpoint whose config names the model whose codes it
//! decodes (`"codes_of"`).
//!
//! Two optimizers: the decoder's (the run's `optimizer.safetensors`) and the discriminator's
//! (`discriminator-optimizer.safetensors`), beside `discriminator.safetensors`. The
//! discriminator trains on every step (while the adversarial weight is above 0), so its step
//! count is the decoder's and exact resume needs nothing more.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};
use vq_data::{gather, BatchIndices, Cifar10, Split};
use vq_model::discriminator::{feature_matching_loss, generator_loss, hinge_discriminator_loss};
use vq_model::{
    evaluate, focal_frequency_loss, images_to_tensor, Checkpoint, ComputeKind, DiscriminatorConfig,
    Evaluation, PatchDiscriminator, StagedDecoderConfig, VqVae, VqVaeConfig,
};
use vq_store::names::{CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE};
use vq_store::{ConfigFile, RunDir};

use crate::adam::Adam;
use crate::codes::{train_codes, TrainCodes};
use crate::config::{run_config, DataConfig, Runtime, Schedule};
use crate::runner::RunState;
use crate::task::{Metric, StepReport, Task};
use crate::vqvae::{load_split, reconstruction_fid, save_reconstructions};

pub const DISCRIMINATOR_FILE: &str = "discriminator.safetensors";
pub const DISCRIMINATOR_OPTIMIZER_FILE: &str = "discriminator-optimizer.safetensors";

/// What the reconstruction term measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
#[value(rename_all = "lowercase")]
pub enum PixelLoss {
    /// Mean squared error, what the VQ-VAE was trained on.
    #[default]
    Mse,
    /// Mean absolute error, VQGAN's.
    L1,
}

/// A decoder fine-tuning run's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecoderTrainConfig {
    /// The VQ-VAE whose decoder is tuned: a run or checkpoint folder (`None`: the bundled one).
    pub vqvae: Option<PathBuf>,
    /// A decoder of this shape trained from scratch on the VQ-VAE's frozen codes, instead of
    /// tuning the VQ-VAE's own decoder (`None`).
    pub decoder: Option<StagedDecoderConfig>,
    /// A decoder run or checkpoint folder whose discriminator's weights start this run's (its
    /// optimizer starts afresh): a run that continues an adversarial one (`vqvae` pointing at
    /// it) then faces a discriminator that already knows the decoder's artefacts, instead of a
    /// blind one whose first verdicts are noise. Read only when the run starts, not on resume.
    pub discriminator_from: Option<PathBuf>,
    pub data: DataConfig,
    pub schedule: Schedule,
    pub runtime: Runtime,
    pub discriminator: DiscriminatorConfig,
    pub reconstruction: PixelLoss,
    /// Weight of the adversarial term: the whole weight (`adaptive_weight` false), or a factor
    /// on VQGAN's adaptive weight, ‖∇ reconstruction‖ / ‖∇ adversarial‖ at the decoder's last
    /// layer (taming-transformers uses 0.8).
    pub adversarial_weight: f64,
    pub adaptive_weight: bool,
    /// Steps in which the discriminator learns against the decoder as it is (which trains on
    /// the reconstruction loss alone) before its verdict reaches the decoder: an untrained
    /// discriminator's gradient is noise, and noise is what the decoder then learns to draw.
    pub disc_start: usize,
    /// The discriminator's learning rate as a multiple of the decoder's.
    pub disc_lr_factor: f64,
    /// Weight of pix2pixHD's feature-matching term (the mean absolute difference between the
    /// discriminator's hidden activations on the real images and on their reconstructions),
    /// from `disc_start` on: a perceptual-like loss learned on the data, which the missing
    /// LPIPS network would otherwise give. 0: none.
    pub feature_matching: f64,
    /// Weight of the focal frequency loss ([`vq_model::focal_frequency_loss`]) added to the
    /// reconstruction term, from step 0. 0: none.
    pub frequency_weight: f64,
    /// Its focusing exponent (the paper's 1).
    pub frequency_alpha: f64,
    /// Adam's (β1, β2) of both optimizers (VQGAN uses (0.5, 0.9)).
    pub betas: [f64; 2],
    pub hflip: bool,
    /// Test images of each evaluation but the last (which uses the whole test split).
    pub eval_images: usize,
    /// At the end, the FID of `fid_images` reconstructions of the test split against it.
    pub fid: bool,
    pub fid_images: usize,
}

impl Default for DecoderTrainConfig {
    fn default() -> Self {
        DecoderTrainConfig {
            vqvae: None,
            decoder: None,
            discriminator_from: None,
            data: DataConfig::default(),
            schedule: Schedule {
                steps: 6000,
                batch_size: 32,
                lr: 1e-4,
                warmup_steps: 100,
                final_lr_fraction: 1.0,
                seed: 0,
                log_every: 50,
                eval_every: 1000,
                checkpoint_every: 500,
            },
            runtime: Runtime::default(),
            discriminator: DiscriminatorConfig::default(),
            reconstruction: PixelLoss::Mse,
            // VQGAN's 0.8 and no warm-up made the reconstruction FID far worse here (rFID 133
            // against the PSNR decoder's 64 at 1,000 images, docs/experiments.md); this is the
            // one measured setting that did not.
            adversarial_weight: 0.1,
            adaptive_weight: true,
            disc_start: 1000,
            disc_lr_factor: 1.0,
            feature_matching: 0.0,
            frequency_weight: 0.0,
            frequency_alpha: 1.0,
            betas: [0.9, 0.999],
            hflip: true,
            eval_images: 2000,
            fid: false,
            fid_images: 5000,
        }
    }
}

run_config!(DecoderTrainConfig);

impl ConfigFile for DecoderTrainConfig {
    const WHAT: &'static str = "a decoder fine-tuning config";
    const FORMAT: u64 = 2;

    fn validate(&self) -> Result<(), String> {
        self.discriminator.validate()?;
        if let Some(decoder) = &self.decoder {
            // The stage count depends on the VQ-VAE's downsampling, checked when it is opened.
            decoder.validate(if decoder.stages.len() == 2 { 2 } else { 4 })?;
        }
        if !(self.adversarial_weight >= 0.0 && self.adversarial_weight.is_finite()) {
            return Err(format!(
                "adversarial_weight must be 0 or more, not {}",
                self.adversarial_weight
            ));
        }
        if !(self.feature_matching >= 0.0 && self.feature_matching.is_finite()) {
            return Err(format!(
                "feature_matching must be 0 or more, not {}",
                self.feature_matching
            ));
        }
        for (name, v) in [
            ("frequency_weight", self.frequency_weight),
            ("frequency_alpha", self.frequency_alpha),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(format!("{name} must be 0 or more, not {v}"));
            }
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(format!("betas must be in [0, 1), not {:?}", self.betas));
        }
        if !(self.disc_lr_factor > 0.0 && self.disc_lr_factor.is_finite()) {
            return Err(format!(
                "disc_lr_factor must be above 0, not {}",
                self.disc_lr_factor
            ));
        }
        Ok(())
    }
}

/// An evaluation of a tuned decoder. Its `score` is the step: a sharp decoder is judged by its
/// FID at the end, not by PSNR (which the adversarial term lowers on purpose), so `best` is the
/// latest evaluation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecoderEvaluation {
    #[serde(flatten)]
    pub eval: Evaluation,
}

impl crate::task::Evaluation for DecoderEvaluation {
    fn score(&self) -> f64 {
        self.eval.step as f64
    }
}

impl std::fmt::Display for DecoderEvaluation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "test PSNR {:.2} dB, SSIM {:.4} ({} images)",
            self.eval.psnr, self.eval.ssim, self.eval.images
        )
    }
}

/// A decoder being tuned.
#[derive(Debug)]
pub struct DecoderTask {
    config: DecoderTrainConfig,
    device: Device,
    train: Cifar10,
    /// The training images' codes (and their mirror images'), encoded once.
    train_codes: TrainCodes,
    test: Cifar10,
    /// The VQ-VAE as opened for inference (f32): it made the codes, and after
    /// [`DecoderTask::sync`] it holds the tuned decoder for evaluations and checkpoints.
    served: Checkpoint,
    /// The config of the checkpoints this run writes: the source's, with `codes_of` set.
    out_config: VqVaeConfig,
    /// The whole model in the training number type; only `decoder.*` requires gradients.
    vs: nn::VarStore,
    model: VqVae,
    adam: Adam,
    disc_vs: nn::VarStore,
    disc: PatchDiscriminator,
    disc_adam: Adam,
}

impl DecoderTask {
    /// Copies the trained decoder into the served model.
    fn sync(&mut self) {
        let _guard = tch::no_grad_guard();
        let mut served = self.served.vs.variables();
        for (name, t) in self.vs.variables() {
            if name.starts_with("decoder.") {
                if let Some(dst) = served.get_mut(&name) {
                    dst.copy_(&t);
                }
            }
        }
    }

    /// Discriminator updates applied after `steps` decoder updates.
    fn disc_steps(&self, steps: i64) -> i64 {
        if self.config.adversarial_weight > 0.0 {
            steps
        } else {
            0
        }
    }

    /// VQGAN's adaptive weight: ‖∇_W rec‖ / ‖∇_W adv‖ at the decoder's last weight W, clamped,
    /// times `adversarial_weight`; a number, not part of the graph.
    fn adaptive_weight(&self, rec: &Tensor, adv: &Tensor) -> f64 {
        let last = self.model.decoder.last_weight();
        let grad = |loss: &Tensor| {
            Tensor::run_backward(&[loss], &[&last], true, false)
                .pop()
                .expect("one input, one gradient")
        };
        let (mut rec_grad, mut adv_grad) = (grad(rec), grad(adv));
        // Data-parallel: the whole global batch's gradients (the mean of the ranks'), so that
        // every rank takes the weight one process would.
        if let Some(group) = vq_model::collective::group() {
            let both = Tensor::cat(
                &[
                    rec_grad.to_kind(Kind::Float).flatten(0, -1),
                    adv_grad.to_kind(Kind::Float).flatten(0, -1),
                ],
                0,
            );
            vq_model::collective::all_reduce_sum(&[&both]);
            let halves = (both / group.world_size() as f64).chunk(2, 0);
            (rec_grad, adv_grad) = (halves[0].shallow_clone(), halves[1].shallow_clone());
        }
        let norm = |t: &Tensor| t.norm().double_value(&[]);
        let (g_rec, g_adv) = (norm(&rec_grad), norm(&adv_grad));
        (g_rec / (g_adv + 1e-4)).clamp(0.0, 1e4) * self.config.adversarial_weight
    }
}

/// Loads the discriminator of the decoder run or checkpoint folder `from` into `disc_vs`; a
/// folder without one, or one of another shape, is an error naming it.
fn load_discriminator(disc_vs: &mut nn::VarStore, from: &Path) -> Result<()> {
    let dir = vq_store::resolve(from)
        .with_context(|| format!("discriminator_from: {}", from.display()))?;
    let file = dir.join(DISCRIMINATOR_FILE);
    if !file.is_file() {
        anyhow::bail!(
            "discriminator_from: {} has no {DISCRIMINATOR_FILE} (not a decoder run's checkpoint)",
            dir.display()
        );
    }
    vq_store::weights::load(disc_vs, &file)
        .with_context(|| format!("discriminator_from: loading {}", file.display()))?;
    tracing::info!("discriminator from {}", file.display());
    Ok(())
}

/// Copies into `dst` the values of its variables that `wanted` names, from the same names in
/// `src`.
fn copy_variables(
    dst: &nn::VarStore,
    src: &nn::VarStore,
    wanted: impl Fn(&str) -> bool,
) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let from = src.variables();
    for (name, mut t) in dst.variables() {
        if !wanted(&name) {
            continue;
        }
        let value = from
            .get(&name)
            .with_context(|| format!("the VQ-VAE has no variable {name}"))?;
        t.f_copy_(value)
            .with_context(|| format!("copying the VQ-VAE's {name}"))?;
    }
    Ok(())
}

impl Task for DecoderTask {
    type Config = DecoderTrainConfig;
    type Eval = DecoderEvaluation;
    const ITEMS: &'static str = "images";
    const KIND: crate::view::RunKind = crate::view::RunKind::Decoder;

    fn build(
        config: &DecoderTrainConfig,
        run: &RunDir,
        device: Device,
        fresh: bool,
    ) -> Result<Self> {
        let source = match &config.vqvae {
            Some(path) => Checkpoint::open(path, device)
                .with_context(|| format!("opening the VQ-VAE {}", path.display()))?,
            None => Checkpoint::bundled(device).context("opening the bundled VQ-VAE")?,
        };
        // Named before `served` takes its place: a served model with a new decoder declares
        // the codes of another model, which would name it a sharp decoder.
        let source_origin = source.origin();
        let train = load_split(&config.data, Split::Train)?;
        let test = load_split(&config.data, Split::Test)?;
        // A run that tunes another decoder run's result reads the codes that run cached.
        let source_codes: Vec<PathBuf> = config
            .vqvae
            .iter()
            .map(|p| RunDir::new(p).codes())
            .collect();
        let train_codes = train_codes(
            &run.codes(),
            &source_codes,
            &train,
            config.hflip,
            &source,
            device,
        )?;
        let mut out_config = source.config.clone();
        out_config.codes_of = Some(vq_store::hex(&source.codes_id()));
        if let Some(shape) = &config.decoder {
            out_config.decoder = Some(shape.clone());
            out_config.validate().map_err(|e| {
                anyhow::anyhow!("the decoder shape does not fit {source_origin}: {e}")
            })?;
        }
        let mut vs = nn::VarStore::new(device);
        let model = VqVae::new(vs.root(), &out_config);
        let served = match &config.decoder {
            None => {
                vs.copy(&source.vs)
                    .context("copying the VQ-VAE's weights into the model being tuned")?;
                source
            }
            // A new decoder: the source's encoder and quantizer, the new decoder's initial
            // weights, in a model of the new shape for inference (f32, as opened checkpoints).
            Some(_) => {
                copy_variables(&vs, &source.vs, |name| !name.starts_with("decoder."))?;
                let mut served_config = out_config.clone();
                if served_config.compute == ComputeKind::Auto {
                    served_config.compute = ComputeKind::F32;
                }
                let served_vs = nn::VarStore::new(device);
                let served_model = VqVae::new(served_vs.root(), &served_config);
                copy_variables(&served_vs, &vs, |_| true)?;
                Checkpoint {
                    config: served_config,
                    model: served_model,
                    vs: served_vs,
                    info: Default::default(),
                    ..source
                }
            }
        };
        // Frozen: the encoder and the quantizer (the codes must not change).
        for (name, t) in vs.variables() {
            if !name.starts_with("decoder.") {
                let _ = t.set_requires_grad(false);
            }
        }
        let mut adam = Adam::new(&vs);
        let mut disc_vs = nn::VarStore::new(device);
        let disc = PatchDiscriminator::new(disc_vs.root(), &config.discriminator);
        if let (true, Some(from)) = (fresh, &config.discriminator_from) {
            load_discriminator(&mut disc_vs, from)?;
        }
        let mut disc_adam = Adam::new(&disc_vs);
        for a in [&mut adam, &mut disc_adam] {
            (a.beta1, a.beta2) = (config.betas[0], config.betas[1]);
        }
        tracing::info!(
            "{} {} ({} train, {} test images); codes of model {}",
            if config.decoder.is_some() {
                "training a new decoder for the codes of"
            } else {
                "tuning the decoder of"
            },
            source_origin,
            train.len(),
            test.len(),
            out_config.codes_of.as_deref().unwrap_or("?")
        );
        Ok(DecoderTask {
            config: config.clone(),
            device,
            train,
            train_codes,
            test,
            served,
            out_config,
            vs,
            model,
            adam,
            disc_vs,
            disc,
            disc_adam,
        })
    }

    fn train_len(&self) -> usize {
        self.train.len()
    }

    fn flips(&self) -> bool {
        self.config.hflip
    }

    fn step(&mut self, step: usize, lr: f64, batch: &BatchIndices) -> Result<Option<StepReport>> {
        let range = self.served.config.input_range;
        let xs = images_to_tensor(&gather(self.train.images.view(), batch, range), self.device)?;
        let quantized = {
            let _guard = tch::no_grad_guard();
            let codes = self.train_codes.of_batch(batch).to_device(self.device);
            self.served.model.quantizer.embed(&codes)
        };
        let recon = self.model.decoder.forward(&quantized);
        let pixel = match self.config.reconstruction {
            PixelLoss::Mse => recon.mse_loss(&xs, Reduction::Mean),
            PixelLoss::L1 => (&recon - &xs).abs().mean(Kind::Float),
        };
        let train_disc = self.config.adversarial_weight > 0.0;
        let adversarial = train_disc && step >= self.config.disc_start;
        let mut metrics = Vec::new();
        let (scale, _) = range.scale_offset();
        let mse = match self.config.reconstruction {
            // Already computed: the pixel term itself.
            PixelLoss::Mse => pixel.double_value(&[]),
            PixelLoss::L1 => {
                let _guard = tch::no_grad_guard();
                (&recon - &xs).square().mean(Kind::Float).double_value(&[])
            }
        };
        let rec = if self.config.frequency_weight > 0.0 {
            let focal = focal_frequency_loss(&recon, &xs, self.config.frequency_alpha);
            metrics.push(Metric::mean("frequency", focal.double_value(&[])));
            pixel + focal * self.config.frequency_weight
        } else {
            pixel
        };
        let unit_mse = mse / (scale as f64 * 255.0).powi(2);
        metrics.push(Metric::mean("mse", unit_mse));
        let (real_logits, real_features) = if train_disc {
            let (logits, features) = self.disc.forward_features(&xs);
            (Some(logits), features)
        } else {
            (None, Vec::new())
        };
        // One pass through the discriminator on the reconstructions serves both players.
        let (fake_logits, fake_features) = if train_disc {
            let (logits, features) = self.disc.forward_features(&recon);
            (Some(logits), features)
        } else {
            (None, Vec::new())
        };
        let disc_loss = real_logits
            .as_ref()
            .zip(fake_logits.as_ref())
            .map(|(real, fake)| hinge_discriminator_loss(real, fake));
        let loss = match fake_logits.as_ref().filter(|_| adversarial) {
            Some(fake_logits) => {
                let adv = generator_loss(fake_logits);
                let weight = if self.config.adaptive_weight {
                    self.adaptive_weight(&rec, &adv)
                } else {
                    self.config.adversarial_weight
                };
                metrics.push(Metric::mean("adversarial", adv.double_value(&[])));
                metrics.push(Metric::mean("adversarial_weight", weight));
                let mut loss = &rec + adv * weight;
                if self.config.feature_matching > 0.0 {
                    let fm = feature_matching_loss(&real_features, &fake_features);
                    metrics.push(Metric::mean("feature_matching", fm.double_value(&[])));
                    loss += fm * self.config.feature_matching;
                }
                loss
            }
            None => rec.shallow_clone(),
        };
        let loss_value = loss.double_value(&[]);
        let disc_value = disc_loss.as_ref().map(|l| l.double_value(&[]));
        // Nothing is updated unless both losses are finite (on every rank).
        let finite = loss_value.is_finite() && disc_value.is_none_or(f64::is_finite);
        if crate::dist::Dist::any_non_finite(if finite { 0.0 } else { f64::NAN }) {
            return Ok(None);
        }
        // Each player's gradients come from its own loss alone, as autograd's inputs: the
        // decoder's from `loss` (through the discriminator, whose weights' gradients are not
        // computed), the discriminator's from `disc_loss` (not reaching the decoder). Both are
        // taken before either player moves, from the graph of the shared pass.
        let grads = Tensor::run_backward(
            &[&loss],
            &self.adam.parameters(),
            disc_loss.is_some(),
            false,
        );
        let disc_grads = disc_loss.as_ref().map(|disc_loss| {
            Tensor::run_backward(&[disc_loss], &self.disc_adam.parameters(), false, false)
        });
        self.adam.step_with(lr, &grads);
        if let (Some(disc_grads), Some(value)) = (disc_grads, disc_value) {
            self.disc_adam
                .step_with(lr * self.config.disc_lr_factor, &disc_grads);
            metrics.push(Metric::mean("disc_loss", value));
        }
        Ok(Some(StepReport {
            loss: loss_value,
            metrics,
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
    ) -> Result<DecoderEvaluation> {
        self.sync();
        let count = if last {
            self.test.len()
        } else {
            self.config.eval_images.min(self.test.len())
        };
        let eval = evaluate(
            &self.served.model,
            &self.test,
            count,
            self.device,
            step,
            elapsed_s,
        )?;
        if crate::dist::Dist::current()?.is_main() {
            save_reconstructions(
                &self.served.model,
                &self.test,
                self.device,
                &run.picture(crate::vqvae::PICTURE, step),
            )?;
        }
        Ok(DecoderEvaluation { eval })
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        self.sync();
        vq_store::weights::save(&self.served.vs, &dir.join(MODEL_FILE))?;
        self.adam.save(&dir.join(OPTIMIZER_FILE))?;
        vq_store::weights::save(&self.disc_vs, &dir.join(DISCRIMINATOR_FILE))?;
        self.disc_adam
            .save(&dir.join(DISCRIMINATOR_OPTIMIZER_FILE))?;
        vq_store::write_config(&dir.join(CONFIG_FILE), &self.out_config)?;
        Ok(())
    }

    fn optimizer_steps(&self) -> i64 {
        self.adam.steps
    }

    fn replicated(&self) -> Vec<Tensor> {
        crate::dist::sorted_variables(&[&self.vs, &self.served.vs, &self.disc_vs])
    }

    fn load(&mut self, dir: &Path, state: &RunState) -> Result<()> {
        vq_store::weights::load(&mut self.vs, &dir.join(MODEL_FILE))?;
        vq_store::weights::load(&mut self.served.vs, &dir.join(MODEL_FILE))?;
        vq_store::weights::load(&mut self.disc_vs, &dir.join(DISCRIMINATOR_FILE))?;
        self.adam
            .load(&dir.join(OPTIMIZER_FILE), state.adam_steps)?;
        let disc_steps = self.disc_steps(state.adam_steps);
        self.disc_adam
            .load(&dir.join(DISCRIMINATOR_OPTIMIZER_FILE), disc_steps)?;
        Ok(())
    }

    fn generation_figures(&mut self, _run: &RunDir) -> Result<Option<serde_json::Value>> {
        if !self.config.fid || !crate::dist::Dist::current()?.is_main() {
            return Ok(None);
        }
        self.sync();
        let count = self.config.fid_images.min(self.test.len());
        reconstruction_fid(
            &self.served.model,
            &self.config.data,
            &self.test,
            count,
            self.device,
        )
        .map(Some)
    }
}
