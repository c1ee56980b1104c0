//! `vq-train prior`: a code prior over a trained VQ-VAE's codes, as a training task.
//!
//! The dataset's splits are encoded once with the VQ-VAE and cached in the run folder (see
//! [`crate::codes`]); training then reads only codes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use vq_data::{BatchIndices, Split};
use vq_model::checkpoint::Checkpoint;
use vq_model::ComputeKind;
use vq_prior::{CodePrior, PriorArch, PriorConfig, Provenance};
use vq_store::names::{CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE};
use vq_store::{ConfigFile, RunDir};

use crate::adam::Adam;
use crate::codes::{cached_codes, train_codes, CodeSet, TrainCodes};
use crate::config::{from_legacy_run, run_config, DataConfig, Runtime, Schedule};
use crate::runner::RunState;
use crate::task::{Metric, StepReport, Task};
use crate::vqvae::load_split;

/// Everything a prior run depends on; saved as `config.json` in its run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// A misspelt setting is an error, not silently the default.
#[serde(default, deny_unknown_fields)]
pub struct PriorTrainConfig {
    /// The prior's architecture (its provenance comes from the VQ-VAE and the data).
    pub prior: PriorArch,
    /// Conditioned on the dataset's classes.
    pub conditional: bool,
    /// Trains on the codes of the training images and of their mirror images (each grid is
    /// taken mirrored with probability 1/2), which doubles the grids it sees.
    pub hflip: bool,
    /// Decoupled weight decay of the matrices and embeddings (AdamW); 0: plain Adam.
    pub weight_decay: f64,
    /// The number type of the transformer's linear layers in training passes (`auto`: bf16
    /// where the hardware runs it natively). Evaluation, sampling and entropy coding are f32
    /// whatever this says; the PixelCNN trains in f32.
    pub compute: ComputeKind,
    /// At the end, the FID (and KID) of this many class-balanced samples against the training
    /// split (0: none; minutes on a CPU), into `summary.json`.
    pub fid_samples: i64,
    /// The VQ-VAE: a checkpoint folder or a run folder (its best checkpoint); `null`: the
    /// bundled model.
    pub vqvae: Option<PathBuf>,
    /// Codes made elsewhere to train on instead of the dataset's (which are then not read);
    /// `null`: the dataset's codes, encoded once and cached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub codes: Option<ExternalCodes>,
    pub data: DataConfig,
    pub schedule: Schedule,
    pub runtime: Runtime,
}

/// Code grids from `.npy` files (`vq-cli encode --codes`, or NumPy): `(N, L, h, w)` or
/// `(N, h, w)` integers below the VQ-VAE's vocabulary, on its square grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCodes {
    pub train: PathBuf,
    /// `(N,)` class indices of the training grids; `null`: unconditional.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Grids to measure the test NLL on; `null`: the last 5% of `train`, held out.
    #[serde(default)]
    pub test: Option<PathBuf>,
    #[serde(default)]
    pub test_labels: Option<PathBuf>,
}

impl Default for PriorTrainConfig {
    fn default() -> Self {
        PriorTrainConfig {
            // The transformer (FID 31 against the PixelCNN's 76 at this project's settings);
            // a config that names `"kind": "pixelcnn"` keeps the PixelCNN.
            prior: PriorArch::Transformer(vq_prior::TransformerConfig::default()),
            conditional: true,
            hflip: false,
            weight_decay: 0.0,
            compute: ComputeKind::F32,
            fid_samples: 0,
            vqvae: None,
            codes: None,
            data: DataConfig::default(),
            schedule: Schedule {
                steps: 4000,
                batch_size: 128,
                lr: 1e-3,
                warmup_steps: 200,
                final_lr_fraction: 0.05,
                seed: 0,
                log_every: 50,
                eval_every: 1000,
                checkpoint_every: 500,
            },
            runtime: Runtime::default(),
        }
    }
}

run_config!(PriorTrainConfig, |config: &PriorTrainConfig| config
    .codes
    .is_none());

impl ConfigFile for PriorTrainConfig {
    const WHAT: &'static str = "a prior training config";
    const FORMAT: u64 = 2;

    fn from_legacy(fields: serde_json::Value) -> Option<Result<Self, String>> {
        Some(from_legacy_run(
            fields,
            "prior",
            |prior, config: &mut Self| {
                let prior: PriorConfig = vq_store::parse_config(&prior.to_string())?;
                config.conditional = prior.provenance.classes > 0;
                config.prior = prior.arch;
                Ok(())
            },
        ))
    }

    fn validate(&self) -> Result<(), String> {
        if !(0.0..1.0).contains(&self.weight_decay) {
            return Err(format!(
                "weight_decay must be in [0, 1), not {}",
                self.weight_decay
            ));
        }
        if self.fid_samples != 0 && !(2..=1_000_000).contains(&self.fid_samples) {
            return Err(format!(
                "fid_samples must be 0 (none) or 2 to 1,000,000, not {}",
                self.fid_samples
            ));
        }
        self.prior.validate()
    }
}

pub use vq_report::PriorEvaluation;

impl crate::task::Evaluation for PriorEvaluation {
    fn score(&self) -> f64 {
        -self.bits_per_code
    }
}

/// The training and test codes of the run's dataset (encoded once, cached in the run folder),
/// and what they are.
fn dataset_codes(
    config: &PriorTrainConfig,
    run: &RunDir,
    vqvae: &Checkpoint,
    device: Device,
) -> Result<(TrainCodes, CodeSet, Provenance)> {
    let data = vq_data::describe(&config.data.path)
        .with_context(|| format!("reading the dataset {}", config.data.path.display()))?;
    let (classes, class_names) = if config.conditional {
        (data.class_names.len() as i64, data.class_names.clone())
    } else {
        (0, Vec::new())
    };
    let provenance = Provenance {
        vqvae_model_id: vq_store::hex(&vqvae.codes_id()),
        codes: modelled_codes(vqvae),
        grid_side: vqvae.config.grid_side(data.side as i64),
        image_side: data.side as i64,
        classes,
        class_names,
    };
    let train_images = load_split(&config.data, Split::Train)?;
    let train = train_codes(
        &run.codes(),
        &[],
        &train_images,
        config.hflip,
        vqvae,
        device,
    )?;
    drop(train_images);
    let train = TrainCodes {
        plain: train.plain.first_level(),
        mirrored: train.mirrored.map(CodeSet::first_level),
    };
    let test_images = load_split(&config.data, Split::Test)?;
    let test = cached_codes(
        &run.codes(),
        &[],
        "test",
        &test_images,
        false,
        vqvae,
        device,
    )?
    .first_level();
    Ok((train, test, provenance))
}

/// An integer `.npy` file's array.
fn read_npy(path: &Path) -> Result<vq_codes::npy::Array> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    vq_codes::npy::Array::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Grids `(N, h, w)` (the first level) of a code file, checked against the VQ-VAE's codes.
fn read_grids(path: &Path, vqvae: &Checkpoint) -> Result<(Vec<i64>, [usize; 3])> {
    let array = read_npy(path)?;
    let space = vqvae.config.code_space();
    let (n, l, h, w) = match *array.shape.as_slice() {
        [n, l, h, w] => (n, l, h, w),
        [n, h, w] => (n, 1, h, w),
        ref other => anyhow::bail!(
            "{}: codes of shape {other:?}; a prior trains on (N, L, h, w) or (N, h, w) grids",
            path.display()
        ),
    };
    if n == 0 || l == 0 || h == 0 || h != w {
        anyhow::bail!(
            "{}: {n} grids of {h}×{w}; a prior trains on square grids, at least one",
            path.display()
        );
    }
    if l as i64 > space.depth {
        anyhow::bail!(
            "{}: {l} levels of codes, but {} has {}",
            path.display(),
            vqvae.origin(),
            space.depth
        );
    }
    if let Some(c) = array.data.iter().find(|&&c| c < 0 || c >= space.vocabulary) {
        anyhow::bail!(
            "{}: code {c} is outside the vocabulary of {} ({} codes)",
            path.display(),
            vqvae.origin(),
            space.vocabulary
        );
    }
    // The first level of each grid.
    let per = l * h * w;
    let first: Vec<i64> = array
        .data
        .chunks(per)
        .flat_map(|g| g[..h * w].iter().copied())
        .collect();
    Ok((first, [n, h, w]))
}

fn read_labels(path: &Path, n: usize) -> Result<Vec<i64>> {
    let array = read_npy(path)?;
    if array.shape != [n] {
        anyhow::bail!(
            "{}: labels of shape {:?} for {n} grids (expected ({n},))",
            path.display(),
            array.shape
        );
    }
    if let Some(l) = array.data.iter().find(|&&l| !(0..256).contains(&l)) {
        anyhow::bail!(
            "{}: label {l} is not a class index 0 to 255",
            path.display()
        );
    }
    Ok(array.data)
}

/// Codes made elsewhere: the training grids, the test grids (given, or the last 5% held out)
/// and what they are.
fn external_codes(
    codes: &ExternalCodes,
    config: &PriorTrainConfig,
    vqvae: &Checkpoint,
) -> Result<(TrainCodes, CodeSet, Provenance)> {
    if config.hflip {
        anyhow::bail!("hflip needs the images; with codes made elsewhere, encode the mirrored images into the array too");
    }
    let (grids, [n, h, w]) = read_grids(&codes.train, vqvae)?;
    let labels = match (&codes.labels, config.conditional) {
        (Some(path), true) => Some(read_labels(path, n)?),
        _ => None,
    };
    let set = |grids: Vec<i64>, n: usize, labels: Option<Vec<i64>>| CodeSet {
        codes: Tensor::from_slice(&grids).view([n as i64, h as i64, w as i64]),
        labels: Tensor::from_slice(&labels.unwrap_or_else(|| vec![0; n])),
    };
    let (train, test) = match &codes.test {
        Some(path) => {
            let (test_grids, [tn, th, tw]) = read_grids(path, vqvae)?;
            if (th, tw) != (h, w) {
                anyhow::bail!(
                    "{}: {th}×{tw} grids, but the training codes are {h}×{w}",
                    path.display()
                );
            }
            let test_labels = match (&codes.test_labels, &labels) {
                (Some(p), Some(_)) => Some(read_labels(p, tn)?),
                (None, Some(_)) => anyhow::bail!(
                    "the training codes have labels: give the test codes theirs (--test-labels)"
                ),
                _ => None,
            };
            (set(grids, n, labels), set(test_grids, tn, test_labels))
        }
        None => {
            if n < 2 {
                anyhow::bail!(
                    "{}: one grid cannot be split into training and test codes",
                    codes.train.display()
                );
            }
            let held = (n / 20).max(1);
            let cut = (n - held) * h * w;
            let (a, b) = (grids[..cut].to_vec(), grids[cut..].to_vec());
            let (la, lb) = match labels {
                Some(l) => (Some(l[..n - held].to_vec()), Some(l[n - held..].to_vec())),
                None => (None, None),
            };
            (set(a, n - held, la), set(b, held, lb))
        }
    };
    // The classes of the training and the test grids alike (a held-out tail may hold a class
    // the rest lacks).
    let classes = if config.conditional && codes.labels.is_some() {
        let mut labels = Vec::<i64>::try_from(&train.labels)?;
        labels.extend(Vec::<i64>::try_from(&test.labels)?);
        labels.iter().max().map_or(0, |m| m + 1)
    } else {
        0
    };
    // The dataset's class names when it has them, else the class numbers.
    let names = vq_data::describe(&config.data.path)
        .ok()
        .map(|d| d.class_names)
        .filter(|names| names.len() as i64 >= classes)
        .map(|names| names[..classes as usize].to_vec())
        .unwrap_or_else(|| (0..classes).map(|c| c.to_string()).collect());
    let provenance = Provenance {
        vqvae_model_id: vq_store::hex(&vqvae.codes_id()),
        codes: modelled_codes(vqvae),
        grid_side: h as i64,
        image_side: h as i64 * vqvae.config.downsample,
        classes,
        class_names: names,
    };
    Ok((
        TrainCodes {
            plain: train,
            mirrored: None,
        },
        test,
        provenance,
    ))
}

/// The codes a prior models: one per position. For a residual quantizer that is the first
/// level only, a coarse image that its samples decode to: one code per position is what the
/// priors' grids hold, and modelling the whole stack in sequence would make the transformer's
/// sequence L times longer (its cost grows with the square).
pub fn modelled_codes(vqvae: &Checkpoint) -> vq_model::CodeSpace {
    vq_model::CodeSpace {
        depth: 1,
        ..vqvae.config.code_space()
    }
}

/// Bits per code of `test` under the code frequencies of `train` (add-one smoothed, so that a
/// code unseen in training costs finite bits).
pub fn unigram_bits_per_code(train: &CodeSet, test: &CodeSet, vocabulary: i64) -> f64 {
    let counts = |set: &CodeSet| {
        set.codes
            .flatten(0, -1)
            .bincount::<Tensor>(None, vocabulary)
            .to_kind(Kind::Double)
    };
    let train_counts = counts(train) + 1.0;
    let p = &train_counts / train_counts.sum(Kind::Double);
    let test_counts = counts(test);
    let nats = -(test_counts.shallow_clone() * p.log())
        .sum(Kind::Double)
        .double_value(&[])
        / test_counts.sum(Kind::Double).double_value(&[]).max(1.0);
    nats / std::f64::consts::LN_2
}

/// Test NLL of `prior` over `set`; `unigram` is [`unigram_bits_per_code`] of the run.
pub fn evaluate_prior(
    prior: &dyn CodePrior,
    set: &CodeSet,
    unigram: f64,
    device: Device,
    step: usize,
    elapsed_s: f64,
) -> PriorEvaluation {
    let _guard = tch::no_grad_guard();
    let n = set.len() as i64;
    let mut total = 0.0;
    // Data-parallel: this rank's chunks, the totals summed over the ranks below.
    let world = vq_model::collective::place().1;
    for chunk in vq_model::collective::my_chunks(n as usize, 500) {
        let (start, len) = (chunk.start as i64, chunk.len() as i64);
        let codes = set.codes.narrow(0, start, len).to_device(device);
        let labels = set.labels.narrow(0, start, len).to_device(device);
        total += prior.nll(&codes, Some(&labels), false).double_value(&[]) * len as f64;
    }
    if world > 1 {
        let sum = Tensor::from_slice(&[total]);
        vq_model::collective::all_reduce_sum(&[&sum]);
        total = sum.double_value(&[0]);
    }
    let bits_per_code = total / n.max(1) as f64 / std::f64::consts::LN_2;
    PriorEvaluation {
        step,
        grids: n,
        bits_per_code,
        bits_per_dim: prior.provenance().bits_per_dim(bits_per_code),
        unigram_bits_per_code: unigram,
        elapsed_s,
    }
}

/// A code prior being trained.
#[derive(Debug)]
pub struct PriorTask {
    /// The VQ-VAE, kept when the run ends with an FID of samples.
    vqvae: Option<Checkpoint>,
    data: DataConfig,
    fid_samples: i64,
    /// Test bits per code under the training codes' frequencies.
    unigram: f64,
    device: Device,
    /// The first level of the training codes (and of their mirror images' when the run flips).
    train: TrainCodes,
    test: CodeSet,
    config: PriorConfig,
    vs: nn::VarStore,
    model: Box<dyn CodePrior>,
    adam: Adam,
}

impl Task for PriorTask {
    type Config = PriorTrainConfig;
    type Eval = PriorEvaluation;
    const ITEMS: &'static str = "grids";
    const KIND: crate::view::RunKind = crate::view::RunKind::Prior;

    fn build(
        config: &PriorTrainConfig,
        run: &RunDir,
        device: Device,
        _fresh: bool,
    ) -> Result<Self> {
        let vqvae = match &config.vqvae {
            Some(path) => Checkpoint::open(path, device)
                .with_context(|| format!("opening the VQ-VAE {}", path.display()))?,
            None => Checkpoint::bundled(device).context("opening the bundled VQ-VAE")?,
        };
        let (train, test, provenance) = match &config.codes {
            Some(codes) => external_codes(codes, config, &vqvae)?,
            None => dataset_codes(config, run, &vqvae, device)?,
        };
        let prior_config = PriorConfig {
            arch: config.prior.clone(),
            provenance,
            sampling: None,
        };
        ConfigFile::validate(&prior_config)
            .map_err(|e| anyhow::anyhow!("the prior for {}: {e}", vqvae.origin()))?;
        let vqvae = (config.fid_samples > 0).then_some(vqvae);
        let unigram = unigram_bits_per_code(
            &train.plain,
            &test,
            prior_config.provenance.codes.vocabulary,
        );
        let vs = nn::VarStore::new(device);
        let mut model = vq_prior::build(vs.root(), &prior_config);
        let kind = config.compute.kind(device);
        if kind != Kind::Float && !model.set_training_kind(kind) {
            tracing::warn!("this prior trains in f32 only; \"compute\" is ignored");
        }
        let mut adam = Adam::new(&vs);
        adam.weight_decay = config.weight_decay;
        Ok(PriorTask {
            vqvae,
            data: config.data.clone(),
            fid_samples: config.fid_samples,
            unigram,
            device,
            train,
            test,
            config: prior_config,
            vs,
            model,
            adam,
        })
    }

    fn train_len(&self) -> usize {
        self.train.plain.len()
    }

    fn flips(&self) -> bool {
        self.train.mirrored.is_some()
    }

    fn step(&mut self, _step: usize, lr: f64, batch: &BatchIndices) -> Result<Option<StepReport>> {
        let codes = self.train.of_batch(batch).to_device(self.device);
        let labels = self.train.labels_of(batch).to_device(self.device);
        let loss = self.model.nll(&codes, Some(&labels), true);
        let value = loss.double_value(&[]);
        if crate::dist::Dist::any_non_finite(value) {
            return Ok(None);
        }
        self.adam.zero_grad();
        loss.backward();
        self.adam.step(lr);
        Ok(Some(StepReport {
            loss: value,
            metrics: vec![Metric::mean(
                "bits_per_code",
                value / std::f64::consts::LN_2,
            )],
        }))
    }

    fn evaluate(
        &mut self,
        _run: &RunDir,
        step: usize,
        _last: bool,
        elapsed_s: f64,
    ) -> Result<PriorEvaluation> {
        Ok(evaluate_prior(
            self.model.as_ref(),
            &self.test,
            self.unigram,
            self.device,
            step,
            elapsed_s,
        ))
    }

    fn save(&mut self, dir: &Path) -> Result<()> {
        vq_store::weights::save(&self.vs, &dir.join(MODEL_FILE))?;
        self.adam.save(&dir.join(OPTIMIZER_FILE))?;
        vq_store::write_config(&dir.join(CONFIG_FILE), &self.config)?;
        Ok(())
    }

    fn optimizer_steps(&self) -> i64 {
        self.adam.steps
    }

    fn replicated(&self) -> Vec<Tensor> {
        crate::dist::sorted_variables(&[&self.vs])
    }

    fn load(&mut self, dir: &Path, state: &RunState) -> Result<()> {
        let saved: PriorConfig = vq_store::read_config(&dir.join(CONFIG_FILE))?;
        let (ours, theirs) = (
            &self.config.provenance.vqvae_model_id,
            &saved.provenance.vqvae_model_id,
        );
        if ours != theirs {
            bail!(
                "the VQ-VAE is model {ours}, but this prior was trained on the codes of model {theirs}"
            );
        }
        vq_store::weights::load(&mut self.vs, &dir.join(MODEL_FILE))?;
        self.adam
            .load(&dir.join(OPTIMIZER_FILE), state.adam_steps)?;
        Ok(())
    }

    fn generation_figures(&mut self, _run: &RunDir) -> Result<Option<serde_json::Value>> {
        let Some(vqvae) = &self.vqvae else {
            return Ok(None);
        };
        if !crate::dist::Dist::current()?.is_main() {
            return Ok(None);
        }
        let net = vq_fid::InceptionV3::load(&vq_fid::default_weights(), self.device)?;
        tracing::info!(
            "FID of {} samples against the training split (minutes on a CPU)",
            self.fid_samples
        );
        let reference =
            vq_fid::split_stats(&net, &self.data.path, Split::Train, &mut |_, _| {})?.value;
        let features = vq_fid::models::sample_features(
            &net,
            &vqvae.model,
            self.model.as_ref(),
            vq_fid::models::Sampling {
                n: self.fid_samples,
                options: Default::default(),
                seed: 0,
                unconditional: false,
            },
            &|_| {},
        )?;
        let ours = vq_fid::FeatureStats::from_features(&features)?;
        let fid = vq_fid::frechet_distance(&ours, &reference)?;
        let kid = vq_fid::kernel_inception_distance(&ours.sample, &reference.sample, 100, 1000, 0)?;
        Ok(Some(serde_json::json!({
            "fid": fid, "kid": kid, "samples": ours.count,
            "against": "the training split", "temperature": 1.0, "guidance": 1.0,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vq_store::parse_config;

    #[test]
    fn unigram_bits_are_the_cross_entropy_of_smoothed_frequencies() {
        let set = |codes: &[i64]| CodeSet {
            codes: Tensor::from_slice(codes).view([1, 1, codes.len() as i64]),
            labels: Tensor::from_slice(&[0i64]),
        };
        // Train: code 0 three times, code 1 once; add-one over 4 codes gives 4/8, 2/8, 1/8, 1/8.
        let train = set(&[0, 0, 0, 1]);
        let bits = unigram_bits_per_code(&train, &set(&[0, 1]), 4);
        assert!((bits - 1.5).abs() < 1e-12, "{bits}");
        // A code never seen in training costs 3 bits, not infinity.
        assert!((unigram_bits_per_code(&train, &set(&[3]), 4) - 3.0).abs() < 1e-12);
    }

    /// `vq-train prior` trains the transformer unless a config names the PixelCNN; a config
    /// naming the transformer without its shape gets the same as `--arch transformer`.
    #[test]
    fn the_transformer_is_the_default_and_a_config_naming_the_pixelcnn_keeps_it() {
        assert!(matches!(
            PriorTrainConfig::default().prior,
            PriorArch::Transformer(_)
        ));
        let c: PriorTrainConfig =
            parse_config(r#"{"format": 2, "schedule": {"steps": 5}}"#).unwrap();
        assert_eq!(
            c.prior,
            PriorArch::Transformer(vq_prior::TransformerConfig::default())
        );
        let c: PriorTrainConfig = parse_config(
            r#"{"format": 2, "prior": {"kind": "pixelcnn", "channels": 8, "layers": 2, "kernel": 3}}"#,
        )
        .unwrap();
        assert_eq!(
            c.prior,
            PriorArch::PixelCnn(vq_prior::PixelCnnConfig {
                channels: 8,
                layers: 2,
                kernel: 3
            })
        );
        // A transformer config written before grouped heads (no "kv_heads") keeps one
        // key/value head per query head.
        let c: PriorTrainConfig = parse_config(
            r#"{"format": 2, "prior": {"kind": "transformer", "width": 32, "layers": 1, "heads": 4}}"#,
        )
        .unwrap();
        match c.prior {
            PriorArch::Transformer(t) => assert_eq!((t.width, t.key_value_heads()), (32, 4)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn format_1_prior_runs_read_as_the_same_run() {
        let c: PriorTrainConfig = parse_config(
            r#"{"prior": {"channels": 8, "layers": 2, "classes": 0}, "data": "d",
                "any_record_count": true, "steps": 40, "batch_size": 16, "vqvae": "/m"}"#,
        )
        .unwrap();
        assert_eq!(
            c.prior,
            PriorArch::PixelCnn(vq_prior::PixelCnnConfig {
                channels: 8,
                layers: 2,
                kernel: 3
            })
        );
        assert!(!c.conditional);
        assert_eq!(c.vqvae, Some(PathBuf::from("/m")));
        assert_eq!((c.schedule.steps, c.schedule.batch_size), (40, 16));
        assert_eq!(c.schedule.lr, 1e-3);
        let v2: PriorTrainConfig =
            parse_config(r#"{"format": 2, "schedule": {"steps": 7}}"#).unwrap();
        assert_eq!(v2.schedule.batch_size, 128, "the prior's own default");
        assert!(v2.conditional && v2.vqvae.is_none());
    }
}
