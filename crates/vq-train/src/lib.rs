//! The training loop. Until the VQ-VAE lands (issue 4) this is the data-pipeline smoke run:
//! CIFAR-10 from disk, seeded batches, LibTorch tensors on the chosen device.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use tch::Kind;
use vq_data::{BatchConfig, Batcher, Cifar10, Split};
use vq_model::DeviceChoice;

#[derive(Debug, Clone)]
pub struct SmokeConfig {
    pub data: PathBuf,
    pub steps: usize,
    pub batch: BatchConfig,
    pub device: DeviceChoice,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmokeReport {
    pub train_images: usize,
    pub test_images: usize,
    pub steps: usize,
    pub images_per_second: f64,
    /// Mean pixel value of everything drawn, in the model's input range.
    pub mean: f64,
}

pub fn smoke_run(cfg: &SmokeConfig) -> Result<SmokeReport> {
    let device = cfg.device.resolve()?;
    tracing::info!(
        "device: {device:?}, LibTorch threads: {}",
        tch::get_num_threads()
    );
    let started = Instant::now();
    let train = Cifar10::load(&cfg.data, Split::Train)
        .with_context(|| format!("loading CIFAR-10 from {}", cfg.data.display()))?;
    let test = Cifar10::load(&cfg.data, Split::Test)
        .with_context(|| format!("loading CIFAR-10 from {}", cfg.data.display()))?;
    tracing::info!(
        "loaded {} train and {} test images in {:.2} s",
        train.len(),
        test.len(),
        started.elapsed().as_secs_f64()
    );
    let mut batcher = Batcher::new(train.len(), cfg.batch)?;
    let bar = indicatif::ProgressBar::new(cfg.steps as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template"),
    );
    bar.set_message("batches");
    let started = Instant::now();
    let mut sum = 0f64;
    for _ in 0..cfg.steps {
        let batch = batcher.next_batch(train.images.view(), &train.labels);
        let xs = vq_model::images_to_tensor(&batch.images, device)?;
        sum += xs.f_mean(Kind::Double)?.double_value(&[]);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    Ok(SmokeReport {
        train_images: train.len(),
        test_images: test.len(),
        steps: cfg.steps,
        images_per_second: (cfg.steps * cfg.batch.batch_size) as f64 / seconds.max(1e-9),
        mean: sum / cfg.steps.max(1) as f64,
    })
}
