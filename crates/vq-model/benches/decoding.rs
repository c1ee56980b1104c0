//! Decoding rate on the CPU, codes to pixels: `cargo bench -p vq-model --bench decoding --
//! [--images N] [--threads T] [--decoder sharp|plain] [--compute auto|f32|bf16]
//! [--passes whole,2048,...] [--rounds R]`.
//! Decodes the same random code grids through [`Checkpoint::decode_in_streams_by`] in as many
//! streams as LibTorch has threads, each stream's share in one pass (`whole`) or in passes of
//! about that many code positions, the settings alternated `--rounds` times (default 3), and
//! prints grids/s of each round and the largest pixel difference from the first setting's.

use std::time::Instant;

use tch::{Device, Kind, Tensor};
use vq_model::{Checkpoint, ComputeKind, VqVae, VqVaeConfig};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let images: i64 = arg("--images").and_then(|v| v.parse().ok()).unwrap_or(1000);
    if let Some(t) = arg("--threads").and_then(|v| v.parse().ok()) {
        tch::set_num_threads(t);
    }
    let rounds: usize = arg("--rounds").and_then(|v| v.parse().ok()).unwrap_or(3);
    let checkpoint = match arg("--decoder").as_deref() {
        None | Some("sharp") => Checkpoint::bundled_tuned_decoder(Device::Cpu)?,
        Some("plain") => Checkpoint::bundled(Device::Cpu)?,
        Some(other) => return Err(format!("--decoder {other}: give sharp or plain").into()),
    };
    // `--compute f32` stands for a CPU without bf16 arithmetic where `auto` would pick bf16.
    let checkpoint = match arg("--compute").as_deref() {
        None | Some("auto") => checkpoint,
        Some(kind) => {
            let compute = match kind {
                "f32" => ComputeKind::F32,
                "bf16" => ComputeKind::Bf16,
                other => return Err(format!("--compute {other}: give auto, f32 or bf16").into()),
            };
            let config = VqVaeConfig {
                compute,
                ..checkpoint.model.config.clone()
            };
            let mut vs = tch::nn::VarStore::new(Device::Cpu);
            let model = VqVae::new(vs.root(), &config);
            vs.copy(&checkpoint.vs)?;
            Checkpoint {
                model,
                vs,
                ..checkpoint
            }
        }
    };
    let passes: Vec<(String, i64)> = arg("--passes")
        .unwrap_or_else(|| format!("whole,{}", vq_model::checkpoint::DECODE_PASS_CODES))
        .split(',')
        .map(|p| match p {
            "whole" => Ok((p.to_string(), i64::MAX)),
            _ => p
                .parse()
                .map(|n| (p.to_string(), n))
                .map_err(|_| format!("--passes {p}: give whole or a number of codes")),
        })
        .collect::<Result<_, _>>()?;
    let streams = tch::get_num_threads().max(1) as usize;
    let _rng = vq_model::seeded(0);
    let codes = Tensor::randint(512, [images, 1, 8, 8], (Kind::Int64, Device::Cpu));
    let _guard = tch::no_grad_guard();
    println!(
        "decoder {}, {images} grids of 8 × 8, {streams} streams, products in {:?}",
        checkpoint.dir.display(),
        checkpoint.model.config.compute.kind(Device::Cpu)
    );
    let mut first: Option<Tensor> = None;
    for round in 1..=rounds {
        for (name, pass) in &passes {
            let start = Instant::now();
            let pixels = checkpoint.decode_in_streams_by(&codes, streams, *pass)?;
            let seconds = start.elapsed().as_secs_f64();
            let diff = match &first {
                Some(f) => (f - &pixels).abs().max().double_value(&[]),
                None => 0.0,
            };
            first.get_or_insert(pixels);
            println!(
                "round {round}, passes {name:>6}: {seconds:.2} s, {:.0} grids/s, largest difference {diff:.1e}",
                images as f64 / seconds
            );
        }
    }
    Ok(())
}
