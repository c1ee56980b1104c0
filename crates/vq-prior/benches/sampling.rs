//! Sampling rate of a prior (codes only, no decoding): `cargo bench -p vq-prior --bench
//! sampling -- [--prior DIR] [--images N] [--threads T] [--guidance G] [--guided-codes N]
//! [--batches 250,500,1000] [--streams 1,2] [--kinds f32,bf16,int8]` (guidance and guided
//! codes: the prior's own sampling defaults unless given), for a few batch sizes and sampling streams (default: one,
//! and as many as LibTorch has threads, each on one thread), with the matrix products in f32,
//! in bf16 (where the CPU has bf16 arithmetic, LibTorch uses it) and in int8 (CPU only;
//! `--kinds`, default all three on a CPU, f32 and bf16 on a GPU). Prints images/s of each
//! and how many codes equal one f32 stream's draws of the same seed (the draws follow the
//! probabilities, which bf16 and int8 round, and streams run products in smaller batches).

use std::path::PathBuf;
use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vq_prior::PriorCheckpoint;
use vq_store::Source;

mod common;
use common::arg;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: i64 = arg("--images").and_then(|v| v.parse().ok()).unwrap_or(1000);
    if let Some(t) = arg("--threads").and_then(|v| v.parse().ok()) {
        tch::set_num_threads(t);
    }
    // `--device cuda` on a GPU machine (scripts/gpu-check.sh).
    let device = match arg("--device").as_deref() {
        Some("cuda") => Device::Cuda(0),
        _ => Device::Cpu,
    };
    let prior_dir = arg("--prior").map(PathBuf::from);
    let source = match &prior_dir {
        Some(p) => Source::Path(p),
        None => Source::Bundled(&vq_prior::BUNDLED),
    };
    let mut prior = PriorCheckpoint::open(source, device)?;
    let classes = prior.model.provenance().classes.max(1);
    let labels = Tensor::arange(images, (Kind::Int64, device)).remainder(classes);
    let labels = (prior.model.provenance().classes > 0).then_some(labels);
    let mut options = prior.config.sampling.unwrap_or_default();
    if let Some(g) = arg("--guidance").and_then(|v| v.parse().ok()) {
        options.guidance = g;
    }
    if let Some(n) = arg("--guided-codes").and_then(|v| v.parse().ok()) {
        options.guided_codes = Some(n);
    }
    let batches: Vec<i64> = arg("--batches")
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| vec![250, 500, 1000]);
    let widest = *batches.iter().max().unwrap_or(&1000);
    let kinds: Vec<String> = match arg("--kinds") {
        Some(v) => v.split(',').map(str::to_string).collect(),
        None if device == Device::Cpu => vec!["f32".into(), "bf16".into(), "int8".into()],
        None => vec!["f32".into(), "bf16".into()],
    };
    if let Some(bad) = kinds
        .iter()
        .find(|k| !["f32", "bf16", "int8"].contains(&k.as_str()))
    {
        return Err(format!("--kinds {bad}: give f32, bf16 and/or int8").into());
    }
    // Sampling streams (`PriorCheckpoint::sample_in_streams`; `vq-cli sample` runs as many as
    // LibTorch has threads on a CPU): 1 and the thread count unless given.
    let threads = tch::get_num_threads().max(1) as usize;
    let streams: Vec<usize> = arg("--streams")
        .map(|v| v.split(',').filter_map(|b| b.parse().ok()).collect())
        .unwrap_or_else(|| {
            let mut s = vec![1, threads];
            s.dedup();
            s
        });
    println!(
        "prior {}, {images} images, {} threads, {device:?}, guidance {} on {}",
        prior.origin(),
        tch::get_num_threads(),
        options.guidance,
        options.guided_codes.map_or_else(
            || "all codes".to_string(),
            |n| format!("the first {n} codes")
        )
    );
    // What `vq-cli sample --compute auto`, its default, picks on this device.
    let auto = vq_model::ComputeKind::Auto.kind(device);
    println!(
        "the default (--compute auto) samples in {} here",
        if auto == Kind::Float { "f32" } else { "bf16" }
    );
    let mut reference: Option<Tensor> = None;
    let kinds: Vec<(Kind, &str)> = [
        (Kind::Float, "f32"),
        (Kind::BFloat16, "bf16"),
        (Kind::Int8, "int8"),
    ]
    .into_iter()
    .filter(|(_, name)| kinds.iter().any(|k| k == name))
    .collect();
    for (kind, name) in kinds {
        if !prior.set_sampling_kind(kind) {
            println!("{name}: not supported by this prior on {device:?}");
            continue;
        }
        for (&batch, &stream_count) in batches
            .iter()
            .flat_map(|b| streams.iter().map(move |s| (b, s)))
        {
            tch::manual_seed(0);
            let start = Instant::now();
            let mut parts = Vec::new();
            for s in (0..images).step_by(batch as usize) {
                let n = batch.min(images - s);
                let l = labels.as_ref().map(|l| l.narrow(0, s, n));
                parts.push(prior.sample_in_streams(n, l.as_ref(), &options, stream_count)?);
            }
            if let Device::Cuda(i) = device {
                tch::Cuda::synchronize(i as i64);
            }
            let seconds = start.elapsed().as_secs_f64();
            let codes = Tensor::cat(&parts, 0);
            let same = match &reference {
                Some(r) if batch == widest && (kind != Kind::Float || stream_count != 1) => {
                    let eq = codes.eq_tensor(r).to_kind(Kind::Float).mean(Kind::Float);
                    format!(
                        ", {:.1}% of codes equal to one f32 stream's",
                        100.0 * eq.double_value(&[])
                    )
                }
                _ => String::new(),
            };
            if kind == Kind::Float && batch == widest && stream_count == 1 {
                reference = Some(codes.shallow_clone());
            }
            println!(
                "{name} batch {batch:>5}, {stream_count} stream{}: {:.2} s, {:.0} images/s{same}",
                if stream_count == 1 { "" } else { "s" },
                seconds,
                images as f64 / seconds
            );
        }
    }
    Ok(())
}
